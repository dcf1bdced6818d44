"""Stop evaluating as soon as the verdict is clear: a sequential probability ratio test (Wald 1945)
whose false-alarm rate holds however often it is looked at.

The stream is Bernoulli: each outcome is 1 or 0. Two simple hypotheses about its rate:

* ``held``: the rate is ``p0`` (or higher);
* ``regressed``: the rate is ``p1 < p0`` (or lower).

After ``n`` outcomes with ``k`` ones the log likelihood ratio is
``k log(p1/p0) + (n - k) log((1 - p1)/(1 - p0))``. The test says ``regressed`` once it reaches
``log(1/alpha)`` and ``held`` once it falls to ``log(beta)``. Under ``held`` the likelihood ratio
is a nonnegative martingale with mean 1, so by Ville's inequality it ever reaches ``1/alpha`` with
probability at most ``alpha``: the false-alarm rate is at most ``alpha`` whenever the test is
checked and wherever it is stopped (anytime-valid; Wald's usual ``(1 - beta)/alpha`` would only
bound it by ``alpha/(1 - beta)``). The same argument under ``regressed`` (the inverse ratio) bounds
the chance of saying ``held`` at rate ``p1`` by ``beta``: power at least ``1 - beta``, less the runs
that end undecided. ``tests/test_sequential.py`` measures both on simulated runs.

Two ways to get a stream (:func:`published_stream`, :func:`paired_stream`):

* against a **rate** (a published one): the outcomes are episode successes, ``p0`` the rate and
  ``p1 = p0 - delta``;
* against a **baseline log** over the same episodes: only episodes the two runs disagree on carry
  information (McNemar). The outcome of such a pair is 1 when NEW solved it; with no change it is
  1 half the time (``p0 = 0.5``), and ``p1 = PAIRED_ALTERNATIVE`` (OLD wins 3 of 4 disagreements).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

SequentialVerdict = Literal["regressed", "held"]
#: Under "regressed" against a baseline log, NEW wins this share of the disagreeing episodes.
PAIRED_ALTERNATIVE = 0.25


class _Episode(Protocol):
    success: bool


@dataclass(frozen=True)
class SequentialTest:
    """Wald's SPRT of rate ``p0`` (held) against ``p1 < p0`` (regressed) at error rates
    ``alpha`` (false alarm, anytime-valid) and ``beta`` (miss, Wald's approximation)."""

    p0: float
    p1: float
    alpha: float = 0.05
    beta: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.p1 < self.p0 < 1.0:
            raise ValueError(f"need 0 < p1 < p0 < 1 (a regression is a lower rate), got p0={self.p0}, p1={self.p1}")
        if not (0.0 < self.alpha < 1.0 and 0.0 < self.beta < 1.0):
            raise ValueError(f"error rates must lie in (0, 1), got alpha={self.alpha}, beta={self.beta}")

    @property
    def upper(self) -> float:
        """Say ``regressed`` at or above this log likelihood ratio: ``log(1/alpha)``."""
        return math.log(1.0 / self.alpha)

    @property
    def lower(self) -> float:
        """Say ``held`` at or below this log likelihood ratio: ``log(beta)``."""
        return math.log(self.beta)

    def llr(self, ones: np.ndarray | int, n: np.ndarray | int) -> np.ndarray | float:
        """Log likelihood ratio (regressed over held) after ``n`` outcomes with ``ones`` ones
        (elementwise for arrays)."""
        return ones * math.log(self.p1 / self.p0) + (n - ones) * math.log((1.0 - self.p1) / (1.0 - self.p0))

    def decide(self, ones: int, n: int) -> SequentialVerdict | None:
        """The verdict after ``n`` outcomes with ``ones`` ones, or None while undecided."""
        value = self.llr(ones, n)
        if value >= self.upper:
            return "regressed"
        if value <= self.lower:
            return "held"
        return None


def published_stream(results: list[_Episode]) -> list[int]:
    """Outcomes against a rate: 1 per solved episode, 0 otherwise, in the order given."""
    return [int(bool(r.success)) for r in results]


def paired_stream(results: list[_Episode], baseline: Mapping[Hashable, _Episode], keys: list[Hashable]) -> list[int]:
    """Outcomes against a baseline log: for each episode (``keys[i]`` names ``results[i]`` in
    ``baseline``) on which NEW and the baseline disagree, 1 when NEW solved it; agreements are skipped."""
    return [int(bool(r.success)) for r, k in zip(results, keys) if bool(r.success) != bool(baseline[k].success)]


def first_decision(test: SequentialTest, outcomes: list[int]) -> tuple[SequentialVerdict | None, int]:
    """(verdict, how many outcomes it took) for a stream, checking after every outcome; (None,
    len(outcomes)) when the stream ends undecided."""
    ones = 0
    for n, outcome in enumerate(outcomes, start=1):
        ones += outcome
        verdict = test.decide(ones, n)
        if verdict is not None:
            return verdict, n
    return None, len(outcomes)
