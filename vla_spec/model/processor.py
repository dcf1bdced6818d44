"""What goes into the model: images and instructions -> ``pixel_values`` and prompt ids.

The model's own input transform, openvla ``prismatic/extern/hf/processing_prismatic.py``; what
comes out of the model is :mod:`vla_spec.actions`. (For LIBERO, the evaluation's image path,
:mod:`vla_spec.images`, runs before this: rotation, JPEG, Lanczos 224, centre crop.)

* Images: numpy ``uint8`` H x W x 3 RGB (row 0 = top) or PIL RGB. Per tower
  ``resize((224, 224), bicubic, antialias=True)`` (resize-naive squash), ``center_crop(224)``,
  ``to_tensor`` (uint8 -> [0, 1]), ``normalize(mean, std)``: DINOv2 ImageNet mean/std, SigLIP
  0.5/0.5. The two results are stacked: float32 ``pixel_values`` [B, 6, 224, 224], channels 0-2
  DINOv2, 3-5 SigLIP. Done with torchvision on PIL images, as the reference (no deviation intended).
  In two steps: :func:`resize_images` (uint8 in, uint8 out: PIL on the CPU, skipped for images that
  are already 224 x 224, where PIL's resize and crop are the identity), then
  :func:`pixel_values_from_uint8`, which does ``to_tensor`` and both normalizations as one lookup in
  a 256-entry table per channel, built on the CPU with the reference's float32 arithmetic: the same
  values wherever it runs, so the model can take uint8 pixels to its GPU and expand them there
  (:meth:`ModelInputs.pixel_values_on`), in its own dtype, with no float32 copy on the host.
* Instructions: BOS + ``"In: What action should the robot take to {lower}?\\nOut:"`` + 29871, with
  the checkpoint's tokenizer (:func:`vla_spec.model.tokenizer.prompt_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Union

import numpy as np
import torch

from vla_spec.images import MODEL_IMAGE_SIZE, check_rgb_uint8
from vla_spec.model.tokenizer import prompt_ids

DINOV2_MEAN = (0.485, 0.456, 0.406)
DINOV2_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
TOWER_NORMALIZATION = ((DINOV2_MEAN, DINOV2_STD), (SIGLIP_MEAN, SIGLIP_STD))

ImageLike = Union[np.ndarray, Any]  # numpy H x W x 3 uint8, or PIL.Image.Image


def _as_pil(image: ImageLike, index: int) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(check_rgb_uint8(image, f"image {index}"), mode="RGB")


def resize_images(
    images: ImageLike | Sequence[ImageLike], size: int = MODEL_IMAGE_SIZE, pin_memory: bool = False
) -> torch.Tensor:
    """One image or a sequence of images -> uint8 [B, size, size, 3]: bicubic antialiased resize and
    centre crop on PIL images, as the reference; an H x W x 3 uint8 array already ``size`` x ``size``
    is taken as it is (PIL's resize and crop to its own size are the identity).

    ``pin_memory`` (needs CUDA): the batch is stacked straight into page-locked memory (torch's
    caching host allocator: reused, no page faults), so that a ``non_blocking`` copy to the GPU is
    a DMA queued behind the host's next launches instead of a copy staged on the host first
    (4.8 MB at batch 32)."""
    import torchvision.transforms.functional as TVF
    from torchvision.transforms import InterpolationMode

    batch = [images] if not isinstance(images, (list, tuple)) else list(images)
    if not batch:
        raise ValueError("process_images needs at least one image")
    arrays = []
    for index, image in enumerate(batch):
        if isinstance(image, np.ndarray) and image.shape[:2] == (size, size):
            arrays.append(check_rgb_uint8(image, f"image {index}"))
            continue
        resized = TVF.resize(_as_pil(image, index), [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        arrays.append(np.asarray(TVF.center_crop(resized, [size, size]), dtype=np.uint8))
    if not pin_memory:
        return torch.from_numpy(np.stack(arrays))
    pinned = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(arrays, out=pinned.numpy())
    return pinned


@cache
def _lookup_table() -> torch.Tensor:
    """[2, 3 * 256] float32: each tower's normalized value of every uint8 level, per RGB channel
    (``to_tensor``'s ``x / 255`` then ``(x - mean) / std``, float32 on the CPU)."""
    levels = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
    table = tower_inputs(levels.view(1, 1, 1, 256).expand(1, 3, 1, 256))  # [1, 6, 1, 256]
    return table.reshape(2, 3 * 256)


@cache
def _table_on(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The lookup table in ``dtype`` and the per-channel offsets into it, kept on ``device``."""
    return _lookup_table().to(device=device, dtype=dtype), (torch.arange(3) * 256).view(1, 3, 1, 1).to(device)


def pixel_values_from_uint8(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, H, W, 3] RGB -> ``pixel_values`` [B, 6, H, W] in ``dtype``, on ``pixels``' device:
    ``to_tensor`` and both towers' normalizations, by table lookup (exactly the CPU float32 values,
    rounded once to ``dtype``)."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be uint8 [B, H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}")
    table, offsets = _table_on(pixels.device, dtype)
    index = pixels.permute(0, 3, 1, 2).long() + offsets  # [B, 3, H, W]
    values = table[:, index]  # [2, B, 3, H, W]
    return values.transpose(0, 1).reshape(pixels.shape[0], 6, *pixels.shape[1:3])


def process_images(images: ImageLike | Sequence[ImageLike], size: int = MODEL_IMAGE_SIZE) -> torch.Tensor:
    """One image or a sequence of images -> float32 ``pixel_values`` [B, 6, size, size] on the CPU.

    Channels 0-2: DINOv2 input (ImageNet mean/std); channels 3-5: SigLIP input (mean = std = 0.5).
    """
    return pixel_values_from_uint8(resize_images(images, size))


def tower_inputs(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B, 6, H, W]: each tower's ``(x - mean) / std``, DINOv2 first.

    The processor's last step, shared with training (which crops and jitters on the GPU first)."""
    towers = []
    for mean, std in TOWER_NORMALIZATION:
        mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        towers.append((pixels - mean_t) / std_t)
    return torch.cat(towers, dim=1)


def _as_list(value: Any, kinds: tuple[type, ...]) -> list[Any]:
    """One item or a sequence of items -> list; a 4-D uint8 array [B, H, W, 3] is a batch."""
    if isinstance(value, np.ndarray) and value.ndim == 4:
        return list(value)
    return [value] if isinstance(value, kinds) or not isinstance(value, (list, tuple)) else list(value)


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """The resized images, uint8 [B, 224, 224, 3] on the CPU, and one prompt id list per sample
    (BOS ... 29871). ``pixel_values`` is the reference's float32 [B, 6, 224, 224] on the CPU;
    :meth:`pixel_values_on` the same values made on another device, in another dtype."""

    pixels: torch.Tensor
    input_ids: list[list[int]]

    @property
    def pixel_values(self) -> torch.Tensor:
        return pixel_values_from_uint8(self.pixels)

    def pixel_values_on(self, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """``pixel_values`` in ``dtype``, expanded on ``device`` (:func:`pixel_values_on`)."""
        return pixel_values_on(self.pixels, device, dtype)


def pixel_values_on(pixels: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B, H, W, 3] host pixels -> ``pixel_values`` [B, 6, H, W] in ``dtype``, expanded on
    ``device`` (1 byte per pixel channel crosses to the device instead of 6 float32 values)."""
    return pixel_values_from_uint8(pixels.to(device, non_blocking=True), dtype)


@dataclass(frozen=True, eq=False)
class OpenVLAProcessor:
    """A checkpoint's input transform: its text tokenizer and its image size (224 px, square)."""

    tokenizer: Any
    image_size: int = MODEL_IMAGE_SIZE

    def prompt_ids(self, instructions: Sequence[str]) -> list[list[int]]:
        """Token ids (BOS ... 29871) for each instruction."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it with vla_spec.model.from_pretrained(path)")
        return [prompt_ids(self.tokenizer, instruction) for instruction in instructions]

    def pairs(
        self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str]
    ) -> tuple[list[ImageLike], list[str]]:
        """One image per instruction, as two lists (a single pair is a batch of 1; [B, H, W, 3] is a batch)."""
        image_list = _as_list(images, (np.ndarray,))
        instruction_list = _as_list(instructions, (str,))
        if len(image_list) != len(instruction_list):
            raise ValueError(f"{len(image_list)} images but {len(instruction_list)} instructions: give one per image")
        return image_list, instruction_list

    def resize(self, images: Sequence[ImageLike], pin_memory: bool = False) -> torch.Tensor:
        """The images at this processor's size, uint8 [B, size, size, 3] (:func:`resize_images`)."""
        return resize_images(list(images), self.image_size, pin_memory)

    def __call__(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str]) -> ModelInputs:
        """Both inputs at once (:meth:`pairs`, :meth:`resize`, :meth:`prompt_ids`)."""
        image_list, instruction_list = self.pairs(images, instructions)
        return ModelInputs(self.resize(image_list), self.prompt_ids(instruction_list))
