"""Time ``OpenVLA.predict_action`` of a 7B-shaped OpenVLA (random bf16 weights) on one GPU.

The model is the project's own :class:`vla_spec.model.modeling.OpenVLA` with the real shapes:
timm DINOv2 ViT-L/14 (reg4) + SigLIP So400m/14 at 224 px (``pretrained=False``), the fused projector
2176 -> 8704 -> 4096 -> 4096, and a Llama-2-7B text model (hidden 4096, 32 layers, 32 heads,
intermediate 11008, vocab 32064). It is built on the meta device, materialized directly on the GPU
in bfloat16 and filled with random weights (normal(0, 0.02); norms 1; biases 0): nothing 7B-sized
ever lives on the CPU. The tokenizer is the tiny checkpoint's (golden/tiny-openvla); the
instruction "put the bowl on the plate" gives 21 prompt ids, so the prefix is
[BOS] + 256 patches + 20 ids = 277 tokens (the fast path left-pads it to 280).

For each batch size the same inputs (224 x 224 x 3 uint8 images, what the LIBERO image path hands
the model) go through

* **naive**: ``greedy_decode`` (transformers' dynamic KV cache, one eager forward per token, as the
  reference ``generate`` does), eager towers/projector, float32 ``pixel_values`` built on the CPU;
* **ours**: :func:`vla_spec.model.fast_decoding.accelerate` with its defaults (uint8 pixels to the
  GPU, normalized there; towers + projector compiled, in one CUDA graph per batch size; static KV
  cache, prefill + 6 decode steps in one CUDA graph per shape, fused q/k/v and gate/up, compiled
  elementwise work, Triton GEMV for batch-1 steps, the decode steps' attention through the Triton
  kernel of :mod:`vla_spec.model.triton_attention` (session 12); at batch 1 all of it as ONE graph,
  :class:`~vla_spec.model.fast_decoding.GraphedCall`, also timed as three graphs);
* **ours --fp8** (``--fp8``): the same with ``FastGreedyDecoder(fp8=True)`` (float8 e4m3 prefill
  projections), its tokens against ours in bfloat16 and against naive; also on the tiny checkpoint;
* ``--attention-backend`` / ``--step-attention-backend``: ours with another SDPA kernel (all calls /
  the decode steps, where ``sdpa`` is torch's choice and ``triton`` ours;
  ``FastGreedyDecoder(attention_backend=..., step_attention_backend=...)``);
  ``--one-graph-max-batch N``: calls of up to N rows as one CUDA graph;
* **ours, host pixels** (``--host-pixels``): the same with ``model.pixels_on_device = False``
  (float32 pixel_values made on the CPU and copied over: the input path before the uint8 one);

and, on the decoder part alone (the same prefix ``inputs_embeds`` [B, 277, 4096], 7 greedy
tokens): **transformers' static cache** (:func:`hf_static_generate`) against our decoder.

What is timed: one whole ``predict_action`` call (images in, numpy actions out; host clock around
the call after ``torch.cuda.synchronize()``), or one decoder call ending with its tokens on the
host. Per batch size, the first calls (which compile and capture graphs) run first; then, after
``--wait-for`` if given, the timed calls (after ``--warmup`` more); medians, 10th-90th percentiles
and minima of ``--iters`` calls are reported, every call time is in the JSON.

Tokens: ours and transformers' against naive: rows identical, and rows whose first difference is
NOT at a bfloat16 near-tie of the naive margins (:mod:`vla_spec.model.agreement`, its 7B rule),
which must be 0.
Random weights give flat logits and so many more near-ties than a trained checkpoint.

Usage (on the GPU machine)::

    PYTHONUNBUFFERED=1 python benchmarks/bench_predict_action.py --batches 1 8 32 --iters 20 \
        --hf-static-batches 1 8 32 --fp8 --tiny-fp8 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vla_spec.model.agreement import LLAMA_7B_TIE_ULPS, near_tie_divergences, near_ties  # noqa: E402
from vla_spec.model.config import OpenVLAConfig  # noqa: E402
from vla_spec.model.fast_decoding import FastGreedyDecoder, accelerate, first_difference, restore  # noqa: E402
from vla_spec.model.modeling import OpenVLA  # noqa: E402
from vla_spec.model.static_llama import SDPA_BACKENDS, STEP_ATTENTION_BACKENDS  # noqa: E402

TINY = ROOT / "golden" / "tiny-openvla"
INSTRUCTION = "put the bowl on the plate"
UNNORM_KEY = "libero_spatial"
LLAMA2_7B = {
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32000,
    "model_type": "llama",
}


def openvla_7b_config(tiny_config: Path = TINY / "config.json", text_config: dict | None = None) -> OpenVLAConfig:
    """The official OpenVLA-7B config (real towers, Llama-2-7B), norm stats from the tiny checkpoint."""
    raw = json.loads(tiny_config.read_text())
    raw.pop("vla_spec_timm_overrides", None)
    raw["text_config"] = dict(text_config or LLAMA2_7B)
    return OpenVLAConfig.from_dict(raw, source=str(tiny_config))


@torch.no_grad()
def build_random_openvla(config: OpenVLAConfig, device: str, dtype: torch.dtype, seed: int = 0) -> OpenVLA:
    """Meta-device build, materialized on ``device`` in ``dtype``, random weights; eval mode."""
    from vla_spec.model.tokenizer import load_tokenizer

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = OpenVLA(config, load_tokenizer(TINY))
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.ndim >= 2 or name.endswith(("pos_embed", "cls_token", "reg_token", "latent")):
            param.normal_(0.0, 0.02, generator=generator)
        elif "norm" in name and name.endswith("weight"):
            param.fill_(1.0)
        elif name.endswith("scale_factor"):
            param.fill_(0.1)
        else:
            param.zero_()
    rotary = model.language_model.model.rotary_emb  # non-persistent buffer: rebuild, as from_pretrained does
    with torch.device(device):
        model.language_model.model.rotary_emb = type(rotary)(config=model.language_model.config)
    leftovers = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"left on meta: {leftovers[:5]}")
    return model.eval()


def timed(fn, iters: int, warmup: int) -> tuple[float, list[float], object]:
    """Median wall ms of ``fn()`` over ``iters`` calls after ``warmup`` calls; also the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times, result


