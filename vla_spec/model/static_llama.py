"""Transformers' Llama forward, written over the same weight tensors, for a static KV cache.

The layer math is transformers' Llama (RMSNorm in float32, rotary from the model's own
``rotary_emb``, SiLU-gated MLP, final norm and lm_head modules); the attention core is
``scaled_dot_product_attention``, causal for a prefill of right-aligned rows and under an explicit
additive mask otherwise, and K/V are written in place into caller-owned buffers. Nothing depends on
transformers' cache or mask classes, which change between releases. Only each row's last position
goes through lm_head.

Options, per :class:`StaticLlama`:

* ``compiled``: RMSNorm + q/k/v + rotary, and RMSNorm + gate/up + SiLU gate, each one
  ``torch.compile``-d function taking the weights as tensors (one compiled graph serves all
  layers; :class:`BucketCompiled`: static in the model's dimensions, dynamic in the bucket's);
  matrix products stay cuBLAS calls, attention stays SDPA. Compiled or not, o_proj and
  down_proj add into the residual stream in place (:func:`add_product_`: GEMMs with h as C, no add
  kernels), except in float8 (``fp8``).
* ``fuse``: q/k/v and gate/up weights concatenated into one matrix each (one GEMM instead of three
  / two); a second copy of those weights (about 9 GB for a 7B Llama), snapshotted at build time.
* ``use_gemv``: a single-row layer (a batch-1 decode step, the prefill's last position at batch 1)
  is four Triton GEMVs (:mod:`vla_spec.model.triton_gemv`) with the norms, the SiLU gate and the
  residual adds folded in: ``rms_norm_gemv`` (q/k/v), ``gemv_add`` (o), ``rms_norm_swiglu_gemv``
  (gate/up), ``gemv_add`` (down); and the final norm + lm_head is one ``rms_norm_gemv``.
* ``fp8`` (off by default; it changes the numerics): the prefill's q/k/v, o, gate/up and down
  products in float8 e4m3 (:func:`fp8_linear`), with per-output-row weight scales (a float8 copy of
  those weights, about 6.5 GB for a 7B Llama) and per-token activation scales computed on the fly;
  the decode steps (one row per sequence, weight-bandwidth bound) stay in the model dtype.
* ``attention_backend``: the SDPA kernel (:func:`sdpa_backend`; default torch's choice);
  ``step_attention_backend``: the decode steps' (single query row) kernel, if another: an SDPA
  backend, ``"sdpa"`` (torch's choice) or ``"triton"``
  (:func:`vla_spec.model.triton_attention.decode_attention`, CUDA only).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, NamedTuple

import torch
import torch.nn.functional as F

from vla_spec.model.triton_attention import decode_attention
from vla_spec.model.triton_gemv import gemv_add, rms_norm_gemv, rms_norm_swiglu_gemv


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """As transformers' ``apply_rotary_pos_emb`` (x [B, heads, q, d]; cos/sin [B, q, d])."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)



FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def fp8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [R, K] -> (float8 e4m3 values [R, K], float32 scales [R, 1]) with t ~= values * scales:
    each row scaled so that its largest magnitude maps to 448 (an all-zero row gets scale 1)."""
    amax = t.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Weight(NamedTuple):
    """A weight [N, K] in float8 for ``torch._scaled_mm``: ``t`` [K, N] (column-major, the transpose
    of the row-major float8 copy) and ``scale`` [1, N] float32, one per output row. (Named tuples,
    not dataclasses, so that ``torch.compile`` guards on their tensors, not on each object.)"""

    t: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> "Fp8Weight":
        n, k = weight.shape
        if n % 16 or k % 16:
            raise ValueError(f"fp8 needs weight dimensions that are multiples of 16 (torch._scaled_mm), got {n} x {k}; "
                             "build the decoder with fp8=False for this model")
        values, scale = fp8_rows(weight)
        return cls(values.t(), scale.t().contiguous())


@torch.library.custom_op("vla_spec::fp8_mm", mutates_args=())
def fp8_mm(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """``torch._scaled_mm`` with row-wise scales, as one opaque op: ``torch.compile`` fuses the
    quantization around it and leaves the product to the eager (cuBLAS) kernel."""
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)


@fp8_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[1], dtype=out_dtype)


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` in float8 e4m3: x quantized per row (token), W per output row, products
    accumulated in float32 by ``torch._scaled_mm``, the result in x's dtype."""
    rows, scale = fp8_rows(x.reshape(-1, x.shape[-1]))
    out = fp8_mm(rows, weight.t, scale, weight.scale, x.dtype)
    out = out.reshape(*x.shape[:-1], out.shape[-1])
    return out if bias is None else out + bias


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fp8: Fp8Weight | None = None) -> torch.Tensor:
    """``F.linear``, or :func:`fp8_linear` when given the weight's float8 copy ``fp8``."""
    if fp8 is not None:
        return fp8_linear(x, fp8, bias)
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
    qkv_fp8: list[Fp8Weight] | None = None,
) -> torch.Tensor:
    """input_layernorm -> q/k/v projections -> rotary; returns q [B, heads, q, d] and writes the rotated
    k and v [B, kv_heads, q, d] into the caches at cache positions ``slots`` [q] (in place, so that a
    compiled version stores them straight into the cache instead of copying afterwards)."""
    batch, q_len, _ = h.shape
    if use_gemv:  # one row (never float8, which is the prefill's): the norm is each GEMV's prologue
        outputs = [rms_norm_gemv(h, norm_weight, eps, w, b) for w, b in zip(qkv_weights, qkv_biases)]
    else:
        x = _rms_norm(h, norm_weight, eps)
        fp8 = qkv_fp8 or [None] * len(qkv_weights)
        outputs = [_linear(x, w, b, f) for w, b, f in zip(qkv_weights, qkv_biases, fp8)]
    if len(outputs) == 1:  # fused [q; k; v] matrix
        q, k, v = outputs[0].split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    else:
        q, k, v = outputs
    q = q.view(batch, q_len, n_heads, head_dim).transpose(1, 2)
    k = k.view(batch, q_len, n_kv, head_dim).transpose(1, 2)
    v = v.view(batch, q_len, n_kv, head_dim).transpose(1, 2)
    k_cache.index_copy_(2, slots, _apply_rope(k, cos, sin))
    v_cache.index_copy_(2, slots, v)
    return _apply_rope(q, cos, sin)


