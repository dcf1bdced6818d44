"""The decode steps' attention at Llama-7B shapes on one GPU: launch configurations of our Triton kernel.

```bash
python3 benchmarks/bench_step_attention.py --batches 1 8 32 --json step_attention.json
```

One query row per (sequence, head) over the whole static cache [B, 32, T, 128] (T = 288, the
benchmark's bucket) under an additive mask, as a decode step runs it
(:func:`vla_spec.model.triton_attention.decode_attention`). For each candidate
:class:`~vla_spec.model.triton_attention.StepAttentionConfig` (keys per chunk, chunks per program,
warps, pipelining stages), and for torch's SDPA kernels beside them: us per layer, timed as a step
runs them (32 distinct caches, one per layer, so that none is served from L2, back to back in one
CUDA graph; the median of 20 replays / 32), the K/V bandwidth that makes, the largest difference
from float32 (math backend), whether a second replay gives the same bits, and whether the bits are
those of the first candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vla_spec.model.triton_attention as step_attention  # noqa: E402
from benchmarks.bench_gemv import LAYERS, graph_us  # noqa: E402
from benchmarks.bench_prefill_attention import HEAD_DIM, HEADS  # noqa: E402

CANDIDATES = (  # chunk, chunks, warps, stages
    (64, 1, 4, 1), (16, 1, 2, 1), (16, 1, 4, 1), (32, 1, 4, 1), (64, 1, 8, 1), (128, 1, 4, 1), (128, 1, 8, 1),
    (32, 2, 4, 2), (64, 2, 4, 2), (16, 3, 4, 3), (32, 3, 4, 3),
)


def main() -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--cache-len", type=int, default=288)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dev, dtype, cache_len = "cuda", torch.bfloat16, args.cache_len
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; cache T {cache_len}, {HEADS} heads x "
          f"{HEAD_DIM}; us per layer, median of 20 graph replays of {LAYERS} layers", flush=True)
    rows = []
    for batch in args.batches:
        gen = torch.Generator(device=dev).manual_seed(batch)
        q = [torch.randn(batch, HEADS, 1, HEAD_DIM, device=dev, dtype=dtype, generator=gen) for _ in range(LAYERS)]
        k = [torch.randn(batch, HEADS, cache_len, HEAD_DIM, device=dev, dtype=dtype, generator=gen) for _ in range(LAYERS)]
        v = [torch.randn(batch, HEADS, cache_len, HEAD_DIM, device=dev, dtype=dtype, generator=gen) for _ in range(LAYERS)]
        valid = torch.arange(cache_len, device=dev) < cache_len - 5  # the last keys not written yet
        mask = torch.zeros(batch, 1, 1, cache_len, device=dev, dtype=dtype).masked_fill_(~valid, float("-inf"))
        with sdpa_kernel(SDPBackend.MATH):
            reference = [F.scaled_dot_product_attention(q[i].float(), k[i].float(), v[i].float(), attn_mask=mask.float())
                         for i in (0, LAYERS - 1)]
        gigabytes = batch * HEADS * cache_len * HEAD_DIM * 2 * 2 / 1e9
        first_bits = None
        variants = [(f"triton {c}", c) for c in CANDIDATES] + [
            (f"sdpa {name}", backend) for name, backend in
            (("torch's choice", None), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION))
        ]
        for name, variant in variants:
            if isinstance(variant, tuple):
                step_attention.CONFIGS = ((None, step_attention.StepAttentionConfig(*variant)),)
                context = contextlib.nullcontext()

                def call(i):
                    return step_attention.decode_attention(q[i], k[i], v[i], mask)
            else:
                context = sdpa_kernel(variant) if variant is not None else contextlib.nullcontext()

                def call(i):
                    return F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=mask)
            with context:
                us, outs, same = graph_us(call)
            error = max((outs[i].float() - ref).abs().max().item() for i, ref in zip((0, LAYERS - 1), reference))
            if first_bits is None:
                first_bits = outs
            same_as_first = all(torch.equal(a, b) for a, b in zip(outs, first_bits))
            rows.append({"batch": batch, "variant": name, "us": us, "tb_per_s": gigabytes / us * 1e3,
                         "error": error, "replay_same": same, "bits_as_first": same_as_first})
            print(f"batch {batch:2d} {name:28s} {us:8.1f} us  {gigabytes / us * 1e3:5.2f} TB/s  error {error:.2e}  "
                  f"replay {'same' if same else 'DIFFERENT'}  bits {'=' if same_as_first else '!='} first", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "cache_len": cache_len, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
