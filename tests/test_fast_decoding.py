"""The fast decoder's static-cache logic, on CPU: it must give the naive decoder's tokens.

(The CUDA-graph path and the 7B speed are covered by tests/test_model_gpu.py and
benchmarks/bench_predict_action.py.)
"""

from __future__ import annotations

import copy
from functools import cache
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from vla_spec.model.decoding import GreedyResult

pytestmark = pytest.mark.cpu  # torch is imported by the tests, not at collection (conftest.TORCH_TESTS)


@cache
def tiny_llama(kv_heads: int):
    """One per kv_heads for the module (decoders read it, never change it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(kv_heads)
    config = LlamaConfig(
        vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # spread the logits: margins of O(1), no accidental near-ties
    return model


@cache
def naive_decode(kv_heads: int, n_tokens: int, seed: int = 0) -> GreedyResult:
    """The naive decoder's result on :func:`left_padded_batch` (computed once per case)."""
    from vla_spec.model.decoding import greedy_decode

    embeds, mask = left_padded_batch(seed)
    return greedy_decode(tiny_llama(kv_heads), embeds, mask, n_tokens)


def left_padded_batch(seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(3, 13, 64, generator=generator)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :1] = 0
    embeds[mask == 0] = 0
    return embeds, mask


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("pad_multiple", [1, 8])
def test_static_cache_equals_dynamic_cache(kv_heads, fuse, pad_multiple):
    import torch

    from vla_spec.model.decoding import GreedyResult
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    model = tiny_llama(kv_heads)
    embeds, mask = left_padded_batch()
    naive = naive_decode(kv_heads, 7)
    assert not naive.margins.requires_grad and not naive.token_ids.requires_grad  # decoding records no graph
    decoder = FastGreedyDecoder(fuse=fuse, pad_multiple=pad_multiple)
    for _ in range(2):  # the second call reuses the bucket's buffers
        fast = decoder(model, embeds, mask, 7)
        assert isinstance(fast, GreedyResult)
        assert torch.equal(fast.token_ids, naive.token_ids)
        assert torch.allclose(fast.margins, naive.margins, atol=1e-4)
        assert torch.allclose(fast.top_logits, naive.top_logits, atol=1e-4)
    assert len(decoder.buckets) == 1 and decoder.buckets[0][2] == -(-13 // pad_multiple) * pad_multiple


def test_padded_row_equals_its_single_call():
    import torch

    from vla_spec.model.fast_decoding import FastGreedyDecoder

    model = tiny_llama(4)
    embeds, mask = left_padded_batch()
    batch = FastGreedyDecoder()(model, embeds, mask, 7)
    alone = FastGreedyDecoder()(model, embeds[1:2, 4:], mask[1:2, 4:], 7)
    assert torch.equal(alone.token_ids[0], batch.token_ids[1])


@given(st.integers(1, 12).flatmap(
    lambda length: st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=1, max_size=4)))
@settings(max_examples=60, deadline=None)
def test_right_aligned_places_move_real_positions_first_in_order(rows):
    """For any mask (left-padded or not), each row's places are a permutation of 0 .. L - 1 that puts
    its n real positions at 0 .. n - 1 and its pads at n .. L - 1, each group in its own order."""
    import torch

    from vla_spec.model.fast_decoding import right_aligned_places

    places = right_aligned_places(torch.tensor(rows)).tolist()
    for row, place in zip(rows, places):
        real = [p for p, is_real in zip(place, row) if is_real]
        pads = [p for p, is_real in zip(place, row) if not is_real]
        assert real == list(range(len(real)))
        assert pads == list(range(len(real), len(row)))