def _gated_mlp_input(
    h: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weights: list[torch.Tensor],
    gate_up_biases: list[torch.Tensor | None],
    gate_up_fp8: list[Fp8Weight] | None = None,
) -> torch.Tensor:
    """post_attention_layernorm -> gate/up projections -> ``silu(gate) * up``, the down projection's
    input [B, q, intermediate]; ``gate_up_fp8``: their float8 copies (:func:`fp8_linear`)."""
    x = _rms_norm(h, norm_weight, eps)
    fp8 = gate_up_fp8 or [None] * len(gate_up_weights)
    if len(gate_up_weights) == 1:  # fused [gate; up] matrix
        gate, up = _linear(x, gate_up_weights[0], gate_up_biases[0], fp8[0]).chunk(2, dim=-1)
    else:
        gate, up = (_linear(x, w, b, f) for w, b, f in zip(gate_up_weights, gate_up_biases, fp8))
    return F.silu(gate) * up


def add_product_(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``h += F.linear(x, weight, bias)`` in place on the residual stream h [B, q, H] (contiguous).

    One cuBLAS GEMM that takes h as its C operand (beta = 1): no add kernel reads the product and h
    and writes h again, and the float32 sum of the product and h is rounded once (eager
    ``h + F.linear(x, W)`` rounds the product to the dtype first); a bias is added after."""
    rows = h.view(-1, h.shape[-1])
    rows.addmm_(x.reshape(-1, x.shape[-1]), weight.t())
    if bias is not None:
        rows.add_(bias)
    return h


def _add_fp8_product(h: torch.Tensor, x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """``h + fp8_linear(x, weight, bias)``: the float8 prefill's o_proj and down_proj (compiled, the
    quantization of x fuses with its neighbours)."""
    return h + fp8_linear(x, weight, bias)


def _attention_output_and_mlp_gemv(h: torch.Tensor, attn: torch.Tensor, w: _LayerWeights) -> torch.Tensor:
    """o_proj + residual, post_attention_layernorm, SiLU-gated MLP + residual for one row (h and
    attn [1, 1, H]) with layer weights ``w``: three GEMVs with the adds, the norm and the SiLU gate
    folded in."""
    if len(w.gate_up) == 1:  # fused [gate; up] matrix: its two halves (contiguous views)
        gate_weight, up_weight = w.gate_up[0].chunk(2)
        gate_bias, up_bias = w.gate_up_bias[0].chunk(2) if w.gate_up_bias[0] is not None else (None, None)
    else:
        (gate_weight, up_weight), (gate_bias, up_bias) = w.gate_up, w.gate_up_bias
    h = gemv_add(attn, w.o, w.o_bias, h)
    gated = rms_norm_swiglu_gemv(h, w.norm2, w.eps2, gate_weight, gate_bias, up_weight, up_bias)
    return gemv_add(gated, w.down, w.down_bias, h)


SDPA_BACKENDS = ("cudnn", "efficient", "flash", "math")
STEP_ATTENTION_BACKENDS = ("triton", "sdpa", *SDPA_BACKENDS)
"""The decode steps' kernels: ours (:mod:`vla_spec.model.triton_attention`), SDPA with torch's
choice of kernel (``"sdpa"``), or one SDPA backend."""


def sdpa_backend(name: str | None) -> Callable[[], ContextManager[None]]:
    """A context for the SDPA calls: ``None`` lets torch pick the kernel; a name in
    :data:`SDPA_BACKENDS` allows that backend only (``torch.nn.attention.sdpa_kernel``)."""
    if name is None:
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
    if name not in backends:
        raise ValueError(f"unknown attention_backend {name!r}: use None (torch's choice) or one of {SDPA_BACKENDS}")
    return functools.partial(sdpa_kernel, backends[name])


def check_step_attention_backend(name: str | None) -> None:
    """Raise a ValueError unless ``name`` is None or one of :data:`STEP_ATTENTION_BACKENDS`."""
    if name is not None and name not in STEP_ATTENTION_BACKENDS:
        raise ValueError(f"unknown step_attention_backend {name!r}: use None (the default) or one of "
                         f"{STEP_ATTENTION_BACKENDS}")


def _raise_recompile_limit(at_least: int = 64) -> None:
    """One compiled graph per (dtype, fused or not, GEMV or not, prefill or decode, static or dynamic
    batch): more than dynamo's default 8 entries per function, after which it silently runs eager."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < at_least:
        setattr(config, name, at_least)


