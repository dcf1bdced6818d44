"""GPU tier: the tiny checkpoint on CUDA (float32 and bfloat16), and the fast decoder on CUDA.

Agreement rules (see :mod:`vla_spec.model.agreement`):

* CUDA float32 (TF32 off) gives exactly the CPU float32 tokens: the logits differ by ~1e-5 and the
  smallest CPU margin of the golden cases is ~1e-2.
* CUDA bfloat16 gives the CPU float32 tokens except where the CPU margin is a near-tie in bfloat16:
  below max(0.1, 3 bfloat16 ulps at the top-1 logit) (:func:`vla_spec.model.agreement.near_ties`;
  the tiny model's top logits lie near 8, where an ulp is 1/16). After a flip at a near-tie the rest
  of that row is not compared (it is conditioned on another token).
* The fast decoder (static cache + CUDA graphs) gives the naive decoder's tokens exactly in float32
  and up to naive near-ties in bfloat16.

Run: ``pytest -m gpu``. Record the CUDA golden once per device class with ``--snapshot-update``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from vla_spec.model.agreement import near_tie_divergences, near_ties
from tests.goldens import GOLDEN_INSTRUCTIONS, GOLDEN_UNNORM_KEY, golden_cases, golden_record, load_image

if TYPE_CHECKING:  # torch is imported by the tests, not when -m cpu collects this module
    import torch

pytestmark = pytest.mark.gpu

DTYPES = ("float32", "bfloat16")
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / Path(__file__).stem


@pytest.fixture(scope="module", autouse=True)
def exact_float32():
    """float32 means float32: no TF32 in matmuls or in the patch-embedding convolutions."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _load(dtype: torch.dtype, device: str):
    from vla_spec.model.loading import from_pretrained
    from tests.goldens import TINY_CHECKPOINT

    return from_pretrained(TINY_CHECKPOINT, dtype=dtype, device=device)


@pytest.fixture(scope="module")
def cpu_record() -> dict:
    from tests.goldens import load_tiny

    return golden_record(load_tiny())


@pytest.fixture(scope="module", params=DTYPES)
def cuda_model(request):
    """The tiny model on CUDA with the naive decoder (one per dtype; not accelerated)."""
    import torch

    return _load(getattr(torch, request.param), "cuda")


@pytest.fixture(scope="module")
def cuda_record(cuda_model) -> dict:
    return golden_record(cuda_model)


@pytest.fixture(scope="module")
def fast_model(cuda_model):
    """A second copy of the tiny model on CUDA, accelerated (fast decoder + graphed vision)."""
    from vla_spec.model.fast_decoding import accelerate

    return accelerate(_load(cuda_model.dtype, "cuda"))


def _ids(record: dict) -> np.ndarray:
    return np.array([case["token_ids"] for case in record["cases"]])


def _margins(record: dict) -> np.ndarray:
    return np.array([case["margins"] for case in record["cases"]], dtype=np.float64)


def _ties(result, dtype: torch.dtype, float32_floor: float = 0.0) -> np.ndarray:
    """Near-ties of a reference result (``ActionPrediction`` or ``GreedyResult``) for a decoding in
    ``dtype``: bfloat16 by the dtype-aware rule; float32 only below ``float32_floor`` (exact: none)."""
    import torch

    margins, top = (np.asarray(torch.as_tensor(v).cpu()) for v in (result.margins, result.top_logits))
    if dtype == torch.float32:
        return near_ties(margins, top_logits=top, dtype="float32", floor=float32_floor)
    return near_ties(margins, top_logits=top, dtype="bfloat16")


def _naive(model, cases):
    """The ``ActionPrediction`` of ``model`` (naive decoder) on ``cases``, margins unrounded."""
    return model.predict_action([load_image(image) for image, _ in cases], [text for _, text in cases], GOLDEN_UNNORM_KEY)


