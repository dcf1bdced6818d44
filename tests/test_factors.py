"""Spec: ``vla-spec report`` breaks success down by each varied factor (env seed, init state, camera)
with Wilson intervals, and refuses to count identical episodes as independent trials: a
deterministic policy on one starting state under several env seeds plays one episode several times
(``tests/test_sim_matrix.py`` shows env.seed changes nothing once the init state is set). Constructed
logs; no simulator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_sim_cli import VERSIONS
from vla_spec.cli import main
from vla_spec.episodes import EpisodeLog, RunConfig, read_log
from vla_spec.factors import collapse_repeats, factor_rows
from vla_spec.rollout import EpisodeResult, EpisodeSpec

pytestmark = pytest.mark.cpu

CAMERAS = ("none", "shift-2cm")


def matrix_log(path: Path, outcome: Callable[[EpisodeSpec], tuple[bool, int]]) -> Path:
    """libero_object task 0, inits 0-1 x seeds 0-2 x cameras none, shift-2cm: 12 episodes;
    ``outcome(spec)`` gives (success, steps)."""
    specs = [EpisodeSpec("libero_object", 0, i, e, c) for i in (0, 1) for e in (0, 1, 2) for c in CAMERAS]
    with EpisodeLog.open(path, RunConfig("expert", {}, tuple(specs)), VERSIONS) as log:
        for spec in specs:
            success, steps = outcome(spec)
            log.append(EpisodeResult(spec.suite, spec.task_id, "do it", spec.init_index, spec.env_seed, steps, success, 1.0,
                                     None, None, camera=spec.camera))
    return path


def camera_decides(spec: EpisodeSpec) -> tuple[bool, int]:
    """Solved (in 100 steps) with the default camera, failed (280 steps) with the shifted one; seeds change nothing."""
    return (True, 100) if spec.camera == "none" else (False, 280)


def test_twelve_episodes_of_a_deterministic_policy_on_four_starting_states_are_four_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = matrix_log(tmp_path / "m.jsonl", camera_decides)
    repeats = collapse_repeats(read_log(log).results)
    assert (len(repeats.trials), repeats.episodes, repeats.starts, repeats.repeated, repeats.differing) == (4, 12, 4, 4, 0)
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == (
        "  independent trials: 4 of 12 episodes; 4 starting states (suite, task, init, camera): 4 played identically "
        "under every env seed (env.seed changes nothing once the init state is set) and count once, 0 differed "
        "between seeds and count every episode"
    )
    # Wilson 95 %: 2/4 -> [15.0 %, 85.0 %]; 1/2 -> [9.5 %, 90.5 %]; 2/2 -> [34.2 %, 100 %]; 0/2 -> [0 %, 65.8 %]
    assert out[3] == "  by env seed: 0: 2/4 [15 %, 85 %]; 1: 2/4 [15 %, 85 %]; 2: 2/4 [15 %, 85 %]"
    assert out[4] == "  by init state: 0: 1/2 [9 %, 91 %]; 1: 1/2 [9 %, 91 %]"
    assert out[5] == "  by camera: none: 2/2 [34 %, 100 %]; shift-2cm: 0/2 [0 %, 66 %]"
    assert "libero_object       0       2/4   50.0 %   [15.0 %, 85.0 %]" in out  # 4 trials, not 12 episodes


def test_seeds_that_change_the_episode_count_every_episode(tmp_path: Path) -> None:
    """Negative control: where the seed changes the episode (here the step count at init 1), those
    episodes are separate trials; init 0 still collapses."""
    def seed_matters_at_init_1(spec: EpisodeSpec) -> tuple[bool, int]:
        return (True, 100 + (spec.env_seed if spec.init_index == 1 else 0))

    repeats = collapse_repeats(read_log(matrix_log(tmp_path / "m.jsonl", seed_matters_at_init_1)).results)
    assert (len(repeats.trials), repeats.repeated, repeats.differing) == (2 + 6, 2, 2)


def test_factor_rows_per_init() -> None:
    log_free = [EpisodeResult("libero_object", 0, "x", i, 0, 10, i == 0, 1.0, None, None) for i in (0, 0, 1)]
    rows = factor_rows(log_free, "init_index")
    assert [(level, p.successes, p.n) for level, p in rows] == [(0, 2, 2), (1, 0, 1)]
    with pytest.raises(ValueError, match="unknown factor 'seed'"):
        factor_rows(log_free, "seed")
