"""Regression verdicts between two episode logs, OLD and NEW: regressed, improved, held or cannot tell.

For each task, each suite and (with several suites) all of them, NEW is compared with OLD:

* **paired** when both logs hold exactly the same episodes of the group (same suite, task, init
  state, env seed, camera): McNemar's exact test on the episodes only one run solved
  (:func:`~vla_spec.statistics.mcnemar_exact`) and Newcombe's paired interval of ``NEW - OLD``;
* **unpaired** otherwise: Fisher's exact test (``scipy.stats.fisher_exact``, two-sided) and
  Newcombe's hybrid score interval (:func:`~vla_spec.statistics.two_proportion_test`).

The verdict, at level ``alpha = 1 - confidence``:

* ``regressed`` / ``improved``: the test rejects "no change" (p < alpha; per-task and per-suite p
  values Holm-adjusted within their family, so ten tasks do not give ten chances of a false alarm)
  and NEW is lower / higher;
* ``held``: not rejected, and the whole interval of ``NEW - OLD`` lies within ``±margin``: a change
  as large as the margin is ruled out;
* ``cannot tell``: neither; the row says how many episodes a difference of the observed size
  would need (power 0.8: :func:`~vla_spec.statistics.episodes_needed` per run, or
  :func:`~vla_spec.statistics.pairs_needed` paired episodes).

Rates and margins are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from vla_spec.statistics import (
    DEFAULT_CONFIDENCE,
    Proportion,
    episodes_needed,
    mcnemar_exact,
    newcombe_paired_interval,
    pairs_needed,
    two_proportion_test,
    wilson_interval,
)

RegressionVerdict = Literal["regressed", "improved", "held", "cannot tell"]
#: A change of this size (10 percentage points) or more must be ruled out to say "held".
DEFAULT_MARGIN = 0.10
#: The power the "episodes needed" figure is computed for.
DEFAULT_POWER = 0.8


class _Episode(Protocol):
    suite: str
    task_id: int
    success: bool


@dataclass(frozen=True)
class GroupComparison:
    """NEW vs OLD over one group of episodes (a task, a suite, or all). ``task_id`` is None for a
    suite row, ``suite`` None for the overall row. ``old_only``/``new_only`` count the discordant
    pairs (paired rows only). ``p_value`` is the adjusted one the verdict used; ``needed`` is the
    episodes per run (unpaired) or paired episodes a difference of the observed size needs."""

    suite: str | None
    task_id: int | None
    old: Proportion
    new: Proportion
    paired: bool
    old_only: int | None
    new_only: int | None
    low: float  # interval of NEW - OLD
    high: float
    p_value: float
    verdict: RegressionVerdict
    needed: int | None

    @property
    def difference(self) -> float:
        return self.new.rate - self.old.rate


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (same order as given), capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


class _GroupTest(NamedTuple):
    paired: bool
    old_only: int | None
    new_only: int | None
    low: float
    high: float
    p_value: float  # before the Holm adjustment
    needed: int | None


def _compare_group(
    old: Sequence[_Episode], new: Sequence[_Episode], key: Callable[[_Episode], Hashable], confidence: float
) -> _GroupTest:
    """The test of one group: paired when both hold the same episodes, else unpaired."""
    from scipy.stats import fisher_exact

    alpha = 1.0 - confidence
    by_old, by_new = {key(e): e for e in old}, {key(e): e for e in new}
    if by_old.keys() == by_new.keys():
        pairs = [(bool(by_old[k].success), bool(by_new[k].success)) for k in by_old]
        old_only = sum(o and not n for o, n in pairs)
        new_only = sum(n and not o for o, n in pairs)
        both = sum(o and n for o, n in pairs)
        low, high = newcombe_paired_interval(both, new_only, old_only, len(pairs) - both - old_only - new_only, confidence)
        p = mcnemar_exact(old_only, new_only).p_value
        needed = pairs_needed(new_only / len(pairs), old_only / len(pairs), alpha, DEFAULT_POWER)
        return _GroupTest(True, old_only, new_only, low, high, p, needed)
    wo, wn = sum(bool(e.success) for e in old), sum(bool(e.success) for e in new)
    test = two_proportion_test(wn, len(new), wo, len(old), confidence)
    p = float(fisher_exact([[wn, len(new) - wn], [wo, len(old) - wo]]).pvalue)
    return _GroupTest(False, None, None, test.low, test.high, p, episodes_needed(wo / len(old), wn / len(new), alpha, DEFAULT_POWER))


def compare_logs(
    old: Sequence[_Episode],
    new: Sequence[_Episode],
    key: Callable[[_Episode], Hashable],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    margin: float = DEFAULT_MARGIN,
) -> list[GroupComparison]:
    """Rows for every task both logs hold (sorted), then every shared suite, then all shared suites
    (when there are several). ``key`` names an episode (``vla_spec.episodes.spec_key``)."""
    if not 0.0 < margin <= 1.0:
        raise ValueError(f"margin must lie in (0, 1], got {margin}")
    tasks = sorted({(e.suite, e.task_id) for e in old} & {(e.suite, e.task_id) for e in new})
    if not tasks:
        raise ValueError("the two logs share no task")
    suites = sorted({suite for suite, _ in tasks})
    groups: list[tuple[str | None, int | None, Callable[[_Episode], bool]]] = [
        (s, t, lambda e, s=s, t=t: (e.suite, e.task_id) == (s, t)) for s, t in tasks
    ]
    groups += [(s, None, lambda e, s=s: e.suite == s and (e.suite, e.task_id) in tasks) for s in suites]
    if len(suites) > 1:
        groups.append((None, None, lambda e: (e.suite, e.task_id) in tasks))
    members = [([e for e in old if member(e)], [e for e in new if member(e)]) for _, _, member in groups]
    tests = [_compare_group(o, n, key, confidence) for o, n in members]
    adjusted = [test.p_value for test in tests]
    task_rows = [i for i, (_, task, _) in enumerate(groups) if task is not None]
    suite_rows = [i for i, (suite, task, _) in enumerate(groups) if task is None and suite is not None]
    for family in (task_rows, suite_rows):
        for i, p in zip(family, holm([tests[i].p_value for i in family])):
            adjusted[i] = p
    rows = []
    for (suite, task, _), (o, n), test, p in zip(groups, members, tests, adjusted):
        old_p = wilson_interval(sum(bool(e.success) for e in o), len(o), confidence)
        new_p = wilson_interval(sum(bool(e.success) for e in n), len(n), confidence)
        if p < 1.0 - confidence:
            verdict: RegressionVerdict = "regressed" if new_p.rate < old_p.rate else "improved"
        elif -margin < test.low and test.high < margin:
            verdict = "held"
        else:
            verdict = "cannot tell"
        rows.append(GroupComparison(suite, task, old_p, new_p, test.paired, test.old_only, test.new_only, test.low, test.high,
                                    p, verdict, test.needed))
    return rows