def legacy_view(record: dict) -> dict:
    """``record`` as goldens were stored before full precision: margins rounded to 0.1, ``near_tie``
    = margin < 0.1, a ``tie_margin`` field, no top-1 logits."""
    cases = [
        {**{k: v for k, v in case.items() if k != "top_logits"}, "margins": [round(m, 1) for m in case["margins"]],
         "near_tie": [m < 0.1 for m in case["margins"]]}
        for case in record["cases"]
    ]
    fields = {k: v for k, v in record.items() if k not in ("cases", "tie_rule", "margin_resolution")}
    return {**fields, "tie_margin": 0.1, "cases": cases}


def test_cuda_matches_cpu_golden(cuda_model, cuda_record, cpu_record):
    """float32: the CPU tokens exactly; bfloat16: the CPU tokens except at CPU near-ties."""
    import torch

    assert cuda_record["device_class"] == f"cuda-{str(cuda_model.dtype).removeprefix('torch.')}"
    cpu_ids, got = _ids(cpu_record), _ids(cuda_record)
    if cuda_model.dtype == torch.float32:
        assert got.tolist() == cpu_ids.tolist()
        assert np.allclose(_margins(cuda_record), _margins(cpu_record), atol=1e-3)
        for mine, theirs in zip(cuda_record["cases"], cpu_record["cases"]):
            assert mine["actions"] == pytest.approx(theirs["actions"], abs=1e-6)
    else:
        from tests.goldens import load_tiny

        cpu = _naive(load_tiny(), golden_cases())
        assert cpu.token_ids.tolist() == cpu_ids.tolist()
        assert near_tie_divergences(got, cpu_ids, _ties(cpu, torch.bfloat16)) == []
        # not vacuous: most rows agree outright
        assert (got == cpu_ids).all(axis=1).sum() >= len(got) - 3


def test_batch_equals_single_calls_on_cuda(cuda_model, cuda_record):
    """A left-padded batch gives each row's single-call tokens (prompts of different lengths)."""
    import torch

    by_case = {(c["image"], c["instruction"]): c for c in cuda_record["cases"]}
    for image, text in [golden_cases()[0], golden_cases()[4], golden_cases()[-1]]:
        single = cuda_model.predict_action(load_image(image), text, GOLDEN_UNNORM_KEY)
        batch_row = by_case[(image, text)]
        if cuda_model.dtype == torch.float32:
            assert single.token_ids[0].tolist() == batch_row["token_ids"]
        else:
            ties = near_ties([batch_row["margins"]], top_logits=[batch_row["top_logits"]], dtype="bfloat16")
            assert near_tie_divergences(single.token_ids, [batch_row["token_ids"]], ties) == []


def test_tiny_model_is_live_on_cuda(cuda_model):
    from vla_spec.model.liveness import HOOKED_MODULES, check_liveness

    report = check_liveness(cuda_model)
    assert report.ok, report.problems
    assert report.calls == {name: 1 for name in HOOKED_MODULES}


def test_accelerated_model_is_live(fast_model):
    """Hooks on the towers force the eager vision path, so the liveness check still sees the calls."""
    from vla_spec.model.liveness import HOOKED_MODULES, check_liveness

    report = check_liveness(fast_model)
    assert report.ok, report.problems
    assert report.calls == {name: 1 for name in HOOKED_MODULES}


