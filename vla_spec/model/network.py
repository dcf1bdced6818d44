"""The OpenVLA network: fused vision backbone -> projector -> Llama, over the checkpoint's weights.

Submodule names match the released checkpoints: ``vision_backbone.featurizer`` (DINOv2),
``vision_backbone.fused_featurizer`` (SigLIP), ``projector.fc1/fc2/fc3``, ``language_model``
(a ``transformers.LlamaForCausalLM``: ``language_model.model.*``, ``language_model.lm_head``).

Input sequence per sample (``modeling_prismatic.py`` L380-390): ``[BOS] + 256 projected patches +
the remaining prompt ids`` (the prompt ends with 29871). Unlike the reference, batches are
supported: rows are LEFT-padded to a common length so each row's last position is its own last
token. Inputs come from :mod:`vla_spec.model.processor`; :mod:`vla_spec.model.modeling` puts the
processor, this network, a decoder and the action processor together.

``vision_runner``: None runs the towers and the projector eagerly; a callable ``pixel_values ->
patches`` (e.g. :class:`vla_spec.model.fast_vision.GraphedVision`) replaces them, explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vla_spec.model.config import OpenVLAConfig
from vla_spec.model.decoding import positions_from_mask
from vla_spec.model.projector import FusedMLPProjector
from vla_spec.model.vision import FusedVisionBackbone


@dataclass(frozen=True)
class Prefix:
    """Decoder input: ``inputs_embeds`` [B, L, H] left-padded, ``attention_mask`` [B, L] int64."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor


class OpenVLANetwork(nn.Module):
    """OpenVLA-7B's modules (or a tiny model of the same architecture) built from an :class:`OpenVLAConfig`."""

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.vision_runner: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.vision_backbone = FusedVisionBackbone(config.timm_model_ids, config.image_size, config.timm_overrides)
        self.projector = FusedMLPProjector(self.vision_backbone.embed_dim, config.hidden_size)
        self.language_model = LlamaForCausalLM(config.llama_config())

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    def encode_images_eager(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 6, 224, 224] -> projected patch embeddings [B, 256, H] in the model dtype (towers + projector)."""
        features = self.vision_backbone(pixel_values.to(device=self.device, dtype=self.dtype))
        return self.projector(features)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_images_eager`, or ``vision_runner`` when one is set."""
        if self.vision_runner is not None:
            return self.vision_runner(pixel_values)
        return self.encode_images_eager(pixel_values)

    def embed_prefix(self, pixel_values: torch.Tensor, input_ids: Sequence[Sequence[int]]) -> Prefix:
        """Embed ``[BOS] + patches + ids[1:]`` per sample and left-pad the batch."""
        if len(input_ids) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {len(input_ids)} prompts: give one prompt per image")
        patches = self.encode_images(pixel_values)
        embed = self.language_model.get_input_embeddings()
        rows = []
        for row_patches, ids in zip(patches, input_ids):
            tokens = embed(torch.as_tensor(list(ids), dtype=torch.long, device=self.device))
            rows.append(torch.cat([tokens[:1], row_patches, tokens[1:]], dim=0))
        length = max(row.shape[0] for row in rows)
        hidden = rows[0].shape[1]
        inputs_embeds = rows[0].new_zeros(len(rows), length, hidden)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for index, row in enumerate(rows):
            inputs_embeds[index, length - row.shape[0] :] = row
            attention_mask[index, length - row.shape[0] :] = 1
        return Prefix(inputs_embeds=inputs_embeds, attention_mask=attention_mask)

    @torch.inference_mode()
    def next_token_logits(self, prefix: Prefix) -> torch.Tensor:
        """Logits [B, V] (float32) of the first generated position: what liveness checks compare."""
        out = self.language_model(
            inputs_embeds=prefix.inputs_embeds,
            attention_mask=prefix.attention_mask,
            position_ids=positions_from_mask(prefix.attention_mask),
            use_cache=False,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()
