"""The Triton source of :mod:`vla_spec.model.triton_gemv` (imported on first use: it needs Triton).

One kernel, ``gemv``, with compile-time flags for the RMSNorm prologue, the SwiGLU pair of weights
and the residual epilogue; the conventions (roundings, units) are in :mod:`vla_spec.model.triton_gemv`.
"""

import triton
import triton.language as tl


@triton.jit
def _row_sums(x_ptr, nw_ptr, w_ptr, b_ptr, rows, row_ok, K, inv_rms,
              NORM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(W @ x + b)[rows] in float32, the sums taken in BLOCK_K chunks; x through the RMSNorm when NORM
    (inv_rms: its 1 / sqrt(mean of squares + eps))."""
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
        if NORM:  # LlamaRMSNorm: rounded to the dtype, times the norm weight, rounded again
            normed = (x.to(tl.float32) * inv_rms).to(x_ptr.dtype.element_ty)
            scale = tl.load(nw_ptr + cols, mask=col_ok, other=0.0)
            x = (scale.to(tl.float32) * normed.to(tl.float32)).to(x_ptr.dtype.element_ty)
        w = tl.load(
            w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    return y


@triton.jit
def gemv(x_ptr, nw_ptr, w_ptr, b_ptr, w2_ptr, b2_ptr, r_ptr, y_ptr, N, K, eps,
         NORM: tl.constexpr, HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr,
         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[rows] for this program's BLOCK_N rows; x [K], the norm weight [K] (NORM), W and the up weight
    w2 (SWIGLU) [N, K] row-major, biases [N] (HAS_BIAS), the residual [N] (RESIDUAL); divisions
    rounded as IEEE's (``div_rn``), as PyTorch's kernels do."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    dtype = y_ptr.dtype.element_ty
    inv_rms = 1.0
    if NORM:
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            squares += x * x
        inv_rms = tl.math.rsqrt(tl.math.div_rn(tl.sum(squares, axis=0), K.to(tl.float32)) + eps)
    y = _row_sums(x_ptr, nw_ptr, w_ptr, b_ptr, rows, row_ok, K, inv_rms, NORM, HAS_BIAS, BLOCK_N, BLOCK_K)
    if SWIGLU:
        gate = y.to(dtype).to(tl.float32)
        up = _row_sums(x_ptr, nw_ptr, w2_ptr, b2_ptr, rows, row_ok, K, inv_rms, NORM, HAS_BIAS,
                       BLOCK_N, BLOCK_K).to(dtype).to(tl.float32)
        silu = tl.math.div_rn(gate, 1.0 + tl.exp(-gate)).to(dtype).to(tl.float32)  # F.silu's x / (1 + e^-x)
        y = silu * up
    if RESIDUAL:
        y = tl.load(r_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) + y.to(dtype).to(tl.float32)
    tl.store(y_ptr + rows, y.to(dtype), mask=row_ok)
