"""What goes into the model: images and instructions -> ``pixel_values`` and prompt ids.

The model's own input transform, openvla ``prismatic/extern/hf/processing_prismatic.py``; what
comes out of the model is :mod:`vla_spec.actions`. (For LIBERO, the evaluation's image path,
:mod:`vla_spec.images`, runs before this: rotation, JPEG, Lanczos 224, centre crop.)

* Images: numpy ``uint8`` H x W x 3 RGB (row 0 = top) or PIL RGB. Per tower
  ``resize((224, 224), bicubic, antialias=True)`` (resize-naive squash), ``center_crop(224)``,
  ``to_tensor`` (uint8 -> [0, 1]), ``normalize(mean, std)``: DINOv2 ImageNet mean/std, SigLIP
  0.5/0.5. The two results are stacked: float32 ``pixel_values`` [B, 6, 224, 224], channels 0-2
  DINOv2, 3-5 SigLIP. Done with torchvision on PIL images, as the reference (no deviation intended).
* Instructions: BOS + ``"In: What action should the robot take to {lower}?\\nOut:"`` + 29871, with
  the checkpoint's tokenizer (:func:`vla_spec.model.tokenizer.prompt_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


def process_images(images: ImageLike | Sequence[ImageLike], size: int = MODEL_IMAGE_SIZE) -> torch.Tensor:
    """One image or a sequence of images -> float32 ``pixel_values`` [B, 6, size, size].

    Channels 0-2: DINOv2 input (ImageNet mean/std); channels 3-5: SigLIP input (mean = std = 0.5).
    """
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
    """``pixel_values`` [B, 6, 224, 224] float32 and one prompt id list per sample (BOS ... 29871)."""

    pixel_values: torch.Tensor
    input_ids: list[list[int]]


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

    def __call__(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str]) -> ModelInputs:
        """One image per instruction (a single pair is a batch of 1; [B, H, W, 3] is a batch)."""
        image_list = _as_list(images, (np.ndarray,))
        instruction_list = _as_list(instructions, (str,))
        if len(image_list) != len(instruction_list):
            raise ValueError(f"{len(image_list)} images but {len(instruction_list)} instructions: give one per image")
        return ModelInputs(process_images(image_list, self.image_size), self.prompt_ids(instruction_list))
