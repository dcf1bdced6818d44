"""Honest success rates: Wilson score intervals, the published-number check, the two-proportion test.

A LIBERO success rate is a binomial proportion; with 50 episodes per task its 95 % interval is about
±10 percentage points wide, so a point estimate alone cannot say "matches the paper" or "this upgrade
changed success". Everything here is pure ``math`` (the normal quantile comes from
:class:`statistics.NormalDist`), so it runs anywhere and is exact to floating point.

Rates are fractions in [0, 1]; only the words in :attr:`PublishedVerdict.reason` use percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, Protocol

DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Proportion:
    """``successes`` out of ``n`` with its Wilson score interval ``[low, high]`` at ``confidence``."""

    successes: int
    n: int
    low: float
    high: float
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def rate(self) -> float:
        return self.successes / self.n

    def __str__(self) -> str:
        """``5/20 (25.0 %), Wilson 95 % [11.2 %, 46.9 %]``."""
        return (f"{self.successes}/{self.n} ({percent(self.rate)}), Wilson {percent(self.confidence, 0)} "
                f"[{percent(self.low)}, {percent(self.high)}]")


@dataclass(frozen=True)
class PublishedResult:
    """A published success rate in percent, as printed (mean ± the printed spread), and its design."""

    method: str
    rate_percent: float
    plus_minus: float
    seeds: int
    rollouts_per_seed: int
    source: str


_OPENVLA_SOURCE = "OpenVLA README / paper v2 App. E (facts §3): mean of 3 seeds x 500 rollouts"

# Fine-tuned OpenVLA-7B on the four LIBERO suites.
PUBLISHED_OPENVLA: dict[str, PublishedResult] = {
    "libero_spatial": PublishedResult("OpenVLA fine-tuned", 84.7, 0.9, 3, 500, _OPENVLA_SOURCE),
    "libero_object": PublishedResult("OpenVLA fine-tuned", 88.4, 0.8, 3, 500, _OPENVLA_SOURCE),
    "libero_goal": PublishedResult("OpenVLA fine-tuned", 79.2, 1.0, 3, 500, _OPENVLA_SOURCE),
    "libero_10": PublishedResult("OpenVLA fine-tuned", 53.7, 1.3, 3, 500, _OPENVLA_SOURCE),
}

Verdict = Literal["consistent", "below", "above"]


@dataclass(frozen=True)
class PublishedVerdict:
    """Our result against the published rate. ``verdict`` places *our* result: ``"below"`` means our
    whole interval lies below the published rate."""

    suite: str
    published: PublishedResult
    ours: Proportion
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class TwoProportionTest:
    """A vs B: pooled two-sided z-test and Newcombe's hybrid score interval for ``rate_a - rate_b``."""

    a: Proportion
    b: Proportion
    difference: float
    low: float
    high: float
    z: float
    p_value: float
    confidence: float = DEFAULT_CONFIDENCE


class _Outcome(Protocol):
    """What the tables need from an episode record (``vla_spec.rollout.EpisodeResult`` has it)."""

    suite: str
    task_id: int
    success: bool
    error: str | None  # set when the episode raised: counted as a failure, reported on its own


@dataclass(frozen=True)
class SuccessRow:
    """One line of a success table: ``task_id`` is None for a whole suite, ``suite`` None for all.
    ``errors`` counts the episodes that raised (already counted as failures in ``proportion``)."""

    suite: str | None
    task_id: int | None
    proportion: Proportion
    errors: int = 0


