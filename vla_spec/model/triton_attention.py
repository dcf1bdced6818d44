"""Triton attention kernels over the static KV cache: the prefill's and the decode steps'.

Both compute ``softmax(q . K^T / sqrt(d) + mask) V`` with float32 accumulation over the cache
K, V [B, KV, T, d] read as they are (query head h reads K/V head ``h // (H / KV)``), with no atomics
and no order that depends on timing, so a replay gives bitwise the same result.

* :func:`decode_attention`, one query row per (sequence, head) (the decode steps), in two kernels:
  each block of :data:`BLOCK_T` keys of each (b, h) gives its partial softmax (max score, sum of
  exponentials, weighted sum of values), then one program per (b, h) combines the blocks in a fixed
  order. torch's cuDNN kernel for this shape is not reproducible (benchmarks/README.md, session 10),
  and its "efficient" kernel is reproducible but slower.
* :func:`prefill_attention`, the prefill's L query rows at cache positions 0 .. L-1: a
  flash-attention forward (one program per block of queries of one (b, h), an online softmax over
  blocks of keys) that applies the causal rule itself and reads only the keys at or before each
  block's last query, so that about half of the [L, L] scores are never computed; the additive mask
  (left padding) is read per tile. SDPA's kernels compute every score under the full mask.

Registered as the custom ops ``vla_spec::decode_attention`` and ``vla_spec::prefill_attention``
(opaque to ``torch.compile``, captured in CUDA graphs). CUDA only; Triton is imported on first use.
Used by :mod:`vla_spec.model.static_llama` (``step_attention_backend="triton"``,
``attention_backend="triton"``).
"""

from __future__ import annotations

import math
from typing import Any

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
            D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_T: tl.constexpr, SPLITS: tl.constexpr,
        ):
            """Program (b * heads + h, s): keys s * BLOCK_T ... of sequence b, head h -> (max score,
            sum of exp, exp-weighted sum of values) in float32 at part[b * heads + h, s]."""
            bh = tl.program_id(0)
            split = tl.program_id(1)
            b = bh // heads
            g = (bh % heads) // group
            d = tl.arange(0, D_PAD)
            d_ok = d < D
            t = split * BLOCK_T + tl.arange(0, BLOCK_T)
            t_ok = t < length
            both = t_ok[:, None] & d_ok[None, :]
            q = tl.load(q_ptr + b * sq_b + (bh % heads) * sq_h + d, mask=d_ok, other=0.0).to(tl.float32) * scale
            k = tl.load(k_ptr + b.to(tl.int64) * sk_b + g * sk_h + t[:, None] * sk_t + d[None, :], mask=both, other=0.0)
            v = tl.load(v_ptr + b.to(tl.int64) * sv_b + g * sv_h + t[:, None] * sv_t + d[None, :], mask=both, other=0.0)
            bias = tl.load(mask_ptr + b * sm_b + t * sm_t, mask=t_ok, other=float("-inf")).to(tl.float32)
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) + bias
            m = tl.max(s, axis=0)
            p = tl.exp(s - tl.where(m == float("-inf"), 0.0, m))  # a block of masked keys: p = 0, no NaN
            out = part_ptr + (bh * SPLITS + split) * (D_PAD + 2)
            tl.store(out + d, tl.sum(p[:, None] * v.to(tl.float32), axis=0))
            tl.store(out + D_PAD, m)
            tl.store(out + D_PAD + 1, tl.sum(p, axis=0))

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


BLOCK_T = 32
"""Keys per program of the first kernel: (B * H) x ceil(T / BLOCK_T) programs, each loading its keys
and values at once (a 288-key cache at 7B shapes: 9 programs per sequence and head)."""


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
    partial_kernel, combine_kernel = _kernels()
    splits = -(-length // BLOCK_T)
    d_pad = max(16, 1 << (dim - 1).bit_length())
    parts = torch.empty(batch * heads, splits, d_pad + 2, dtype=torch.float32, device=q.device)
    out = torch.empty(batch, heads, 1, dim, dtype=q.dtype, device=q.device)
    mask = mask.expand(batch, 1, 1, length)
    partial_kernel[(batch * heads, splits)](
        q, k, v, mask, parts, heads, heads // kv_heads, length, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0), mask.stride(3), D=dim, D_PAD=d_pad, BLOCK_T=BLOCK_T, SPLITS=splits, num_warps=4,
    )
    combine_kernel[(batch * heads,)](parts, out, splits, D=dim, D_PAD=d_pad, SPLITS=splits,
                                     S_PAD=max(2, 1 << (splits - 1).bit_length()), num_warps=4)
    return out


@decode_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)


_PREFILL: dict[str, Any] = {}