def test_fast_decoder_equals_naive(cuda_model, cuda_record, fast_model):
    """Same tokens as the naive decoder (float32: exactly; bfloat16: up to naive near-ties)."""
    import torch

    from vla_spec.model.fast_decoding import FastGreedyDecoder

    fast_record = golden_record(fast_model)
    decoder = fast_model.decoder
    assert isinstance(decoder, FastGreedyDecoder) and decoder.buckets
    assert all(bucket.graph is not None for bucket in decoder._buckets.values())  # CUDA graphs were captured
    assert golden_record(fast_model) == fast_record  # graph replay is deterministic
    naive = _naive(cuda_model, golden_cases())
    fast_ids = _ids(fast_record)
    if cuda_model.dtype == torch.float32:
        assert fast_ids.tolist() == naive.token_ids.tolist()
        assert np.allclose(_margins(fast_record), _margins(cuda_record), atol=1e-3)
    else:
        assert near_tie_divergences(fast_ids, naive.token_ids, _ties(naive, torch.bfloat16)) == []
        assert (fast_ids == naive.token_ids).all(axis=1).sum() >= len(fast_ids) - 2


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_fast_decoder_shapes(cuda_model, batch):
    """Other batch sizes / prefix lengths / token counts: static cache == dynamic cache."""
    import torch

    from vla_spec.model.decoding import greedy_decode
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    cases = golden_cases()[:batch] if batch != 2 else [golden_cases()[0], golden_cases()[2]]
    prefix = cuda_model.prefix([load_image(i) for i, _ in cases], [t for _, t in cases])
    for n_tokens in (1, 7, 9):
        naive = greedy_decode(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, n_tokens)
        for pad_multiple in (1, 16):
            fast = FastGreedyDecoder(pad_multiple=pad_multiple)(
                cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, n_tokens
            )
            assert fast.token_ids.device.type == "cuda" and fast.token_ids.dtype == torch.int64
            assert fast.margins.dtype == torch.float32 and fast.token_ids.shape == (batch, n_tokens)
            if cuda_model.dtype == torch.float32:
                assert torch.equal(fast.token_ids, naive.token_ids)
                assert torch.allclose(fast.margins, naive.margins, atol=1e-3)
            else:
                assert near_tie_divergences(
                    fast.token_ids.cpu().numpy(), naive.token_ids.cpu().numpy(), _ties(naive, torch.bfloat16)
                ) == []


