"""The Triton kernels on the CPU, through Triton's interpreter (``TRITON_INTERPRET=1``).

:mod:`vla_spec.model.triton_gemv` (the batch-1 GEMVs) and :mod:`vla_spec.model.triton_attention`
(the decode steps' attention) run on CUDA in the gpu tier; here the same Triton source and the
same launches (the fixed configuration, the grid, the flags) run in child processes with the
interpreter, so CI checks them without a GPU. float32 only (the interpreter's bfloat16 is wrong in
Triton 3.8; the bfloat16 roundings are the gpu tier's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

OPS_CHILD = r"""
import json, torch
import torch.nn.functional as F
from vla_spec.model.triton_gemv import CONFIG, gemv, gemv_add, rms_norm_gemv, rms_norm_swiglu_gemv

generator = torch.Generator().manual_seed(0)
def randn(*shape):
    return torch.randn(*shape, generator=generator)

def error(got, want):  # relative to the largest wanted value
    return (got.double() - want).abs().max().item() / want.abs().max().item()

report = {"config": CONFIG}
n, k, eps = 37, 1500, 1e-5  # neither a multiple of the blocks
weight, up_weight, norm_weight, bias, up_bias = randn(n, k), randn(n, k), randn(k), randn(n), randn(n)
for lead in [(1, 1), (1,)]:
    x, residual = randn(*lead, k), randn(*lead, n)
    xd = x.double()
    normed = norm_weight.double() * xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)  # LlamaRMSNorm
    gate = F.linear(normed, weight.double(), bias.double())
    up = F.linear(normed, up_weight.double(), up_bias.double())
    plain = F.linear(xd, weight.double(), bias.double())
    gated = rms_norm_swiglu_gemv(x, norm_weight, eps, weight, bias, up_weight, up_bias)
    report[str(lead)] = {
        "shape": list(gemv(x, weight, None).shape),
        "gemv": error(gemv(x, weight, None), F.linear(xd, weight.double())),
        "gemv_bias": error(gemv(x, weight, bias), plain),
        "gemv_bias_against_no_bias": error(gemv(x, weight, bias), F.linear(xd, weight.double())),
        "rms_norm_gemv": error(rms_norm_gemv(x, norm_weight, eps, weight, bias), gate),
        "rms_norm_gemv_against_unnormed": error(rms_norm_gemv(x, norm_weight, eps, weight, bias), plain),
        "gemv_add": error(gemv_add(x, weight, bias, residual), residual.double() + plain),
        "gemv_add_against_no_add": error(gemv_add(x, weight, bias, residual), plain),
        "swiglu": error(gated, F.silu(gate) * up),
        "swiglu_against_ungated": error(gated, gate * up),
    }
for name, call in [
    ("mixed_bias_error", lambda: rms_norm_swiglu_gemv(randn(1, k), norm_weight, eps, weight, bias, up_weight, None)),
    ("strided_weight_error", lambda: gemv(randn(1, k), randn(k, n).t(), None)),
    ("two_rows_error", lambda: gemv(randn(2, 1, k), weight, None)),
]:
    try:
        call()
    except ValueError as e:
        report[name] = str(e)
"""

DECODER_CHILD = r"""
from transformers import LlamaConfig, LlamaForCausalLM
import vla_spec.model.triton_gemv_kernel as kernels
from vla_spec.model.decoding import greedy_decode
from vla_spec.model.fast_decoding import FastGreedyDecoder

launches = []
class Counted:  # the kernel, counting its launches
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        launches.append(grid)
        return self.kernel[grid]
kernels.gemv = Counted(kernels.gemv)

torch.manual_seed(0)
config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,  # few programs:
                     num_attention_heads=2, num_key_value_heads=1, attention_bias=True, mlp_bias=True)  # slow interpreter
model = LlamaForCausalLM(config).eval()
with torch.no_grad():
    model.lm_head.weight.mul_(50)  # margins of O(1)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.normal_(0, 0.1)
embeds = torch.randn(3, 11, 16, generator=torch.Generator().manual_seed(1))
mask = torch.ones(3, 11, dtype=torch.long)
mask[1, :4] = 0  # left padding
for batch, fuse in [(1, False), (1, True), (3, True)]:
    naive = greedy_decode(model, embeds[:batch], mask[:batch], 4)
    launches.clear()
    fast = FastGreedyDecoder(gemv=True, fuse=fuse, pad_multiple=1)(model, embeds[:batch], mask[:batch], 4)
    report[f"decoder batch={batch} fuse={fuse}"] = {
        "same_ids": bool(torch.equal(fast.token_ids, naive.token_ids)),
        "margin_error": (fast.margins - naive.margins).abs().max().item(),
        "launches": len(launches),
    }