def z_value(confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The two-sided standard-normal quantile, 1.959964... for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def percent(fraction: float, digits: int = 1) -> str:
    """0.847 -> '84.7 %'."""
    return f"{100.0 * fraction:.{digits}f} %"


def _check_counts(successes: int, n: int) -> None:
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")


def wilson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Proportion:
    """Wilson score interval (no continuity correction) for ``successes`` out of ``n``.

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / n``; the ends are
    clamped so that 0/n gives exactly 0 and n/n exactly 1.
    """
    _check_counts(successes, n)
    z = z_value(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Proportion(successes, n, low, high, confidence)


def compare_to_published(
    suite: str,
    successes: int,
    n: int,
    confidence: float = DEFAULT_CONFIDENCE,
    published: PublishedResult | None = None,
) -> PublishedVerdict:
    """Is the published rate for ``suite`` inside our Wilson interval?

    ``published`` defaults to OpenVLA's (:data:`PUBLISHED_OPENVLA`); give another checkpoint's
    reported result (e.g. a model card's) to judge that checkpoint. ``"consistent"`` when the rate
    lies inside our interval, ``"below"`` when our interval lies entirely below it, ``"above"``
    when entirely above. The published ± (seed spread) is reported but not used: with 1500
    published rollouts our interval dominates.
    """
    if published is None:
        if suite not in PUBLISHED_OPENVLA:
            raise ValueError(f"no published OpenVLA result for suite {suite!r}; known: {sorted(PUBLISHED_OPENVLA)}")
        published = PUBLISHED_OPENVLA[suite]
    ours = wilson_interval(successes, n, confidence)
    target = published.rate_percent / 100.0
    interval = f"our {percent(confidence, 0)} interval [{percent(ours.low)}, {percent(ours.high)}] ({successes}/{n})"
    if target > ours.high:
        verdict: Verdict = "below"
        where = "lies above"
    elif target < ours.low:
        verdict = "above"
        where = "lies below"
    else:
        verdict = "consistent"
        where = "lies inside"
    reason = f"published {published.rate_percent:.1f} % {where} {interval}"
    return PublishedVerdict(suite, published, ours, verdict, reason)


def two_proportion_test(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence: float = DEFAULT_CONFIDENCE
) -> TwoProportionTest:
    """Did success change between A and B? Two-sided pooled z-test plus an interval for the difference.

    ``z = (p_a - p_b) / sqrt(p(1-p)(1/n_a + 1/n_b))`` with the pooled ``p``; when every episode of both
    agrees (pooled p is 0 or 1) there is no evidence of a difference: ``z = 0``, ``p_value = 1``. The
    interval for ``p_a - p_b`` is Newcombe's (1998) hybrid score interval (method 10), built from the
    two Wilson intervals, which stays inside [-1, 1] and behaves at 0 % and 100 %.
    """
    a = wilson_interval(successes_a, n_a, confidence)
    b = wilson_interval(successes_b, n_b, confidence)
    difference = a.rate - b.rate
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    if variance == 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = difference / math.sqrt(variance)
        p_value = math.erfc(abs(z) / math.sqrt(2.0))
    low = difference - math.sqrt((a.rate - a.low) ** 2 + (b.high - b.rate) ** 2)
    high = difference + math.sqrt((a.high - a.rate) ** 2 + (b.rate - b.low) ** 2)
    return TwoProportionTest(a, b, difference, low, high, z, p_value, confidence)


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test over the same episodes run twice (A and B): only discordant pairs count."""

    a_only: int  # episodes A solved and B did not
    b_only: int  # episodes B solved and A did not
    p_value: float  # two-sided exact binomial test of a_only vs b_only at 1/2


def mcnemar_exact(a_only: int, b_only: int) -> PairedTest:
    """McNemar's exact test (two-sided binomial test on the discordant pairs, scipy's ``binomtest``);
    ``p_value`` is 1.0 when no pair is discordant."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    if a_only + b_only == 0:
        return PairedTest(a_only, b_only, 1.0)
    from scipy.stats import binomtest

    return PairedTest(a_only, b_only, float(binomtest(a_only, a_only + b_only, 0.5).pvalue))


def success_rows(outcomes: Iterable[_Outcome], confidence: float = DEFAULT_CONFIDENCE) -> list[SuccessRow]:
    """Per-task rows sorted by (suite, task id), then one row per suite, then an overall row when
    there are several suites."""
    tallies: dict[tuple[str, int], list[int]] = {}
    for outcome in outcomes:
        tally = tallies.setdefault((outcome.suite, outcome.task_id), [0, 0, 0])
        tally[0] += int(bool(outcome.success))
        tally[1] += 1
        tally[2] += int(outcome.error is not None)
    if not tallies:
        raise ValueError("no episodes to summarize")

    def row(suite: str | None, task: int | None, keys: list[tuple[str, int]]) -> SuccessRow:
        wins = sum(tallies[key][0] for key in keys)
        total = sum(tallies[key][1] for key in keys)
        errors = sum(tallies[key][2] for key in keys)
        return SuccessRow(suite, task, wilson_interval(wins, total, confidence), errors)

    keys = sorted(tallies)
    suites = sorted({suite for suite, _ in keys})
    rows = [row(suite, task, [(suite, task)]) for suite, task in keys]
    rows += [row(suite, None, [key for key in keys if key[0] == suite]) for suite in suites]
    if len(suites) > 1:
        rows.append(row(None, None, keys))
    return rows


def newcombe_paired_interval(
    both: int, a_only: int, b_only: int, neither: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """Interval for ``p_a - p_b`` when A and B ran the same episodes: Newcombe's (1998c, Statistics
    in Medicine 17:2635, method 10) square-and-add of the two Wilson intervals, with the correlation
    ``phi`` of the paired table (continuity-corrected towards 0: ``ad - bc - n/2`` when positive).

    ``both``: episodes both solved; ``a_only``/``b_only``: solved by one run only; ``neither``.
    """
    n = both + a_only + b_only + neither
    a = wilson_interval(both + a_only, n, confidence)
    b = wilson_interval(both + b_only, n, confidence)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    corrected = cross - n / 2.0 if cross > n / 2.0 else (float(cross) if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins else 0.0
    da, ua = a.rate - a.low, a.high - a.rate
    db, ub = b.rate - b.low, b.high - b.rate
    difference = a.rate - b.rate
    low = difference - math.sqrt(max(0.0, da * da - 2.0 * phi * da * ub + ub * ub))
    high = difference + math.sqrt(max(0.0, ua * ua - 2.0 * phi * ua * db + db * db))
    return max(-1.0, low), min(1.0, high)


def episodes_needed(rate_a: float, rate_b: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Episodes *per run* for a two-sided unpaired test at level ``alpha`` to detect ``rate_a`` vs
    ``rate_b`` with probability ``power`` (Fleiss 1981, normal approximation, no continuity
    correction): ``(z_a sqrt(2 p q) + z_b sqrt(p_a q_a + p_b q_b))^2 / (p_a - p_b)^2``, ``p`` the mean
    rate. None when the rates are equal (no size to detect)."""
    if rate_a == rate_b:
        return None
    za, zb = z_value(1.0 - alpha), NormalDist().inv_cdf(power)
    mean = (rate_a + rate_b) / 2.0
    root = za * math.sqrt(2.0 * mean * (1.0 - mean)) + zb * math.sqrt(rate_a * (1 - rate_a) + rate_b * (1 - rate_b))
    return math.ceil(root * root / (rate_a - rate_b) ** 2)


def pairs_needed(a_only_rate: float, b_only_rate: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired episodes for McNemar's test at level ``alpha`` (two-sided) to detect discordance rates
    ``a_only_rate`` vs ``b_only_rate`` (fractions of all pairs) with probability ``power`` (Connor
    1987, Biometrics 43:207): ``(z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2``, ``psi`` the sum,
    ``d`` the difference. None when the two are equal."""
    d = a_only_rate - b_only_rate
    if d == 0:
        return None
    psi = a_only_rate + b_only_rate
    za, zb = z_value(1.0 - alpha), NormalDist().inv_cdf(power)
    root = za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - d * d))
    return math.ceil(root * root / (d * d))
