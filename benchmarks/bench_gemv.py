"""The batch-1 GEMV's launch configurations at Llama-7B shapes on one GPU: time and bits of each.

```bash
python3 benchmarks/bench_gemv.py --json gemv_configs.json
```

For each projection of a decode step (q/k/v fused, o, gate/up fused, down, lm_head; bf16, one row):
each candidate (BLOCK_N, BLOCK_K, warps, stages) of :func:`vla_spec.model.triton_gemv.gemv`'s
kernel, timed with ``triton.testing.do_bench`` (a launch per call, no CUDA graph), its weight
bandwidth, and whether its output has the same bits as the first candidate's (the rows' sums are
taken in an order that depends on BLOCK_K). ``CONFIG`` in that module is the one chosen from
these (H200, session 15: ``results/h200_s15_gemv_configs.json``, measured when the kernel was still
autotuned over these same ten candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_spec.model.triton_gemv import CONFIG, _gemv_kernel  # noqa: E402

CANDIDATES = (  # BLOCK_N, BLOCK_K, num_warps, num_stages: the autotuner's list before session 15
    (8, 512, 4, 3), (16, 512, 8, 3), (4, 1024, 4, 3), (8, 1024, 8, 3), (2, 2048, 4, 3),
    (16, 256, 4, 4), (32, 256, 8, 4), (8, 256, 4, 5), (16, 512, 8, 4), (4, 512, 4, 5),
)
SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (32064, 4096)}


def main() -> int:
    import triton
    import triton.testing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernel = _gemv_kernel()
    generator = torch.Generator(device="cuda").manual_seed(0)
    report = {"chosen": CONFIG, "shapes": {}}
    for name, (n, k) in SHAPES.items():
        weight = torch.randn(n, k, device="cuda", generator=generator).bfloat16() * 0.02
        x = torch.randn(k, device="cuda", generator=generator).bfloat16()
        first, rows = None, []
        for block_n, block_k, warps, stages in CANDIDATES:
            y = torch.empty(n, dtype=torch.bfloat16, device="cuda")

            def call() -> None:
                kernel[(triton.cdiv(n, block_n),)](x, weight, weight, y, n, k, HAS_BIAS=False, BLOCK_N=block_n,
                                                   BLOCK_K=block_k, num_warps=warps, num_stages=stages)

            call()
            first = y.clone() if first is None else first
            ms = triton.testing.do_bench(call, warmup=50, rep=300)
            rows.append({"config": f"{block_n}x{block_k} w{warps} s{stages}", "us": round(ms * 1e3, 2),
                         "TB/s": round(n * k * 2 / ms / 1e9, 2), "same_bits_as_first": bool(torch.equal(y, first))})
            print(f"{name:8s} [{n}x{k}] {rows[-1]}", flush=True)
        report["shapes"][name] = rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
