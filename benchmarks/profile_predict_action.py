"""Where the time of one fast ``predict_action`` goes, per batch size (7B-shaped model, random bf16).

For each ``--batches`` size: wall time of the call and of its CPU preprocessing, device time of the
towers + projector graph, of ``embed_prefix`` and of the decoder graph (CUDA events), then one call
under the torch profiler, summarized to text: the top kernels by device time, the device time by
kind of kernel (GEMM, GEMV, attention, elementwise/reductions, copies), and the busy time of the
GPU against the wall span of the call (the difference is idle time: host work, launch gaps).
``--towers-only``: just the kernels of the compiled towers + projector graph, then the same compiled
towers without a graph, with the CPU op that launched each of the top kernels.
``--micro`` adds the ceilings (GEMV bandwidth per Llama shape, cuBLAS vs the Triton GEMV).

Usage (GPU machine)::

    PYTHONUNBUFFERED=1 python benchmarks/profile_predict_action.py --batches 1 8 32 --out prof/
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_predict_action import (  # noqa: E402
    INSTRUCTION, LLAMA2_7B, UNNORM_KEY, build_random_openvla, cuda_ms, hf_static_generate, openvla_7b_config, timed,
)
from vla_spec.model.fast_decoding import FastGreedyDecoder, accelerate  # noqa: E402
from vla_spec.model.fast_vision import GraphedVision  # noqa: E402

KINDS = (  # (kind, substrings of the kernel name), first match wins
    ("gemv (triton)", ("gemv",)),
    ("attention", ("flash", "fmha", "attention", "softmax", "sdpa", "efficient")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "wgmma", "matmul")),
    ("copy/memset", ("memcpy", "memset", "copy", "cat", "fill")),
    ("elementwise/reduce", ("triton", "elementwise", "reduce", "vectorized", "unrolled", "norm", "gelu", "silu")),
)


def kind_of(name: str, kinds: tuple[tuple[str, tuple[str, ...]], ...] = KINDS) -> str:
    """The first kind of ``kinds`` (default :data:`KINDS`) one of whose substrings is in the kernel's
    name (lower case), else "other"."""
    low = name.lower()
    return next((kind for kind, keys in kinds if any(k in low for k in keys)), "other")


def summarize(prof, title: str, out) -> None:
    """Kernel tables of one profiled region: top kernels, time per kind, busy vs span."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = defaultdict(list)
    intervals = []
    for e in events:
        dur = e.time_range.end - e.time_range.start
        by_name[e.name].append(dur)
        intervals.append((e.time_range.start, e.time_range.end))
    intervals.sort()
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in intervals:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    span = (intervals[-1][1] - intervals[0][0]) if intervals else 0.0
    total = sum(sum(v) for v in by_name.values())
    kinds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for name, durs in by_name.items():
        kinds[kind_of(name)] += sum(durs)
        counts[kind_of(name)] += len(durs)
    lines = [f"## {title}", f"kernels {len(events)}, kernel time {total / 1e3:.2f} ms, GPU busy {busy / 1e3:.2f} ms, "
             f"first-to-last-kernel span {span / 1e3:.2f} ms (idle inside span {(span - busy) / 1e3:.2f} ms)"]
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:22s} {us / 1e3:8.2f} ms  {counts[kind]:6d} kernels")
    lines.append("  top kernels (total ms, count, mean us):")
    for name, durs in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]:
        lines.append(f"  {sum(durs) / 1e3:8.2f} {len(durs):6d} {statistics.mean(durs):9.1f}  {name[:150]}")
    text = "\n".join(lines)
    print(text, flush=True)
    out.write(text + "\n\n")


