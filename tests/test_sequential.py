"""Spec: the sequential test (``rollout --until-decided``) keeps its false-alarm rate however often it
looks, and has its power at the stated alternative, on simulated Bernoulli runs (seeded numpy).

The scenario is OpenVLA's published libero_object rate: held at p0 = 88.4 %, regressed at
p1 = 78.4 % (10 points down), alpha = 0.05, beta = 0.2, at most 500 episodes per run. The negative
control is what people do by hand: a fixed-size exact binomial test checked after every episode,
which rings the alarm far more often than 5 % on a policy that did not change.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla_spec.statistics import wilson_interval
from vla_spec.sequential import PAIRED_ALTERNATIVE, SequentialTest, first_decision, paired_stream, published_stream

pytestmark = pytest.mark.cpu

TEST = SequentialTest(p0=0.884, p1=0.784, alpha=0.05, beta=0.2)
RUNS, MAX_EPISODES = 2000, 500


def _simulate(rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(verdict per run: +1 regressed, -1 held, 0 undecided; episodes each run took)."""
    outcomes = np.random.default_rng(seed).random((RUNS, MAX_EPISODES)) < rate
    n = np.arange(1, MAX_EPISODES + 1)
    llr = TEST.llr(np.cumsum(outcomes, axis=1), n)
    hit = (llr >= TEST.upper) | (llr <= TEST.lower)
    decided = hit.any(axis=1)
    first = np.where(decided, hit.argmax(axis=1), MAX_EPISODES - 1)
    verdict = np.where(decided, np.where(llr[np.arange(RUNS), first] >= TEST.upper, 1, -1), 0)
    return verdict, first + 1


def test_the_bounds_are_villes_and_walds() -> None:
    assert TEST.upper == pytest.approx(math.log(20.0))  # 1 / alpha
    assert TEST.lower == pytest.approx(math.log(0.2))  # beta


def test_false_alarms_stay_below_alpha_at_the_published_rate() -> None:
    verdict, episodes = _simulate(TEST.p0, seed=0)
    false_alarm = np.mean(verdict == 1)
    assert false_alarm <= TEST.alpha
    assert np.mean(verdict == -1) >= 0.9  # and it mostly says held
    assert np.median(episodes) < 150  # long before 500


def test_power_at_the_stated_alternative() -> None:
    """Ville's bound on the miss side is nearly tight here (the LLR creeps down in steps of 0.12), so
    the measured power sits at 1 - beta within sampling error: its 99 % Wilson interval reaches 80 %
    and stays above 75 %."""
    verdict, episodes = _simulate(TEST.p1, seed=1)
    power = wilson_interval(int(np.sum(verdict == 1)), RUNS, 0.99)
    assert power.low > 0.75 and power.high >= 1.0 - TEST.beta
    assert np.median(episodes) < 150


def test_peeking_at_a_fixed_size_test_does_not_keep_alpha() -> None:
    """Negative control: the one-sided exact binomial test at 5 %, checked after every episode from
    the 10th to the 200th, over runs of an unchanged policy: far more than 5 % of runs cross it."""
    from scipy.stats import binom  # here, not at collection: scipy.stats takes about 1 s to import

    runs, episodes = 400, 200
    outcomes = np.random.default_rng(0).random((runs, episodes)) < TEST.p0
    p_values = binom.cdf(np.cumsum(outcomes, axis=1), np.arange(1, episodes + 1), TEST.p0)  # P(this few or fewer | p0)
    assert np.mean((p_values[:, 9:] < 0.05).any(axis=1)) > 3 * TEST.alpha


def test_first_decision_walks_the_stream() -> None:
    """p0 = 0.5, p1 = 0.4: a success moves the LLR by log(0.8) = -0.223, a failure by log(1.2) =
    +0.182; held at log(0.2) = -1.609: the 8th straight success (8 * -0.223 = -1.785; 7 give -1.562)."""
    test = SequentialTest(0.5, 0.4)
    assert first_decision(test, [1] * 10) == ("held", 8)
    assert first_decision(test, [1] * 7) == (None, 7)
    # regressed at log(20) = 2.996: the 17th straight failure (17 * 0.1823 = 3.099; 16 give 2.917)
    assert first_decision(test, [0] * 30) == ("regressed", 17)


def test_streams_against_a_rate_and_against_a_baseline_log() -> None:
    class R:
        def __init__(self, success: bool) -> None:
            self.success = success

    new = [R(True), R(False), R(True), R(False)]
    baseline = {"a": R(True), "b": R(True), "c": R(False), "d": R(False)}
    assert published_stream(new) == [1, 0, 1, 0]
    assert paired_stream(new, baseline, ["a", "b", "c", "d"]) == [0, 1]  # b: OLD only; c: NEW only
    assert PAIRED_ALTERNATIVE == 0.25


def test_rejects_a_regression_that_is_not_lower() -> None:
    with pytest.raises(ValueError, match="need 0 < p1 < p0 < 1"):
        SequentialTest(0.5, 0.6)