def _prefill_kernel() -> Any:
    """The flash-attention forward of :func:`prefill_attention`, autotuned per (length, head size)."""
    if "kernel" not in _PREFILL:
        import triton
        import triton.language as tl

        @triton.autotune(
            configs=[
                triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=stages)
                for m, n, w, stages in ((64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 4, 3),
                                        (64, 32, 4, 3), (128, 64, 4, 3))
            ],
            key=["length", "D_PAD"],
        )
        @triton.jit
        def prefill_kernel(
            q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, heads, group, length, scale,
            sq_b, sq_h, sq_l, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sm_b, sm_l, sm_t, so_b, so_l, so_h,
            D: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr,
        ):
            """Program (m, b * heads + h): queries m * BLOCK_M ... of sequence b, head h, over the keys
            0 .. (m + 1) * BLOCK_M - 1 (the causal rule), in blocks of BLOCK_N, in order."""
            block = tl.program_id(0)
            bh = tl.program_id(1)
            b = (bh // heads).to(tl.int64)
            h = bh % heads
            g = h // group
            rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
            rows_ok = rows < length
            d = tl.arange(0, D_PAD)
            d_ok = d < D
            q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_l + d[None, :],
                        mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
            k_base = k_ptr + b * sk_b + g * sk_h
            v_base = v_ptr + b * sv_b + g * sv_h
            best = tl.full([BLOCK_M], float("-inf"), tl.float32)
            total = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
            stop = tl.minimum((block + 1) * BLOCK_M, length)
            for start in range(0, stop, BLOCK_N):
                keys = start + tl.arange(0, BLOCK_N)
                keys_ok = keys < length
                kv_ok = keys_ok[:, None] & d_ok[None, :]
                k = tl.load(k_base + keys[:, None] * sk_t + d[None, :], mask=kv_ok, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                bias = tl.load(mask_ptr + b * sm_b + rows[:, None] * sm_l + keys[None, :] * sm_t,
                               mask=rows_ok[:, None] & keys_ok[None, :], other=float("-inf")).to(tl.float32)
                s = tl.where(keys[None, :] <= rows[:, None], s + bias, float("-inf"))
                new_best = tl.maximum(best, tl.max(s, axis=1))
                shift = tl.where(new_best == float("-inf"), 0.0, new_best)  # all masked so far: no NaN
                p = tl.exp(s - shift[:, None])
                alpha = tl.exp(best - shift)
                total = total * alpha + tl.sum(p, axis=1)
                v = tl.load(v_base + keys[:, None] * sv_t + d[None, :], mask=kv_ok, other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                best = new_best
            out = acc / total[:, None]
            tl.store(out_ptr + b * so_b + rows[:, None] * so_l + h * so_h + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=rows_ok[:, None] & d_ok[None, :])

        _PREFILL["kernel"] = prefill_kernel
    return _PREFILL["kernel"]


@torch.library.custom_op("vla_spec::prefill_attention", mutates_args=())
def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The prefill's attention: q [B, H, L, d] for cache positions 0 .. L-1, k and v [B, KV, T, d]
    (T >= L, H a multiple of KV, last dimensions contiguous), the additive mask [B, 1, L, T] (0 /
    -inf), on top of which key j > query i is never attended (the causal rule, applied by the kernel:
    the prefill's mask has it already). Every query row needs one finite key at or before it.
    Returns [B, L, H, d] (the layout o_proj reads) in q's dtype; equal to
    ``scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)`` up to rounding."""
    batch, heads, length, dim = q.shape
    kv_heads, cache = k.shape[1], k.shape[2]
    if not q.is_cuda:
        raise ValueError("attention_backend='triton' needs CUDA tensors: on the CPU use an SDPA backend (None)")
    if heads % kv_heads or cache < length or tuple(mask.shape[-2:]) != (length, cache) or not (
        q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    ):
        raise ValueError(f"prefill_attention needs q [B, H, L, d], k/v [B, KV, T, d] with T >= L, H a multiple of KV "
                         f"and contiguous last dims, mask [B, 1, L, T]; got q {list(q.shape)}, k {list(k.shape)}, "
                         f"mask {list(mask.shape)}")
    return _prefill(q, k, v, mask)


def _prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, blocks: tuple[int, int] | None = None
) -> torch.Tensor:
    """:func:`prefill_attention`'s launch, unchecked: autotuned, or with ``blocks`` = (BLOCK_M,
    BLOCK_N) as given (so it also runs on CPU tensors under ``TRITON_INTERPRET=1``)."""
    batch, heads, length, dim = q.shape
    kv_heads, cache = k.shape[1], k.shape[2]
    out = torch.empty(batch, length, heads, dim, dtype=q.dtype, device=q.device)
    mask = mask.expand(batch, 1, length, cache)
    d_pad = max(16, 1 << (dim - 1).bit_length())
    kernel, config = _prefill_kernel(), {}
    if blocks is not None:
        kernel, config = kernel.fn, {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}
    kernel[lambda meta: (-(-length // meta["BLOCK_M"]), batch * heads)](
        q, k, v, mask, out, heads, heads // kv_heads, length, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), mask.stride(0), mask.stride(2), mask.stride(3),
        out.stride(0), out.stride(1), out.stride(2),
        D=dim, D_PAD=d_pad, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config,
    )
    return out


@prefill_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