def launchers(prof, title: str, out, top: int = 15) -> None:
    """For the top kernels by device time, the CPU ops that launched them (the innermost recorded op,
    up to three of its parents, its input shapes) with count and device ms. Only for a profile
    without CUDA graphs: a replay's kernels have no launching op."""
    by_kernel: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0.0]))
    for event in prof.events():
        chain, parent = [event.name], event.cpu_parent
        while parent is not None and len(chain) < 4:
            chain.append(parent.name)
            parent = parent.cpu_parent
        for kernel in event.kernels:
            entry = by_kernel[kernel.name][(" < ".join(chain)[:160], str(event.input_shapes)[:120])]
            entry[0] += 1
            entry[1] += kernel.duration
    lines = [f"## {title}: who launched the top kernels (count, device ms, op < parents, input shapes)"]
    for name, sources in sorted(by_kernel.items(), key=lambda kv: -sum(v[1] for v in kv[1].values()))[:top]:
        lines.append(f"  {name[:150]}")
        for (chain, shapes), (count, us) in sorted(sources.items(), key=lambda kv: -kv[1][1])[:4]:
            lines.append(f"      {count:5d} {us / 1e3:7.2f}  {chain}  {shapes}")
    text = "\n".join(lines)
    print(text, flush=True)
    out.write(text + "\n\n")


