"""Fast greedy decoding: static KV cache + CUDA graphs, and graphed/compiled vision towers.

:class:`FastGreedyDecoder` is a drop-in replacement for :func:`vla_spec.model.decoding.greedy_decode`
(same call signature, same :class:`GreedyResult`): left-padded ``inputs_embeds`` [B, L, H],
``attention_mask`` [B, L], position ids ``cumsum(mask) - 1``, greedy argmax over all logits, the
top-1 minus top-2 margin per step.

How it is fast
--------------
* **Static KV cache.** One preallocated K and V buffer per layer, [B, kv_heads, L + n - 1, head_dim],
  written in place (prefill writes ``[:L]``, decode step j writes position ``L + j - 1``).
* **Its own Llama forward over the same weights.** The layer math is transformers' Llama
  (RMSNorm in float32, rotary from the model's own ``rotary_emb``, SiLU-gated MLP, final norm and
  lm_head modules) written over the weight tensors; the attention core is
  ``scaled_dot_product_attention`` with an explicit additive mask (causal AND key is real; a padded
  query also sees itself, so pad rows stay finite), built once per call. Nothing depends on
  transformers' cache or mask classes, which change between releases. Only the last position goes
  through lm_head.
* **One CUDA graph per (batch, padded prefix length, n_tokens) bucket** holding the whole decode:
  the prefill, the first argmax, and the ``n - 1`` single-token steps unrolled (embedding lookup
  of the previous argmax, 32 layers, argmax + margin). A call copies the prefix into the graph's
  static input buffers and replays: no Python, no launches, no host syncs between the steps.
  Buckets are captured on first use (two eager warm-up runs on a side stream, then capture) and
  kept in an LRU of ``max_buckets``. The prefix length is left-padded up to a multiple of
  ``pad_multiple`` to bound the number of buckets (left padding does not change a row's positions
  or what it attends to).
* **Compiled layer pieces** (``compile``, default on CUDA): RMSNorm + q/k/v + rotary, and o_proj +
  residual + RMSNorm + SiLU-gated MLP + residual, each one ``torch.compile``-d function taking the
  weights as tensors (one compiled graph serves all layers), so the elementwise work is fused into a
  few Triton kernels; matrix products stay cuBLAS calls, attention stays SDPA.
* **A Triton GEMV for batch-1 decode steps** (``gemv``, default on CUDA): cuBLAS streams the
  weights of a one-row product at ~2.2-2.4 TB/s on an H100; a plain row-blocked GEMV does better.
* Optional **fused projections** (``fuse=True``): q/k/v and gate/up weights concatenated into one
  matrix each (one GEMM instead of three / two). This keeps a second copy of those weights
  (about 9 GB for a 7B Llama) and snapshots them: re-accelerate after changing the weights.

On CPU (or ``use_cuda_graphs=False``) the same static-cache code runs eagerly; the CPU tier checks it
against the naive path.

Exactness: the same math in the same dtype, so float32 gives the naive path's tokens (margins
to ~1e-5); in bfloat16, kernel choices differ (SDPA backend, GEMM shapes, fused
elementwise kernels that skip intermediate bf16 roundings) and a token may differ
only where the naive margin is a near-tie (:mod:`vla_spec.model.agreement`).

:func:`accelerate` puts this decoder on an :class:`~vla_spec.model.modeling.OpenVLA` and, on CUDA,
replaces ``encode_images`` (towers + projector) by a CUDA-graph replay per batch size, optionally
of a ``torch.compile``-d function. While any forward hook is registered on the towers or the
projector (as :func:`vla_spec.model.liveness.check_liveness` does), the eager path runs so that the
hooks see their calls.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vla_spec.model.decoding import GreedyResult, check_decoder_inputs, positions_from_mask, top1_and_margin

__all__ = ["FastGreedyDecoder", "accelerate", "restore", "is_accelerated"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """As transformers' ``apply_rotary_pos_emb`` (x [B, heads, q, d]; cos/sin [B, q, d])."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)


# --------------------------------------------------------------------------- single-row GEMV

_GEMV: dict[str, Any] = {}


