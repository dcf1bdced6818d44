"""Spec: success rates are reported with Wilson score intervals, checked against the published
OpenVLA numbers, and compared between runs with a pooled two-proportion z-test.

Expected values come from sources independent of the code: Newcombe (1998a, single proportion,
Table I, method 3 = Wilson) and Newcombe (1998b, difference of proportions, Table II, method 10),
both Statistics in Medicine 17; the z-test p-value is scipy's ``chi2_contingency(correction=False)``
(z² is Pearson's chi-square), copied as a literal.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_spec.statistics import (
    PUBLISHED_OPENVLA,
    compare_to_published,
    success_rows,
    two_proportion_test,
    wilson_interval,
    z_value,
)

pytestmark = pytest.mark.cpu

Z95 = 1.959963984540054  # Phi^-1(0.975)
FAST = settings(max_examples=40, deadline=None)


@st.composite
def counts(draw: st.DrawFn, max_n: int = 2000) -> tuple[int, int]:
    n = draw(st.integers(1, max_n))
    return draw(st.integers(0, n)), n


def test_z_values_are_the_normal_quantiles() -> None:
    assert z_value() == pytest.approx(Z95, abs=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293035489, abs=1e-12)
    assert z_value(0.90) == pytest.approx(1.6448536269514715, abs=1e-12)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998a, Table I
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (19, 20, 0.7639, 0.9911),  # scipy binomtest(19, 20).proportion_ci("wilson")
    ],
)
def test_wilson_matches_published_values(successes: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, n)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=5e-5)


def test_a_proportion_reads_as_counts_rate_and_interval() -> None:
    """The line the closed-loop tests print: 5 of 20 is [11.2 %, 46.9 %] (Wilson, 95 %; the model card's figure)."""
    assert str(wilson_interval(5, 20)) == "5/20 (25.0 %), Wilson 95 % [11.2 %, 46.9 %]"
    assert str(wilson_interval(0, 2)) == "0/2 (0.0 %), Wilson 95 % [0.0 %, 65.8 %]"


def test_wilson_closed_forms_at_the_edges_and_the_middle() -> None:
    # 0/n: [0, z²/(n+z²)]; n/n mirrors it; 10/20 is symmetric about 1/2.
    assert (wilson_interval(0, 20).low, wilson_interval(0, 20).high) == (0.0, pytest.approx(Z95**2 / (20 + Z95**2), abs=1e-12))
    assert (wilson_interval(20, 20).low, wilson_interval(20, 20).high) == (pytest.approx(20 / (20 + Z95**2), abs=1e-12), 1.0)
    half = wilson_interval(10, 20)
    assert half.low + half.high == pytest.approx(1.0, abs=1e-12)
    # the upper end solves (p - 1/2)^2 = z^2 p (1 - p) / n
    assert (half.high - 0.5) ** 2 == pytest.approx(Z95**2 * half.high * (1 - half.high) / 20, abs=1e-12)
    assert half.high == pytest.approx(0.7007, abs=5e-5)


@FAST
@given(counts())
def test_wilson_bounds_contain_the_rate_and_stay_in_the_unit_interval(c: tuple[int, int]) -> None:
    interval = wilson_interval(*c)
    assert 0.0 <= interval.low <= interval.rate <= interval.high <= 1.0
    assert interval.low < interval.high


@FAST
@given(counts(max_n=500))
def test_wilson_ends_are_where_the_score_test_stops_rejecting(c: tuple[int, int]) -> None:
    """The definition: both ends p solve (p_hat - p)^2 = z^2 p (1 - p) / n (interior ones do)."""
    successes, n = c
    interval = wilson_interval(successes, n)
    for end in (interval.low, interval.high):
        if 0.0 < end < 1.0:
            assert (interval.rate - end) ** 2 == pytest.approx(Z95**2 * end * (1 - end) / n, rel=1e-9, abs=1e-15)


@FAST
@given(counts(max_n=500), st.integers(2, 20))
def test_wilson_shrinks_when_n_grows_at_the_same_rate(c: tuple[int, int], factor: int) -> None:
    small = wilson_interval(*c)
    large = wilson_interval(c[0] * factor, c[1] * factor)
    assert large.high - large.low < small.high - small.low


@FAST
@given(counts())
def test_wilson_is_symmetric_in_success_and_failure(c: tuple[int, int]) -> None:
    successes, n = c
    direct, mirrored = wilson_interval(successes, n), wilson_interval(n - successes, n)
    assert direct.low == pytest.approx(1.0 - mirrored.high, abs=1e-12)
    assert direct.high == pytest.approx(1.0 - mirrored.low, abs=1e-12)


@pytest.mark.parametrize(("successes", "n", "confidence"), [(0, 0, 0.95), (5, 4, 0.95), (-1, 4, 0.95), (1, 4, 1.0), (1, 4, 0.0)])
def test_wilson_rejects_impossible_input(successes: int, n: int, confidence: float) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, n, confidence)


