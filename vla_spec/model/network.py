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
from typing import NamedTuple

import numpy as np
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


class PrefixLayout(NamedTuple):
    """A batch's prefix layout (host tensors): ``ids`` [T] int64, the prompts' ids in a row (padded with
    0); ``index`` [B, L] int64, each position's row in ``cat([embed(ids), patches [B * P, H], a zero
    row])``; ``attention_mask`` [B, L] int64 (left padding)."""

    ids: torch.Tensor
    index: torch.Tensor
    attention_mask: torch.Tensor


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA through pinned memory without blocking the host."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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

    def prefix_layout(
        self, input_ids: Sequence[Sequence[int]], length: int | None = None, token_rows: int | None = None
    ) -> PrefixLayout:
        """Where each prefix position comes from, worked out on the host (see :class:`PrefixLayout`).

        ``length``: the padded length (default: the longest row); ``token_rows``: the rows of the
        flat id vector (default: the number of ids; more rows are padded with id 0, unused), so
        that a captured graph sees the same shapes for every prompt of a length bucket."""
        if any(len(ids) == 0 for ids in input_ids):
            raise ValueError("every prompt needs at least its BOS id (see vla_spec.model.tokenizer.prompt_ids)")
        n_patches = self.vision_backbone.num_patches
        flat = [token for ids in input_ids for token in ids]
        rows = len(flat) if token_rows is None else token_rows
        lengths = [len(ids) + n_patches for ids in input_ids]
        length = max(lengths) if length is None else length
        if length < max(lengths) or rows < len(flat):
            raise ValueError(f"prefix length {length} / token rows {rows} too small for prompts of {max(lengths)} "
                             f"positions and {len(flat)} ids")
        index = np.full((len(input_ids), length), rows + len(input_ids) * n_patches, dtype=np.int64)  # zero row
        mask = np.zeros((len(input_ids), length), dtype=np.int64)
        offset = 0
        for row, ids in enumerate(input_ids):
            start = length - lengths[row]
            index[row, start] = offset  # BOS
            index[row, start + 1 : start + 1 + n_patches] = rows + row * n_patches + np.arange(n_patches)
            index[row, start + 1 + n_patches :] = offset + 1 + np.arange(len(ids) - 1)
            mask[row, start:] = 1
            offset += len(ids)
        ids = np.zeros(rows, dtype=np.int64)
        ids[: len(flat)] = flat
        return PrefixLayout(torch.from_numpy(ids), torch.from_numpy(index), torch.from_numpy(mask))

    def assemble_prefix(self, ids: torch.Tensor, index: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """inputs_embeds [B, L, H]: one gather from ``cat([embed(ids), patches, a zero row])`` (device tensors)."""
        tokens = self.language_model.get_input_embeddings()(ids)
        source = torch.cat([tokens, patches.reshape(-1, patches.shape[-1]), tokens.new_zeros(1, tokens.shape[-1])])
        return source[index]

    def embed_prefix(self, pixel_values: torch.Tensor, input_ids: Sequence[Sequence[int]]) -> Prefix:
        """Embed ``[BOS] + patches + ids[1:]`` per sample and left-pad the batch: the towers
        (:meth:`encode_images`), then :meth:`prefix_of_patches`."""
        return self.prefix_of_patches(self.encode_images(pixel_values), input_ids)

    def prefix_of_patches(self, patches: torch.Tensor, input_ids: Sequence[Sequence[int]]) -> Prefix:
        """The prefix of projected ``patches`` [B, 256, H] (the towers may still be running on the
        device) and one prompt per row: the layout (:meth:`prefix_layout`) is worked out on the host
        and copied to the device without waiting for the towers (pinned, non-blocking: a pageable
        copy queued behind them would make the host wait), then one gather (:meth:`assemble_prefix`)."""
        if len(input_ids) != patches.shape[0]:
            raise ValueError(f"{patches.shape[0]} images but {len(input_ids)} prompts: give one prompt per image")
        ids, index, mask = (_to_device(t, self.device) for t in self.prefix_layout(input_ids))
        return Prefix(inputs_embeds=self.assemble_prefix(ids, index, patches), attention_mask=mask)

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
