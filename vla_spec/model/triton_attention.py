"""A Triton attention kernel for the decode steps: one query row per (sequence, head) over the whole cache.

``out[b, h] = softmax(q[b, h] . K[b, g(h)]^T / sqrt(d) + mask[b]) V[b, g(h)]`` with q [B, H, 1, d], the
cache K, V [B, KV, T, d] read as they are (``g(h) = h // (H / KV)``), an additive mask [B, 1, 1, T] and
float32 accumulation, in two kernels: each block of keys of each (b, h) (:data:`CONFIGS`) gives its
partial softmax (max score, sum of exponentials, weighted sum of values), then one program per (b, h)
combines the blocks in a fixed order. No atomics, no order that depends on timing, so a replay gives
bitwise the same result: torch's cuDNN kernel for this shape does
not (benchmarks/README.md, session 10), and its "efficient" kernel is reproducible but slower.
Registered as the custom op ``vla_spec::decode_attention`` (opaque to ``torch.compile``, captured in
CUDA graphs). CUDA, or the CPU through Triton's interpreter (``TRITON_INTERPRET=1``); Triton is imported
on first use. Used by
:mod:`vla_spec.model.static_llama` when ``step_attention_backend="triton"``.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch

_KERNELS: dict[str, Any] = {}


def _kernels() -> tuple[Any, Any]:
    """The two Triton kernels (partial blocks, combine), compiled once per process."""
    if "kernels" not in _KERNELS:
        import triton
        import triton.language as tl

        @triton.jit
        def partial_kernel(
            q_ptr, k_ptr, v_ptr, mask_ptr, part_ptr, heads, group, length, scale,
            sq_b, sq_h, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sm_b, sm_t,
            D: tl.constexpr, D_PAD: tl.constexpr, CHUNK: tl.constexpr, CHUNKS: tl.constexpr, SPLITS: tl.constexpr,
            STAGES: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
        ):
            """Program (b * heads + h, s): keys s * CHUNK * CHUNKS ... of sequence b, head h, in CHUNKS
            chunks of CHUNK keys (an online softmax over them, in order) -> (max score, sum of exp,
            exp-weighted sum of values) in float32 at part[b * heads + h, s]. ``DOT``: the scores and the
            weighted sum as tensor-core products (q repeated on 16 rows, the probabilities rounded to the
            cache's dtype for the second, as flash attention does; ``PRECISION`` "ieee" for float32)
            instead of float32 multiply-and-reduce."""
            bh = tl.program_id(0)
            split = tl.program_id(1)
            b = bh // heads
            g = (bh % heads) // group
            d = tl.arange(0, D_PAD)
            d_ok = d < D
            q = tl.load(q_ptr + b * sq_b + (bh % heads) * sq_h + d, mask=d_ok, other=0.0)
            k_base = k_ptr + b.to(tl.int64) * sk_b + g * sk_h
            v_base = v_ptr + b.to(tl.int64) * sv_b + g * sv_h
            out = part_ptr + (bh * SPLITS + split) * (D_PAD + 2)
            if DOT:  # 16 equal rows (a tensor-core product's least), row 0 stored
                rows = tl.arange(0, 16)
                q16 = tl.zeros((16, D_PAD), q.dtype) + q[None, :]
                m16 = tl.full((16,), float("-inf"), tl.float32)
                total16 = tl.zeros((16,), tl.float32)
                acc16 = tl.zeros((16, D_PAD), tl.float32)
                for c in tl.range(0, CHUNKS, num_stages=STAGES):
                    t = (split * CHUNKS + c) * CHUNK + tl.arange(0, CHUNK)
                    t_ok = t < length
                    both = t_ok[:, None] & d_ok[None, :]
                    k = tl.load(k_base + t[:, None] * sk_t + d[None, :], mask=both, other=0.0)
                    v = tl.load(v_base + t[:, None] * sv_t + d[None, :], mask=both, other=0.0)
                    bias = tl.load(mask_ptr + b * sm_b + t * sm_t, mask=t_ok, other=float("-inf")).to(tl.float32)
                    s16 = tl.dot(q16, tl.trans(k), input_precision=PRECISION) * scale + bias[None, :]
                    m_new = tl.maximum(m16, tl.max(s16, axis=1))
                    shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: p = 0, no NaN
                    alpha = tl.exp(m16 - shift)
                    p16 = tl.exp(s16 - shift[:, None])
                    total16 = total16 * alpha + tl.sum(p16, axis=1)
                    acc16 = acc16 * alpha[:, None] + tl.dot(p16.to(v.dtype), v, input_precision=PRECISION)
                    m16 = m_new
                first = rows == 0
                tl.store(out + rows[:, None] * 0 + d[None, :], acc16, mask=first[:, None])
                tl.store(out + D_PAD + rows * 0, m16, mask=first)
                tl.store(out + D_PAD + 1 + rows * 0, total16, mask=first)
            else:
                qf = q.to(tl.float32) * scale
                m = tl.full((), float("-inf"), tl.float32)
                total = tl.zeros((), tl.float32)
                acc = tl.zeros((D_PAD,), tl.float32)
                for c in tl.range(0, CHUNKS, num_stages=STAGES):
                    t = (split * CHUNKS + c) * CHUNK + tl.arange(0, CHUNK)
                    t_ok = t < length
                    both = t_ok[:, None] & d_ok[None, :]
                    k = tl.load(k_base + t[:, None] * sk_t + d[None, :], mask=both, other=0.0)
                    v = tl.load(v_base + t[:, None] * sv_t + d[None, :], mask=both, other=0.0)
                    bias = tl.load(mask_ptr + b * sm_b + t * sm_t, mask=t_ok, other=float("-inf")).to(tl.float32)
                    s = tl.sum(k.to(tl.float32) * qf[None, :], axis=1) + bias
                    m_new = tl.maximum(m, tl.max(s, axis=0))
                    shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: p = 0, no NaN
                    alpha = tl.exp(m - shift)
                    p = tl.exp(s - shift)
                    total = total * alpha + tl.sum(p, axis=0)
                    acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
                    m = m_new
                tl.store(out + d, acc)
                tl.store(out + D_PAD, m)
                tl.store(out + D_PAD + 1, total)

        @triton.jit
        def combine_kernel(part_ptr, out_ptr, splits, D: tl.constexpr, D_PAD: tl.constexpr, SPLITS: tl.constexpr,
                           S_PAD: tl.constexpr):
            """Program b * heads + h: its blocks' partials, rescaled to the largest max, summed in one
            fixed order -> out[b, h] = sum(weighted values) / sum(exp)."""
            bh = tl.program_id(0)
            sp = tl.arange(0, S_PAD)
            s_ok = sp < splits
            d = tl.arange(0, D_PAD)
            base = part_ptr + bh * SPLITS * (D_PAD + 2) + sp * (D_PAD + 2)
            m = tl.load(base + D_PAD, mask=s_ok, other=float("-inf"))
            l = tl.load(base + D_PAD + 1, mask=s_ok, other=0.0)
            acc = tl.load(base[:, None] + d[None, :], mask=s_ok[:, None], other=0.0)
            top = tl.max(m, axis=0)
            w = tl.exp(m - top)
            out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
            tl.store(out_ptr + bh * D + d, out.to(out_ptr.dtype.element_ty), mask=d < D)

        _KERNELS["kernels"] = (partial_kernel, combine_kernel)
    return _KERNELS["kernels"]


class StepAttentionConfig(NamedTuple):
    """The first kernel's launch: ``chunk`` keys loaded at a time (a power of 2), ``chunks`` of them per
    program (so (B * H) x ceil(T / (chunk * chunks)) programs), ``warps``, and ``stages`` of Triton's
    software pipelining of the chunk loop. The split of the keys into programs and chunks fixes the
    order of the sums, so another configuration gives other bits (each one reproducible)."""

    chunk: int
    chunks: int
    warps: int
    stages: int
    dot: bool = False


CONFIGS: tuple[tuple[int | None, StepAttentionConfig], ...] = (
    (8, StepAttentionConfig(chunk=16, chunks=1, warps=2, stages=1)),
    (None, StepAttentionConfig(chunk=64, chunks=1, warps=4, stages=1)),
)
"""The launch configurations used, as (largest batch or None, configuration); the first that fits the
batch wins (:func:`config_for`). Of 12 candidates (benchmarks/bench_step_attention.py, H200, session
17, a 288-key cache at 7B shapes) one 64-key block per program was the fastest at batch 32: 50.6 us a
layer against 67.0 for one 32-key block (the configuration before), 2.98 against 2.26 TB/s of K/V;
16-key blocks with 2 warps at batches 1 and 8: 6.1 and 17.3 us against 7.0 and 18.5. On the whole
decoder (session 18, run 2, alternating processes) the 16-key blocks took its device time from
32.09-32.15 to 32.01 ms at batch 1 and from 75.32-75.45 to 75.16 at batch 8. Longer loops per program
(online softmax over 2-9 chunks) and 8 warps were slower."""


def config_for(batch: int) -> StepAttentionConfig:
    """The launch configuration for ``batch`` sequences (:data:`CONFIGS`)."""
    return next(config for largest, config in CONFIGS if largest is None or batch <= largest)


@torch.library.custom_op("vla_spec::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=mask)`` for one query row: q [B, H, 1, d], k and
    v [B, KV, T, d] (H a multiple of KV, last dimension contiguous), mask [B, 1, 1, T] additive
    (0 / -inf; every row needs one finite key). Returns [B, H, 1, d] in q's dtype."""
    batch, heads, rows, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("step_attention_backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU: "
                         "on the CPU use an SDPA backend (None)")
    if rows != 1 or heads % kv_heads or mask.shape[-1] != length or not (
        q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    ):
        raise ValueError(f"decode_attention needs q [B, H, 1, d], k/v [B, KV, T, d] with H a multiple of KV and "
                         f"contiguous last dims, mask [B, 1, 1, T]; got q {list(q.shape)}, k {list(k.shape)}, "
                         f"mask {list(mask.shape)}")
    partial_kernel, combine_kernel = _kernels()
    config = config_for(batch)
    splits = -(-length // (config.chunk * config.chunks))
    d_pad = max(16, 1 << (dim - 1).bit_length())
    parts = torch.empty(batch * heads, splits, d_pad + 2, dtype=torch.float32, device=q.device)
    out = torch.empty(batch, heads, 1, dim, dtype=q.dtype, device=q.device)
    mask = mask.expand(batch, 1, 1, length)
    partial_kernel[(batch * heads, splits)](
        q, k, v, mask, parts, heads, heads // kv_heads, length, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0), mask.stride(3), D=dim, D_PAD=d_pad, CHUNK=config.chunk, CHUNKS=config.chunks, SPLITS=splits,
        STAGES=config.stages, DOT=config.dot, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config.warps,
    )
    combine_kernel[(batch * heads,)](parts, out, splits, D=dim, D_PAD=d_pad, SPLITS=splits,
                                     S_PAD=max(2, 1 << (splits - 1).bit_length()), num_warps=4)
    return out


@decode_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)
