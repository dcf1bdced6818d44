"""The fused DINOv2 + SigLIP vision backbone, built from real timm towers.

As ``prismatic/extern/hf/modeling_prismatic.py`` (openvla c8f03f4, L85-123):

* each tower is ``timm.create_model(id, pretrained=False, num_classes=0, img_size=224)``;
* its features are the output of the *second-to-last* block,
  ``get_intermediate_layers(x, n={len(blocks) - 2})``, without the final norm and with the prefix
  tokens (DINOv2: class + 4 registers; SigLIP: none) dropped: 256 patch tokens at 224 px / patch 14
  (:func:`second_to_last_patches`: the same features without running the last block);
* ``pixel_values`` [B, 6, 224, 224] float: channels 0-2 go to DINOv2, 3-5 to SigLIP (each already
  normalized by its own mean/std, see :mod:`vla_spec.model.processor`);
* output [B, 256, D_dino + D_siglip] (1024 + 1152 = 2176 for the real towers), DINOv2 first.

LayerScale: timm stores ``ls1.gamma`` / ``ls2.gamma``; the released checkpoints store
``ls1.scale_factor`` / ``ls2.scale_factor`` (transformers' loader rewrites names containing "gamma").
:func:`rename_layerscale` swaps every timm ``LayerScale`` for :class:`ScaleFactorLayerScale`, as the
reference's ``ls_apply_patch`` does. SigLIP So400m has no LayerScale; its unused ``norm`` and
``attn_pool`` head are kept because the checkpoint holds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

N_TOWER_CHANNELS = 3


class ScaleFactorLayerScale(nn.Module):
    """timm ``LayerScale`` with its parameter named ``scale_factor`` (the checkpoint's name)."""

    def __init__(self, gamma: torch.Tensor, inplace: bool = False) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(gamma.detach().clone())
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale_factor) if self.inplace else x * self.scale_factor


def rename_layerscale(tower: nn.Module) -> nn.Module:
    """Replace every timm ``LayerScale`` in ``tower`` by :class:`ScaleFactorLayerScale` (in place).

    Matched by class name and its ``gamma`` parameter: timm versions define ``LayerScale`` in
    different modules (``timm.layers`` and ``timm.models.vision_transformer``)."""
    for name, module in list(tower.named_modules()):
        if type(module).__name__ == "LayerScale" and isinstance(getattr(module, "gamma", None), torch.Tensor):
            parent_name, _, child = name.rpartition(".")
            parent = tower.get_submodule(parent_name) if parent_name else tower
            setattr(parent, child, ScaleFactorLayerScale(module.gamma, getattr(module, "inplace", False)))
    return tower


def create_tower(timm_id: str, image_size: int, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """One timm ViT as the reference builds it; ``overrides`` (tiny checkpoints only) resize it.

    Built on the meta device (``from_pretrained`` then assigns every tensor from the checkpoint),
    timm's random initialization is skipped: it would be thrown away, and on meta tensors it runs
    through torch's Python reference kernels (about 0.2 s of CPU per tower)."""
    import timm

    options = dict(overrides or {})
    if torch.get_default_device().type == "meta":
        options.setdefault("weight_init", "skip")
    tower = timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=image_size, **options)
    rename_layerscale(tower)
    # As the reference (``unpack_tuple(partial(get_intermediate_layers, ...))``): calling the tower
    # returns the second-to-last-block patches, and forward hooks on it still fire.
    tower.forward = partial(second_to_last_patches, tower)
    return tower


def second_to_last_patches(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch features [B, N, D] after block ``len(blocks) - 2``, prefix tokens dropped, no final norm.

    The reference's ``get_intermediate_layers`` runs every block and drops the last one's output;
    here the blocks stop at the one taken (``stop_early``): the same features, one block less per
    tower (1/24 of DINOv2's blocks, 1/27 of SigLIP's)."""
    (features,) = tower.forward_intermediates(
        images, indices=[len(tower.blocks) - 2], norm=False, stop_early=True, output_fmt="NLC", intermediates_only=True
    )
    return features


class FusedVisionBackbone(nn.Module):
    """DINOv2 (``featurizer``) + SigLIP (``fused_featurizer``) -> [B, 256, D1 + D2]."""

    def __init__(self, timm_ids: tuple[str, ...], image_size: int, overrides: tuple[Mapping[str, Any], ...]) -> None:
        super().__init__()
        if len(timm_ids) != 2 or len(overrides) != 2:
            raise ValueError(f"the fused backbone needs two towers, got ids {timm_ids}")
        self.image_size = image_size
        self.featurizer = create_tower(timm_ids[0], image_size, overrides[0])
        self.fused_featurizer = create_tower(timm_ids[1], image_size, overrides[1])

    @property
    def embed_dim(self) -> int:
        """Feature width D1 + D2 (2176 for the real towers)."""
        return int(self.featurizer.embed_dim + self.fused_featurizer.embed_dim)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (256 at 224 px, patch 14)."""
        return int(self.featurizer.patch_embed.num_patches)

    def split(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 6, 224, 224] -> (DINOv2 input, SigLIP input), each [B, 3, 224, 224]; checks the shape."""
        expected = (2 * N_TOWER_CHANNELS, self.image_size, self.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(DINOv2 channels 0-2, SigLIP 3-5; see vla_spec.model.processor.process_images), got {tuple(pixel_values.shape)}"
            )
        dino, siglip = torch.split(pixel_values, [N_TOWER_CHANNELS, N_TOWER_CHANNELS], dim=1)
        return dino, siglip

    @staticmethod
    def join(dino_patches: torch.Tensor, siglip_patches: torch.Tensor) -> torch.Tensor:
        """The two towers' patches -> [B, 256, D1 + D2], DINOv2 first."""
        return torch.cat([dino_patches, siglip_patches], dim=2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dino, siglip = self.split(pixel_values)
        return self.join(self.featurizer(dino), self.fused_featurizer(siglip))