def test_published_table_is_the_papers() -> None:
    rates = {suite: (r.rate_percent, r.plus_minus, r.seeds, r.rollouts_per_seed) for suite, r in PUBLISHED_OPENVLA.items()}
    assert rates == {
        "libero_spatial": (84.7, 0.9, 3, 500),
        "libero_object": (88.4, 0.8, 3, 500),
        "libero_goal": (79.2, 1.0, 3, 500),
        "libero_10": (53.7, 1.3, 3, 500),
    }


@pytest.mark.parametrize(
    ("suite", "successes", "n", "verdict", "reason"),
    [
        ("libero_object", 45, 50, "consistent", "published 88.4 % lies inside our 95 % interval [78.6 %, 95.7 %] (45/50)"),
        ("libero_spatial", 30, 50, "below", "published 84.7 % lies above our 95 % interval [46.2 %, 72.4 %] (30/50)"),
        ("libero_10", 45, 50, "above", "published 53.7 % lies below our 95 % interval [78.6 %, 95.7 %] (45/50)"),
    ],
)
def test_published_comparison_verdicts(suite: str, successes: int, n: int, verdict: str, reason: str) -> None:
    result = compare_to_published(suite, successes, n)
    assert (result.verdict, result.reason) == (verdict, reason)


def test_published_comparison_flips_exactly_at_the_interval_end() -> None:
    # libero_goal 79.2 %: with n = 500, 380/500 = 76.0 % has high 79.6 % (consistent), 375/500 high 78.6 % (below)
    assert wilson_interval(380, 500).high > 0.792 > wilson_interval(375, 500).high
    assert compare_to_published("libero_goal", 380, 500).verdict == "consistent"
    assert compare_to_published("libero_goal", 375, 500).verdict == "below"


def test_published_comparison_rejects_unknown_suite() -> None:
    with pytest.raises(ValueError, match="libero_90"):
        compare_to_published("libero_90", 1, 2)


@pytest.mark.parametrize(
    ("a", "b", "low", "high"),
    [  # Newcombe 1998b, Table II, method 10 (hybrid score)
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
        ((6, 7), (2, 7), 0.0582, 0.8062),
        ((5, 56), (0, 29), -0.0381, 0.1926),
    ],
)
def test_difference_interval_matches_newcombe(a: tuple[int, int], b: tuple[int, int], low: float, high: float) -> None:
    test = two_proportion_test(*a, *b)
    assert test.difference == pytest.approx(a[0] / a[1] - b[0] / b[1])
    assert (test.low, test.high) == pytest.approx((low, high), abs=5e-5)


def test_pooled_z_test_on_known_input() -> None:
    test = two_proportion_test(56, 70, 48, 80)
    pooled = 104 / 150
    assert test.z == pytest.approx(0.2 / math.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80)), rel=1e-12)
    assert test.z == pytest.approx(2.650171951258532, rel=1e-9)
    assert test.p_value == pytest.approx(0.008045081368196585, rel=1e-9)  # scipy chi2_contingency, no correction


