"""Native OpenVLA: fused vision backbone -> projector -> Llama, and ``predict_action``.

Submodule names match the released checkpoints: ``vision_backbone.featurizer`` (DINOv2),
``vision_backbone.fused_featurizer`` (SigLIP), ``projector.fc1/fc2/fc3``, ``language_model``
(a ``transformers.LlamaForCausalLM``: ``language_model.model.*``, ``language_model.lm_head``).

Input sequence per sample (``modeling_prismatic.py`` L380-390): ``[BOS] + 256 projected patches +
the remaining prompt ids`` (the prompt ends with 29871). Unlike the reference, batches are
supported: rows are LEFT-padded to a common length so each row's last position is its own last
token; a batch of N gives the tokens of N single calls (up to float near-ties).

The decoder is swappable: ``model.decoder`` (default :func:`greedy_decode`) or the ``decoder``
argument of :meth:`OpenVLA.predict_action`, with the signature of
:class:`vla_spec.model.decoding.Decoder`. :meth:`OpenVLA.prefix` returns the decoder's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_spec.images import ImageLike, process_images
from vla_spec.model.config import OpenVLAConfig
from vla_spec.model.decoding import Decoder, GreedyResult, greedy_decode, positions_from_mask
from vla_spec.model.projector import FusedMLPProjector
from vla_spec.model.tokenizer import prompt_ids
from vla_spec.model.vision import FusedVisionBackbone
from vla_spec.normalization import resolve_unnorm_key, unnormalize
from vla_spec.tokens import ActionTokenizer


@dataclass(frozen=True)
class Prefix:
    """Decoder input: ``inputs_embeds`` [B, L, H] left-padded, ``attention_mask`` [B, L] int64."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor


@dataclass(frozen=True, eq=False)
class ActionPrediction:
    """One action per sample. ``token_ids`` [B, 7] int64; ``normalized`` [B, 7] float64 bin centres
    in [-1, 1]; ``actions`` [B, 7] float64 in dataset units (gripper: raw bin centre, training
    convention 1 = open); ``margins`` [B, 7] float32 top-1 minus top-2 logit; ``unnorm_key``."""

    token_ids: np.ndarray
    normalized: np.ndarray
    actions: np.ndarray
    margins: np.ndarray
    unnorm_key: str


def _as_list(value: Any, kinds: tuple[type, ...]) -> list[Any]:
    """One item or a sequence of items -> list; a 4-D uint8 array [B, H, W, 3] is a batch."""
    if isinstance(value, np.ndarray) and value.ndim == 4:
        return list(value)
    return [value] if isinstance(value, kinds) or not isinstance(value, (list, tuple)) else list(value)


class OpenVLA(nn.Module):
    """OpenVLA-7B (or a tiny model of the same architecture) built from an :class:`OpenVLAConfig`."""

    def __init__(self, config: OpenVLAConfig, tokenizer: Any = None) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.tokenizer = tokenizer
        self.decoder: Decoder = greedy_decode
        self.vision_backbone = FusedVisionBackbone(config.timm_model_ids, config.image_size, config.timm_overrides)
        self.projector = FusedMLPProjector(self.vision_backbone.embed_dim, config.hidden_size)
        self.language_model = LlamaForCausalLM(config.llama_config())
        self.action_tokenizer = ActionTokenizer(vocab_size=config.text_vocab_size, n_bins=config.n_action_bins)

    @property
    def norm_stats(self) -> Any:
        return self.config.norm_stats

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 6, 224, 224] -> projected patch embeddings [B, 256, H] in the model dtype."""
        features = self.vision_backbone(pixel_values.to(device=self.device, dtype=self.dtype))
        return self.projector(features)

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

    def prompt_ids(self, instructions: Sequence[str]) -> list[list[int]]:
        """Token ids (BOS ... 29871) for each instruction, with the checkpoint's tokenizer."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it with vla_spec.model.from_pretrained(path)")
        return [prompt_ids(self.tokenizer, instruction) for instruction in instructions]

    @torch.inference_mode()
    def prefix(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str]) -> Prefix:
        """The decoder input for a batch (one image per instruction; a single pair is a batch of 1)."""
        image_list = _as_list(images, (np.ndarray,))
        instruction_list = _as_list(instructions, (str,))
        if len(image_list) != len(instruction_list):
            raise ValueError(f"{len(image_list)} images but {len(instruction_list)} instructions: give one per image")
        pixel_values = process_images(image_list, self.config.image_size)
        return self.embed_prefix(pixel_values, self.prompt_ids(instruction_list))

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

    def predict_action(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: str | Sequence[str],
        unnorm_key: str | None = None,
        *,
        decoder: Decoder | None = None,
    ) -> ActionPrediction:
        """Images (H x W x 3 uint8 RGB, upright as the model was trained) + instructions -> actions.

        ``images``: one image (numpy H x W x 3 uint8 or PIL), a list of them, or a [B, H, W, 3]
        array; ``instructions``: one string or one per image. For LIBERO observations apply
        :func:`vla_spec.images.libero_image` first (rotation, JPEG, resize, crop).

        ``unnorm_key`` selects the statistics (resolved as the reference ``_check_unnorm_key``);
        ``decoder`` overrides ``self.decoder`` for this call.
        """
        key = resolve_unnorm_key(self.norm_stats, unnorm_key)
        stats = self.norm_stats[key]
        prefix = self.prefix(images, instructions)
        result: GreedyResult = (decoder or self.decoder)(
            self.language_model, prefix.inputs_embeds, prefix.attention_mask, stats.action_dim
        )
        token_ids = result.token_ids.detach().cpu().numpy().astype(np.int64)
        normalized = self.action_tokenizer.decode(token_ids)
        return ActionPrediction(
            token_ids=token_ids,
            normalized=normalized,
            actions=unnormalize(normalized, stats),
            margins=result.margins.detach().cpu().float().numpy(),
            unnorm_key=key,
        )