import vla_spec.model.static_llama as static_llama
attention_calls = []
def counted_attention(*args):
    attention_calls.append(args[0].shape)
    return step_kernel(*args)
step_kernel, static_llama.decode_attention = static_llama.decode_attention, counted_attention
naive = greedy_decode(model, embeds, mask, 4)
fast = FastGreedyDecoder(step_attention_backend="triton", pad_multiple=1)(model, embeds, mask, 4)
static_llama.decode_attention = step_kernel
report["decoder step kernel batch=3"] = {
    "same_ids": bool(torch.equal(fast.token_ids, naive.token_ids)),
    "margin_error": (fast.margins - naive.margins).abs().max().item(),
    "calls": len(attention_calls),
    "query_shapes": sorted({repr(list(shape)) for shape in attention_calls}),
}
"""

ATTENTION_CHILD = r"""
import vla_spec.model.triton_attention as step_attention
generator = torch.Generator().manual_seed(2)
batch, heads, kv_heads, length, dim = 2, 4, 2, 45, 24  # grouped K/V; 45 keys: no multiple of any chunk
q = torch.randn(batch, heads, 1, dim, generator=generator)
k, v = (torch.randn(batch, kv_heads, length, dim, generator=generator) for _ in range(2))
real = torch.ones(batch, length, dtype=torch.bool)
real[0, :20] = False  # whole chunks of masked keys
real[1, 30:] = False
mask = torch.zeros(batch, 1, 1, length).masked_fill_(~real[:, None, None, :], float("-inf"))
def reference(mask):
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1),
                                          v.double().repeat_interleave(2, 1), attn_mask=mask.double())
shipped = step_attention.CONFIGS
report["step_attention_configs"] = [[largest, list(config)] for largest, config in shipped]
report["step_attention_config_for"] = {b: list(step_attention.config_for(b)) for b in (1, 8, 9, 32)}
for config in [c for _, c in shipped] + [(16, 3, 4, 2), (16, 2, 2, 3), (32, 1, 4, 1)]:  # 45 keys: 1-3 programs
    step_attention.CONFIGS = ((None, step_attention.StepAttentionConfig(*config)),)
    got = step_attention.decode_attention(q, k, v, mask).double()
    half = step_attention.decode_attention(q.half(), k.half(), v.half(), mask.half()).double()
    report[f"step_attention {list(config)}"] = {
        "shape": list(got.shape),
        "error": (got - reference(mask)).abs().max().item(),
        "float16_error": (half - reference(mask)).abs().max().item(),
        "error_against_unmasked": (got - reference(torch.zeros_like(mask))).abs().max().item(),
    }
try:
    step_attention.decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask.bfloat16())
except ValueError as error:
    report["step_attention_bfloat16_error"] = str(error)
"""


@pytest.fixture(scope="module")
def report() -> dict:
    """Both children's results, from one interpreted process (torch and Triton imported once)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    source = OPS_CHILD + DECODER_CHILD + ATTENTION_CHILD + "print(json.dumps(report))\n"
    child = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.cpu
def test_gemv_kernels_against_float64_in_the_interpreter(report):
    """One row times W [N, K] (+ b) within 1e-6 (relative to the largest value) of float64 for N and
    K that are no multiple of the fixed blocks, with each folded-in part: the RMSNorm prologue
    (transformers' LlamaRMSNorm), the residual epilogue, the SwiGLU pair (``silu(gate) * up``). The
    output keeps x's leading dims. Negative controls: each result is far from the same product
    without its part (bias, norm, add, SiLU), so each part is applied; bad inputs get one-line
    errors that name the fix."""
    assert report["config"] == {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3}
    for lead in ("(1, 1)", "(1,)"):
        errors = report[lead]
        assert errors["shape"] == {"(1, 1)": [1, 1, 37], "(1,)": [1, 37]}[lead]
        for name in ("gemv", "gemv_bias", "rms_norm_gemv", "gemv_add", "swiglu"):
            assert errors[name] <= 1e-6, (lead, name, errors[name])
        for name in ("gemv_bias_against_no_bias", "rms_norm_gemv_against_unnormed", "gemv_add_against_no_add",
                     "swiglu_against_ungated"):
            assert errors[name] > 1e-3, (lead, name, errors[name])  # 1000x the bound
    assert "both a bias or neither" in report["mixed_bias_error"]
    assert "contiguous" in report["strided_weight_error"]
    assert "one row of x, got 2 of 1500: use F.linear" in report["two_rows_error"]


