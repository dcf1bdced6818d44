"""A Triton attention kernel for the decode steps: one query row per (sequence, head) over the whole cache.

``out[b, h] = softmax(q[b, h] . K[b, g(h)]^T / sqrt(d) + mask[b]) V[b, g(h)]`` with q [B, H, 1, d],
the cache K, V [B, KV, T, d] read as they are (``g(h) = h // (H / KV)``), an additive mask
[B, 1, 1, T], tensor-core products accumulated in float32, in two kernels: each block of keys of
each (b, h) (:data:`CONFIGS`) gives its partial softmax (max score, sum of exponentials, weighted sum
of values), then one program per (b, h) combines the blocks in a fixed order. No atomics, no order
that depends on timing, so a replay gives bitwise the same result: torch's cuDNN kernel for this
shape does not (benchmarks/README.md, session 10), and its "efficient" kernel is reproducible but
slower. Registered as the custom op ``vla_spec::decode_attention`` (opaque to ``torch.compile``,
captured in CUDA graphs). CUDA, or the CPU through Triton's interpreter (``TRITON_INTERPRET=1``, not
in bfloat16); Triton is imported on first use. Used by :mod:`vla_spec.model.static_llama` when
``step_attention_backend="triton"``.
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
            STAGES: tl.constexpr, PRECISION: tl.constexpr,
        ):
            """Program (b * heads + h, s): keys s * CHUNK * CHUNKS ... of sequence b, head h, in CHUNKS
            chunks of CHUNK keys (an online softmax over them, in order) -> (max score, sum of exp,
            exp-weighted sum of values) in float32 at part[b * heads + h, s]. Scores and the weighted sum
            are tensor-core products (``tl.dot``, float32 accumulation; ``PRECISION`` "ieee" for float32)
            of q repeated on 16 rows; the probabilities go into the second rounded to the cache's dtype,
            as flash attention's do. Row 0 is stored."""
            bh = tl.program_id(0)
            split = tl.program_id(1)
            b = bh // heads
            g = (bh % heads) // group
            d = tl.arange(0, D_PAD)
            d_ok = d < D
            rows = tl.arange(0, 16)
            q = tl.load(q_ptr + b * sq_b + (bh % heads) * sq_h + d, mask=d_ok, other=0.0)
            q16 = tl.zeros((16, D_PAD), q.dtype) + q[None, :]  # 16 equal rows: a tensor-core product's least
            k_base = k_ptr + b.to(tl.int64) * sk_b + g * sk_h
            v_base = v_ptr + b.to(tl.int64) * sv_b + g * sv_h
            m = tl.full((16,), float("-inf"), tl.float32)
            total = tl.zeros((16,), tl.float32)
            acc = tl.zeros((16, D_PAD), tl.float32)
            for c in tl.range(0, CHUNKS, num_stages=STAGES):
                t = (split * CHUNKS + c) * CHUNK + tl.arange(0, CHUNK)
                t_ok = t < length
                both = t_ok[:, None] & d_ok[None, :]
                k = tl.load(k_base + t[:, None] * sk_t + d[None, :], mask=both, other=0.0)
                v = tl.load(v_base + t[:, None] * sv_t + d[None, :], mask=both, other=0.0)
                bias = tl.load(mask_ptr + b * sm_b + t * sm_t, mask=t_ok, other=float("-inf")).to(tl.float32)
                s = tl.dot(q16, tl.trans(k), input_precision=PRECISION) * scale + bias[None, :]
                m_new = tl.maximum(m, tl.max(s, axis=1))
                shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: p = 0, no NaN
                alpha = tl.exp(m - shift)
                p = tl.exp(s - shift[:, None])
                total = total * alpha + tl.sum(p, axis=1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m = m_new
            out = part_ptr + (bh * SPLITS + split) * (D_PAD + 2)
            first = rows == 0
            tl.store(out + rows[:, None] * 0 + d[None, :], acc, mask=first[:, None])
            tl.store(out + D_PAD + rows * 0, m, mask=first)
            tl.store(out + D_PAD + 1 + rows * 0, total, mask=first)

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
    """The first kernel's launch: ``chunk`` keys loaded at a time (a power of 2, at least 16: a
    tensor-core product's least), ``chunks`` of them per program (so (B * H) x ceil(T / (chunk *
    chunks)) programs), ``warps``, and ``stages`` of Triton's software pipelining of the chunk loop.
    The split of the keys into programs and chunks fixes the order of the sums, so another
    configuration gives other bits (each one reproducible)."""

    chunk: int
    chunks: int
    warps: int
    stages: int


CONFIGS: tuple[tuple[int | None, StepAttentionConfig], ...] = (
    (1, StepAttentionConfig(chunk=16, chunks=1, warps=2, stages=1)),
    (8, StepAttentionConfig(chunk=64, chunks=1, warps=4, stages=1)),
    (None, StepAttentionConfig(chunk=32, chunks=3, warps=4, stages=3)),
)
"""The launch configurations used, as (largest batch or None, configuration); the first that fits the
batch wins (:func:`config_for`). Each is the fastest of 11 (benchmarks/bench_step_attention.py, H200,
session 20, a 288-key cache at 7B shapes, us a layer): 5.9 at batch 1, 15.2 at batch 8 and 44.6 at
batch 32 (3.39 TB/s of K/V: three pipelined 32-key chunks a program), against 6.0, 17.3 and 50.5 for
session 17's kernel (float32 multiply-and-reduce instead of tensor-core products, in its best
configurations). On the whole decoder (alternating processes, device time) batch 32 went from
214.6-214.8 to 213.3-213.6 ms and batch 8 from 72.9-73.0 to 72.5-72.7; batch 1 did not move."""


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
    if not q.is_cuda and q.dtype == torch.bfloat16:
        raise ValueError("Triton's interpreter multiplies bfloat16 blocks wrongly (tl.dot): on the CPU give "
                         "decode_attention float32 or float16 tensors")
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
        STAGES=config.stages, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=config.warps,
    )
    combine_kernel[(batch * heads,)](parts, out, splits, D=dim, D_PAD=d_pad, SPLITS=splits,
                                     S_PAD=max(2, 1 << (splits - 1).bit_length()), num_warps=4)
    return out


@decode_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)