def cuda_ms(fn, iters: int, warmup: int = 2) -> float:
    """Median device time (CUDA events) of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def micro(iters: int) -> None:
    """The ceilings for this GPU, bf16, each product replayed from a CUDA graph (no launch cost):
    x[rows, 4096] @ W[4096, 11008] streams the weights (decode) or runs at the GEMM rate (prefill);
    a 4 GB device-to-device copy gives the copy bandwidth."""
    dev = "cuda"
    for rows in (1, 8, 32, 280, 8960):
        x = torch.randn(rows, 4096, device=dev, dtype=torch.bfloat16)
        weights = [torch.randn(11008, 4096, device=dev, dtype=torch.bfloat16) for _ in range(8)]  # > L2
        for w in weights:
            torch.nn.functional.linear(x, w)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for w in weights:
                torch.nn.functional.linear(x, w)
        ms = cuda_ms(graph.replay, iters) / len(weights)
        gbytes = (11008 * 4096 + rows * (4096 + 11008)) * 2 / 1e9
        tflop = 2 * rows * 4096 * 11008 / 1e12
        print(f"# micro: x[{rows},4096] @ W[4096,11008]: {ms * 1e3:.1f} us, {gbytes / ms:.2f} TB/s, "
              f"{tflop / ms * 1e3:.0f} TFLOP/s", flush=True)
        weights.clear()
    src = torch.empty(2 * 10**9, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), iters)
    print(f"# micro: 4 GB device-to-device copy {ms:.2f} ms, {8 / ms:.2f} TB/s (read + write)", flush=True)


def hf_static_generate(language_model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int):
    """The baseline a user picks first: transformers' ``generate`` with its static cache
    (``cache_implementation="static"``, whose decode step transformers compiles itself), greedy,
    ``n_tokens`` new tokens after the same ``inputs_embeds`` prefix. Returns the token ids [B, n]."""
    out = language_model.generate(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
        do_sample=False, cache_implementation="static", pad_token_id=0,
    )
    return out[:, -n_tokens:]


def agreement(fast_ids: np.ndarray, naive_ids: np.ndarray, naive_margins: np.ndarray, naive_top: np.ndarray) -> dict:
    """Fast vs naive tokens; a difference counts only at a bfloat16 near-tie of the naive margins, under
    the 7B rule (:data:`vla_spec.model.agreement.LLAMA_7B_TIE_ULPS`)."""
    rows = int((fast_ids == naive_ids).all(axis=1).sum())
    ties = near_ties(naive_margins, top_logits=naive_top, dtype="bfloat16", ulps=LLAMA_7B_TIE_ULPS)
    problems = near_tie_divergences(fast_ids, naive_ids, ties)
    return {
        "rows": len(naive_ids),
        "rows_identical": rows,
        "tokens_identical": int((fast_ids == naive_ids).sum()),
        "tokens": int(naive_ids.size),
        "rows_not_explained_by_near_tie": len(problems),
        "problems": problems[:5],
        "naive_min_margin": float(naive_margins.min()),
    }


def replays(decoder: FastGreedyDecoder, lm: Any, prefix: Any, n_tokens: int, count: int) -> dict:
    """``count`` calls of ``decoder`` on one prefix: each call's first stage that differs bitwise from
    the first call's (None = all equal), how many stages differ, and the first call's token ids."""
    args = (lm, prefix.inputs_embeds, prefix.attention_mask, n_tokens)
    result = decoder(*args)
    bucket = decoder.bucket(decoder.buckets[-1])
    reference = {name: t.clone() for name, t in bucket.stages().items()}
    firsts, counts = [], []
    for _ in range(count - 1):
        decoder(*args)
        current = bucket.stages()
        firsts.append(first_difference(reference, current))
        counts.append(sum(first_difference({k: v}, {k: current[k]}) is not None for k, v in reference.items()))
    return {"replays": count, "bitwise_equal": 1 + firsts.count(None), "first_differences": firsts,
            "stages_differing": counts, "stages": len(reference), "token_ids": result.token_ids.cpu().numpy()}


@torch.inference_mode()
def checks(model, images, texts, ours, call) -> dict:
    """Determinism: the tokens of a repeated call; three calls of our decoder on one prefix (every
    stage it writes, bitwise: :func:`replays` names the first that differs); and the batch
    composition: the rows in reverse order give the same tokens, reversed."""
    differences = replays(model.decoder, model.language_model, model.prefix(images, texts), 7, 3)["first_differences"]
    equal = differences == [None, None]
    reverse = model.predict_action(images[::-1], texts[::-1], UNNORM_KEY)
    return {
        "repeat_call_same_tokens": bool(np.array_equal(call().token_ids, ours.token_ids)),
        "decoder_replays_bitwise_equal": equal,
        **({} if equal else {"decoder_replays_first_difference": differences}),
        "reversed_batch_same_tokens": bool(np.array_equal(reverse.token_ids[::-1], ours.token_ids)),
    }


def fp8_agreement(fp8_ids: np.ndarray, bf16_ids: np.ndarray, bf16_margins: np.ndarray) -> dict:
    """float8 prefill against the bfloat16 one: identical rows and tokens, and the smallest bfloat16
    margin at a first difference (how far from a tie the float8 path changed a token)."""
    first = [int(np.flatnonzero(a != b)[0]) for a, b in zip(fp8_ids, bf16_ids) if (a != b).any()]
    rows = [r for r, (a, b) in enumerate(zip(fp8_ids, bf16_ids)) if (a != b).any()]
    margins = [float(bf16_margins[r, step]) for r, step in zip(rows, first)]
    return {"rows": len(bf16_ids), "rows_identical": len(bf16_ids) - len(rows),
            "tokens_identical": int((fp8_ids == bf16_ids).sum()), "tokens": int(bf16_ids.size),
            "bf16_margins_at_first_differences": margins}


def tiny_fp8_agreement(batch: int = 16) -> dict:
    """The tiny checkpoint (bfloat16 on the GPU, random 224 x 224 images): our decoder with a float8
    prefill against our bfloat16 decoder and the naive one."""
    from vla_spec.model.fast_decoding import FastGreedyDecoder
    from vla_spec.model.loading import from_pretrained

    model = from_pretrained(TINY, dtype=torch.bfloat16, device="cuda")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
    texts = [INSTRUCTION] * batch
    naive = model.predict_action(images, texts, UNNORM_KEY)
    bf16 = model.predict_action(images, texts, UNNORM_KEY, decoder=FastGreedyDecoder())
    fp8 = model.predict_action(images, texts, UNNORM_KEY, decoder=FastGreedyDecoder(fp8=True))
    return {"fp8_vs_bf16": fp8_agreement(fp8.token_ids, bf16.token_ids, bf16.margins),
            "fp8_vs_naive": agreement(fp8.token_ids, naive.token_ids, naive.margins, naive.top_logits),
            "bf16_vs_naive": agreement(bf16.token_ids, naive.token_ids, naive.margins, naive.top_logits)}


def host_profile(fn, iters: int, top: int = 25) -> str:
    """cProfile of ``iters`` calls of ``fn``: the functions with the most own time (the wait for the
    GPU shows as the synchronizing call; the rest is host work around it)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return "\n".join(f"# host: {line}" for line in text.getvalue().splitlines() if line.strip())