def test_fused_projections_and_lru(cuda_model):
    from vla_spec.model.decoding import greedy_decode
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    decoder = FastGreedyDecoder(fuse=True, max_buckets=2, pad_multiple=1, compile=False, gemv=False)  # cuBLAS path
    cases = golden_cases()
    for size in (1, 3, 4):
        prefix = cuda_model.prefix([load_image(i) for i, _ in cases[:size]], [t for _, t in cases[:size]])
        naive = greedy_decode(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
        fast = decoder(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
        assert near_tie_divergences(
            fast.token_ids.cpu().numpy(), naive.token_ids.cpu().numpy(), _ties(naive, cuda_model.dtype)
        ) == []
    assert [key[1] for key in decoder.buckets] == [3, 4]  # LRU kept the last two shapes


def test_graphed_vision_equals_eager(cuda_model, fast_model):
    import torch

    from vla_spec.model.processor import process_images

    many = ["scene", "marker", "gradient", "black"] * 4
    for images in (["black"], ["scene", "marker", "gradient"], many):
        pixels = process_images([load_image(name) for name in images]).to("cuda")
        graphed = fast_model.encode_images(pixels)
        eager = fast_model.encode_images_eager(pixels)
        assert graphed.shape == eager.shape
        # compiled towers fuse LayerNorm/GELU/residual work and so sum in another order: float32
        # agrees to ~1e-6 of the feature scale (features reach ~200), bfloat16 to its resolution
        scale = float(eager.float().abs().max())
        tol = 1e-5 if cuda_model.dtype == torch.float32 else 2e-2
        assert torch.allclose(graphed.float(), eager.float(), atol=tol * scale, rtol=tol)
    assert {1, 3, len(many)} <= set(fast_model.vision_runner.graphs)  # one graph per batch size seen


def test_uint8_pixels_on_the_gpu_equal_host_pixels(cuda_model):
    """The uint8 input path (normalized on the GPU, in the model dtype) gives the host float32
    ``pixel_values`` exactly (rounded once to the model dtype), and so the same tokens."""
    import torch

    cases = golden_cases()[:4]
    images, texts = [load_image(i) for i, _ in cases], [t for _, t in cases]
    inputs = cuda_model.processor(images, texts)
    on_gpu = inputs.pixel_values_on("cuda", cuda_model.dtype)
    assert on_gpu.is_cuda and on_gpu.dtype == cuda_model.dtype
    assert torch.equal(on_gpu.cpu(), inputs.pixel_values.to(cuda_model.dtype))
    assert cuda_model.pixels_on_device
    device_path = cuda_model.predict_action(images, texts, GOLDEN_UNNORM_KEY)
    cuda_model.pixels_on_device = False
    try:
        host_path = cuda_model.predict_action(images, texts, GOLDEN_UNNORM_KEY)
    finally:
        cuda_model.pixels_on_device = True
    assert device_path.token_ids.tolist() == host_path.token_ids.tolist()
    assert np.array_equal(device_path.margins, host_path.margins)


def test_pinned_images_equal_pageable_ones_and_the_model_stages_them_pinned(cuda_model, monkeypatch):
    """``resize_images(..., pin_memory=True)`` gives the same uint8 batch in page-locked memory (so
    the copy to the GPU is an asynchronous DMA), and a CUDA model's ``predict_action`` asks for it
    when its pixels go to the device; the CPU path (the control) does not."""
    import torch

    import vla_spec.model.processor as processor

    cases = golden_cases()[:3]
    images, texts = [load_image(i) for i, _ in cases], [t for _, t in cases]
    pinned, pageable = processor.resize_images(images, pin_memory=True), processor.resize_images(images)
    assert pinned.is_pinned() and not pageable.is_pinned() and torch.equal(pinned, pageable)
    asked = []
    original = processor.resize_images
    monkeypatch.setattr(processor, "resize_images", lambda *a: asked.append(a[-1]) or original(*a))
    cuda_model.predict_action(images, texts, GOLDEN_UNNORM_KEY)
    cuda_model.pixels_on_device = False
    try:
        cuda_model.predict_action(images, texts, GOLDEN_UNNORM_KEY)
    finally:
        cuda_model.pixels_on_device = True
    assert asked == [True, False]


def test_compiled_vision_option(cuda_model):
    """``accelerate(..., compile_vision=True)``: torch.compile inside the per-batch CUDA graph."""
    import torch

    if cuda_model.dtype != torch.bfloat16:
        pytest.skip("compiled once, in bfloat16 (the speed dtype), to keep the tier fast")
    from vla_spec.model.fast_decoding import accelerate

    model = accelerate(_load(torch.bfloat16, "cuda"), compile_vision=True)
    result = model.predict_action(load_image("scene"), GOLDEN_INSTRUCTIONS[1], GOLDEN_UNNORM_KEY)
    reference = cuda_model.predict_action(load_image("scene"), GOLDEN_INSTRUCTIONS[1], GOLDEN_UNNORM_KEY)
    assert near_tie_divergences(result.token_ids, reference.token_ids, _ties(reference, torch.bfloat16)) == []


def test_tower_compiler_runs_the_patch_embedding_as_a_matmul_after_a_plain_compile(monkeypatch):
    """The towers' compile lowers a patch embedding through :func:`patch_embedding_as_matmul` even
    when a plain ``torch.compile`` of the same module ran first in the process (AOTAutograd's cache,
    whose key leaves decompositions out, would hand back the convolution: session 19, run 1), and gives
    cuDNN's values (float32, TF32 off). The control: the plain compile itself never calls it."""
    import torch

    import vla_spec.model.fast_vision as fast_vision

    calls = []
    original = fast_vision.patch_embedding_as_matmul
    monkeypatch.setattr(fast_vision, "patch_embedding_as_matmul", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 64, 14, stride=14).cuda()
    images = torch.randn(4, 6, 224, 224, device="cuda")[:, 3:]
    with torch.inference_mode():
        expected = conv(images)
        torch._dynamo.reset()
        plain = torch.compile(conv, options=fast_vision.TOWER_COMPILE_OPTIONS)(images)
        assert calls == []
        torch._dynamo.reset()
        ours = torch.compile(conv, backend=fast_vision.TowerCompiler(fast_vision.TOWER_COMPILE_OPTIONS))(images)
    assert calls, "the towers' compile never called patch_embedding_as_matmul"
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def _device_key(model) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(model.device)
    return f"sm{major}{minor}-{str(model.dtype).removeprefix('torch.')}"


def test_tiny_golden_cuda(cuda_model, cuda_record, golden, request):
    """The CUDA golden, keyed by compute capability and dtype (exact on the same device class).

    Only classes with a recorded file are compared; record a new one with ``--snapshot-update``.
    A golden recorded before full precision (no ``margin_resolution``) is held against the record's
    :func:`legacy_view`; re-recording stores full precision.
    """
    import json

    key = _device_key(cuda_model)
    recorded = list(GOLDEN_DIR.glob(f"test_tiny_golden_cuda*{key}*.json"))
    updating = request.config.getoption("--snapshot-update", default=False)
    if not recorded and not updating:
        pytest.skip(f"no CUDA golden recorded for {key}: run pytest -m gpu --snapshot-update on such a GPU")
    legacy = bool(recorded) and "margin_resolution" not in json.loads(recorded[0].read_text(encoding="utf-8"))
    assert (legacy_view(cuda_record) if legacy and not updating else cuda_record) == golden(name=key)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_triton_gemv_matches_linear(dtype):
    """The batch-1 decode GEMV kernel (``gemv=True``) against F.linear, ragged shapes and bias."""
    import torch

    from vla_spec.model.triton_gemv import gemv

    generator = torch.Generator(device="cuda").manual_seed(0)
    for rows, cols, bias in [(4096, 4096, False), (11008, 4096, True), (4096, 11008, False), (37, 1000, True)]:
        x = torch.randn(1, 1, cols, device="cuda", generator=generator).to(getattr(torch, dtype))
        w = (torch.randn(rows, cols, device="cuda", generator=generator) / cols**0.5).to(getattr(torch, dtype))
        b = torch.randn(rows, device="cuda", generator=generator).to(getattr(torch, dtype)) if bias else None
        got = gemv(x, w, b)
        want = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
        assert got.shape == (1, 1, rows) and got.dtype == x.dtype
        tol = 1e-4 if dtype == "float32" else 2e-2
        assert torch.allclose(got.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_folded_gemvs_match_the_eager_ops_they_replace(dtype):
    """The norm, add and gate folded into the GEMV, against eager PyTorch in the dtype over the plain
    kernel's products: ``gemv_add`` = ``r + gemv(x)`` bitwise; ``rms_norm_gemv`` =
    ``gemv(LlamaRMSNorm(x))`` bitwise where the mean of squares is exact in any order (x of +-1 and
    +-0.5, K a power of two; negative control: without the norm weight it is not), and in general up
    to one ulp of each normalized input (the squares are summed in another order);
    ``rms_norm_swiglu_gemv`` = ``F.silu(gate) * up`` of two ``rms_norm_gemv`` within 2 bf16 ulps (the
    SiLU rounded once more) or 16 float32 ulps (Triton's exp, ``ex2.approx`` after a multiply by
    log2 e, is a few ulps off libm's)."""
    import torch
    import torch.nn.functional as F

    from vla_spec.model.static_llama import _rms_norm
    from vla_spec.model.triton_gemv import gemv, gemv_add, rms_norm_gemv, rms_norm_swiglu_gemv

    dt = getattr(torch, dtype)
    ulp = torch.finfo(dt).eps
    generator = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=generator) * scale).to(dt)

    for rows, cols in [(4096, 4096), (11008, 4096), (4096, 11008), (37, 1000)]:
        x, r, nw = randn(1, 1, cols), randn(1, 1, rows), randn(cols, scale=0.1) + 1
        w, w2, b, b2 = randn(rows, cols, scale=cols**-0.5), randn(rows, cols, scale=cols**-0.5), randn(rows), randn(rows)
        assert torch.equal(gemv_add(x, w, b, r), r + gemv(x, w, b))
        if cols == 4096:
            exact = (torch.where(randn(1, 1, cols) > 0, 1.0, 0.5) * torch.where(randn(1, 1, cols) > 0, 1, -1)).to(dt)
            fused = rms_norm_gemv(exact, nw, 1e-5, w, b)
            assert torch.equal(fused, gemv(_rms_norm(exact, nw, 1e-5), w, b))
            assert not torch.equal(fused, gemv(_rms_norm(exact, torch.ones_like(nw), 1e-5), w, b))
        normed = _rms_norm(x, nw, 1e-5)
        bound = ulp * (w.double().abs() @ normed.double().abs().reshape(cols))  # one ulp of every input
        got = rms_norm_gemv(x, nw, 1e-5, w, b).double().reshape(rows)
        assert ((got - gemv(normed, w, b).double().reshape(rows)).abs() <= bound + ulp * got.abs()).all()
        gated = rms_norm_swiglu_gemv(x, nw, 1e-5, w, b, w2, b2).double()
        want = (F.silu(rms_norm_gemv(x, nw, 1e-5, w, b)) * rms_norm_gemv(x, nw, 1e-5, w2, b2)).double()
        assert ((gated - want).abs() <= {"bfloat16": 2, "float32": 16}[dtype] * ulp * want.abs()).all()


def test_gemv_decoder_equals_naive(cuda_model):
    from vla_spec.model.decoding import greedy_decode
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    decoder = FastGreedyDecoder(gemv=True, fuse=True)
    for image, text in golden_cases()[::5]:
        prefix = cuda_model.prefix(load_image(image), text)
        naive = greedy_decode(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
        fast = decoder(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
        assert near_tie_divergences(
            fast.token_ids.cpu().numpy(), naive.token_ids.cpu().numpy(), _ties(naive, cuda_model.dtype, 1e-3)
        ) == []


def test_one_graph_call_equals_three_graphs(cuda_model, fast_model):
    """At batch 1 ``accelerate`` runs the whole call as one CUDA graph (``call_runner``): the same
    kernels as the towers' graph + the decoder's graph, so bitwise the same tokens and margins, and
    in float32 the naive tokens."""
    import torch

    from vla_spec.model.fast_decoding import GraphedCall

    runner = fast_model.call_runner
    assert isinstance(runner, GraphedCall) and runner.applies(1) and not runner.applies(2)
    for image, text in [golden_cases()[0], golden_cases()[-1]]:
        one = fast_model.predict_action(load_image(image), text, GOLDEN_UNNORM_KEY)
        fast_model.call_runner = None
        try:
            three = fast_model.predict_action(load_image(image), text, GOLDEN_UNNORM_KEY)
        finally:
            fast_model.call_runner = runner
        assert one.token_ids.tolist() == three.token_ids.tolist()
        assert np.array_equal(one.margins, three.margins)
        if cuda_model.dtype == torch.float32:
            naive = cuda_model.predict_action(load_image(image), text, GOLDEN_UNNORM_KEY)
            assert one.token_ids.tolist() == naive.token_ids.tolist()
    assert runner.shapes and all(key[0] == 1 for key in runner.shapes)


def test_fp8_prefill_option(cuda_model):
    """``FastGreedyDecoder(fp8=True)`` (bfloat16 models): float8 prefill products on the tensor cores
    within e4m3's rounding of the bfloat16 ones, captured in the decoder's graph."""
    import torch

    if cuda_model.dtype != torch.bfloat16:
        pytest.skip("float8 with bfloat16 activations only")
    from vla_spec.model.fast_decoding import FastGreedyDecoder
    from vla_spec.model.static_llama import Fp8Weight, fp8_linear

    weight = cuda_model.language_model.model.layers[0].mlp.gate_proj.weight
    x = torch.randn(300, weight.shape[1], device="cuda", dtype=torch.bfloat16)
    exact = x.float() @ weight.float().T
    error = (fp8_linear(x, Fp8Weight.of(weight), None).float() - exact).abs()
    magnitude = x.float().abs() @ weight.float().abs().T
    assert (error <= (2 * 2**-4 + 2**-7) * magnitude + 1e-3 * magnitude.max()).all()
    assert not (error <= 2**-9 * magnitude).all()  # it did round to float8
    prefix = cuda_model.prefix([load_image(i) for i, _ in golden_cases()[:4]], [t for _, t in golden_cases()[:4]])
    decoder = FastGreedyDecoder(fp8=True)
    result = decoder(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
    assert result.token_ids.shape == (4, 7) and all(b.graph is not None for b in decoder._buckets.values())


def test_triton_decode_attention_matches_sdpa():
    """``step_attention_backend="triton"``'s kernel against SDPA in float64: bfloat16 and float32,
    head sizes 128 (7B) and 8 (the tiny model), grouped K/V heads, a cache length that is no
    multiple of the kernel's key block, and a row whose first 100 keys are masked (left padding over
    a whole block); replays bitwise equal. Negative control: without the mask it is far off."""
    import torch

    from vla_spec.model.triton_attention import decode_attention

    generator = torch.Generator(device="cuda").manual_seed(0)
    for dtype, dim, heads, kv_heads, length in [(torch.bfloat16, 128, 32, 32, 288), (torch.float32, 8, 4, 4, 37),
                                                (torch.bfloat16, 64, 8, 2, 200)]:
        batch = 3
        q, k, v = (torch.randn(batch, h, n, dim, device="cuda", generator=generator).to(dtype)
                   for h, n in ((heads, 1), (kv_heads, length), (kv_heads, length)))
        allowed = torch.rand(batch, length, device="cuda", generator=generator) < 0.7
        allowed[1, :100] = False
        allowed[:, -1] = True  # the step's own key
        mask = torch.zeros(batch, 1, 1, length, device="cuda", dtype=dtype).masked_fill_(
            ~allowed[:, None, None, :], float("-inf"))
        rep = heads // kv_heads
        want = torch.nn.functional.scaled_dot_product_attention(
            q.double(), k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1),
            attn_mask=mask.double())
        got = decode_attention(q, k, v, mask)
        assert got.shape == q.shape and got.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert (got.double() - want).abs().max().item() <= tol
        assert torch.equal(decode_attention(q, k, v, mask), got)
        unmasked = decode_attention(q, k, v, torch.zeros_like(mask))
        assert (unmasked.double() - want).abs().max().item() > 10 * tol


def test_triton_step_attention_decoder(cuda_model):
    """The decoder with ``step_attention_backend="triton"`` on a left-padded batch: the naive tokens
    up to naive margins below 1e-3 in float32 and up to near-ties in bfloat16 (as the GEMV's test);
    replays of its graph are bitwise equal (ids, margins, top-1 logits). It is the default on CUDA
    unless an SDPA backend is asked for."""
    import torch

    from vla_spec.model.decoding import greedy_decode
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    lm, device = cuda_model.language_model, cuda_model.device
    assert FastGreedyDecoder().static_llama(lm, device).step_triton
    assert not FastGreedyDecoder(attention_backend="efficient").static_llama(lm, device).step_triton
    assert not FastGreedyDecoder(step_attention_backend="sdpa").static_llama(lm, device).step_triton
    decoder = FastGreedyDecoder(step_attention_backend="triton")
    cases = golden_cases()[::3]
    prefix = cuda_model.prefix([load_image(image) for image, _ in cases], [text for _, text in cases])
    naive = greedy_decode(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
    fast = decoder(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
    assert near_tie_divergences(
        fast.token_ids.cpu().numpy(), naive.token_ids.cpu().numpy(), _ties(naive, cuda_model.dtype, 1e-3)
    ) == []
    again = decoder(cuda_model.language_model, prefix.inputs_embeds, prefix.attention_mask, 7)
    assert all(torch.equal(getattr(again, f), getattr(fast, f)) for f in ("token_ids", "margins", "top_logits"))
