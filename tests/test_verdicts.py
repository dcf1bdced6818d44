"""Spec: ``vla-spec report OLD --compare NEW`` gives per-task, per-suite and overall verdicts
(regressed / improved / held / cannot tell) and exits 1 on a regression, so a CI job can gate an
upgrade on it. Constructed logs whose answers are known by hand; no simulator.

References: Newcombe's paired interval (method 10) is checked against Fagerland, Lydersen & Laake,
*Statistical Analysis of Contingency Tables* (2017), ch. 8 (their R package ``contingencytables``:
table [[59, 6], [16, 80]] gives -0.0621 (-0.1186 to -0.0046)); episodes per run against the
textbook 97 per group for 40 % vs 60 % (Fleiss, no continuity correction).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_sim_cli import write_log
from vla_spec.cli import main
from vla_spec.episodes import read_log, spec_key
from vla_spec.statistics import episodes_needed, newcombe_paired_interval, pairs_needed
from vla_spec.verdicts import compare_logs, holm

pytestmark = pytest.mark.cpu

TASK = ("libero_object", 0)


def _verdicts(tmp_path: Path, old: dict, new: dict, **options: float) -> dict[tuple[str | None, int | None], str]:
    run = len(list(tmp_path.iterdir()))  # a fresh pair of log names per call
    a, b = read_log(write_log(tmp_path / f"old{run}.jsonl", old)), read_log(write_log(tmp_path / f"new{run}.jsonl", new))
    return {(r.suite, r.task_id): r.verdict for r in compare_logs(a.results, b.results, spec_key, **options)}


def test_newcombe_paired_interval_matches_the_reference() -> None:
    assert newcombe_paired_interval(59, 6, 16, 80) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


@settings(max_examples=30, deadline=None)
@given(st.tuples(*[st.integers(0, 40)] * 4).filter(lambda t: sum(t) > 0))
def test_the_paired_interval_holds_the_difference_and_mirrors(table: tuple[int, int, int, int]) -> None:
    both, a_only, b_only, neither = table
    low, high = newcombe_paired_interval(both, a_only, b_only, neither)
    difference = (a_only - b_only) / sum(table)
    assert -1.0 <= low <= difference + 1e-12 and difference - 1e-12 <= high <= 1.0
    assert newcombe_paired_interval(both, b_only, a_only, neither) == pytest.approx((-high, -low))


def test_episodes_needed_matches_the_textbook_and_pairs_needed_connor() -> None:
    """Connor (1987) by hand for discordance 20 % vs 5 %: psi = 0.25, d = 0.15,
    (1.95996 * 0.5 + 0.84162 * sqrt(0.25 - 0.0225))^2 / 0.0225 = 84.8 -> 85 pairs."""
    assert episodes_needed(0.4, 0.6) == episodes_needed(0.6, 0.4) == 97
    assert pairs_needed(0.20, 0.05) == 85
    assert episodes_needed(0.5, 0.5) is None and pairs_needed(0.1, 0.1) is None


def test_holm_adjusts_step_down() -> None:
    """Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_a_paired_regression_exits_1_and_names_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OLD solves all 20 episodes, NEW the first 10: 10 discordant pairs all one way, McNemar's
    exact p = 2 * 2^-10 = 0.00195 < 0.05."""
    old, new = write_log(tmp_path / "old.jsonl", {TASK: [True] * 20}), write_log(tmp_path / "new.jsonl", {TASK: [True] * 10 + [False] * 10})
    assert main(["report", str(old), "--compare", str(new)]) == 1
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("libero_object       0") and " pp " in line)
    assert "paired, A only 10 B only 0   0.00195  regressed" in row
    assert out[-1] == "verdict: B regressed (libero_object task 0, libero_object): exit status 1"
    # the same logs the other way round: NEW improved, nothing regressed
    assert main(["report", str(new), "--compare", str(old)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "verdict: no regression"


def test_identical_runs_held_and_one_flipped_episode_less_so(tmp_path: Path) -> None:
    """25/50 in both over the same episodes: Newcombe's paired interval is about ±3.8 pp, inside
    ±10 pp: held. Negative control: 6 episodes flipped each way (same rates) widen it past the
    margin: cannot tell; and a 2 pp margin is too narrow for even the identical runs."""
    same = {TASK: [True, False] * 25}
    assert _verdicts(tmp_path, same, same)[TASK] == "held"
    flipped = {TASK: [False, True] * 6 + [True, False] * 19}
    assert _verdicts(tmp_path, same, flipped)[TASK] == "cannot tell"
    assert _verdicts(tmp_path, same, same, margin=0.02)[TASK] == "cannot tell"


def test_an_unpaired_regression_uses_fisher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OLD 40/40, NEW 10/20 over other episodes (NEW ran inits 0-19 of 40): Fisher's exact p =
    2.45e-6 (a table with a zero cell, so only it and rarer ones count: C(50,10) / C(60,20)); regressed."""
    old, new = write_log(tmp_path / "old.jsonl", {TASK: [True] * 40}), write_log(tmp_path / "new.jsonl", {TASK: [True, False] * 10})
    assert main(["report", str(old), "--compare", str(new)]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("libero_object       0") and " pp " in line)
    assert "unpaired" in row and row.endswith("regressed")


