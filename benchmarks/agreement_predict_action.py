"""Which path moves a row's tokens beyond a bfloat16 near-tie of naive, on ``bench_predict_action.py``'s inputs.

The 7B-shaped model and images of the benchmark (the same seed and draw order: ``--after`` lists the
batch sizes drawn before this one), then ``predict_action``: naive twice (is the reference itself
reproducible?), ours with each ``--step-kernels`` value (``FastGreedyDecoder(step_attention_backend=...)``;
``default`` = the decoder's default). Per path, naive's second call included (the reference's own
spread, which a tie rule must cover): rows identical to naive run 1 and the rows whose first
difference is not at a near-tie, with naive's margin and top-1 logit at that step; and how far its
top-1 logits and margins lie from naive's where the conditioning is the same.

Usage (GPU machine)::

    PYTHONUNBUFFERED=1 python3 benchmarks/agreement_predict_action.py --batch 32 --after 1 8
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_predict_action import (  # noqa: E402
    INSTRUCTION, UNNORM_KEY, agreement, build_random_openvla, openvla_7b_config,
)
from vla_spec.model.agreement import ulp  # noqa: E402
from vla_spec.model.fast_decoding import FastGreedyDecoder, accelerate, restore  # noqa: E402


def report_against_naive(name: str, other: Any, naive: Any) -> None:
    """Print ``other``'s agreement with naive's first call, with both margins and naive's top-1 logit
    at each first difference that is not at a near-tie."""
    report = agreement(other.token_ids, naive.token_ids, naive.margins, naive.top_logits)
    for problem in report["problems"]:
        row, step = (int(word) for word in problem.split(":")[0].replace("row", "").split("step"))
        print(f"#   {problem}: naive margin {naive.margins[row, step]:.4f}, top-1 logit "
              f"{naive.top_logits[row, step]:.4f}; {name} margin {other.margins[row, step]:.4f}", flush=True)
    print(f"# {name}: {report}", flush=True)


def logit_spread(name: str, other: Any, naive: Any) -> None:
    """Print how far ``other``'s top-1 logits and margins lie from naive's first call at the steps
    whose conditioning is the same (each row up to and including its first differing token): max,
    p99 and median of the absolute differences, and the max in bfloat16 ulps of naive's top-1 logit
    (the yardstick a dtype-aware tie rule needs)."""
    differs = np.asarray(other.token_ids) != np.asarray(naive.token_ids)
    same_prefix = np.cumsum(differs, axis=1) - differs == 0  # no difference before this step
    top = np.asarray(naive.top_logits, dtype=np.float64)[same_prefix]
    d_top = np.abs(np.asarray(other.top_logits, dtype=np.float64)[same_prefix] - top)
    d_margin = np.abs(np.asarray(other.margins, dtype=np.float64)[same_prefix]
                      - np.asarray(naive.margins, dtype=np.float64)[same_prefix])
    ulps = d_top / ulp(top, "bfloat16")
    print(f"# {name}: spread over {top.size} steps with naive's conditioning: |d top-1 logit| max {d_top.max():.4f} "
          f"p99 {np.percentile(d_top, 99):.4f} median {np.median(d_top):.4f} (max {ulps.max():.1f} bf16 ulps of the "
          f"logit); |d margin| max {d_margin.max():.4f} p99 {np.percentile(d_margin, 99):.4f} "
          f"median {np.median(d_margin):.4f}; top-1 logits {top.min():.2f}..{top.max():.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--after", type=int, nargs="*", default=[1, 8], help="batch sizes the benchmark drew first")
    parser.add_argument("--step-kernels", nargs="+", default=["default", "sdpa"])
    args = parser.parse_args(argv)
    model = build_random_openvla(openvla_7b_config(), "cuda", torch.bfloat16)
    rng = np.random.default_rng(0)
    for before in args.after:
        [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(before)]
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(args.batch)]
    texts = [INSTRUCTION] * args.batch
    model.pixels_on_device = False  # the benchmark's naive path: float32 host pixels, eager towers
    naive = [model.predict_action(images, texts, UNNORM_KEY) for _ in range(2)]
    same = all(np.array_equal(getattr(naive[0], f), getattr(naive[1], f)) for f in ("token_ids", "margins", "top_logits"))
    print(f"# naive run 2 == run 1 (ids, margins, top-1 logits, bitwise): {same}", flush=True)
    report_against_naive("naive run 2", naive[1], naive[0])  # the reference's own spread: the tie rule's yardstick
    logit_spread("naive run 2", naive[1], naive[0])
    model.pixels_on_device = True
    for kernel in args.step_kernels:
        accelerate(model, decoder=FastGreedyDecoder(step_attention_backend=None if kernel == "default" else kernel))
        ours = model.predict_action(images, texts, UNNORM_KEY)
        report_against_naive(f"step kernel {kernel}", ours, naive[0])
        logit_spread(f"step kernel {kernel}", ours, naive[0])
        model.decoder.clear()
        restore(model)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
