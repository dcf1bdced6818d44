"""The prefill's attention core at Llama-7B shapes on one GPU: the masked call against causal ones.

```bash
python3 benchmarks/bench_prefill_attention.py --batches 1 8 32 --json prefill_attention.json
```

The decoder's prefill attends ``L`` queries (the bucket's prefix, 280 positions for the benchmark's
prompt) of 32 heads x 128 to its keys. Variants, bf16:

* ``masked``: as the decoder did up to session 16: the keys are the whole static cache [B, 32, T, 128]
  (T = L + 6 rounded up to 16) under an additive mask [B, 1, L, T] (causal AND real AND written);
  the kernel sees a dense score block and cannot skip the causal half.
* ``causal``: ``is_causal=True`` over the first L cache positions (a strided view of the cache, as
  the decoder passes them), no mask: the kernels skip the blocks above the diagonal. The rows must
  then be right-aligned (real tokens first), which the decoder does since session 17.
* ``causal, contiguous``: the same keys copied to [B, 32, L, 128] first (the copy not timed), to see
  whether the view costs the kernel anything.

Each with torch's choice of kernel and each SDPA backend forced. Timed as the decoder runs them: 32
distinct K/V (one per layer, so that none is served from L2) back to back in one CUDA graph, the
median of 20 replays divided by 32. The error is the largest difference from the same attention in
float32 (math backend) over the real rows; ``replay same``: a second replay gives the same bits.
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

from benchmarks.bench_gemv import LAYERS, graph_us  # noqa: E402
from vla_spec.model.fast_decoding import CACHE_ALIGN  # noqa: E402

HEADS, HEAD_DIM, N_TOKENS = 32, 128, 7


def main() -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--length", type=int, default=280, help="the bucket's prefix length L")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dev, dtype = "cuda", torch.bfloat16
    backends = {"torch's choice": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    length = args.length
    cache_len = -(-(length + N_TOKENS - 1) // CACHE_ALIGN) * CACHE_ALIGN
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; L {length}, cache T {cache_len}, "
          f"{HEADS} heads x {HEAD_DIM}; us per layer, median of 20 graph replays of {LAYERS} layers", flush=True)
    rows = []
    for batch in args.batches:
        gen = torch.Generator(device=dev).manual_seed(batch)
        q = [torch.randn(batch, HEADS, length, HEAD_DIM, device=dev, dtype=dtype, generator=gen) for _ in range(LAYERS)]
        caches = [[torch.randn(batch, HEADS, cache_len, HEAD_DIM, device=dev, dtype=dtype, generator=gen)
                   for _ in range(LAYERS)] for _ in range(2)]
        causal = torch.ones(length, cache_len, dtype=torch.bool, device=dev).tril_()
        mask = torch.zeros(batch, 1, length, cache_len, device=dev, dtype=dtype).masked_fill_(~causal, float("-inf"))
        k_view = [c[:, :, :length] for c in caches[0]]
        v_view = [c[:, :, :length] for c in caches[1]]
        k_dense, v_dense = [t.contiguous() for t in k_view], [t.contiguous() for t in v_view]
        variants = {
            "masked": lambda i: F.scaled_dot_product_attention(q[i], caches[0][i], caches[1][i], attn_mask=mask),
            "causal": lambda i: F.scaled_dot_product_attention(q[i], k_view[i], v_view[i], is_causal=True),
            "causal, contiguous": lambda i: F.scaled_dot_product_attention(q[i], k_dense[i], v_dense[i], is_causal=True),
        }
        with sdpa_kernel(SDPBackend.MATH):
            reference = [F.scaled_dot_product_attention(q[i].float(), k_view[i].float(), v_view[i].float(), is_causal=True)
                         for i in (0, LAYERS - 1)]
        for variant, call in variants.items():
            for backend_name, backend in backends.items():
                context = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
                try:
                    with context:
                        us, outs, same = graph_us(call)
                except RuntimeError as exc:  # a backend that does not take this input
                    print(f"batch {batch:2d} {variant:20s} {backend_name:15s} not available: {str(exc).splitlines()[0][:120]}")
                    continue
                error = max((outs[i].float() - ref).abs().max().item() for i, ref in zip((0, LAYERS - 1), reference))
                rows.append({"batch": batch, "variant": variant, "backend": backend_name, "us": us, "error": error,
                             "replay_same": same})
                print(f"batch {batch:2d} {variant:20s} {backend_name:15s} {us:8.1f} us  error {error:.2e}  "
                      f"replay {'same' if same else 'DIFFERENT'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "length": length, "cache_len": cache_len, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