def test_holm_keeps_ten_borderline_tasks_from_ringing_the_alarm(tmp_path: Path) -> None:
    """Each of 10 tasks: OLD 6/6, NEW 0/6 would be p = 2^-5 = 0.031 alone (regressed); here one
    task drops that way and nine hold steady: Holm multiplies its p by 10 -> 0.31, cannot tell.
    Negative control: the same drop in a log of that task alone is a regression."""
    old = {("libero_object", t): [True] * 6 for t in range(10)}
    new = {**old, TASK: [False] * 6}
    verdicts = _verdicts(tmp_path, old, new)
    assert verdicts[TASK] == "cannot tell"
    assert _verdicts(tmp_path, {TASK: [True] * 6}, {TASK: [False] * 6})[TASK] == "regressed"


def test_margin_must_be_a_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "old.jsonl", {TASK: [True]})
    assert main(["report", str(log), "--compare", str(log), "--margin", "10"]) == 2
    assert capsys.readouterr().err.strip() == (
        "vla-spec report: error: --margin must lie in (0, 1] (a fraction: 0.1 is 10 percentage points), got 10.0"
    )


def test_one_camera_against_another_pairs_the_same_episodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OLD: 12 episodes with camera none, all solved; NEW: the same episodes with shift-2cm, the
    first 6 failed. Each log holds one camera, so episodes pair across it: McNemar's exact
    p = 2 * 2^-6 = 0.03125: regressed. Negative control: with two cameras in NEW the keys no longer
    cross; unpaired."""
    from vla_spec.episodes import EpisodeLog, RunConfig
    from vla_spec.rollout import EpisodeResult, EpisodeSpec
    from tests.test_sim_cli import VERSIONS

    def log(name: str, cameras: list[str], solved: list[bool]) -> Path:
        specs = [EpisodeSpec("libero_object", 0, i, 0, camera) for i, camera in enumerate(cameras)]
        with EpisodeLog.open(tmp_path / name, RunConfig("expert", {}, tuple(specs)), VERSIONS) as episodes:
            for spec, success in zip(specs, solved):
                episodes.append(EpisodeResult(spec.suite, 0, "x", spec.init_index, 0, 100, success, 1.0, None, None, camera=spec.camera))
        return tmp_path / name

    old = log("old.jsonl", ["none"] * 12, [True] * 12)
    new = log("new.jsonl", ["shift-2cm"] * 12, [False] * 6 + [True] * 6)
    assert main(["report", str(old), "--compare", str(new)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "note: episodes paired across camera none (A) and shift-2cm (B) (the logs differ only there)" in out
    row = next(line for line in out if line.startswith("libero_object       0") and " pp " in line)
    assert "paired, A only 6 B only 0" in row and "0.0312  regressed" in row
    mixed = log("mixed.jsonl", ["shift-2cm"] * 6 + ["yaw+5deg"] * 6, [False] * 6 + [True] * 6)
    main(["report", str(old), "--compare", str(mixed)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("libero_object       0") and " pp " in line)
    assert "unpaired" in row
