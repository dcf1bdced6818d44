"""The prefill's attention alone, at 7B shapes on one GPU: our Triton kernel against SDPA's kernels.

```bash
python3 benchmarks/bench_attention.py --batches 1 8 32 --iters 50 --json attention.json
```

Per batch B: q [B, 32, 280, 128] (strided as the layer makes it), the cache K, V [B, 32, 288, 128]
bf16, the decoder's prefill mask (causal, 3 left-padded positions per row, a padded query sees
itself) as the additive [B, 1, 280, 288] bias. Times (CUDA events, median and p10-p90 of
``--iters`` calls after 5 warm-ups) of :func:`vla_spec.model.triton_attention.prefill_attention`
(autotuned; its config is printed) and of ``scaled_dot_product_attention`` with torch's choice and
with each backend that takes the mask; the error of each against float64 SDPA on the same inputs;
whether two calls are bitwise equal. One layer's figure: the prefill runs 31 such calls (the last
layer attends for the last position only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_spec.model.static_llama import sdpa_backend  # noqa: E402
from vla_spec.model.triton_attention import _prefill_kernel, prefill_attention  # noqa: E402


def inputs(batch: int, heads: int = 32, dim: int = 128, length: int = 280, cache: int = 288, pad: int = 3):
    generator = torch.Generator(device="cuda").manual_seed(batch)
    q = torch.randn(batch, length, heads, dim, device="cuda", generator=generator).bfloat16().transpose(1, 2)
    k, v = (torch.randn(batch, heads, cache, dim, device="cuda", generator=generator).bfloat16() for _ in range(2))
    valid = torch.ones(batch, cache, dtype=torch.bool, device="cuda")
    valid[:, :pad] = False
    causal = torch.ones(length, cache, dtype=torch.bool, device="cuda").tril()
    eye = torch.eye(length, cache, dtype=torch.bool, device="cuda")
    allowed = ((causal[None] & valid[:, None, :]) | eye[None])[:, None]
    mask = torch.zeros(allowed.shape, dtype=torch.bfloat16, device="cuda").masked_fill_(~allowed, float("-inf"))
    return q, k, v, mask


def timed(fn, iters: int) -> tuple[float, float, float]:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    t = torch.tensor(times)
    return t.median().item(), t.quantile(0.1).item(), t.quantile(0.9).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for batch in args.batches:
        q, k, v, mask = inputs(batch)
        want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
        kernels = {"ours (triton)": lambda: prefill_attention(q, k, v, mask)}
        for name in (None, "cudnn", "efficient", "math"):
            def sdpa(name=name):
                with sdpa_backend(name)():
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
            kernels[f"sdpa {name or 'torch choice'}"] = sdpa
        for name, fn in kernels.items():
            try:
                got = fn()
            except RuntimeError as error:  # a backend that does not take this mask
                print(f"batch {batch:2d} {name:20s} not run: {str(error).splitlines()[0]}", flush=True)
                continue
            error = (got.double() - want.transpose(1, 2)).abs().max().item()
            same = torch.equal(fn(), got)
            median, p10, p90 = timed(fn, args.iters)
            row = {"batch": batch, "kernel": name, "ms": median, "p10": p10, "p90": p90, "max_error": error,
                   "replay_bitwise_equal": same}
            rows.append(row)
            print(f"batch {batch:2d} {name:20s} {median * 1e3:8.1f} us ({p10 * 1e3:.1f}-{p90 * 1e3:.1f}) "
                  f"error {error:.2e} replay {'same' if same else 'DIFFERS'}", flush=True)
        best = _prefill_kernel().best_config
        print(f"batch {batch:2d} triton config: {best}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
