"""Images: the LIBERO evaluation's observation path, camera frame -> 224 x 224 model image.

Conventions: images are numpy ``uint8`` arrays of shape H x W x 3 (RGB, row 0 = top of the image
as stored). The model's own processor (bicubic resize, per-tower normalization, ``pixel_values``)
runs after this path: :mod:`vla_spec.model.processor`. numpy and PIL only, no torch.

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
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

MODEL_IMAGE_SIZE = 224
JPEG_QUALITY = 95
CENTER_CROP_AREA = 0.9


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
