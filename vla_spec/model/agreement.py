"""When do two greedy decodings agree "up to near-ties"?

Greedy decoding is exact only while the top-1 logit clearly beats the top-2: on other hardware or
in another dtype (CUDA bfloat16 vs CPU float32), a step whose recorded margin (top-1 minus top-2
logit) is small may flip, and every later token of that row may then differ, because it is
conditioned on the flipped one. So a golden recorded on one device class is checked on another as:
in each row, the first differing step must be one where the reference margin was below
``tie_margin``; later steps of that row are not compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_TIE_MARGIN = 0.1  # logits; a bfloat16 7B forward moves logits by ~1e-2..1e-1


def near_tie_divergences(
    observed_ids: Sequence[Sequence[int]] | np.ndarray,
    reference_ids: Sequence[Sequence[int]] | np.ndarray,
    reference_margins: Sequence[Sequence[float]] | np.ndarray,
    tie_margin: float = DEFAULT_TIE_MARGIN,
) -> list[str]:
    """Rows whose first disagreement is NOT at a near-tie (empty list = agreement up to ties)."""
    observed = np.asarray(observed_ids)
    reference = np.asarray(reference_ids)
    margins = np.asarray(reference_margins, dtype=np.float64)
    if observed.shape != reference.shape or margins.shape != reference.shape:
        raise ValueError(
            f"shapes differ: observed {observed.shape}, reference ids {reference.shape}, margins {margins.shape}"
        )
    problems = []
    for row, (got, want, margin) in enumerate(zip(observed, reference, margins)):
        differing = np.flatnonzero(got != want)
        if differing.size and margin[differing[0]] >= tie_margin:
            step = int(differing[0])
            problems.append(
                f"row {row} step {step}: token {int(got[step])} != golden {int(want[step])} although the golden "
                f"margin was {margin[step]:.4f} >= {tie_margin} (not a near-tie)"
            )
    return problems