class GpuSampler:
    """The GPU's SM clock (MHz), temperature (C) and power draw (W) from ``nvidia-smi``, polled every
    ``period`` s on a thread while the ``with`` block runs (the timed calls), for the JSON and the log:
    an H200 at its 700 W cap lowers its clock under long GEMMs, one cause a figure can move between
    processes with the same code. The GPU is torch's current device, found by its PCI address.
    Without ``nvidia-smi`` the summary is None."""

    def __init__(self, period: float = 0.5) -> None:
        import threading

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        self.address = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        self.period, self.samples, self.error = period, [], None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        import subprocess

        query = ["nvidia-smi", "-i", self.address, "--query-gpu=clocks.sm,temperature.gpu,power.draw",
                 "--format=csv,noheader,nounits"]
        while not self.stop.is_set():
            try:
                line = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
                self.samples.append(tuple(float(v) for v in line.strip().split(",")))
            except (OSError, subprocess.SubprocessError, ValueError) as error:
                self.error = repr(error)
                return
            self.stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict | None:
        if not self.samples:
            return None if self.error is None else {"error": self.error}
        clocks, temperatures, powers = zip(*self.samples)
        return {"sm_clock_mhz_median": statistics.median(clocks), "sm_clock_mhz_min": min(clocks),
                "temperature_c_max": max(temperatures), "power_w_median": statistics.median(powers),
                "samples": len(self.samples)}


