"""When do two greedy decodings agree "up to near-ties"?

Greedy decoding is exact only while the top-1 logit clearly beats the top-2: on other hardware or
in another dtype (CUDA bfloat16 vs CPU float32), a step whose margin (top-1 minus top-2 logit) is
small may flip, and every later token of that row may then differ, because it is conditioned on
the flipped one. So a decoding is checked against a reference as: in each row, the first differing
step must be a near-tie of the reference; later steps of that row are not compared.

The near-tie rule is dtype-aware. A logit of magnitude m is held in a float format with f fraction
bits to a spacing (ulp) of ``2 ** (floor(log2 m) - f)``: bfloat16 (f = 7) resolves 0.125 at
16 <= m < 32, float16 (f = 10) 0.0156, float32 (f = 23) 1.9e-6. A step is a near-tie when its
margin is below ``max(DEFAULT_TIE_MARGIN, ulps * ulp(|top-1 logit|))`` in the less precise dtype of
the two decodings. The number of ulps is measured, not derived: a forward's rounding error grows
with the terms of its dot products over every layer, not with the logit itself, so it depends on
the model's size:

* :data:`TIE_ULPS` (3), the default: the tiny checkpoints (2 layers), where CUDA bfloat16 against
  CPU float32 stays within it (gpu tier; on an H100 a flip at exactly one ulp, 0.125).
* :data:`LLAMA_7B_TIE_ULPS` (8): a 7B Llama. Two bfloat16 forwards of the same 7B weights with other
  kernels (transformers' static cache and ours, against the naive one; H200, benchmarks/README.md,
  sessions 12-16) moved margins by up to 6 ulps of the top-1 logit and flipped steps whose margins
  were 4 and 7 ulps (0.125 at 5.31, 0.219 at 5.125); 3 ulps failed transformers' own static cache.

A margin stored rounded to a resolution r lies within r / 2 of the true one, so it counts as a
near-tie when ``margin - r / 2`` is below the threshold, or when its stored ``near_tie`` flag says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_TIE_MARGIN = 0.1  # logits: the floor; a bfloat16 7B forward moves logits by ~1e-2..1e-1
TIE_ULPS = 3  # ties of the tiny checkpoints: margins below 3 ulps of the top-1 logit (one ulp has flipped)
LLAMA_7B_TIE_ULPS = 8  # ties of a 7B Llama in bfloat16: margins moved by up to 6 ulps, flipped at 4 and 7
FRACTION_BITS = {"float32": 23, "float16": 10, "bfloat16": 7}


def ulp(magnitude: Any, dtype: str) -> np.ndarray:
    """Spacing of ``dtype`` values at |``magnitude``| (logits), e.g. 0.125 for bfloat16 at 16..32."""
    if dtype not in FRACTION_BITS:
        raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(FRACTION_BITS)}")
    m = np.abs(np.asarray(magnitude, dtype=np.float64))
    exponent = np.floor(np.log2(np.maximum(m, np.finfo(np.float64).tiny)))
    return np.exp2(exponent - FRACTION_BITS[dtype])


def near_ties(
    margins: Any,
    *,
    top_logits: Any = None,
    dtype: str = "bfloat16",
    resolution: float = 0.0,
    flags: Any = None,
    floor: float = DEFAULT_TIE_MARGIN,
    ulps: float = TIE_ULPS,
) -> np.ndarray:
    """Boolean array (margins' shape): which steps may flip in ``dtype``.

    ``top_logits``: the top-1 logit of each step (None: the ``floor`` alone); ``resolution``: how
    finely ``margins`` were stored (0 = full precision); ``flags``: stored ``near_tie`` flags, OR-ed in;
    ``ulps``: the threshold in ulps of the top-1 logit (:data:`TIE_ULPS`, or :data:`LLAMA_7B_TIE_ULPS`
    for a 7B model).
    """
    m = np.asarray(margins, dtype=np.float64)
    threshold = floor if top_logits is None else np.maximum(floor, ulps * ulp(top_logits, dtype))
    ties = m - resolution / 2 < threshold
    if flags is not None:
        ties = ties | np.asarray(flags, dtype=bool)
    return ties


def near_tie_divergences(
    observed_ids: Sequence[Sequence[int]] | np.ndarray,
    reference_ids: Sequence[Sequence[int]] | np.ndarray,
    ties: Sequence[Sequence[bool]] | np.ndarray,
) -> list[str]:
    """Rows whose first disagreement is NOT at a near-tie of the reference (empty = agreement up to
    ties). ``ties`` [rows, steps] comes from :func:`near_ties` of the reference's margins."""
    observed = np.asarray(observed_ids)
    reference = np.asarray(reference_ids)
    tie = np.asarray(ties, dtype=bool)
    if observed.shape != reference.shape or tie.shape != reference.shape:
        raise ValueError(f"shapes differ: observed {observed.shape}, reference ids {reference.shape}, ties {tie.shape}")
    problems = []
    for row, (got, want, row_ties) in enumerate(zip(observed, reference, tie)):
        differing = np.flatnonzero(got != want)
        if differing.size and not row_ties[differing[0]]:
            step = int(differing[0])
            problems.append(
                f"row {row} step {step}: token {int(got[step])} != reference {int(want[step])} at a step that "
                "was not a near-tie"
            )
    return problems