BUCKET_DIMS: dict[str, dict[str, tuple[int, ...]]] = {
    "attention_inputs": {"h": (0, 1), "cos": (0, 1), "sin": (0, 1), "k_cache": (0, 2), "v_cache": (0, 2), "slots": (0,)},
    "gated_mlp_input": {"h": (0, 1)},
    "add_fp8_product": {"h": (0, 1), "x": (0, 1)},
}
"""The dimensions of each compiled layer piece's arguments that a decoder bucket sets (batch rows,
positions, cache length); every other dimension, and every int, is the model's."""


class BucketCompiled:
    """``torch.compile(fn)`` whose graphs are specialized to the model and shared by the buckets: the
    argument dimensions named in ``dynamic`` (``{argument: dims}``, :data:`BUCKET_DIMS`) are marked
    dynamic (``maybe_mark_dynamic``: a size of 1 stays specialized), and dynamo's automatic dynamic
    shapes are off for these calls, so no other dimension or int ever turns symbolic.

    Why: automatic dynamic shapes key their state on the function's source, not on the model. A
    process that decoded with one model (the tiny checkpoint) and then a 7B one compiled the 7B's
    pieces with every dimension that differed symbolic, the hidden size among them: its batch-32
    decoder took 247 ms of device time against 212.5 in a process without the tiny model first
    (H200, session 21, run 1, benchmarks/README.md). Batch and length stay dynamic so that an
    evaluation whose batches shrink compiles each piece a bounded number of times. Called
    positionally (as :meth:`StaticLlama.layer` does). ``backend``: ``torch.compile``'s."""

    def __init__(self, fn: Callable[..., Any], dynamic: dict[str, tuple[int, ...]], backend: Any = "inductor") -> None:
        names = list(inspect.signature(fn).parameters)
        self.dynamic = [(names.index(name), dims) for name, dims in dynamic.items()]
        self.compiled = torch.compile(fn, backend=backend)

    def __call__(self, *args: Any) -> Any:
        import torch._dynamo

        for index, dims in self.dynamic:
            for dim in dims:
                torch._dynamo.maybe_mark_dynamic(args[index], dim)
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            return self.compiled(*args)