def spread(times: list[float]) -> dict:
    """Median, 10th and 90th percentile and minimum of per-call ms."""
    p10, p90 = np.percentile(times, [10, 90])
    return {"median": statistics.median(times), "p10": float(p10), "p90": float(p90), "min": min(times), "n": len(times)}


def fmt(stats: dict) -> str:
    return f"{stats['median']:.1f} ({stats['p10']:.1f}-{stats['p90']:.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--iters", type=int, default=20, help="timed calls per (path, batch)")
    parser.add_argument("--naive-iters", type=int, default=None, help="timed naive calls (default: --iters)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--hf-static-batches", type=int, nargs="*", default=[1, 8, 32],
                        help="batch sizes at which transformers' static-cache generate is timed")
    parser.add_argument("--naive-batches", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--micro", action="store_true", help="GEMV bandwidth and GEMM rate ceilings first")
    parser.add_argument("--layers", type=int, default=32, help="Llama layers (fewer for a quick smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fp8", action="store_true",
                        help="also ours with FastGreedyDecoder(fp8=True): float8 prefill projections, tokens vs bf16")
    parser.add_argument("--tiny-fp8", action="store_true",
                        help="first, the tiny checkpoint's tokens with a float8 prefill against bfloat16 and naive")
    parser.add_argument("--host-pixels", action="store_true", help="also ours with float32 pixels made on the host")
    parser.add_argument("--attention-backend", default=None, choices=["default", *SDPA_BACKENDS],
                        help="ours: the SDPA kernel (FastGreedyDecoder(attention_backend=...); default: torch's choice)")
    parser.add_argument("--step-attention-backend", default=None, choices=["default", *STEP_ATTENTION_BACKENDS],
                        help="ours: the decode steps' kernel (an SDPA backend or triton), if not --attention-backend's")
    parser.add_argument("--vision-compile-mode", default=None,
                        help="ours: torch.compile mode of the towers + projector (accelerate(vision_compile_mode=...))")
    parser.add_argument("--host-profile", action="store_true",
                        help="ours: cProfile over --iters calls per batch, the host functions by own time")
    parser.add_argument("--one-graph-max-batch", type=int, default=1,
                        help="ours: calls of up to this many rows run as one CUDA graph (accelerate's default: 1)")
    parser.add_argument("--wait-for", type=Path, default=None,
                        help="after each batch's first (compiling) calls, wait until this file exists "
                             "(so that a job beside the benchmark, e.g. the gpu tier, finishes before timing)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    naive_iters = args.naive_iters or args.iters
    backends = {name: None if name == "default" else name
                for name in (args.attention_backend, args.step_attention_backend)}

    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": props.name,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "timm": __import__("timm").__version__,
        "triton": __import__("triton").__version__,
    }
    print("#", env, flush=True)
    t0 = time.perf_counter()
    config = openvla_7b_config(text_config={**LLAMA2_7B, "num_hidden_layers": args.layers})
    model = build_random_openvla(config, "cuda", torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"# built in {time.perf_counter() - t0:.1f} s: {n_params / 1e9:.2f} B parameters, "
        f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB on the GPU",
        flush=True,
    )
    if args.micro:
        micro(10)
    rng = np.random.default_rng(0)
    results = []
    extra: dict = {}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps({"env": env, "args": vars(args) | {"json": str(args.json)},
                                             "results": results, **extra}, indent=1, default=str))

    naive_model = restore(copy.copy(model))  # the same modules and weights, never accelerated
    naive_model.pixels_on_device = False
    fp8_decoder = FastGreedyDecoder(fp8=True) if args.fp8 else None
    if args.tiny_fp8:
        try:
            extra["tiny_fp8"] = tiny_fp8_agreement()
        except Exception as error:  # as below: report it, keep the timings
            traceback.print_exc()
            extra["tiny_fp8"] = {"error": repr(error)}
        print(f"# tiny checkpoint, bfloat16, batch 16: {extra['tiny_fp8']}", flush=True)
    for batch in args.batches:
        # per batch: first calls (compile, capture), then (after --wait-for) the timed calls, then every
        # graph of this batch is dropped (as in the earlier runs: keeping all batches' graphs and
        # transformers' cudagraph trees alive together ended in a launch failure at batch 8, run 4)
        decoder = FastGreedyDecoder(attention_backend=backends[args.attention_backend],
                                    step_attention_backend=backends[args.step_attention_backend])
        accelerate(model, decoder=decoder, one_graph_max_batch=args.one_graph_max_batch,
                   vision_compile_mode=args.vision_compile_mode)
        images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
        texts = [INSTRUCTION] * batch
        with torch.inference_mode():
            prefix = model.prefix(images, texts)
        row: dict = {"batch": batch}
        results.append(row)
        row["prefix_tokens"] = int(len(model.processor.prompt_ids(texts[:1])[0]) + model.vision_backbone.num_patches)
        for name, fn in (
            ("ours", lambda: model.predict_action(images, texts, UNNORM_KEY)),
            ("fp8", (lambda: model.predict_action(images, texts, UNNORM_KEY, decoder=fp8_decoder)) if args.fp8 else None),
            ("hf_static", (lambda: hf_static_generate(model.language_model, prefix.inputs_embeds, prefix.attention_mask,
                                                      7)) if batch in args.hf_static_batches else None),
        ):
            if fn is None or (name == "fp8" and not args.fp8):
                continue
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    fn()
            except Exception as error:  # the float8 option must not cost the run its other figures
                if name != "fp8":
                    raise
                traceback.print_exc()
                row["fp8_error"] = repr(error)
                args.fp8 = False
                continue
            torch.cuda.synchronize()
            row[f"{name}_first_call_s"] = time.perf_counter() - start
        print(f"# batch {batch}: first calls (s) { {k: round(v, 1) for k, v in row.items() if k.endswith('_s')} }",
              flush=True)
        while args.wait_for is not None and not args.wait_for.exists():
            time.sleep(1.0)

        call = lambda: model.predict_action(images, texts, UNNORM_KEY)  # noqa: E731
        naive = None
        if batch in args.naive_batches:
            _, times, naive = timed(lambda: naive_model.predict_action(images, texts, UNNORM_KEY), naive_iters, 2)
            row["naive_ms"] = spread(times)
            print(f"# batch {batch}: naive {fmt(row['naive_ms'])} ms", flush=True)
        with GpuSampler() as gpu:
            _, times, ours = timed(call, args.iters, args.warmup)
        row["ours_ms"] = spread(times)
        row["ours_times"] = times
        row["ours_gpu"] = gpu.summary()
        row["one_graph"] = bool(model.call_runner is not None and model.call_runner.applies(batch))
        if naive is not None:
            row["ours_agreement"] = agreement(ours.token_ids, naive.token_ids, naive.margins, naive.top_logits)
        print(f"# batch {batch}: ours {fmt(row['ours_ms'])} ms (one graph: {row['one_graph']}); "
              f"agreement {row.get('ours_agreement')}; GPU while timed {row['ours_gpu']}", flush=True)
        if args.host_profile:
            print(host_profile(call, args.iters), flush=True)
        if row["one_graph"]:
            runner, model.call_runner = model.call_runner, None
            _, times, three = timed(call, args.iters, args.warmup)
            model.call_runner = runner
            row["ours_three_graphs_ms"] = spread(times)
            row["one_vs_three_graphs_same_tokens"] = bool(np.array_equal(three.token_ids, ours.token_ids))
            row["one_vs_three_graphs_same_margins"] = bool(np.array_equal(three.margins, ours.margins))
            print(f"# batch {batch}: ours as three graphs {fmt(row['ours_three_graphs_ms'])} ms; same tokens "
                  f"{row['one_vs_three_graphs_same_tokens']}, margins {row['one_vs_three_graphs_same_margins']}",
                  flush=True)
        if args.fp8:
            _, times, fp8 = timed(lambda: model.predict_action(images, texts, UNNORM_KEY, decoder=fp8_decoder),
                                  args.iters, args.warmup)
            row["ours_fp8_ms"] = spread(times)
            row["fp8_vs_bf16"] = fp8_agreement(fp8.token_ids, ours.token_ids, ours.margins)
            if naive is not None:
                row["fp8_vs_naive"] = agreement(fp8.token_ids, naive.token_ids, naive.margins, naive.top_logits)
            print(f"# batch {batch}: ours --fp8 {fmt(row['ours_fp8_ms'])} ms; vs bf16 {row['fp8_vs_bf16']}; "
                  f"vs naive {row.get('fp8_vs_naive')}", flush=True)
        if args.host_pixels:
            model.pixels_on_device = False
            row["ours_host_pixels_ms"] = spread(timed(call, args.iters, args.warmup)[1])
            model.pixels_on_device = True
            print(f"# batch {batch}: ours, host float32 pixels {fmt(row['ours_host_pixels_ms'])} ms", flush=True)
        row["checks"] = checks(model, images, texts, ours, call)
        print(f"# batch {batch}: checks {row['checks']}", flush=True)

        with torch.inference_mode():
            pixels = model.processor(images, texts).pixel_values_on("cuda", model.dtype)
            decoder = model.decoder
            decode = lambda: decoder(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)  # noqa: E731
            row["device_ms"] = {
                "towers+projector (graph)": cuda_ms(lambda: model.encode_images(pixels), args.iters),
                "decoder (graph: prefill + 6 steps)": cuda_ms(decode, args.iters),
            }
            row["ours_decoder_wall_ms"] = spread(timed(lambda: decode().token_ids.cpu(), args.iters, 2)[1])
            if args.fp8:
                fp8_decode = lambda: fp8_decoder(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)  # noqa: E731
                row["device_ms"]["decoder --fp8 (graph)"] = cuda_ms(fp8_decode, args.iters)
                row["ours_fp8_decoder_wall_ms"] = spread(timed(lambda: fp8_decode().token_ids.cpu(), args.iters, 2)[1])
            if batch in args.hf_static_batches:
                _, times, hf_ids = timed(lambda: hf_static_generate(
                    model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7).cpu(), args.iters, args.warmup)
                row["hf_static_ms"] = spread(times)
                if naive is not None:
                    row["hf_static_agreement"] = agreement(hf_ids.numpy(), naive.token_ids, naive.margins,
                                                           naive.top_logits)
        print(f"# batch {batch}: device {row['device_ms']}; our decoder wall {fmt(row['ours_decoder_wall_ms'])}; "
              f"--fp8 {fmt(row['ours_fp8_decoder_wall_ms']) if 'ours_fp8_decoder_wall_ms' in row else '-'}; "
              f"transformers static {fmt(row['hf_static_ms']) if 'hf_static_ms' in row else '-'}", flush=True)
        model.decoder.clear()
        if fp8_decoder is not None:
            fp8_decoder.clear()
        restore(model)
        torch.cuda.empty_cache()
        save()
    print(f"# peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print()
    print(f"predict_action, 7B-shaped OpenVLA, random bf16 weights, {env['gpu']}, torch {env['torch']}, "
          f"transformers {env['transformers']}, timm {env['timm']}, triton {env['triton']}; ms per call: median "
          f"(p10-p90) of {args.iters} calls")
    print()
    print("| batch | naive ms | ours ms | ours actions/s | ours --fp8 ms | decoder part: transformers static ms | "
          "decoder part: ours ms | ratio | decoder part: ours --fp8 ms | ratio | towers+projector ms | "
          "ours == naive rows | rows not at a near-tie |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        agree = row.get("ours_agreement")
        hf = row.get("hf_static_ms")
        fp8_decoder_ms = row.get("ours_fp8_decoder_wall_ms")
        ratio = f"{hf['median'] / row['ours_decoder_wall_ms']['median']:.2f}x" if hf else "-"
        fp8_ratio = f"{hf['median'] / fp8_decoder_ms['median']:.2f}x" if hf and fp8_decoder_ms else "-"
        print(
            f"| {row['batch']} | {fmt(row['naive_ms']) if 'naive_ms' in row else '-'} | {fmt(row['ours_ms'])} | "
            f"{1e3 * row['batch'] / row['ours_ms']['median']:.1f} | "
            f"{fmt(row['ours_fp8_ms']) if 'ours_fp8_ms' in row else '-'} | "
            f"{fmt(hf) if hf else '-'} | {fmt(row['ours_decoder_wall_ms'])} | {ratio} | "
            f"{fmt(fp8_decoder_ms) if fp8_decoder_ms else '-'} | {fp8_ratio} | "
            f"{row['device_ms']['towers+projector (graph)']:.1f} | "
            f"{str(agree['rows_identical']) + '/' + str(agree['rows']) if agree else '-'} | "
            f"{agree['rows_not_explained_by_near_tie'] if agree else '-'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