def profiled(fn, title: str, out, record_shapes: bool = False) -> Any:
    """One call of ``fn`` (after one unprofiled call) under the torch profiler, summarized to ``out``;
    returns the profile."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=record_shapes) as prof:
        fn()
        torch.cuda.synchronize()
    summarize(prof, title, out)
    cpu_table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60)
    out.write(f"## {title}: CPU ops\n{cpu_table}\n\n")
    return prof


def micro_gemv(out) -> None:
    """Bandwidth of one-row products per Llama-7B shape: cuBLAS and the Triton GEMV."""
    from vla_spec.model.triton_gemv import gemv

    shapes = {"q/k/v or o": (4096, 4096), "qkv fused": (12288, 4096), "gate/up": (11008, 4096),
              "gate+up fused": (22016, 4096), "down": (4096, 11008), "lm_head": (32064, 4096)}
    for label, (n, k) in shapes.items():
        copies = max(2, int(2e9 // (n * k * 2)))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        gb = n * k * 2 / 1e9
        for name, fn in (("cublas", torch.nn.functional.linear), ("triton", lambda x, w: gemv(x, w, None))):
            ms = cuda_ms(lambda fn=fn, x=x, ws=ws: [fn(x, w) for w in ws], 10) / copies
            line = f"micro gemv {label:14s} [{n}x{k}] {name:7s} {ms * 1e3:7.1f} us {gb / ms:5.2f} TB/s"
            print(line, flush=True)
            out.write(line + "\n")
        ws.clear()
    x = torch.empty(int(4e9) // 2, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = cuda_ms(lambda x=x, y=y: y.copy_(x), 10)
    line = f"micro copy 4 GB d2d: {ms:.2f} ms, {2 * 4 / ms:.2f} TB/s (read + write)"
    print(line, flush=True)
    out.write(line + "\n\n")


def two_stream_towers_ms(model, pixels: torch.Tensor, iters: int) -> tuple[float, float]:
    """Experiment: device ms of a graph of the two towers + projector on one stream vs two streams."""
    pixels = pixels.to(device="cuda", dtype=model.dtype)
    dino_in, siglip_in = torch.split(pixels, [3, 3], dim=1)
    backbone = model.vision_backbone

    def one():
        return model.projector(torch.cat([backbone.featurizer(dino_in), backbone.fused_featurizer(siglip_in)], dim=2))

    side = torch.cuda.Stream()

    def two():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            b = backbone.fused_featurizer(siglip_in)
        a = backbone.featurizer(dino_in)
        torch.cuda.current_stream().wait_stream(side)
        return model.projector(torch.cat([a, b], dim=2))

    result = []
    for fn in (one, two):
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        result.append(cuda_ms(graph.replay, iters))
    return result[0], result[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--hf-static", action="store_true", help="also time transformers' static-cache generate")
    parser.add_argument("--vision-compile-mode", default=None,
                        help="torch.compile mode of the towers + projector (accelerate(vision_compile_mode=...))")
    parser.add_argument("--towers-only", action="store_true",
                        help="only the kernels of the compiled towers + projector graph, per batch")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    out = (args.out / "profile.txt").open("w")
    import timm
    import transformers

    env = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, transformers {transformers.__version__}, timm {timm.__version__}"
    print(env, flush=True)
    out.write(env + "\n")
    model = build_random_openvla(openvla_7b_config(text_config=LLAMA2_7B), "cuda", torch.bfloat16)
    fused_attn = {name: getattr(m, "fused_attn", None) for name, m in model.vision_backbone.named_modules()
                  if name.endswith("blocks.0.attn")}
    out.write(f"timm fused_attn (SDPA) in block 0: {fused_attn}\n")
    if args.micro:
        micro_gemv(out)
    accelerate(model, vision_compile_mode=args.vision_compile_mode)
    from vla_spec.model.processor import process_images

    if args.towers_only:  # the same compiled towers without a graph, for who launched each kernel
        ungraphed = GraphedVision(model, compile_vision=True, use_cuda_graphs=False, compile_mode=args.vision_compile_mode)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
        texts = [INSTRUCTION] * batch

        def call():
            return model.predict_action(images, texts, UNNORM_KEY)

        if args.towers_only:
            with torch.inference_mode():
                pixels = model.processor(images, texts).pixel_values_on("cuda", model.dtype)
                vis = cuda_ms(lambda: model.encode_images(pixels), args.iters)
                profiled(lambda: model.encode_images(pixels), f"batch {batch}: towers+projector, compiled, graph "
                         f"({vis:.2f} ms device)", out)
                title = f"batch {batch}: towers+projector, compiled, no graph"
                launchers(profiled(lambda: ungraphed(pixels), title, out, record_shapes=True), title, out)
            continue

        wall, times, _ = timed(call, args.iters, 2)
        pre, _, _ = timed(lambda: process_images(images), args.iters, 1)
        with torch.inference_mode():
            pixels = model.processor(images, texts).pixel_values_on("cuda", model.dtype)
            ids = model.processor.prompt_ids(texts)
            prefix = model.embed_prefix(pixels, ids)
            vis = cuda_ms(lambda: model.encode_images(pixels), args.iters)
            emb = cuda_ms(lambda: model.embed_prefix(pixels, ids), args.iters)
            dec = cuda_ms(lambda: model.decoder(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7),
                          args.iters)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                model.embed_prefix(pixels, ids)
            torch.cuda.synchronize()
            emb_wall = (time.perf_counter() - t0) * 1e3 / args.iters
            one, two = two_stream_towers_ms(model, pixels, args.iters)
        out.write(f"# batch {batch}: towers+projector graph one stream {one:.2f} ms, two streams {two:.2f} ms\n")
        print(f"# batch {batch}: towers one stream {one:.2f} ms, two streams {two:.2f} ms", flush=True)
        line = (f"# batch {batch}: predict_action wall {wall:.1f} ms (min {min(times):.1f}, max {max(times):.1f}); "
                f"CPU float32 preprocessing {pre:.1f} ms; towers+projector graph {vis:.2f} ms; "
                f"embed_prefix {emb:.2f} ms device / {emb_wall:.2f} ms wall; decoder graph {dec:.2f} ms")
        print(line, flush=True)
        out.write(line + "\n\n")
        profiled(call, f"batch {batch}: predict_action (fast, graphs)", out)
        with torch.inference_mode():
            profiled(lambda: model.encode_images_eager(pixels), f"batch {batch}: towers+projector eager", out)
            eager = FastGreedyDecoder(use_cuda_graphs=False)
            profiled(lambda: eager(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7),
                     f"batch {batch}: decoder eager (static cache, compiled pieces)", out)
            eager.clear()
        if args.hf_static:
            with torch.inference_mode():
                t0 = time.perf_counter()
                hf_static_generate(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
            hf, hf_times, _ = timed(lambda: hf_static_generate(model.language_model, prefix.inputs_embeds,
                                                               prefix.attention_mask, 7), args.iters, 2)
            ours, _, _ = timed(lambda: model.decoder(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
                               .token_ids.cpu(), args.iters, 2)
            line = (f"# batch {batch}: transformers static-cache generate {hf:.1f} ms (first call {first:.1f} s; "
                    f"min {min(hf_times):.1f}); our decoder wall {ours:.1f} ms; ratio {hf / ours:.2f}x")
            print(line, flush=True)
            out.write(line + "\n\n")
        out.flush()
    out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
