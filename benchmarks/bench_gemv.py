"""The batch-1 GEMV's launch configurations at Llama-7B shapes on one GPU: time and bits of each.

```bash
python3 benchmarks/bench_gemv.py --json gemv_configs.json            # a launch per call
python3 benchmarks/bench_gemv.py --graph --json gemv_configs_graph.json  # 32 layers' weights in a CUDA graph
```

For each projection of a decode step (q/k/v fused, o, gate/up fused, down, lm_head; bf16, one row):
cuBLAS (``F.linear``), then each candidate (BLOCK_N, BLOCK_K, warps, stages) of
:mod:`vla_spec.model.triton_gemv`'s kernel (the plain product: no norm, add or gate), its weight
bandwidth, and whether its output has the same bits as the first candidate's (the rows' sums are
taken in an order that depends on BLOCK_K). Timed either with ``triton.testing.do_bench`` (a launch
per call: small products are then partly the host's launch time) or, with ``--graph``, as a decode
step runs them: 32 distinct weights (one per layer, so that none is served from L2) launched back to
back in one CUDA graph, per launch the median of 20 replays / 32. ``CONFIG`` in that module is the
one chosen, on the whole decoder rather than on these (H200, session 16: its docstring).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_spec.model.triton_gemv import CONFIG  # noqa: E402

CANDIDATES = (  # BLOCK_N, BLOCK_K, num_warps, num_stages: the autotuner's list before session 15, then six more
    (8, 512, 4, 3), (16, 512, 8, 3), (4, 1024, 4, 3), (8, 1024, 8, 3), (2, 2048, 4, 3),
    (16, 256, 4, 4), (32, 256, 8, 4), (8, 256, 4, 5), (16, 512, 8, 4), (4, 512, 4, 5),
    (2, 1024, 4, 3), (2, 1024, 2, 3), (4, 1024, 4, 1), (4, 2048, 8, 3), (1, 2048, 4, 3), (4, 1024, 8, 3),
)
SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (32064, 4096)}
LAYERS = 32


def graph_us(launch, replays: int = 20) -> tuple[float, list, bool]:
    """Median us per launch of ``launch(i)`` for i < LAYERS, captured back to back in one CUDA graph;
    also what the first replay left in the launches' outputs, and whether the last replay gave the
    same bits."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(LAYERS):  # compile and warm up outside the capture
            launch(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [launch(i) for i in range(LAYERS)]
    graph.replay()
    first = [o.clone() if isinstance(o, torch.Tensor) else o for o in outs]
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / LAYERS)
    same = all(not isinstance(a, torch.Tensor) or torch.equal(a, b) for a, b in zip(first, outs))
    return statistics.median(times), first, same


def launch_us(launch, graph: bool) -> float:
    """us per launch of ``launch(i)``: with ``graph``, :func:`graph_us` over the LAYERS launches; else
    ``triton.testing.do_bench`` of ``launch(0)`` (a launch per call)."""
    import triton.testing

    if graph:
        return graph_us(launch)[0]
    return triton.testing.do_bench(lambda: launch(0), warmup=50, rep=300) * 1e3


def main() -> int:
    import triton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="time 32 layers' launches in one CUDA graph")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from vla_spec.model.triton_gemv_kernel import gemv as kernel

    generator = torch.Generator(device="cuda").manual_seed(0)
    report = {"chosen": CONFIG, "timing": "cuda graph of 32 layers" if args.graph else "do_bench", "shapes": {}}
    for name, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, device="cuda", generator=generator).bfloat16() * 0.02
                   for _ in range(LAYERS if args.graph else 1)]
        x = torch.randn(k, device="cuda", generator=generator).bfloat16()

        outputs = [torch.empty(n, dtype=torch.bfloat16, device="cuda") for _ in weights]
        us = launch_us(lambda i: torch.mv(weights[i], x, out=outputs[i]), args.graph)
        rows = [{"config": "cublas", "us": round(us, 2), "TB/s": round(n * k * 2 / us / 1e6, 2)}]
        print(f"{name:8s} [{n}x{k}] {rows[-1]}", flush=True)
        first = None
        for block_n, block_k, warps, stages in CANDIDATES:

            def launch(i: int) -> None:
                kernel[(triton.cdiv(n, block_n),)](
                    x, x, weights[i], weights[i], weights[i], weights[i], outputs[i], outputs[i], n, k, 0.0,
                    NORM=False, HAS_BIAS=False, SWIGLU=False, RESIDUAL=False, BLOCK_N=block_n, BLOCK_K=block_k,
                    num_warps=warps, num_stages=stages)

            launch(0)
            first = outputs[0].clone() if first is None else first
            same = bool(torch.equal(outputs[0], first))
            us = launch_us(launch, args.graph)
            rows.append({"config": f"{block_n}x{block_k} w{warps} s{stages}", "us": round(us, 2),
                         "TB/s": round(n * k * 2 / us / 1e6, 2), "same_bits_as_first": same})
            print(f"{name:8s} [{n}x{k}] {rows[-1]}", flush=True)
        report["shapes"][name] = rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
