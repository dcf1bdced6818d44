"""The vision towers' ops and graphs at batch 32 and 8 (7B-shaped OpenVLA, random bf16) on one GPU.

```bash
python3 benchmarks/bench_towers.py micro    # each op against its ceiling, and the candidates tried
python3 benchmarks/bench_towers.py patch    # the patch embeddings: cuDNN against one matrix product
python3 benchmarks/bench_towers.py graphs   # the compiled towers + projector graph, variants
```

``micro``, per tower (DINOv2 ViT-L/14 with 4 registers: 261 tokens of 1024; SigLIP So400m/14: 256
tokens of 1152) and batch:

* each block Linear through cuBLAS with its bias (``F.linear``), in TFLOP/s;
* GELU (exact, as both towers use) alone, and a Triton GEMM with bias + exact GELU in its epilogue
  (:func:`linear_gelu`, six launch configurations) against cuBLAS + GELU: the fusion that would
  remove the GELU kernels, if a Triton GEMM kept up with cuBLAS;
* SigLIP's MLP with its 4304 hidden units padded to 4352 (zero rows and columns: the same result);
* SDPA per backend, on timm's permuted q/k/v views and on contiguous copies.

``patch``: each tower's patch embedding at batch 32 and 8, eager (cuDNN), through inductor's own
lowering (cuDNN) and through :class:`~vla_spec.model.fast_vision.TowerCompiler` (one matrix product).

``graphs``: the towers + projector as :class:`vla_spec.model.fast_vision.GraphedVision` compiles
them, in a CUDA graph on two streams, batch 32 first (a static compile) then 8 (dynamic): as
shipped (:class:`~vla_spec.model.fast_vision.TowerCompiler`: patch embeddings as matrix products)
and as session 18 shipped them (plain inductor: cuDNN patch embeddings); device ms per replay and
the kernel time by family. About 40 s of compile per variant and batch on a fresh machine.
(Session 19, run 1 also timed inductor's ``triton.multi_kernel``: see benchmarks/README.md.)

Times: median of 15 CUDA-event timings of 10 back-to-back calls (ops) or 3 replays (graphs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_predict_action import LLAMA2_7B, build_random_openvla, cuda_ms, openvla_7b_config  # noqa: E402
from benchmarks.profile_predict_action import kind_of  # noqa: E402

BF16 = torch.bfloat16
GELU_CONFIGS = [(128, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 8, 4),
                (256, 128, 64, 8, 3), (128, 64, 64, 4, 4)]
"""(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of :func:`linear_gelu`."""


def log(line: str) -> None:
    print(line, flush=True)


def us(fn: Callable[[], Any], reps: int = 10, iters: int = 15) -> float:
    """Median us per call of ``fn``, ``reps`` calls per timed region (launch gaps amortized)."""
    return cuda_ms(lambda: [fn() for _ in range(reps)], iters, warmup=1) * 1e3 / reps


def _linear_gelu_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, swn, sym,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr):
        pid = tl.program_id(0)
        npm, npn = tl.cdiv(M, BM), tl.cdiv(N, BN)
        width = GROUP * npn
        first = (pid // width) * GROUP
        size = tl.minimum(npm - first, GROUP)
        pm = first + (pid % width) % size
        pn = (pid % width) // size
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        xp = x_ptr + rm[:, None] * sxm + rk[None, :]
        wp = w_ptr + rn[None, :] * swn + rk[:, None]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BK)):
            kk = k * BK + rk
            a = tl.load(xp, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = tl.load(wp, mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)
            acc = tl.dot(a, b, acc)
            xp += BK
            wp += BK
        bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        h = (acc + bias[None, :]).to(tl.bfloat16).to(tl.float32)  # addmm's bf16 result, then GELU in float32
        g = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :], g.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))

    return kernel


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, config: tuple, kernel: Any) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (x [M, K], weight [N, K], bf16) as one Triton GEMM whose
    epilogue adds the bias, rounds to bf16 (as addmm does) and applies the exact GELU."""
    import triton

    block_m, block_n, block_k, warps, stages = config
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    kernel[grid](x, weight, bias, y, m, n, k, x.stride(0), weight.stride(0), y.stride(0),
                 BM=block_m, BN=block_n, BK=block_k, GROUP=8, num_warps=warps, num_stages=stages)
    return y


def micro(model: Any) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = _linear_gelu_kernel()
    backbone = model.vision_backbone
    for batch in (32, 8):
        for name, tower in (("dino", backbone.featurizer), ("siglip", backbone.fused_featurizer)):
            block = tower.blocks[0]
            n_tokens = tower.patch_embed.num_patches + tower.num_prefix_tokens
            m = batch * n_tokens
            for label, linear in (("qkv", block.attn.qkv), ("proj", block.attn.proj), ("fc1", block.mlp.fc1),
                                  ("fc2", block.mlp.fc2)):
                x = torch.randn(m, linear.in_features, device="cuda", dtype=BF16)
                t = us(lambda: F.linear(x, linear.weight, linear.bias))
                log(f"gemm b{batch} {name:6s} {label:4s} [{m}x{linear.in_features}]x[{linear.in_features}x"
                    f"{linear.out_features}] {t:7.1f} us {2 * m * linear.in_features * linear.out_features / t / 1e6:6.1f} TFLOP/s")
                if label != "fc1":
                    continue
                hidden = F.linear(x, linear.weight, linear.bias)
                reference = F.gelu(hidden)
                t_gelu = us(lambda: F.gelu(hidden))
                log(f"gelu b{batch} {name:6s} alone {t_gelu:6.1f} us; cuBLAS addmm + GELU {t + t_gelu:7.1f} us")
                for config in GELU_CONFIGS:
                    y = linear_gelu(x, linear.weight, linear.bias, config, kernel)
                    t_fused = us(lambda: linear_gelu(x, linear.weight, linear.bias, config, kernel))
                    log(f"  triton linear+gelu {config} {t_fused:7.1f} us ({t + t_gelu - t_fused:+6.1f} us vs cuBLAS+GELU) "
                        f"max|diff| {(y.float() - reference.float()).abs().max().item():.3g}")
                if linear.out_features % 128:
                    pad = 128 - linear.out_features % 128
                    fc1_weight, fc1_bias = F.pad(linear.weight, (0, 0, 0, pad)), F.pad(linear.bias, (0, pad))
                    fc2 = block.mlp.fc2
                    padded_hidden = torch.randn(m, linear.out_features + pad, device="cuda", dtype=BF16)
                    t_fc1 = us(lambda: F.linear(x, fc1_weight, fc1_bias))
                    fc2_weight = F.pad(fc2.weight, (0, pad))
                    t_fc2 = us(lambda: F.linear(padded_hidden, fc2_weight, fc2.bias))
                    t_fc2_unpadded = us(lambda: F.linear(hidden, fc2.weight, fc2.bias))
                    log(f"pad b{batch} {name} MLP {linear.out_features}->{linear.out_features + pad}: fc1 {t:.1f} -> "
                        f"{t_fc1:.1f} us, fc2 {t_fc2_unpadded:.1f} -> {t_fc2:.1f} us")
            attn = block.attn
            x = torch.randn(batch, n_tokens, tower.embed_dim, device="cuda", dtype=BF16)
            q, k, v = attn.qkv(x).reshape(batch, n_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            contiguous = (q.contiguous(), k.contiguous(), v.contiguous())
            reference = F.scaled_dot_product_attention(*(t.float() for t in contiguous))
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                            SDPBackend.MATH):
                for layout, args in (("strided", (q, k, v)), ("contiguous", contiguous)):
                    with sdpa_kernel([backend]):
                        out = F.scaled_dot_product_attention(*args)
                        t = us(lambda: F.scaled_dot_product_attention(*args))
                    log(f"sdpa b{batch} {name:6s} [{batch},{attn.num_heads},{n_tokens},{attn.head_dim}] {backend.name:20s} "
                        f"{layout:10s} {t:7.1f} us, max err vs f32 {(out.float() - reference).abs().max().item():.3g}")


TOWER_FAMILIES = tuple((key, (key,)) for key in ("direct_copy", "gelu", "layer_norm", "sdpa", "badd", "bias", "nvjet",
                                                  "conv", "nchw", "nhwc"))
"""Kernel families for :func:`kernel_families` (finer than the profile's ``KINDS``: the evidence above
cites bias copies, "badd" GEMMs and cuDNN's layout transposes); first match wins."""


def kernel_families(fn: Callable[[], Any]) -> str:
    """Device ms by kernel family (:data:`TOWER_FAMILIES`) of one call of ``fn`` under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    families: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        key = kind_of(event.name, TOWER_FAMILIES)
        families[key][0] += 1
        families[key][1] += event.time_range.end - event.time_range.start
    return ", ".join(f"{k} {int(c)}x {t / 1e3:.2f}ms" for k, (c, t) in sorted(families.items(), key=lambda kv: -kv[1][1]))


def patch(model: Any) -> None:
    """Each tower's patch embedding (on a channel slice of [B, 6, 224, 224], as the towers get it):
    eager cuDNN, inductor's own lowering (cuDNN) and :class:`~vla_spec.model.fast_vision.TowerCompiler`'s
    (:func:`~vla_spec.model.fast_vision.patch_embedding_as_matmul`)."""
    from vla_spec.model.fast_vision import TOWER_COMPILE_OPTIONS, TowerCompiler

    backbone = model.vision_backbone
    for batch in (32, 8):
        pixels = torch.randn(batch, 6, 224, 224, device="cuda", dtype=BF16)
        for name, tower, images in (("dino", backbone.featurizer, pixels[:, :3]), ("siglip", backbone.fused_featurizer, pixels[:, 3:])):
            conv = tower.patch_embed.proj
            reference = conv(images)
            for label, fn in (("eager cuDNN", conv),
                              ("inductor (cuDNN)", torch.compile(conv, options=TOWER_COMPILE_OPTIONS)),
                              ("TowerCompiler (matmul)", torch.compile(conv, backend=TowerCompiler(TOWER_COMPILE_OPTIONS)))):
                out = fn(images)
                t = us(lambda f=fn: f(images))
                log(f"patch b{batch} {name:6s} {label:24s} {t:7.1f} us, max|diff| vs eager "
                    f"{(out.float() - reference.float()).abs().max().item():.3g}, kernels: {kernel_families(lambda f=fn: f(images))}")


def graphs(model: Any) -> None:
    import vla_spec.model.fast_vision as fast_vision

    generator = torch.Generator(device="cuda").manual_seed(0)
    pixels = {b: torch.randn(b, 6, 224, 224, device="cuda", dtype=BF16, generator=generator) for b in (32, 8)}
    options = fast_vision.TOWER_COMPILE_OPTIONS
    first_out: dict[int, torch.Tensor] = {}
    backbone = model.vision_backbone
    for label, patch_matmul in (("shipped", True), ("session 18 (plain inductor)", False)):
        torch._dynamo.reset()
        vision = fast_vision.GraphedVision(model, compile_vision=True, use_cuda_graphs=True)
        if not patch_matmul:  # plain inductor, as session 18 shipped it
            vision.towers = tuple(torch.compile(m, options=options) for m in (backbone.featurizer, backbone.fused_featurizer))
            vision.projector = torch.compile(model.projector, options=options)
        for batch in (32, 8):
            static_in = pixels[batch]
            t0 = time.perf_counter()
            graph, out = fast_vision.captured(lambda v=vision, x=static_in: v.encode(x, v.stream()), warmup=2)
            first = time.perf_counter() - t0
            ms = us(graph.replay, reps=3, iters=20) / 1e3
            reference = first_out.setdefault(batch, out.clone())
            log(f"graph {label:28s} b{batch} two streams: {ms:6.2f} ms device (capture {first:5.1f} s), "
                f"max|diff| vs shipped {(out.float() - reference.float()).abs().max().item():.3g}")
            log(f"    kernels: {kernel_families(graph.replay)}")
        del vision
        torch.cuda.empty_cache()


def main() -> int:
    import triton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["micro", "patch", "graphs"])
    args = parser.parse_args()
    log(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    model = build_random_openvla(openvla_7b_config(text_config=LLAMA2_7B), "cuda", BF16)
    with torch.inference_mode():
        for part in args.parts:
            {"micro": micro, "patch": patch, "graphs": graphs}[part](model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
