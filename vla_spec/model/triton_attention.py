"""A Triton attention kernel for the decode steps: one query row per (sequence, head) over the whole cache.

``out[b, h] = softmax(q[b, h] . K[b, g(h)]^T / sqrt(d) + mask[b]) V[b, g(h)]`` with q [B, H, 1, d], the
cache K, V [B, KV, T, d] read as they are (``g(h) = h // (H / KV)``), an additive mask [B, 1, 1, T] and
float32 accumulation (an online softmax over blocks of keys). One program per (b, h) walks the keys
in a fixed order, so a replay gives bitwise the same result: torch's cuDNN kernel for this shape does
not (benchmarks/README.md, session 10), and its "efficient" kernel is reproducible but slower.
Registered as the custom op ``vla_spec::decode_attention`` (opaque to ``torch.compile``, captured in
CUDA graphs). CUDA only; Triton is imported on first use. Used by
:mod:`vla_spec.model.static_llama` when ``step_attention_backend="triton"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_KERNEL: dict[str, Any] = {}


def _decode_kernel() -> Any:
    """The Triton kernel, compiled once per process (per head size and dtype by Triton itself)."""
    if "kernel" not in _KERNEL:
        import triton
        import triton.language as tl

        @triton.jit
        def decode_attention_kernel(
            q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, heads, group, length, scale,
            sq_b, sq_h, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sm_b, sm_t,
            D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
        ):
            pid = tl.program_id(0)
            b = pid // heads
            h = pid % heads
            g = h // group
            d = tl.arange(0, D_PAD)
            d_ok = d < D
            q = tl.load(q_ptr + b * sq_b + h * sq_h + d, mask=d_ok, other=0.0).to(tl.float32) * scale
            m_i = tl.full((), float("-inf"), tl.float32)
            l_i = tl.zeros((), tl.float32)
            acc = tl.zeros((D_PAD,), tl.float32)
            k_base = k_ptr + b.to(tl.int64) * sk_b + g * sk_h
            v_base = v_ptr + b.to(tl.int64) * sv_b + g * sv_h
            for t0 in range(0, length, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < length
                both = t_ok[:, None] & d_ok[None, :]
                k = tl.load(k_base + t[:, None] * sk_t + d[None, :], mask=both, other=0.0).to(tl.float32)
                bias = tl.load(mask_ptr + b * sm_b + t * sm_t, mask=t_ok, other=float("-inf")).to(tl.float32)
                s = tl.sum(k * q[None, :], axis=1) + bias
                m_new = tl.maximum(m_i, tl.max(s, axis=0))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: no NaN
                p = tl.exp(s - m_safe)
                alpha = tl.exp(m_i - m_safe)
                v = tl.load(v_base + t[:, None] * sv_t + d[None, :], mask=both, other=0.0).to(tl.float32)
                acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
                l_i = l_i * alpha + tl.sum(p, axis=0)
                m_i = m_new
            out = acc / l_i
            tl.store(out_ptr + pid * D + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)

        _KERNEL["kernel"] = decode_attention_kernel
    return _KERNEL["kernel"]


BLOCK_T = 64
"""Keys per loop iteration of a program."""


@torch.library.custom_op("vla_spec::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=mask)`` for one query row: q [B, H, 1, d], k and
    v [B, KV, T, d] (H a multiple of KV, last dimension contiguous), mask [B, 1, 1, T] additive
    (0 / -inf; every row needs one finite key). Returns [B, H, 1, d] in q's dtype."""
    batch, heads, rows, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    if not q.is_cuda:
        raise ValueError("step_attention_backend='triton' needs CUDA tensors: on the CPU use an SDPA backend (None)")
    if rows != 1 or heads % kv_heads or mask.shape[-1] != length or not (
        q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    ):
        raise ValueError(f"decode_attention needs q [B, H, 1, d], k/v [B, KV, T, d] with H a multiple of KV and "
                         f"contiguous last dims, mask [B, 1, 1, T]; got q {list(q.shape)}, k {list(k.shape)}, "
                         f"mask {list(mask.shape)}")
    out = torch.empty(batch, heads, 1, dim, dtype=q.dtype, device=q.device)
    mask = mask.expand(batch, 1, 1, length)
    _decode_kernel()[(batch * heads,)](
        q, k, v, mask, out, heads, heads // kv_heads, length, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0), mask.stride(3),
        D=dim, D_PAD=max(16, 1 << (dim - 1).bit_length()), BLOCK_T=BLOCK_T, num_warps=4,
    )
    return out


@decode_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)
