"""Greedy decoding of action tokens: the naive path, with transformers' dynamic KV cache.

The reference calls ``generate(..., do_sample=False, max_new_tokens=7)``: greedy argmax over all
32064 logits (unconstrained). This loop does the same step by step and also records the margin
(top-1 minus top-2 logit) at each step, which tells how close a token was to flipping: goldens
recorded on other hardware / dtypes may only differ at near-ties.

Inputs are LEFT-padded so that the last position of every row is its last real token; position ids
come from the mask (``cumsum - 1``, pads clamped to 0), so a padded row sees exactly the positions
it would see alone. :mod:`vla_spec.model.fast_decoding` provides a drop-in replacement with the
same signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class GreedyResult:
    """``token_ids`` [B, n] int64; ``margins`` [B, n] float32 (top-1 minus top-2 logit per step);
    ``top_logits`` [B, n] float32, the top-1 logit (its magnitude sets the dtype's resolution, see
    :mod:`vla_spec.model.agreement`), or None from a decoder that does not report it."""

    token_ids: torch.Tensor
    margins: torch.Tensor
    top_logits: torch.Tensor | None = None


class Decoder(Protocol):
    """What :class:`vla_spec.model.modeling.OpenVLA` calls to turn a prefix into tokens."""

    def __call__(
        self, language_model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int
    ) -> GreedyResult: ...


@cache
def cache_keyword() -> str:
    """The name ``LlamaForCausalLM.forward`` takes the KV cache by: ``cache`` since transformers 5.24
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] for a left-padded mask: ``cumsum - 1``, pad positions set to 0."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def greedy_step(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of logits [B, V]: argmax ids [B] (int64), top-1 minus top-2 logit [B] and the top-1 logit [B]
    (float32).

    On an exact tie the lowest id wins, as in the reference's ``generate`` (``torch.argmax``, which
    returns the first maximal index on every device): the id is a function of the row's logits
    alone, never of the kernel's order (``topk``'s index is unspecified among equal values)."""
    logits = logits.float()
    top = torch.topk(logits, k=2, dim=-1).values
    return logits.argmax(dim=-1), (top[:, 0] - top[:, 1]).to(torch.float32), top[:, 0]


def check_decoder_inputs(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int) -> None:
    """The arguments every decoder takes: ``inputs_embeds`` [B, L, H], ``attention_mask`` [B, L], n >= 1."""
    if inputs_embeds.ndim != 3 or attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(
            f"inputs_embeds must be [B, L, H] and attention_mask [B, L]; got {tuple(inputs_embeds.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")


@torch.inference_mode()
def greedy_decode(
    language_model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int
) -> GreedyResult:
    """Greedy-decode ``n_tokens`` ids after the prefix ``inputs_embeds`` [B, L, H] (left-padded).

    ``language_model`` is a ``transformers.LlamaForCausalLM``; ``attention_mask`` [B, L] has 1 for
    real positions and 0 for pads. Each step feeds the previous argmax token's embedding.
    """
    from transformers import DynamicCache

    check_decoder_inputs(inputs_embeds, attention_mask, n_tokens)
    embed = language_model.get_input_embeddings()
    mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.long)
    positions = positions_from_mask(mask)
    kv_cache = DynamicCache()
    step_embeds = inputs_embeds
    ids: list[torch.Tensor] = []
    margins: list[torch.Tensor] = []
    top_logits: list[torch.Tensor] = []
    for step in range(n_tokens):
        out = language_model(
            inputs_embeds=step_embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_keyword(): kv_cache},
        )
        token, margin, top = greedy_step(out.logits[:, -1, :])
        ids.append(token)
        margins.append(margin)
        top_logits.append(top)
        if step + 1 < n_tokens:
            step_embeds = embed(token[:, None])
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return GreedyResult(
        token_ids=torch.stack(ids, dim=1), margins=torch.stack(margins, dim=1), top_logits=torch.stack(top_logits, dim=1)
    )