def test_no_difference_when_everything_agrees() -> None:
    test = two_proportion_test(0, 10, 0, 20)
    assert (test.z, test.p_value, test.difference) == (0.0, 1.0, 0.0)
    assert test.low < 0.0 < test.high


@FAST
@given(counts(max_n=300), counts(max_n=300))
def test_z_squared_is_pearsons_chi_square(a: tuple[int, int], b: tuple[int, int]) -> None:
    (sa, na), (sb, nb) = a, b
    wins, total = sa + sb, na + nb
    if wins in (0, total):
        return  # no variance: covered by test_no_difference_when_everything_agrees
    observed = [[sa, na - sa], [sb, nb - sb]]
    expected = [[na * wins / total, na * (total - wins) / total], [nb * wins / total, nb * (total - wins) / total]]
    chi2 = sum((o - e) ** 2 / e for row_o, row_e in zip(observed, expected) for o, e in zip(row_o, row_e))
    test = two_proportion_test(sa, na, sb, nb)
    assert test.z**2 == pytest.approx(chi2, rel=1e-9, abs=1e-12)
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9, abs=1e-300)


@FAST
@given(counts(max_n=300), counts(max_n=300))
def test_swapping_the_logs_negates_the_difference(a: tuple[int, int], b: tuple[int, int]) -> None:
    ab, ba = two_proportion_test(*a, *b), two_proportion_test(*b, *a)
    assert ab.p_value == pytest.approx(ba.p_value, rel=1e-12)
    assert (ab.difference, ab.low, ab.high) == pytest.approx((-ba.difference, -ba.high, -ba.low), abs=1e-12)
    assert -1.0 <= ab.low <= ab.difference <= ab.high <= 1.0


class _Outcome:
    def __init__(self, suite: str, task_id: int, success: bool, error: str | None = None) -> None:
        self.suite, self.task_id, self.success, self.error = suite, task_id, success, error


def test_success_rows_count_errored_episodes_apart() -> None:
    outcomes = [_Outcome("libero_object", 0, True), _Outcome("libero_object", 0, False)]
    outcomes += [_Outcome("libero_object", 0, False, "RuntimeError: boom")]
    task_row, suite_row = success_rows(outcomes)
    assert (task_row.proportion.successes, task_row.proportion.n, task_row.errors) == (1, 3, 1)
    assert suite_row.errors == 1


def test_success_rows_per_task_per_suite_and_overall() -> None:
    outcomes = [_Outcome("libero_object", 1, s) for s in (True, False)]
    outcomes += [_Outcome("libero_object", 0, s) for s in (True, True, True, False)]
    outcomes += [_Outcome("libero_goal", 3, True)]
    rows = [(r.suite, r.task_id, r.proportion.successes, r.proportion.n) for r in success_rows(outcomes)]
    assert rows == [
        ("libero_goal", 3, 1, 1),
        ("libero_object", 0, 3, 4),
        ("libero_object", 1, 1, 2),
        ("libero_goal", None, 1, 1),
        ("libero_object", None, 4, 6),
        (None, None, 5, 7),
    ]
    assert success_rows(outcomes)[1].proportion == wilson_interval(3, 4)


def test_success_rows_of_one_suite_have_no_overall_row_and_need_episodes() -> None:
    assert [r.suite for r in success_rows([_Outcome("libero_10", 0, False)])] == ["libero_10", "libero_10"]
    with pytest.raises(ValueError, match="no episodes"):
        success_rows([])


def test_mcnemar_exact_textbook_values() -> None:
    """Discordant pairs 1 vs 9: p = 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024; none discordant: p = 1."""
    from vla_spec.statistics import mcnemar_exact

    assert mcnemar_exact(1, 9).p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(9, 1).p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(0, 0).p_value == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)
