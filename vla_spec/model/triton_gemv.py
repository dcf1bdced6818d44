"""A Triton GEMV for batch-1 decode steps: ``y[N] = W[N, K] @ x[K] (+ b)``, one read of each weight.

cuBLAS streams the weights of a one-row product at ~2.2-2.4 TB/s on an H100 (benchmark micro
numbers); this kernel gives every program BLOCK_N whole rows (no split-K reduction pass) and wide
loads, float32 accumulation. Registered as the custom op ``vla_spec::gemv`` so that
``torch.compile`` and CUDA graphs see one opaque call. CUDA only; Triton is imported on first use.
Used by :mod:`vla_spec.model.static_llama` when ``use_gemv`` (the benchmark measures what it saves).
"""

from __future__ import annotations

from typing import Any

import torch

_GEMV: dict[str, Any] = {}


CONFIG = {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3}
"""The one launch configuration, for every shape. Fixed, not autotuned: the rows' sums are taken in
an order that depends on BLOCK_K (and so do their bits), and the autotuner's pick changes between
processes (H200, session 15: o_proj's config differed in 1 of 3 processes, and so did the margins).
Within 2.5 % of the fastest of 10 configs at each Llama-7B shape on an H200
(benchmarks/bench_gemv.py, benchmarks/results/h200_s15_gemv_configs.json)."""


def _gemv_kernel() -> Any:
    """The Triton kernel, compiled once per process."""
    if "kernel" not in _GEMV:
        import triton
        import triton.language as tl

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
    _gemv_kernel()[(triton.cdiv(n, CONFIG["BLOCK_N"]),)](
        flat, weight, bias if bias is not None else weight, out, n, k, HAS_BIAS=bias is not None, **CONFIG
    )
    return out.reshape(*x.shape[:-1], n)


@gemv.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])

