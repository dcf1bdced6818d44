"""Images: the LIBERO observation path and the OpenVLA processor.

Conventions: images are numpy ``uint8`` arrays of shape H x W x 3 (RGB, row 0 = top of the image
as stored) or PIL RGB images; model inputs are float32 tensors [B, 6, 224, 224].

**LIBERO path** (:func:`libero_image`, openvla ``experiments/robot/libero/libero_utils.py`` and
``openvla_utils.py``), applied to ``obs["agentview_image"]`` (256 x 256, upside down):

1. :func:`rotate_180`: ``img[::-1, ::-1]``, a 180 degree rotation (both axes), NOT ``np.flipud``.
2. :func:`jpeg_roundtrip`: encode / decode JPEG at quality 95.
   *Deviation*: the reference uses ``tf.image.encode_jpeg`` (libjpeg, quality 95, 4:2:0 chroma);
   we use PIL's libjpeg(-turbo) with quality 95 and 4:2:0; decoders may differ by +-1 per pixel.
3. :func:`resize_lanczos`: to 224 x 224 with a Lanczos (a = 3) antialiased filter.
   *Deviation*: the reference computes ``tf.image.resize(method="lanczos3", antialias=True)`` in
   float, then ``round``/``clip``/uint8; PIL's LANCZOS uses the same kernel with its own fixed-point
   accumulation and rounding, so pixels may differ by a few levels.
4. :func:`center_crop` (when ``center_crop=True``, the LIBERO default): a box of side
   sqrt(0.9) = 0.94868 of height and width, centred, resized back to 224 x 224 by bilinear sampling.
   Reproduces ``tf.image.crop_and_resize``'s sampling formula and ``convert_image_dtype``'s
   float <-> uint8 conversions (x / 255 in, ``trunc(clip(x) * 255.5)`` out) in float32 with numpy;
   no deviation intended beyond float rounding order.

**Processor** (:func:`process_images`, openvla ``prismatic/extern/hf/processing_prismatic.py``):
per tower ``resize((224, 224), bicubic, antialias=True)`` (resize-naive squash), ``center_crop(224)``,
``to_tensor`` (uint8 -> [0, 1]), ``normalize(mean, std)``; DINOv2 uses ImageNet mean/std, SigLIP
0.5/0.5. The two 3-channel results are stacked: channels 0-2 DINOv2, 3-5 SigLIP. Done with
torchvision on PIL images, as the reference (same library, so no deviation intended).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

MODEL_IMAGE_SIZE = 224
JPEG_QUALITY = 95
CENTER_CROP_AREA = 0.9
DINOV2_MEAN = (0.485, 0.456, 0.406)
DINOV2_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
TOWER_NORMALIZATION = ((DINOV2_MEAN, DINOV2_STD), (SIGLIP_MEAN, SIGLIP_STD))

ImageLike = Union[np.ndarray, Any]  # numpy H x W x 3 uint8, or PIL.Image.Image


def check_rgb_uint8(image: Any, what: str = "image") -> np.ndarray:
    """Return ``image`` as an H x W x 3 uint8 array, or raise saying what was expected."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of shape H x W x 3 and dtype uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{what} must have shape H x W x 3 and dtype uint8 (RGB), got shape {image.shape} and dtype {image.dtype}"
        )
    return image


def rotate_180(image: np.ndarray) -> np.ndarray:
    """``image[::-1, ::-1]``: LIBERO renders upside down; this equals ``np.rot90(image, 2)``."""
    return np.ascontiguousarray(check_rgb_uint8(image)[::-1, ::-1])


def jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """The image encoded as JPEG at ``quality`` with 4:2:0 chroma (PIL's libjpeg)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(check_rgb_uint8(image), mode="RGB").save(buffer, format="JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def jpeg_roundtrip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode to JPEG at ``quality`` (4:2:0 chroma) and decode back to uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg_bytes(image, quality))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def resize_lanczos(image: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """Antialiased Lanczos-3 resize to ``size`` x ``size`` (PIL), uint8 in and out."""
    from PIL import Image

    resized = Image.fromarray(check_rgb_uint8(image), mode="RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8).copy()


def center_crop_box(area: float = CENTER_CROP_AREA) -> tuple[float, float, float, float]:
    """Normalized ``(y1, x1, y2, x2)`` of the centred square box covering ``area`` of the image."""
    side = float(np.float32(min(max(math.sqrt(area), 0.0), 1.0)))
    offset = (1.0 - side) / 2.0
    return (offset, offset, offset + side, offset + side)


def _sample_coords(start: float, end: float, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tf.image.crop_and_resize`` source coordinates: low index, high index, lerp weight."""
    scale = np.float32((end - start) * (in_size - 1) / (out_size - 1))
    coords = np.float32(start * (in_size - 1)) + np.arange(out_size, dtype=np.float32) * scale
    low = np.floor(coords).astype(np.int64)
    high = np.ceil(coords).astype(np.int64)
    return np.clip(low, 0, in_size - 1), np.clip(high, 0, in_size - 1), (coords - low).astype(np.float32)


def center_crop(image: np.ndarray, area: float = CENTER_CROP_AREA, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """Crop the centred ``area`` box and resize it to ``size`` x ``size`` bilinearly (uint8 in and out)."""
    pixels = check_rgb_uint8(image).astype(np.float32) * np.float32(1.0 / 255.0)
    y1, x1, y2, x2 = center_crop_box(area)
    top, bottom, y_lerp = _sample_coords(y1, y2, pixels.shape[0], size)
    left, right, x_lerp = _sample_coords(x1, x2, pixels.shape[1], size)
    x_w = x_lerp[None, :, None]
    upper = pixels[top][:, left] + (pixels[top][:, right] - pixels[top][:, left]) * x_w
    lower = pixels[bottom][:, left] + (pixels[bottom][:, right] - pixels[bottom][:, left]) * x_w
    cropped = np.clip(upper + (lower - upper) * y_lerp[:, None, None], 0.0, 1.0)
    return np.clip(np.trunc(cropped * np.float32(255.5)), 0, 255).astype(np.uint8)


def model_image(upright: np.ndarray, *, center_crop_enabled: bool = True) -> np.ndarray:
    """An upright H x W x 3 uint8 image -> the 224 x 224 x 3 uint8 model image (steps 2-4)."""
    image = resize_lanczos(jpeg_roundtrip(check_rgb_uint8(upright, "upright image")))
    return center_crop(image) if center_crop_enabled else image


def libero_image(agentview: np.ndarray, *, center_crop_enabled: bool = True) -> np.ndarray:
    """LIBERO ``agentview_image`` (H x W x 3 uint8, as rendered) -> the 224 x 224 x 3 uint8 model image."""
    return model_image(rotate_180(check_rgb_uint8(agentview, "agentview image")), center_crop_enabled=center_crop_enabled)


def _as_pil(image: ImageLike, index: int) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(check_rgb_uint8(image, f"image {index}"), mode="RGB")


def process_images(images: ImageLike | Sequence[ImageLike], size: int = MODEL_IMAGE_SIZE) -> "Any":
    """One image or a sequence of images -> float32 ``pixel_values`` [B, 6, size, size].

    Channels 0-2: DINOv2 input (ImageNet mean/std); channels 3-5: SigLIP input (mean = std = 0.5).
    """
    import torch
    import torchvision.transforms.functional as TVF
    from torchvision.transforms import InterpolationMode

    batch = [images] if not isinstance(images, (list, tuple)) else list(images)
    if not batch:
        raise ValueError("process_images needs at least one image")
    tensors = []
    for index, image in enumerate(batch):
        resized = TVF.resize(_as_pil(image, index), [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        tensors.append(TVF.to_tensor(TVF.center_crop(resized, [size, size])))
    return tower_inputs(torch.stack(tensors).to(torch.float32))


def tower_inputs(pixels: "Any") -> "Any":
    """[B, 3, H, W] RGB in [0, 1] -> [B, 6, H, W]: each tower's ``(x - mean) / std``, DINOv2 first.

    The processor's last step, shared with training (which crops and jitters on the GPU first)."""
    import torch

    towers = []
    for mean, std in TOWER_NORMALIZATION:
        mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        towers.append((pixels - mean_t) / std_t)
    return torch.cat(towers, dim=1)