class _Fp8Layer(NamedTuple):
    """Float8 copies of one layer's projection weights (the same grouping as :class:`_LayerWeights`)."""

    qkv: list[Fp8Weight]
    o: Fp8Weight
    gate_up: list[Fp8Weight]
    down: Fp8Weight


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
    fp8: _Fp8Layer | None = None


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

    def __init__(
        self, language_model: Any, fuse: bool, compiled: bool, use_gemv: bool = False, fp8: bool = False,
        attention_backend: str | None = None, step_attention_backend: str | None = None,
    ) -> None:
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
        self.norm_eps = float(model.norm.variance_epsilon)
        self.rotary = model.rotary_emb
        self.embed = language_model.get_input_embeddings()
        self.lm_head = language_model.lm_head
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.n_heads)
        self.hidden = int(config.hidden_size)
        self.use_gemv = use_gemv
        check_step_attention_backend(step_attention_backend)
        self.attention_backend = sdpa_backend(attention_backend)
        self.step_triton = step_attention_backend == "triton"
        step_sdpa = {None: attention_backend, "triton": attention_backend, "sdpa": None}
        self.step_attention_backend = sdpa_backend(step_sdpa.get(step_attention_backend, step_attention_backend))
        self.weights = [self._layer_weights(layer, fuse) for layer in model.layers]
        if fp8:
            for w in self.weights:
                w.fp8 = _Fp8Layer([Fp8Weight.of(t) for t in w.qkv], Fp8Weight.of(w.o),
                                  [Fp8Weight.of(t) for t in w.gate_up], Fp8Weight.of(w.down))
        if compiled:
            _raise_recompile_limit()
            self.attention_inputs = BucketCompiled(_attention_inputs, BUCKET_DIMS["attention_inputs"])
            self.gated_mlp_input = BucketCompiled(_gated_mlp_input, BUCKET_DIMS["gated_mlp_input"])
            self.add_fp8_product = BucketCompiled(_add_fp8_product, BUCKET_DIMS["add_fp8_product"])
        else:
            self.attention_inputs = _attention_inputs
            self.gated_mlp_input = _gated_mlp_input
            self.add_fp8_product = _add_fp8_product

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
        mask: torch.Tensor | None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decoder layer on h [B, q, H] (the residual stream, contiguous, updated in place: pass a
        tensor the caller owns); writes K/V to the caches at positions ``slots`` [q] (consecutive,
        ``start .. start + q - 1``), then attends:

        * ``mask`` None (a prefill of right-aligned rows, ``slots`` from 0): causal over the q positions
          just written (``is_causal``, no mask, so the kernels skip the blocks above the diagonal);
        * else to cache[:, :, :S] under ``mask`` [B, 1, q, S] (additive: 0 = attend, -inf = masked).
          With S the cache's whole length the keys and values go to SDPA as they are (a shorter slice
          is not contiguous and SDPA copies it).

        ``last`` [B] (int64): after the K/V writes, only position ``last[b]`` of each row goes on
        (attention under ``mask`` [B, 1, 1, S] through the decode steps' kernel, o_proj, MLP): what
        the last layer of a prefill needs, since only each row's last real position reaches lm_head.
        Returns [B, q, H], or [B, 1, H] with ``last``."""
        w = self.weights[index]
        batch, q_len, _ = h.shape
        gemv_rows = self.use_gemv and batch * q_len == 1
        fp8 = w.fp8 if q_len > 1 else None  # float8 for the prefill only
        q = self.attention_inputs(
            h, w.norm1, w.eps1, w.qkv, w.qkv_bias, cos, sin, k_cache, v_cache, slots,
            self.n_heads, self.n_kv, self.head_dim, gemv_rows, fp8.qkv if fp8 is not None else None,
        )
        stop = q_len if mask is None else mask.shape[-1]
        keys, values = k_cache[:, :, :stop], v_cache[:, :, :stop]
        if last is not None:
            q = q.gather(2, last.view(batch, 1, 1, 1).expand(batch, q.shape[1], 1, q.shape[3]))
            h = h.gather(1, last.view(batch, 1, 1).expand(batch, 1, h.shape[2]))
            q_len = 1
            gemv_rows = self.use_gemv and batch == 1 and fp8 is None
        # One query row per sequence over the cache under a mask: a decode step, or a prefill's last
        # layer after the gather (not a one-position prefill, which is causal). Both take the steps'
        # kernel: cuDNN's single-query kernel, which the last layer used before session 19, did not
        # repeat its bits at batch 32 (margins moved between replays, benchmarks/README.md).
        single_query = q_len == 1 and mask is not None
        if single_query and self.step_triton:
            out = decode_attention(q, keys, values, mask)
        else:
            if self.n_kv != self.n_heads:
                rep = self.n_heads // self.n_kv
                keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
            with (self.step_attention_backend if q_len == 1 else self.attention_backend)():
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None)
        out = out.transpose(1, 2).reshape(batch, q_len, self.n_heads * self.head_dim)
        if gemv_rows:
            return _attention_output_and_mlp_gemv(h, out, w)
        if fp8 is not None:
            h = self.add_fp8_product(h, out, fp8.o, w.o_bias)
            gated = self.gated_mlp_input(h, w.norm2, w.eps2, w.gate_up, w.gate_up_bias, fp8.gate_up)
            return self.add_fp8_product(h, gated, fp8.down, w.down_bias)
        add_product_(h, out, w.o, w.o_bias)
        gated = self.gated_mlp_input(h, w.norm2, w.eps2, w.gate_up, w.gate_up_bias)
        return add_product_(h, gated, w.down, w.down_bias)

    def logits_last(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm and lm_head at the last position of h [B, q, H] -> logits [B, vocab]
        (one :func:`rms_norm_gemv` when ``use_gemv`` and B == 1)."""
        last = h[:, -1:, :]
        if self.use_gemv and h.shape[0] == 1:
            return rms_norm_gemv(last, self.norm.weight, self.norm_eps, self.lm_head.weight, self.lm_head.bias)[:, -1, :]
        return self.lm_head(self.norm(last))[:, -1, :]