def _gemv_kernel() -> Any:
    """A Triton kernel for y[N] = W[N, K] @ x[K] (+ b): decode at batch 1 reads each weight once.

    cuBLAS picks split-K GEMM kernels for one-row inputs that stream the weights at ~2.2-2.4 TB/s
    on an H100 (bench micro numbers); this kernel gives every program BLOCK_N whole rows (no split-K
    reduction pass) and wide loads, float32 accumulation.
    """
    if "kernel" not in _GEMV:
        import triton
        import triton.language as tl

        @triton.autotune(
            configs=[
                triton.Config({"BLOCK_N": 8, "BLOCK_K": 512}, num_warps=4),
                triton.Config({"BLOCK_N": 16, "BLOCK_K": 512}, num_warps=8),
                triton.Config({"BLOCK_N": 4, "BLOCK_K": 1024}, num_warps=4),
                triton.Config({"BLOCK_N": 8, "BLOCK_K": 1024}, num_warps=8),
                triton.Config({"BLOCK_N": 2, "BLOCK_K": 2048}, num_warps=4),
            ],
            key=["N", "K"],
        )
        @triton.jit
        def gemv(x_ptr, w_ptr, b_ptr, y_ptr, N, K, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
            pid = tl.program_id(0)
            rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
            row_ok = rows < N
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                col_ok = cols < K
                x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                w = tl.load(
                    w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0,
                )
                acc += w.to(tl.float32) * x[None, :]
            y = tl.sum(acc, axis=1)
            if HAS_BIAS:
                y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

        _GEMV["kernel"] = gemv
    return _GEMV["kernel"]


@torch.library.custom_op("vla_spec::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` for one input row (x [..., K] with one row in all; weight [N, K] contiguous)."""
    import triton

    n, k = weight.shape
    flat = x.reshape(k).contiguous()
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    kernel = _gemv_kernel()
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        flat, weight, bias if bias is not None else weight, out, n, k, HAS_BIAS=bias is not None
    )
    return out.reshape(*x.shape[:-1], n)


@gemv.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


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
    n_heads: int,
    n_kv: int,
    head_dim: int,
    use_gemv: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_layernorm -> q/k/v projections -> rotary: q [B, heads, q, d], k/v [B, kv_heads, q, d]."""
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
    return _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), v


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


class _Llama:
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
        start: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """One decoder layer on h [B, q, H]; writes K/V to cache[:, :, start:start+q]; attends to
        cache[:, :, :start+q] under ``mask`` [B, 1, q, start+q] (additive: 0 = attend, -inf = masked)."""
        w = self.weights[index]
        batch, q_len, _ = h.shape
        q, k, v = self.attention_inputs(
            h, w.norm1, w.eps1, w.qkv, w.qkv_bias, cos, sin, self.n_heads, self.n_kv, self.head_dim,
            self.use_gemv and batch * q_len == 1,
        )
        stop = start + q_len
        k_cache[:, :, start:stop].copy_(k)
        v_cache[:, :, start:stop].copy_(v)
        if start == 0:  # prefill: the fresh K/V are the whole key range
            keys, values = k, v
        else:
            keys, values = k_cache[:, :, :stop], v_cache[:, :, :stop]
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, q_len, self.n_heads * self.head_dim)
        return self.attention_output_and_mlp(
            h, out, w.o, w.o_bias, w.norm2, w.eps2, w.gate_up, w.gate_up_bias, w.down, w.down_bias,
            self.use_gemv and batch * q_len == 1,
        )

    def logits_last(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h[:, -1:, :]))[:, -1, :]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = attend) -> additive bias (0 / -inf), built once per call, not per layer."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class _Bucket:
    """Static buffers (and, on CUDA, the captured graph) for one (B, L, n_tokens) shape."""

    def __init__(self, llama: _Llama, batch: int, length: int, n_tokens: int, dtype: torch.dtype, device: torch.device):
        self.llama, self.batch, self.length, self.n_tokens = llama, batch, length, n_tokens
        total = length + n_tokens - 1
        self.embeds = torch.zeros(batch, length, llama.hidden, dtype=dtype, device=device)
        self.mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        cache_shape = (batch, llama.n_kv, total, llama.head_dim)
        self.k_cache = [torch.zeros(cache_shape, dtype=dtype, device=device) for _ in range(llama.n_layers)]
        self.v_cache = [torch.zeros(cache_shape, dtype=dtype, device=device) for _ in range(llama.n_layers)]
        self.causal = torch.ones(length, length, dtype=torch.bool, device=device).tril_()
        self.eye = torch.eye(length, dtype=torch.bool, device=device)
        self.token_ids = torch.zeros(batch, n_tokens, dtype=torch.int64, device=device)
        self.margins = torch.zeros(batch, n_tokens, dtype=torch.float32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        pad = self.length - inputs_embeds.shape[1]
        if pad:
            self.embeds[:, :pad].zero_()
            self.mask[:, :pad].zero_()
        self.embeds[:, pad:].copy_(inputs_embeds)
        self.mask[:, pad:].copy_(attention_mask)

    def compute(self) -> None:
        """Prefill + n_tokens greedy steps over the static buffers (eager; captured on CUDA)."""
        llama, n_layers = self.llama, self.llama.n_layers
        valid = self.mask.bool()
        positions = positions_from_mask(self.mask)
        allowed = ((self.causal[None] & valid[:, None, :]) | self.eye[None])[:, None]  # [B, 1, L, L]
        mask = _additive(allowed, self.embeds.dtype)
        h = self.embeds
        cos, sin = llama.rotary(h, positions)
        for i in range(n_layers):
            h = llama.layer(i, h, cos, sin, self.k_cache[i], self.v_cache[i], 0, mask)
        token, margin = top1_and_margin(llama.logits_last(h))
        self.token_ids[:, 0].copy_(token)
        self.margins[:, 0].copy_(margin)
        key_valid = _additive(
            torch.cat([valid, valid.new_ones(self.batch, self.n_tokens - 1)], dim=1)[:, None, None, :], self.embeds.dtype
        )
        last = positions[:, -1:]
        for step in range(1, self.n_tokens):
            start = self.length + step - 1
            h = llama.embed(token[:, None])
            cos, sin = llama.rotary(h, last + step)
            step_mask = key_valid[..., : start + 1]
            for i in range(n_layers):
                h = llama.layer(i, h, cos, sin, self.k_cache[i], self.v_cache[i], start, step_mask)
            token, margin = top1_and_margin(llama.logits_last(h))
            self.token_ids[:, step].copy_(token)
            self.margins[:, step].copy_(margin)

    def capture(self, warmup: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.compute()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.compute()
        self.graph = graph

    def run(self) -> GreedyResult:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.compute()
        return GreedyResult(token_ids=self.token_ids.clone(), margins=self.margins.clone())


class FastGreedyDecoder:
    """Greedy decoder with a static KV cache and (on CUDA) one CUDA graph per shape bucket.

    Call it like :func:`~vla_spec.model.decoding.greedy_decode`:
    ``decoder(language_model, inputs_embeds, attention_mask, n_tokens) -> GreedyResult``.

    ``use_cuda_graphs``: None = on CUDA devices. ``pad_multiple``: the prefix length is left-padded
    up to a multiple of this (1 = exact lengths). ``max_buckets``: captured shapes kept (LRU; a
    7B bucket at B=32 holds ~5 GB of KV cache). ``fuse``: fused q/k/v and gate/up weights (a
    snapshot of the weights at first use). ``compile``: ``torch.compile`` the per-layer pieces around
    attention (None = on CUDA; the first call of a new shape then takes seconds). ``warmup``: eager
    runs before a capture. ``gemv``: single-row decode steps (batch 1) use a Triton GEMV kernel
    instead of cuBLAS (None = on CUDA; the kernel autotunes on first use).
    """

    def __init__(
        self,
        *,
        use_cuda_graphs: bool | None = None,
        pad_multiple: int = 8,
        max_buckets: int = 4,
        fuse: bool = False,
        compile: bool | None = None,
        gemv: bool | None = None,
        warmup: int = 2,
    ) -> None:
        if pad_multiple < 1 or max_buckets < 1:
            raise ValueError("pad_multiple and max_buckets must be >= 1")
        self.use_cuda_graphs = use_cuda_graphs
        self.pad_multiple = pad_multiple
        self.max_buckets = max_buckets
        self.fuse = fuse
        self.compile = compile
        self.gemv = gemv
        self.warmup = warmup
        self._llamas: dict[int, _Llama] = {}
        self._buckets: OrderedDict[tuple[Any, ...], _Bucket] = OrderedDict()

    @property
    def buckets(self) -> list[tuple[Any, ...]]:
        """Keys (model id, B, padded L, n_tokens, dtype, device) of the shapes captured so far."""
        return list(self._buckets)

    def clear(self) -> None:
        """Drop every captured graph, cache buffer and fused weight copy."""
        self._buckets.clear()
        self._llamas.clear()

    def _llama(self, language_model: Any, device: torch.device) -> _Llama:
        key = id(language_model)
        if key not in self._llamas or self._llamas[key].lm is not language_model:
            compiled = self.compile if self.compile is not None else device.type == "cuda"
            use_gemv = (self.gemv if self.gemv is not None else True) and device.type == "cuda"
            self._llamas[key] = _Llama(language_model, self.fuse, compiled, use_gemv)
        return self._llamas[key]

    @torch.inference_mode()
    def __call__(
        self, language_model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int
    ) -> GreedyResult:
        check_decoder_inputs(inputs_embeds, attention_mask, n_tokens)
        llama = self._llama(language_model, inputs_embeds.device)
        batch, length, _ = inputs_embeds.shape
        padded = -(-length // self.pad_multiple) * self.pad_multiple
        device, dtype = inputs_embeds.device, inputs_embeds.dtype
        graphs = self.use_cuda_graphs if self.use_cuda_graphs is not None else device.type == "cuda"
        key = (id(language_model), batch, padded, n_tokens, dtype, str(device))
        bucket = self._buckets.get(key)
        fresh = bucket is None
        if fresh:
            while len(self._buckets) >= self.max_buckets:
                self._buckets.popitem(last=False)
            bucket = _Bucket(llama, batch, padded, n_tokens, dtype, device)
            self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        bucket.load(inputs_embeds, attention_mask.to(device=device, dtype=torch.long))
        if fresh and graphs:
            bucket.capture(self.warmup)
        return bucket.run()


# --------------------------------------------------------------------------- the whole model

_HOOKED = ("vision_backbone.featurizer", "vision_backbone.fused_featurizer", "projector")


def _has_hooks(model: Any) -> bool:
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks for name in _HOOKED for m in model.get_submodule(name).modules()
    )


class _GraphedVision:
    """``encode_images`` replacement: one CUDA graph per batch size (optionally of a compiled fn)."""

    def __init__(self, model: Any, compile_vision: bool, use_cuda_graphs: bool, warmup: int = 2) -> None:
        from vla_spec.model.modeling import OpenVLA

        self.model = model
        self.eager: Callable[[torch.Tensor], torch.Tensor] = lambda pv: OpenVLA.encode_images(model, pv)
        self.fn = torch.compile(self.eager, dynamic=False) if compile_vision else self.eager
        self.use_cuda_graphs = use_cuda_graphs
        self.warmup = warmup
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        if _has_hooks(model):
            return self.eager(pixel_values)
        pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
        if not (self.use_cuda_graphs and pixel_values.is_cuda):
            return self.fn(pixel_values)
        batch = pixel_values.shape[0]
        if batch not in self.graphs:
            static_in = pixel_values.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            self.graphs[batch] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[batch]
        static_in.copy_(pixel_values)
        graph.replay()
        return static_out.clone()


def accelerate(
    model: Any,
    *,
    decoder: FastGreedyDecoder | None = None,
    vision: bool = True,
    compile_vision: bool = False,
    use_cuda_graphs: bool | None = None,
) -> Any:
    """Make ``model`` (an :class:`~vla_spec.model.modeling.OpenVLA`) fast, in place; returns it.

    Sets ``model.decoder`` to ``decoder`` (default: a new :class:`FastGreedyDecoder`). With
    ``vision`` and on CUDA, ``encode_images`` (both towers + projector) replays one CUDA graph per
    batch size; ``compile_vision`` also runs them through ``torch.compile`` (slow first call per
    batch size). Undo with :func:`restore`. Treat the weights as frozen while accelerated.

    Fastest measured on an H100 (benchmarks/README.md), at +9 GB for the fused weight copies::

        accelerate(model, decoder=FastGreedyDecoder(fuse=True), compile_vision=True)
    """
    graphs = use_cuda_graphs if use_cuda_graphs is not None else model.device.type == "cuda"
    model.decoder = decoder if decoder is not None else FastGreedyDecoder(use_cuda_graphs=use_cuda_graphs)
    if vision and (graphs or compile_vision):
        model.encode_images = _GraphedVision(model, compile_vision, graphs)
    return model


def is_accelerated(model: Any) -> bool:
    return isinstance(getattr(model, "decoder", None), FastGreedyDecoder)


def restore(model: Any) -> Any:
    """Undo :func:`accelerate`: the naive decoder and the eager vision path."""
    from vla_spec.model.decoding import greedy_decode

    model.decoder = greedy_decode
    model.__dict__.pop("encode_images", None)
    return model
