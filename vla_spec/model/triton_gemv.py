"""Triton GEMVs for batch-1 decode steps: ``y[N] = W[N, K] @ x[K] (+ b)``, one read of each weight,
with the Llama layer's small neighbours folded in so that a layer is 4 products and no norm, add or
SiLU kernel between them.

Every program takes BLOCK_N whole rows (no split-K reduction pass) with wide loads and float32
accumulation. Three optional parts, compile-time flags of one kernel:

* RMSNorm prologue (:func:`rms_norm_gemv`): x is replaced by transformers' ``LlamaRMSNorm(x)``,
  computed by each program from the whole x (8-22 KB, read from L2): float32 mean of squares,
  ``rsqrt(mean + eps)``, the product rounded to x's dtype, times the norm weight, rounded again.
* Residual epilogue (:func:`gemv_add`): ``residual + (W @ x + b)``, the product rounded to the dtype
  before the add, as ``h + o_proj(a)`` rounds in eager PyTorch.
* SwiGLU (:func:`rms_norm_swiglu_gemv`): two weights (gate, up) read by the same program, the output
  ``silu(gate) * up`` with the roundings of ``F.silu(gate_proj(x)) * up_proj(x)``.

One row only: with 8 rows the same scheme (CUDA-core FMAs, each weight read once) ran 2-2.5x slower
than cuBLAS's tensor-core kernels on an H200 (benchmarks/README.md, session 16), so batches above 1
keep cuBLAS and the compiled elementwise kernels.

Registered as custom ops (``vla_spec::gemv`` and friends) so that ``torch.compile`` and CUDA graphs
see opaque calls. CUDA only (and Triton's interpreter on the CPU); Triton is imported on first use.
Used by :mod:`vla_spec.model.static_llama` when ``use_gemv`` (the benchmark measures what it saves).
"""

from __future__ import annotations

import os

import torch

CONFIG = {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3}
"""The one launch configuration, for every shape. Fixed, not autotuned: the rows' sums are taken in
an order that depends on the blocks (and so do their bits), and the autotuner's pick changes between
processes (H200, session 15: o_proj's config differed in 1 of 3 processes, and so did the margins).
Chosen on the whole batch-1 decoder, not on the plain product: in a CUDA graph of 32 layers the plain
product is 8 % faster with 2 rows a program (``benchmarks/bench_gemv.py --graph``), but the folded
RMSNorm is recomputed by every program, and the decoder with 2 rows took 32.7-32.8 ms against
31.9-32.2 with 4, alternating in one process each on one H200 (session 16, run 4).

Gate and up are streamed one after the other. Streaming them side by side in one pass over x (each
chunk of x normalized once, the same bits) was slower: the batch-1 decoder took 35.8 ms against
32.1-32.2 (session 18, run 2, one H200, alternating processes), so it was removed."""


def _launch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, norm_weight: torch.Tensor | None = None,
    eps: float = 0.0, up_weight: torch.Tensor | None = None, up_bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """One launch of the kernel on x [..., K] (one row in all); returns [..., N] in x's dtype."""
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the Triton GEMV (gemv=True) needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU: "
                         "on the CPU build the decoder with gemv=None or False")
    import triton

    from vla_spec.model.triton_gemv_kernel import gemv as kernel

    n, k = weight.shape
    if x.numel() != k:
        raise ValueError(f"the Triton GEMV takes one row of x, got {x.numel() // k} of {k}: use F.linear for more")
    for name, t in (("weight", weight), ("up_weight", up_weight)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"the Triton GEMV reads {name} as a row-major [N, K] matrix: pass a contiguous one")
    flat = x.reshape(k).contiguous()
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    kernel[(triton.cdiv(n, CONFIG["BLOCK_N"]),)](
        flat, norm_weight if norm_weight is not None else flat, weight, bias if bias is not None else weight,
        up_weight if up_weight is not None else weight, up_bias if up_bias is not None else weight,
        residual.reshape(n).contiguous() if residual is not None else out, out, n, k, eps,
        NORM=norm_weight is not None, HAS_BIAS=bias is not None, SWIGLU=up_weight is not None,
        RESIDUAL=residual is not None, **CONFIG,
    )
    return out.reshape(*x.shape[:-1], n)


@torch.library.custom_op("vla_spec::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` for one input row (x [..., K]; weight [N, K] contiguous)."""
    return _launch(x, weight, bias)


@gemv.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("vla_spec::rms_norm_gemv", mutates_args=())
def rms_norm_gemv(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear(LlamaRMSNorm(x), weight, bias)`` for one row; norm_weight [K]."""
    return _launch(x, weight, bias, norm_weight=norm_weight, eps=eps)


@rms_norm_gemv.register_fake
def _(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("vla_spec::gemv_add", mutates_args=())
def gemv_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """``residual + F.linear(x, weight, bias)`` for one row; residual [..., N] like the output."""
    return _launch(x, weight, bias, residual=residual)


@gemv_add.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("vla_spec::rms_norm_swiglu_gemv", mutates_args=())
def rms_norm_swiglu_gemv(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, gate_weight: torch.Tensor, gate_bias: torch.Tensor | None,
    up_weight: torch.Tensor, up_bias: torch.Tensor | None,
) -> torch.Tensor:
    """``F.silu(gate(n)) * up(n)`` with ``n = LlamaRMSNorm(x)``, for one row; gate and up [N, K], both
    with a bias or neither."""
    if (gate_bias is None) != (up_bias is None):
        raise ValueError("rms_norm_swiglu_gemv: give gate and up both a bias or neither (a zero bias for the other)")
    return _launch(x, gate_weight, gate_bias, norm_weight=norm_weight, eps=eps, up_weight=up_weight, up_bias=up_bias)


@rms_norm_swiglu_gemv.register_fake
def _(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, gate_weight: torch.Tensor, gate_bias: torch.Tensor | None,
    up_weight: torch.Tensor, up_bias: torch.Tensor | None,
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], gate_weight.shape[0])
