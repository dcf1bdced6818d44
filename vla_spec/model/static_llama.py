"""Transformers' Llama forward, written over the same weight tensors, for a static KV cache.

The layer math is transformers' Llama (RMSNorm in float32, rotary from the model's own
``rotary_emb``, SiLU-gated MLP, final norm and lm_head modules); the attention core is
``scaled_dot_product_attention`` with an explicit additive mask, and K/V are written in place into
caller-owned buffers. Nothing depends on transformers' cache or mask classes, which change between
releases. Only the last position goes through lm_head.

Options, per :class:`StaticLlama`:

* ``compiled``: RMSNorm + q/k/v + rotary, and o_proj + residual + RMSNorm + SiLU-gated MLP +
  residual, each one ``torch.compile``-d function taking the weights as tensors (one compiled
  graph serves all layers); matrix products stay cuBLAS calls, attention stays SDPA.
* ``fuse``: q/k/v and gate/up weights concatenated into one matrix each (one GEMM instead of three
  / two); a second copy of those weights (about 9 GB for a 7B Llama), snapshotted at build time.
* ``use_gemv``: single-row products go through :func:`vla_spec.model.triton_gemv.gemv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vla_spec.model.triton_gemv import gemv


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """As transformers' ``apply_rotary_pos_emb`` (x [B, heads, q, d]; cos/sin [B, q, d])."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)



