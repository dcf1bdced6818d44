"""Time ``OpenVLA.predict_action`` of a 7B-shaped OpenVLA (random bf16 weights) on one GPU.

The model is the project's own :class:`vla_spec.model.modeling.OpenVLA` with the real shapes:
timm DINOv2 ViT-L/14 (reg4) + SigLIP So400m/14 at 224 px (``pretrained=False``), the fused projector
2176 -> 8704 -> 4096 -> 4096, and a Llama-2-7B text model (hidden 4096, 32 layers, 32 heads,
intermediate 11008, vocab 32064). It is built on the meta device, materialized directly on the GPU
in bfloat16 and filled with random weights (normal(0, 0.02); norms 1; biases 0): nothing 7B-sized
ever lives on the CPU. The tokenizer is the tiny checkpoint's (golden/tiny-openvla); the
instruction "put the bowl on the plate" gives 21 prompt ids, so the prefix is
[BOS] + 256 patches + 20 ids = 277 tokens (the fast path left-pads it to 280).

For each batch size the same inputs go through

* **naive**: ``model.decoder = greedy_decode`` (transformers' dynamic KV cache, one eager forward per
  token, as the reference ``generate`` does) and eager towers/projector;
* **fast**: :func:`vla_spec.model.fast_decoding.accelerate` (static KV cache; prefill + 6 decode
  steps in one CUDA graph per shape; towers + projector in one CUDA graph per batch size);
  the per-layer elementwise work (RMSNorm, rotary, SiLU gating, residuals) ``torch.compile``-d;
  batch-1 decode products through a Triton GEMV;
* variants (``--variants``): ``fast+fused`` (fused q/k/v and gate/up weight matrices),
  ``fast-uncompiled`` (no torch.compile in the decoder), ``fast+fused+compiled-vision`` (towers
  and projector also through ``torch.compile``, inside their CUDA graph), ``fast-cublas`` (batch-1
  decode steps through cuBLAS instead of the Triton GEMV kernel).

What is timed: one whole ``predict_action`` call (images in, numpy actions out), host clock around
the call after ``torch.cuda.synchronize()`` (the call ends with a device-to-host copy of the
tokens, which synchronizes). The images are 224 x 224 x 3 uint8 (what the LIBERO image path
hands the model), so the processor's resize is a no-op, but its to_tensor + two normalizations +
host-to-device copy of float32 pixels ARE inside the timed call; ``preproc`` reports
``process_images`` alone so it can be subtracted. Warm-up calls (which capture the graphs) are
excluded; the median of ``--iters`` calls is reported.

The fast path's tokens are compared with the naive path's on the same inputs: rows identical, and
rows whose first difference is at a naive near-tie (margin < 0.1 logit); random weights give flat
logits and so more near-ties than the real checkpoint.

Usage (on the GPU machine)::

    PYTHONUNBUFFERED=1 python benchmarks/bench_predict_action.py --batches 1 8 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vla_spec.model.agreement import near_tie_divergences, near_ties  # noqa: E402
from vla_spec.model.config import OpenVLAConfig  # noqa: E402
from vla_spec.model.decoding import greedy_decode  # noqa: E402
from vla_spec.model.fast_decoding import FastGreedyDecoder, accelerate, restore  # noqa: E402
from vla_spec.model.modeling import OpenVLA  # noqa: E402

TINY = ROOT / "golden" / "tiny-openvla"
INSTRUCTION = "put the bowl on the plate"
UNNORM_KEY = "libero_spatial"
VARIANTS = {  # fast-path options: FastGreedyDecoder(fuse=, compile=), accelerate(compile_vision=)
    "fast": {},
    "fast+fused": {"fuse": True},
    "fast-uncompiled": {"compile": False},
    "fast-cublas": {"gemv": False},
    "fast+fused+compiled-vision": {"fuse": True, "compile_vision": True},
}
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
    """The two ceilings for this GPU: GEMV bandwidth (decode) and GEMM rate (prefill), bf16."""
    dev = "cuda"
    for rows in (1, 8, 32, 280, 8960):
        x = torch.randn(rows, 4096, device=dev, dtype=torch.bfloat16)
        weights = [torch.randn(11008, 4096, device=dev, dtype=torch.bfloat16) for _ in range(8)]  # > L2
        ms = cuda_ms(lambda x=x, weights=weights: [torch.nn.functional.linear(x, w) for w in weights], iters) / len(weights)
        gbytes = (11008 * 4096 + rows * (4096 + 11008)) * 2 / 1e9
        tflop = 2 * rows * 4096 * 11008 / 1e12
        print(f"# micro: x[{rows},4096] @ W[4096,11008]: {ms * 1e3:.1f} us, {gbytes / ms:.2f} TB/s, "
              f"{tflop / ms * 1e3:.0f} TFLOP/s", flush=True)
        del weights


def hf_static_generate(language_model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int):
    """The baseline a user picks first: transformers' ``generate`` with its static cache
    (``cache_implementation="static"``, whose decode step transformers compiles itself), greedy,
    ``n_tokens`` new tokens after the same ``inputs_embeds`` prefix. Returns the token ids [B, n]."""
    out = language_model.generate(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
        do_sample=False, cache_implementation="static", pad_token_id=0,
    )
    return out[:, -n_tokens:]


def profile_decode(model, images, texts) -> None:
    """Top device kernels of one eager (no graph) static-cache decode, and of predict_action (fast)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        prefix = model.prefix(images, texts)
        eager = FastGreedyDecoder(use_cuda_graphs=False)
        eager(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
        torch.cuda.synchronize()
        for title, fn in (
            ("eager static-cache decode", lambda: eager(model.language_model, prefix.inputs_embeds,
                                                        prefix.attention_mask, 7)),
            ("fast predict_action (graphs)", lambda: model.predict_action(images, texts, UNNORM_KEY)),
        ):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            averages = prof.key_averages()
            for key in ("self_cuda_time_total", "self_device_time_total"):
                try:
                    table = averages.table(sort_by=key, row_limit=18, max_name_column_width=70)
                    break
                except Exception:  # noqa: BLE001 - the sort key was renamed across torch versions
                    table = None
            print(f"# profile: {title}\n{table}", flush=True)
        eager.clear()


def agreement(fast_ids: np.ndarray, naive_ids: np.ndarray, naive_margins: np.ndarray, naive_top: np.ndarray) -> dict:
    """Fast vs naive tokens; a difference counts only at a bfloat16 near-tie of the naive margins."""
    rows = int((fast_ids == naive_ids).all(axis=1).sum())
    problems = near_tie_divergences(fast_ids, naive_ids, near_ties(naive_margins, top_logits=naive_top, dtype="bfloat16"))
    return {
        "rows": len(naive_ids),
        "rows_identical": rows,
        "tokens_identical": int((fast_ids == naive_ids).sum()),
        "tokens": int(naive_ids.size),
        "rows_not_explained_by_near_tie": len(problems),
        "problems": problems[:5],
        "naive_min_margin": float(naive_margins.min()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iters", type=int, default=10, help="timed calls per (path, batch); median reported")
    parser.add_argument("--naive-iters", type=int, default=None, help="timed naive calls (default: --iters)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--variants", nargs="*", default=["fast+fused"], choices=sorted(VARIANTS),
        help="extra fast-path variants to time besides 'fast' (accelerate() defaults)",
    )
    parser.add_argument("--compile-vision-batches", type=int, nargs="*", default=[1],
                        help="batch sizes at which the compiled-vision variant runs (its first call compiles)")
    parser.add_argument("--breakdown", action="store_true", help="device time of vision, prefix, decoder (fast)")
    parser.add_argument("--profile", action="store_true", help="kernel table of one eager fast decode (first batch)")
    parser.add_argument("--layers", type=int, default=32, help="Llama layers (fewer for a quick smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    naive_iters = args.naive_iters or args.iters
    from vla_spec.model.processor import process_images

    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": props.name,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "timm": __import__("timm").__version__,
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
    if args.breakdown:
        micro(args.iters)
    rng = np.random.default_rng(0)
    results = []
    variants = [("fast", VARIANTS["fast"])] + [(name, VARIANTS[name]) for name in args.variants if name != "fast"]
    for batch in args.batches:
        images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
        texts = [INSTRUCTION] * batch
        row: dict = {"batch": batch}
        prefix_len = int(model.processor.prompt_ids(texts[:1])[0].__len__() + model.vision_backbone.num_patches)
        row["prefix_tokens"] = prefix_len
        row["preproc_ms"], _, _ = timed(lambda: process_images(images), args.iters, 1)

        restore(model)
        model.decoder = greedy_decode
        call = lambda: model.predict_action(images, texts, UNNORM_KEY)  # noqa: E731
        row["naive_ms"], row["naive_times"], naive = timed(call, naive_iters, args.warmup)
        print(f"# batch {batch}: naive {row['naive_ms']:.1f} ms", flush=True)

        for label, options in variants:
            if options.get("compile_vision") and batch not in args.compile_vision_batches:
                continue
            restore(model)
            decoder = FastGreedyDecoder(
                fuse=options.get("fuse", False), compile=options.get("compile", True), gemv=options.get("gemv", True)
            )
            accelerate(model, decoder=decoder, compile_vision=options.get("compile_vision", False))
            start = time.perf_counter()
            model.predict_action(images, texts, UNNORM_KEY)  # captures the graphs
            torch.cuda.synchronize()
            row[f"{label}_first_call_s"] = time.perf_counter() - start
            row[f"{label}_ms"], row[f"{label}_times"], fast = timed(call, args.iters, args.warmup)
            row[f"{label}_agreement"] = agreement(fast.token_ids, naive.token_ids, naive.margins, naive.top_logits)
            print(
                f"# batch {batch}: {label} {row[f'{label}_ms']:.1f} ms (first call "
                f"{row[f'{label}_first_call_s']:.1f} s); agreement {row[f'{label}_agreement']}",
                flush=True,
            )
            if args.breakdown and label == "fast":
                with torch.inference_mode():
                    pixels = process_images(images)
                    ids = model.processor.prompt_ids(texts)
                    prefix = model.embed_prefix(pixels, ids)
                    row["breakdown_ms"] = {
                        "vision+projector (graph)": cuda_ms(lambda: model.encode_images(pixels), args.iters),
                        "embed_prefix (incl. vision)": cuda_ms(lambda: model.embed_prefix(pixels, ids), args.iters),
                        "decoder (graph: prefill + 6 steps)": cuda_ms(
                            lambda: decoder(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7),
                            args.iters,
                        ),
                        "naive decoder": cuda_ms(
                            lambda: greedy_decode(model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7),
                            max(3, args.iters // 2),
                        ),
                        "naive vision+projector (eager)": cuda_ms(
                            lambda: model.encode_images_eager(pixels), max(3, args.iters // 2)
                        ),
                    }
                    print(f"# batch {batch}: breakdown {row['breakdown_ms']}", flush=True)
            if args.profile and label == "fast" and batch == args.batches[0]:
                profile_decode(model, images, texts)
            decoder.clear()
        restore(model)
        results.append(row)
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"env": env, "args": vars(args) | {"json": str(args.json)}, "results": results},
                                        indent=1, default=str))
    print(f"# peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print()
    print(f"predict_action, 7B-shaped OpenVLA, random bf16 weights, {env['gpu']}, torch {env['torch']}, "
          f"transformers {env['transformers']}; median of {args.iters} calls; preprocessing included (see preproc)")
    print()
    for label, options in variants:
        print()
        print(f"**{label}** {options or '(accelerate() defaults)'}")
        print()
        print("| batch | prefix tokens | naive ms/call | fast ms/call | actions/s naive | actions/s fast | speedup | "
              "preproc ms | fast tokens == naive (rows) | rows not at a near-tie |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in results:
            if f"{label}_ms" not in row:
                continue
            agree, fast_ms = row[f"{label}_agreement"], row[f"{label}_ms"]
            print(
                f"| {row['batch']} | {row['prefix_tokens']} | {row['naive_ms']:.1f} | {fast_ms:.1f} | "
                f"{1e3 * row['batch'] / row['naive_ms']:.1f} | {1e3 * row['batch'] / fast_ms:.1f} | "
                f"{row['naive_ms'] / fast_ms:.2f}x | {row['preproc_ms']:.1f} | "
                f"{agree['rows_identical']}/{agree['rows']} | {agree['rows_not_explained_by_near_tie']} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
