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


def _gemv_kernel() -> Any:
    """The autotuned Triton kernel, compiled once per process."""
    if "kernel" not in _GEMV:
        import triton
        import triton.language as tl

        @triton.autotune(
            configs=[
                triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=stages)
                for n, k, w, stages in (
                    (8, 512, 4, 3), (16, 512, 8, 3), (4, 1024, 4, 3), (8, 1024, 8, 3), (2, 2048, 4, 3),
                    (16, 256, 4, 4), (32, 256, 8, 4), (8, 256, 4, 5), (16, 512, 8, 4), (4, 512, 4, 5),
                )
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

