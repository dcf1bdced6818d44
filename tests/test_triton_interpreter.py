"""The batch-1 GEMV kernel on the CPU, through Triton's interpreter (``TRITON_INTERPRET=1``).

:func:`vla_spec.model.triton_gemv.gemv` runs on CUDA in the gpu tier; here the same Triton source and
the same launch (its fixed configuration, the grid) run in a child process with the interpreter, so
CI checks them without a GPU. float32 only (the interpreter's bfloat16 is wrong in Triton 3.8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = r"""
import json, torch
from vla_spec.model.triton_gemv import CONFIG, gemv

generator = torch.Generator().manual_seed(0)
results = []
for rows, cols, bias in [(37, 1500, False), (64, 3000, True)]:  # neither a multiple of the blocks
    weight = torch.randn(rows, cols, generator=generator)
    x = torch.randn(1, 1, cols, generator=generator)
    b = torch.randn(rows, generator=generator) if bias else None
    got = gemv(x, weight, b)
    want = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    without_bias = torch.nn.functional.linear(x.double(), weight.double())
    results.append({"shape": list(got.shape), "error": (got.double() - want).abs().max().item(),
                    "error_against_no_bias": (got.double() - without_bias).abs().max().item() if bias else None})
print(json.dumps({"config": CONFIG, "results": results}))
"""


@pytest.mark.cpu
def test_gemv_kernel_against_linear_in_the_interpreter():
    """One row times W [N, K] (+ b) within 1e-4 of float64 ``linear`` for N and K that are no
    multiple of the fixed blocks; the output keeps x's leading dims. Negative control: with a bias,
    the bias-free product is far off (the bias is added)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["config"] == {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3}
    (plain, biased) = report["results"]
    assert plain["shape"] == [1, 1, 37] and biased["shape"] == [1, 1, 64]
    assert plain["error"] <= 1e-4 and biased["error"] <= 1e-4
    assert biased["error_against_no_bias"] > 0.1