def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, use_gemv: bool) -> torch.Tensor:
    """``F.linear``, or the Triton GEMV when ``use_gemv`` and x holds a single row."""
    if use_gemv and x.numel() == x.shape[-1] and weight.is_contiguous():
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``LlamaRMSNorm``: normalize in float32, cast back, scale by the weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _attention_inputs(
    h: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    qkv_weights: list[torch.Tensor],
    qkv_biases: list[torch.Tensor | None],
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int,
    use_gemv: bool = False,
) -> torch.Tensor:
    """input_layernorm -> q/k/v projections -> rotary; returns q [B, heads, q, d] and writes the rotated
    k and v [B, kv_heads, q, d] into the caches at cache positions ``slots`` [q] (in place, so that a
    compiled version stores them straight into the cache instead of copying afterwards)."""
    batch, q_len, _ = h.shape
    x = _rms_norm(h, norm_weight, eps)
    if len(qkv_weights) == 1:  # fused [q; k; v] matrix
        q, k, v = _linear(x, qkv_weights[0], qkv_biases[0], use_gemv).split(
            [n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1
        )
    else:
        q, k, v = (_linear(x, w, b, use_gemv) for w, b in zip(qkv_weights, qkv_biases))
    q = q.view(batch, q_len, n_heads, head_dim).transpose(1, 2)
    k = k.view(batch, q_len, n_kv, head_dim).transpose(1, 2)
    v = v.view(batch, q_len, n_kv, head_dim).transpose(1, 2)
    k_cache.index_copy_(2, slots, _apply_rope(k, cos, sin))
    v_cache.index_copy_(2, slots, v)
    return _apply_rope(q, cos, sin)


def _attention_output_and_mlp(
    h: torch.Tensor,
    attn: torch.Tensor,
    o_weight: torch.Tensor,
    o_bias: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weights: list[torch.Tensor],
    gate_up_biases: list[torch.Tensor | None],
    down_weight: torch.Tensor,
    down_bias: torch.Tensor | None,
    use_gemv: bool = False,
) -> torch.Tensor:
    """o_proj + residual, post_attention_layernorm, SiLU-gated MLP + residual (attn [B, q, H])."""
    h = h + _linear(attn, o_weight, o_bias, use_gemv)
    x = _rms_norm(h, norm_weight, eps)
    if len(gate_up_weights) == 1:  # fused [gate; up] matrix
        gate, up = _linear(x, gate_up_weights[0], gate_up_biases[0], use_gemv).chunk(2, dim=-1)
    else:
        gate, up = (_linear(x, w, b, use_gemv) for w, b in zip(gate_up_weights, gate_up_biases))
    return h + _linear(F.silu(gate) * up, down_weight, down_bias, use_gemv)


def _raise_recompile_limit(at_least: int = 64) -> None:
    """One compiled graph per (dtype, fused or not, GEMV or not, prefill or decode, static or dynamic
    batch): more than dynamo's default 8 entries per function, after which it silently runs eager."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < at_least:
        setattr(config, name, at_least)


@dataclass
class _LayerWeights:
    """One decoder layer's tensors (fused q/k/v and gate/up copies when ``fuse``)."""

    norm1: torch.Tensor
    eps1: float
    qkv: list[torch.Tensor]
    qkv_bias: list[torch.Tensor | None]
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm2: torch.Tensor
    eps2: float
    gate_up: list[torch.Tensor]
    gate_up_bias: list[torch.Tensor | None]
    down: torch.Tensor
    down_bias: torch.Tensor | None


def _fused(linears: list[Any]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return [weight], [None]
    return [weight], [torch.cat([b if b is not None else lin.weight.new_zeros(lin.out_features)
                                 for b, lin in zip(biases, linears)])]


class StaticLlama:
    """The tensors of a ``LlamaForCausalLM`` the static-cache forward needs, checked once.

    ``compiled``: the two per-layer pieces around attention go through ``torch.compile`` (fusing
    RMSNorm, rotary, SiLU-gating and residual adds into a few kernels; the matrix products stay
    cuBLAS calls). Only the attention core (cache write + SDPA) runs outside them.
    """

    def __init__(self, language_model: Any, fuse: bool, compiled: bool, use_gemv: bool = False) -> None:
        config = language_model.config
        model = language_model.model
        if getattr(config, "model_type", "llama") != "llama" or getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(
                "FastGreedyDecoder supports Llama language models with SiLU MLPs, got model_type "
                f"{getattr(config, 'model_type', None)!r}, hidden_act {getattr(config, 'hidden_act', None)!r}"
            )
        self.lm = language_model
        self.n_layers = len(model.layers)
        self.norm = model.norm
        self.rotary = model.rotary_emb
        self.embed = language_model.get_input_embeddings()
        self.lm_head = language_model.lm_head
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.n_heads)
        self.hidden = int(config.hidden_size)
        self.use_gemv = use_gemv
        self.weights = [self._layer_weights(layer, fuse) for layer in model.layers]
        if compiled:
            _raise_recompile_limit()
            self.attention_inputs = torch.compile(_attention_inputs)
            self.attention_output_and_mlp = torch.compile(_attention_output_and_mlp)
        else:
            self.attention_inputs = _attention_inputs
            self.attention_output_and_mlp = _attention_output_and_mlp

    @staticmethod
    def _layer_weights(layer: Any, fuse: bool) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        if fuse:
            qkv, qkv_bias = _fused([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up, gate_up_bias = _fused([mlp.gate_proj, mlp.up_proj])
        else:
            qkv = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
            qkv_bias = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            gate_up, gate_up_bias = [mlp.gate_proj.weight, mlp.up_proj.weight], [mlp.gate_proj.bias, mlp.up_proj.bias]
        return _LayerWeights(
            norm1=layer.input_layernorm.weight,
            eps1=float(layer.input_layernorm.variance_epsilon),
            qkv=qkv,
            qkv_bias=qkv_bias,
            o=attn.o_proj.weight,
            o_bias=attn.o_proj.bias,
            norm2=layer.post_attention_layernorm.weight,
            eps2=float(layer.post_attention_layernorm.variance_epsilon),
            gate_up=gate_up,
            gate_up_bias=gate_up_bias,
            down=mlp.down_proj.weight,
            down_bias=mlp.down_proj.bias,
        )

    def layer(
        self,
        index: int,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """One decoder layer on h [B, q, H]; writes K/V to the caches at positions ``slots`` [q]
        (consecutive, ``start .. start + q - 1``) and attends to cache[:, :, :start + q] under
        ``mask`` [B, 1, q, start + q] (additive: 0 = attend, -inf = masked).

        ``last_only``: after the K/V writes, only the last query position goes on (attention, o_proj,
        MLP): what the last layer of a prefill needs, since only its last position reaches lm_head.
        Returns [B, q, H], or [B, 1, H] with ``last_only``."""
        w = self.weights[index]
        batch, q_len, _ = h.shape
        gemv_rows = self.use_gemv and batch * q_len == 1
        q = self.attention_inputs(
            h, w.norm1, w.eps1, w.qkv, w.qkv_bias, cos, sin, k_cache, v_cache, slots,
            self.n_heads, self.n_kv, self.head_dim, gemv_rows,
        )
        stop = mask.shape[-1]
        keys, values = k_cache[:, :, :stop], v_cache[:, :, :stop]
        if last_only:
            q, h, mask, q_len = q[:, :, -1:], h[:, -1:], mask[:, :, -1:], 1
            gemv_rows = self.use_gemv and batch == 1
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, q_len, self.n_heads * self.head_dim)
        return self.attention_output_and_mlp(
            h, out, w.o, w.o_bias, w.norm2, w.eps2, w.gate_up, w.gate_up_bias, w.down, w.down_bias, gemv_rows,
        )

    def logits_last(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h[:, -1:, :]))[:, -1, :]