@pytest.mark.cpu
def test_step_attention_against_float64_in_the_interpreter(report):
    """The decode steps' attention kernel (one query row per sequence and head, grouped K/V, an additive
    mask) within 1e-6 of float64 SDPA in float32, in the three configurations used (16-key blocks at
    batch 1, 64-key blocks up to batch 8, three pipelined 32-key chunks above) and in three others
    (one to three programs for the 45 keys, one to three chunks each); whole chunks of masked keys give
    no NaN. In float16 (the tensor-core path a GPU takes in bfloat16: probabilities rounded to the
    cache's dtype) within 1e-3. bfloat16 on the CPU gets a one-line error: the interpreter's bfloat16
    products are wrong. Negative control: each is far from the same attention without the mask, so
    the mask is applied."""
    assert report["step_attention_configs"] == [[1, [16, 1, 2, 1]], [8, [64, 1, 4, 1]], [None, [32, 3, 4, 3]]]
    assert report["step_attention_config_for"] == {
        "1": [16, 1, 2, 1], "8": [64, 1, 4, 1], "9": [32, 3, 4, 3], "32": [32, 3, 4, 3]
    }
    cases = [name for name in report if name.startswith("step_attention [")]
    assert len(cases) == 6
    for name in cases:
        assert report[name]["shape"] == [2, 4, 1, 24], name
        assert report[name]["error"] <= 1e-6, (name, report[name])
        assert report[name]["float16_error"] <= 1e-3, (name, report[name])
        assert report[name]["error_against_unmasked"] > 1e-2, (name, report[name])
    assert "float32 or float16" in report["step_attention_bfloat16_error"]


@pytest.mark.cpu
def test_decoder_through_the_gemv_kernels_in_the_interpreter(report):
    """``FastGreedyDecoder(gemv=True)`` on a tiny float32 Llama (biases everywhere, grouped K/V) gives
    the naive decoder's 4 tokens, margins within 1e-4, at batch 1 (fused weights or not). It launches
    the kernel 31 times: the prefill's last position 3 (o, gate/up, down) + lm_head, then each of the
    3 steps 4 per layer x 2 layers + lm_head; nothing else of a single-row layer runs outside it
    (43 times with q, k and v apart). A left-padded batch of 3 gives naive's tokens without it."""
    for case in ("decoder batch=1 fuse=False", "decoder batch=1 fuse=True", "decoder batch=3 fuse=True"):
        assert report[case]["same_ids"], report[case]
        assert report[case]["margin_error"] <= 1e-4, report[case]
    assert report["decoder batch=1 fuse=True"]["launches"] == 4 + 3 * (4 * 2 + 1)
    assert report["decoder batch=3 fuse=True"]["launches"] == 0  # batches above 1 stay on cuBLAS
    assert report["decoder batch=1 fuse=False"]["launches"] == 4 + 3 * (6 * 2 + 1)  # q, k and v apart


@pytest.mark.cpu
def test_decoder_through_the_step_attention_kernel_in_the_interpreter(report):
    """``FastGreedyDecoder(step_attention_backend="triton")`` on the same tiny Llama, a left-padded
    batch of 3, 4 tokens: naive's ids, margins within 1e-4, and our kernel runs 7 times, one query
    row per sequence and head each: the 3 steps x 2 layers, and the prefill's last layer at each
    row's last position (since session 19: on torch's SDPA it ran cuDNN's single-query kernel on an
    H200, the likely cause of margins that moved between replays at batch 32). 6 calls would mean
    the prefill's last layer is back on SDPA."""
    case = report["decoder step kernel batch=3"]
    assert case["same_ids"] and case["margin_error"] <= 1e-4, case
    assert case["calls"] == 3 * 2 + 1, case
    assert case["query_shapes"] == ["[3, 2, 1, 8]"], case