def test_prefill_attention_is_causal_without_a_mask(monkeypatch):
    """The prefill's layers call SDPA with ``is_causal`` and no mask over their own positions; only the
    prefill's last layer (each row's last real position) and the decode steps pass a mask. Two
    layers, a left-padded batch of 3, 3 tokens: 1 causal call, then 1 + 2 x 2 masked single-row calls."""
    import torch
    import torch.nn.functional as F

    from vla_spec.model.fast_decoding import FastGreedyDecoder

    calls = []
    sdpa = F.scaled_dot_product_attention

    def recorded(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((q.shape[2], k.shape[2], attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorded)
    embeds, mask = left_padded_batch()
    fast = FastGreedyDecoder(pad_multiple=1)(tiny_llama(4), embeds, mask, 3)
    assert calls == [(13, 13, True, True)] + [(1, 16, False, False)] * 5  # cache: 13 + 2 rounded up to 16
    assert torch.equal(fast.token_ids, naive_decode(4, 3).token_ids)


def test_o_and_down_products_add_into_the_residual_stream_in_place(monkeypatch):
    """o_proj and down_proj (batch > 1) are ``addmm_`` on the residual stream h itself (a GEMM with h as
    C: no add kernel, no new h): two per layer call, 2 layers x (prefill + its last position + 2
    steps) = 12 for 3 tokens, each writing into the h it was given. :func:`add_product_` is
    ``h + x W^T + b`` within float32 rounding of float64; negative controls: without the bias, and
    the h it started from, are far from it."""
    import torch

    from vla_spec.model.fast_decoding import FastGreedyDecoder
    from vla_spec.model.static_llama import add_product_

    generator = torch.Generator().manual_seed(0)
    h, x = torch.randn(2, 3, 64, generator=generator), torch.randn(2, 3, 32, generator=generator)
    weight, bias = torch.randn(64, 32, generator=generator), torch.randn(64, generator=generator)
    want = h.double() + x.double() @ weight.double().T + bias.double()
    start = h.clone()
    got = add_product_(h, x, weight, bias)
    assert got is h and (got.double() - want).abs().max() < 1e-5
    assert (want - bias.double() - got.double()).abs().max() > 0.1 and (start.double() - got.double()).abs().max() > 1

    writes = []
    addmm_ = torch.Tensor.addmm_

    def recorded(self, *args, **kwargs):
        writes.append(self.data_ptr())
        return addmm_(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "addmm_", recorded)
    embeds, mask = left_padded_batch()
    fast = FastGreedyDecoder(pad_multiple=1)(tiny_llama(4), embeds, mask, 3)
    assert len(writes) == 12 and all(writes[i] == writes[i + 1] for i in range(0, 12, 2))  # o, then down, into one h
    assert torch.equal(fast.token_ids, naive_decode(4, 3).token_ids)


@pytest.mark.parametrize("n_tokens", [1, 2, 9])
def test_token_counts(n_tokens):
    import torch

    from vla_spec.model.fast_decoding import FastGreedyDecoder

    model = tiny_llama(4)
    embeds, mask = left_padded_batch(1)
    naive = naive_decode(4, n_tokens, seed=1)
    fast = FastGreedyDecoder()(model, embeds, mask, n_tokens)
    assert fast.token_ids.shape == (3, n_tokens) and torch.equal(fast.token_ids, naive.token_ids)


def test_bad_inputs_and_lru():
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    model = tiny_llama(4)
    embeds, mask = left_padded_batch()
    decoder = FastGreedyDecoder(max_buckets=2, pad_multiple=1)
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        decoder(model, embeds[0], mask[0], 7)
    with pytest.raises(ValueError, match="n_tokens"):
        decoder(model, embeds, mask, 0)
    for length in (13, 12, 11):
        decoder(model, embeds[:, -length:], mask[:, -length:], 3)
    assert [key[2] for key in decoder.buckets] == [12, 11]


def test_accelerate_tiny_openvla_on_cpu():
    """On CPU, accelerate() swaps in the fast decoder (eager static cache) with the same tokens."""
    from tests.goldens import GOLDEN_UNNORM_KEY, golden_cases, load_image, load_tiny
    from vla_spec.model.fast_decoding import accelerate, is_accelerated, restore

    model = copy.copy(load_tiny())  # shallow: accelerate() sets attributes on the copy only
    cases = golden_cases()[::4]
    images, texts = [load_image(i) for i, _ in cases], [t for _, t in cases]
    naive = model.predict_action(images, texts, GOLDEN_UNNORM_KEY)
    accelerate(model)
    assert is_accelerated(model) and model.vision_runner is None  # no CUDA: vision stays eager
    assert model.call_runner is None  # no CUDA graphs: no one-graph call
    assert not is_accelerated(load_tiny())  # the shared cached model is untouched
    fast = model.predict_action(images, texts, GOLDEN_UNNORM_KEY)
    assert fast.token_ids.tolist() == naive.token_ids.tolist()
    assert abs(fast.margins - naive.margins).max() < 1e-4
    restore(model)
    assert not is_accelerated(model) and model.vision_runner is None and model.call_runner is None


def test_vision_runner_is_explicit():
    """``vision_runner`` replaces the eager towers + projector when set (no patched method); a
    :class:`GraphedVision` without graphs (CPU) gives the eager patches. Its CUDA graphs and the
    hook fallback are checked in the gpu tier."""
    import torch

    from tests.goldens import load_image, load_tiny
    from vla_spec.model.fast_vision import GraphedVision
    from vla_spec.model.processor import process_images

    model = copy.copy(load_tiny())
    pixels = process_images([load_image("scene")])
    eager = load_tiny().encode_images(pixels)
    seen = []
    model.vision_runner = lambda pixel_values: seen.append(pixel_values.shape) or model.encode_images_eager(pixel_values)
    assert torch.equal(model.encode_images(pixels), eager) and seen == [(1, 6, 224, 224)]
    model.vision_runner = GraphedVision(model, compile_vision=False, use_cuda_graphs=False)
    assert torch.equal(model.encode_images(pixels), eager)
    assert load_tiny().vision_runner is None and "encode_images" not in vars(model)


def test_compiled_towers_take_the_tower_options():
    """Compiled, the towers and the projector go through a :class:`TowerCompiler` with
    :data:`TOWER_COMPILE_OPTIONS` (no comprehensive padding), with or without a ``compile_mode``
    (whose options it keeps); built only, the compile itself runs in the gpu tier."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._inductor.compile_fx import get_patched_config_dict

    from tests.goldens import load_tiny
    from vla_spec.model.fast_vision import TOWER_COMPILE_OPTIONS, GraphedVision

    assert TOWER_COMPILE_OPTIONS == {"comprehensive_padding": False}
    model = copy.copy(load_tiny())
    for mode, autotune in ((None, False), ("max-autotune-no-cudagraphs", True)):
        vision = GraphedVision(model, compile_vision=True, use_cuda_graphs=False, compile_mode=mode)
        config = get_patched_config_dict(config_patches=vision.compiler.options)
        assert config["comprehensive_padding"] is False and config["max_autotune"] is autotune, mode
        assert all(isinstance(module, OptimizedModule) for module in (*vision.towers, vision.projector))


@pytest.mark.parametrize("batch,channels,height,width,patch,bias", [
    (2, 3, 28, 28, 14, True), (1, 3, 28, 42, 14, False), (3, 2, 8, 12, 4, True), (2, 4, 6, 6, 2, True)])
def test_patch_embedding_as_matmul_is_the_convolution(batch, channels, height, width, patch, bias):
    """A convolution whose stride is its kernel, as one matrix product: conv2d's values (float64,
    to rounding) in conv2d's shape [B, D, H / p, W / p], whether the depth C p p needs padding to a
    multiple of 8 (588 for 3 x 14 x 14, 16 for 4 x 2 x 2) or not; on a channel slice of a wider
    tensor as the towers get it."""
    import torch
    import torch.nn.functional as F

    from vla_spec.model.fast_vision import patch_embedding_as_matmul

    generator = torch.Generator().manual_seed(batch * 100 + patch)
    wide = torch.randn(batch, 2 * channels, height, width, dtype=torch.float64, generator=generator)
    images = wide[:, channels:]
    weight = torch.randn(5, channels, patch, patch, dtype=torch.float64, generator=generator)
    b = torch.randn(5, dtype=torch.float64, generator=generator) if bias else None
    out = patch_embedding_as_matmul(images, weight, b, [patch, patch], [0, 0], [1, 1], False, [0, 0], 1)
    expected = F.conv2d(images, weight, b, stride=patch)
    assert out.shape == expected.shape == (batch, 5, height // patch, width // patch)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the control: a patch read in the other order (columns first) is not conv2d's
    swapped = patch_embedding_as_matmul(images, weight.transpose(2, 3), b, [patch, patch], [0, 0], [1, 1], False, [0, 0], 1)
    assert not torch.allclose(swapped, expected)


@pytest.mark.parametrize("change", ["stride", "padding", "dilation", "groups", "transposed", "partial patch"])
def test_patch_embedding_as_matmul_leaves_other_convolutions_to_inductor(change):
    """Anything but a whole-patch embedding is NotImplemented: inductor then lowers it as before."""
    import torch

    from vla_spec.model.fast_vision import patch_embedding_as_matmul

    images, weight = torch.zeros(1, 2, 8, 8), torch.zeros(4, 2, 4, 4)
    args = {"stride": [4, 4], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0],
            "groups": 1}
    args |= {"stride": {"stride": [2, 2]}, "padding": {"padding": [1, 1]}, "dilation": {"dilation": [2, 2]},
             "groups": {"groups": 2}, "transposed": {"transposed": True}, "partial patch": {}}[change]
    if change == "partial patch":
        images = torch.zeros(1, 2, 10, 8)
    assert patch_embedding_as_matmul(images, weight, None, **args) is NotImplemented
    if change == "stride":  # the control: the same call at stride = kernel is taken
        assert patch_embedding_as_matmul(images, weight, None, **{**args, "stride": [4, 4]}) is not NotImplemented


def test_tower_compiler_traces_a_patch_embedding_without_a_convolution():
    """The towers' compile (its decomposition table, traced as inductor's AOT step traces it) has no
    ``aten.convolution`` left for a ViT patch embedding, one ``addmm``, and the module's values; inductor's
    own table (the control) keeps the convolution."""
    import torch
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    from vla_spec.model.fast_vision import TOWER_COMPILE_OPTIONS, TowerCompiler

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 14, stride=14)
    images = torch.randn(2, 3, 28, 28)

    def targets(table):
        with torch.no_grad():
            graph = make_fx(conv, decomposition_table=table)(images)
        return graph, [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]

    graph, ops = targets(TowerCompiler(TOWER_COMPILE_OPTIONS).decompositions())
    assert "aten.convolution.default" not in ops and ops.count("aten.addmm.default") == 1, ops
    with torch.no_grad():
        torch.testing.assert_close(graph(images), conv(images), rtol=1e-5, atol=1e-5)
    assert "aten.convolution.default" in targets(select_decomp_table())[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_fp8_linear_within_e4m3_rounding(seed):
    """float8 e4m3 keeps 3 fraction bits: each quantized factor is within 2**-4 of its value (relative)
    or half a subnormal step (2**-10 of its row's scale), so a product's error is bounded by the
    sum of |x| |w| times ~2 * 2**-4. The negative control: a bfloat16-sized bound (2**-8) fails."""
    import torch

    from vla_spec.model.static_llama import FP8_MAX, Fp8Weight, fp8_linear, fp8_rows

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 64, generator=generator) * torch.logspace(-2, 1, 64)
    w = torch.randn(48, 64, generator=generator)
    values, scale = fp8_rows(x)
    assert values.dtype == torch.float8_e4m3fn and torch.equal(values.float().abs().amax(-1), torch.full((7,), FP8_MAX))
    exact = x @ w.T
    error = (fp8_linear(x, Fp8Weight.of(w), None) - exact).abs()
    magnitude = x.abs() @ w.abs().T
    subnormal = 2**-10 * (x.abs().amax() / FP8_MAX * w.abs().sum(-1) + w.abs().amax() / FP8_MAX * x.abs().sum(-1)[:, None])
    assert (error <= (2 * 2**-4 + 2**-8) * magnitude + subnormal).all()
    assert not (error <= 2**-8 * magnitude).all()  # it did round to float8


def test_fp8_decoder_option_on_cpu():
    """``FastGreedyDecoder(fp8=True)`` runs the prefill's projections in float8 (the margins move) and,
    on this model whose margins are O(1), keeps the naive tokens wherever the naive margin is >= 0.5."""
    import torch

    from vla_spec.model.agreement import near_tie_divergences
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    model = tiny_llama(4)
    embeds, mask = left_padded_batch()
    naive = naive_decode(4, 7)
    fp8 = FastGreedyDecoder(fp8=True)(model, embeds, mask, 7)
    assert not torch.allclose(fp8.margins, naive.margins, atol=1e-4)
    assert near_tie_divergences(fp8.token_ids.numpy(), naive.token_ids.numpy(), (naive.margins < 0.5).numpy()) == []
    with pytest.raises(ValueError, match="multiples of 16"):
        from vla_spec.model.static_llama import Fp8Weight

        Fp8Weight.of(torch.ones(24, 8))


def _compiled_pieces_graphs(compile_piece) -> list[dict[str, tuple]]:
    """The placeholder shapes (ints, or SymInts where dynamic) of every graph dynamo hands its backend
    while the pre-attention and MLP-input pieces run for a Llama of hidden size 32 (4 heads, batch 3)
    and then one of hidden size 48 (6 heads, batch 2); ``compile_piece(fn, name, backend)``."""
    import torch

    from vla_spec.model import static_llama

    graphs = []

    def recorder(gm, example_inputs):
        graphs.append({node.name: tuple(node.meta["example_value"].shape) for node in gm.graph.find_nodes(op="placeholder")
                       if isinstance(node.meta.get("example_value"), torch.Tensor)})
        return gm.forward

    attention = compile_piece(static_llama._attention_inputs, "attention_inputs", recorder)
    mlp = compile_piece(static_llama._gated_mlp_input, "gated_mlp_input", recorder)
    for hidden, heads, batch, positions, cache_len in ((32, 4, 3, 9, 16), (48, 6, 2, 12, 32)):
        head_dim = hidden // heads
        h = torch.randn(batch, positions, hidden)
        cos, sin = torch.randn(2, batch, positions, head_dim)
        k_cache, v_cache = torch.zeros(2, batch, heads, cache_len, head_dim)
        attention(h, torch.ones(hidden), 1e-5, [torch.randn(3 * hidden, hidden)], [None], cos, sin, k_cache, v_cache,
                  torch.arange(positions), heads, heads, head_dim)
        mlp(h, torch.ones(hidden), 1e-5, [torch.randn(4 * hidden, hidden)], [None])
    return graphs


def test_compiled_pieces_are_static_in_the_model_and_dynamic_in_the_bucket():
    """StaticLlama's compiled pieces (:class:`BucketCompiled`): only the dimensions a bucket sets
    (:data:`BUCKET_DIMS`: batch, positions, cache length) are symbolic, from the first compile on; a
    second model's hidden size and head count stay ints (with plain ``torch.compile``, dynamo's
    automatic dynamic shapes made a 7B decoder that ran after the tiny checkpoint 16 % slower on an
    H200). Negative control: plain ``torch.compile`` on the same calls makes the second model's
    hidden size symbolic."""
    import torch

    from vla_spec.model.static_llama import BUCKET_DIMS, BucketCompiled

    graphs = _compiled_pieces_graphs(lambda fn, name, backend: BucketCompiled(fn, BUCKET_DIMS[name], backend=backend))
    allowed = {(f"l_{arg}_", dim) for dims in BUCKET_DIMS.values() for arg, arg_dims in dims.items() for dim in arg_dims}
    symbolic = {(name, dim) for graph in graphs for name, shape in graph.items()
                for dim, size in enumerate(shape) if isinstance(size, torch.SymInt)}
    assert len(graphs) == 4 and symbolic and symbolic <= allowed
    assert [graph["l_h_"][2] for graph in graphs] == [32, 32, 48, 48]
    assert all(isinstance(graph["l_h_"][0], torch.SymInt) for graph in graphs)

    plain = _compiled_pieces_graphs(lambda fn, name, backend: torch.compile(fn, backend=backend))
    assert isinstance(plain[-1]["l_h_"][2], torch.SymInt)


def test_prefix_layout_padding():
    """A layout padded to a longer length and more token rows gives the same prefix, left-padded with
    zero rows and masked; too short a length is refused."""
    import torch

    from tests.goldens import load_tiny

    model = load_tiny()
    ids = [[1, 5, 6, 7], [1, 9]]
    patches = torch.randn(2, model.vision_backbone.num_patches, model.config.hidden_size)
    with torch.inference_mode():
        tight = model.prefix_layout(ids)
        wide = model.prefix_layout(ids, tight.index.shape[1] + 3, token_rows=20)
        a = model.assemble_prefix(tight.ids, tight.index, patches)
        b = model.assemble_prefix(wide.ids, wide.index, patches)
    assert torch.equal(b[:, 3:], a) and not b[:, :3].any()
    assert torch.equal(wide.attention_mask[:, 3:], tight.attention_mask) and not wide.attention_mask[:, :3].any()
    with pytest.raises(ValueError, match="too small"):
        model.prefix_layout(ids, tight.index.shape[1] - 1)


def test_stages_and_first_difference():
    """A bucket's stages come in the order a run writes them (prefill K/V per layer, each step's K/V
    per layer, then ids, margins, top-1 logits); two CPU runs on one prefix are bitwise equal, and a
    one-bit change in one stage is found there and nowhere earlier. The cache's length is 16-aligned
    (L 13 + 6 steps = 19 -> 32) and the positions no step writes stay zero."""
    import torch

    from vla_spec.model.fast_decoding import CACHE_ALIGN, FastGreedyDecoder, first_difference

    model = tiny_llama(4)
    embeds, mask = left_padded_batch()
    decoder = FastGreedyDecoder(pad_multiple=1)
    decoder(model, embeds, mask, 7)
    bucket = decoder.bucket(decoder.buckets[0])
    assert bucket.cache_len == 32 and bucket.cache_len % CACHE_ALIGN == 0 and not bucket.k_cache[0][:, :, 19:].any()
    stages = bucket.stages()
    names = list(stages)
    assert names[:3] == ["prefill layer 0 K", "prefill layer 0 V", "prefill layer 1 K"]
    assert names[4] == "step 1 layer 0 K" and names[-3:] == ["token_ids", "margins", "top_logits"]
    assert len(names) == 2 * 2 * 7 + 3 and stages["step 1 layer 0 K"].shape == (3, 4, 1, 16)
    reference = {name: t.clone() for name, t in stages.items()}
    decoder(model, embeds, mask, 7)
    assert first_difference(reference, bucket.stages()) is None
    changed = dict(reference)
    bits = changed["step 3 layer 1 V"].clone()
    bits.view(torch.int32)[0, 0, 0, 0] ^= 1  # one ulp of one element
    changed["step 3 layer 1 V"] = bits
    assert first_difference(reference, changed) == "step 3 layer 1 V"


def test_attention_backend_option():
    """``attention_backend`` picks the SDPA kernel of every call, ``step_attention_backend`` that of
    the decode steps and of the prefill's last layer (one query row per sequence, as a step): "math"
    (torch's reference kernel, on every device) gives the naive tokens; on CPU torch has no
    "efficient" kernel, so asking for it fails, for the steps already in a one-token call (the
    prefill's last layer; the control: "math" there runs); an unknown name fails when the decoder
    is built. The Triton kernels asked for on CPU tensors (``step_attention_backend="triton"``,
    ``gemv=True`` without the interpreter) fail with the fix."""
    import torch

    from vla_spec.model.fast_decoding import FastGreedyDecoder

    model, (embeds, mask) = tiny_llama(4), left_padded_batch()
    math = FastGreedyDecoder(attention_backend="math")(model, embeds, mask, 7)
    assert torch.equal(math.token_ids, naive_decode(4, 7).token_ids)
    assert torch.equal(FastGreedyDecoder(step_attention_backend="math")(model, embeds, mask, 7).token_ids,
                       math.token_ids)
    default = FastGreedyDecoder()(model, embeds, mask, 7)  # on CPU: torch's SDPA choice at every call
    sdpa_steps = FastGreedyDecoder(step_attention_backend="sdpa")(model, embeds, mask, 7)
    assert torch.equal(sdpa_steps.token_ids, default.token_ids) and torch.equal(sdpa_steps.margins, default.margins)
    for options in ({"attention_backend": "efficient"}, {"step_attention_backend": "efficient"}):
        with pytest.raises(RuntimeError, match="No viable backend"):
            FastGreedyDecoder(**options)(model, embeds, mask, 7)
    with pytest.raises(RuntimeError, match="No viable backend"):
        FastGreedyDecoder(step_attention_backend="efficient")(model, embeds, mask, 1)
    assert FastGreedyDecoder(step_attention_backend="math")(model, embeds, mask, 1).token_ids.shape == (3, 1)
    with pytest.raises(ValueError, match="unknown attention_backend 'fast'.*cudnn"):
        FastGreedyDecoder(attention_backend="fast")
    with pytest.raises(ValueError, match="unknown step_attention_backend 'fast'.*triton"):
        FastGreedyDecoder(step_attention_backend="fast")
    with pytest.raises(ValueError, match="unknown attention_backend 'triton'"):
        FastGreedyDecoder(attention_backend="triton")  # a decode-step kernel only
    with pytest.raises(ValueError, match="triton.*needs CUDA tensors"):
        FastGreedyDecoder(step_attention_backend="triton")(model, embeds, mask, 7)
    with pytest.raises(ValueError, match=r"GEMV \(gemv=True\) needs CUDA tensors, or TRITON_INTERPRET=1"):
        FastGreedyDecoder(gemv=True)(model, embeds[:1], mask[:1], 7)  # batch 1: the GEMV's path
