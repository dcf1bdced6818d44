"""Positive and negative controls of the simulator loop and the action path.

Positive: the scripted privileged expert, its commands squeezed through OpenVLA's action path
(suite stats -> 7 tokens -> decode -> unnormalize -> gripper post-processing), solves libero_object
and libero_spatial: Wilson 95 % lower bound >= 55 % over init state 0 of the 10 tasks of each suite
(9 of 10 clear it, 8 do not; the expert cannot reach the bowl in the drawer of libero_spatial task
4). With ``--all-tasks``: init states 0-1 of libero_object and 0-2 of libero_spatial, 50 episodes
(measured in session 11: 20/20 and 27/30, lower bounds 83.9 % and 74.4 %).

Negative, paired: the same expert and path with one knob changed replays the first
:data:`CONTROL_EPISODES` episodes that the positive run solved in each suite named, and must fail
every one (episodes are fixed, task x init state, so each pair is deterministic; an episode solved
with the knob right and failed with it wrong is the knob's doing, as in the closed loop's controls):
* ``unnorm_key="bridge_orig"`` (libero_object and libero_spatial): tokens are well formed but
  decode to WidowX-scale deltas (|xyz| <= 0.042 controller units instead of up to 0.94), so the
  arm barely moves;
* ``invert_gripper=False`` (libero_object): the gripper closes when the expert means open and vice
  versa, so it never holds the object. Not on libero_spatial: there the closed fingers enter the
  bowl and the "close" command spreads them against its inner wall, which lifts the bowl (3 of 5
  tasks still succeeded when tried), so the closed-loop expert is no control of the gripper sign on
  bowls.
All runs go through the episode runner with 2 workers on Ray.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from vla_spec.normalization import load_norm_stats
from vla_spec.rollout import EpisodeResult, EpisodeSpec
from vla_spec.runner import run_episodes
from vla_spec.sim.expert import PickPlaceExpert
from vla_spec.statistics import wilson_interval
from tests.closed_loop import assert_no_errors, summary

pytestmark = [pytest.mark.sim, pytest.mark.usefixtures("ray_cluster")]  # one Ray start for the module's 2-worker runs

WORKERS = 2
POSITIVE_INITS = {"libero_object": (0,), "libero_spatial": (0,)}  # x 10 tasks each
ALL_TASKS_INITS = {"libero_object": (0, 1), "libero_spatial": (0, 1, 2)}  # with --all-tasks
POSITIVE_MIN_LOWER_BOUND = 0.55
CONTROL_EPISODES = WORKERS  # solved episodes per suite that each control replays: one round of the workers


def _specs(suite: str, inits: tuple[int, ...], tasks: range = range(10)) -> list[EpisodeSpec]:
    return [EpisodeSpec(suite, task_id, init_index) for task_id in tasks for init_index in inits]


def _solved(positive: dict[str, list[EpisodeResult]], *suites: str) -> list[EpisodeSpec]:
    """The first CONTROL_EPISODES episodes of each suite that the positive run solved."""
    pairs = [
        [EpisodeSpec(r.suite, r.task_id, r.init_index, r.env_seed) for r in positive[suite] if r.success][:CONTROL_EPISODES]
        for suite in suites
    ]
    assert all(len(solved) == CONTROL_EPISODES for solved in pairs), "the positive run solved too few episodes to control"
    return [spec for solved in pairs for spec in solved]


def _run(tmp_path: Path, name: str, specs: list[EpisodeSpec], **expert_knobs: object) -> list[EpisodeResult]:
    results = run_episodes(
        functools.partial(PickPlaceExpert, **expert_knobs),
        specs,
        tmp_path / f"{name}.jsonl",
        workers=WORKERS,
        record_trace=True,
        progress=False,
    )
    assert_no_errors(results)
    return results


def _max_abs_xyz(results: list[EpisodeResult]) -> float:
    return max(abs(value) for r in results for entry in r.trace for value in entry["action"][:3])


@pytest.fixture(scope="module")
def positive(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[EpisodeResult]]:
    folder = tmp_path_factory.mktemp("positive")
    inits = ALL_TASKS_INITS if pytestconfig.getoption("all_tasks") else POSITIVE_INITS
    return {suite: _run(folder, suite, _specs(suite, suite_inits)) for suite, suite_inits in inits.items()}


@pytest.mark.parametrize("suite", ["libero_object", "libero_spatial"])
def test_expert_solves_the_suite(positive: dict[str, list[EpisodeResult]], suite: str, record_property: pytest.RecordProperty) -> None:
    results = positive[suite]
    record_property("result", summary(f"expert on {suite}", results))
    wins = sum(r.success for r in results)
    interval = wilson_interval(wins, len(results))
    failed = [(r.task_id, r.init_index) for r in results if not r.success]
    assert interval.low >= POSITIVE_MIN_LOWER_BOUND, f"{suite}: {wins}/{len(results)} {interval}; failed {failed}"
    # the expert commands full-scale moves: the suite's q99 on some axis
    assert _max_abs_xyz(results) >= 0.5


def test_wrong_unnorm_key_makes_tiny_actions_and_fails(
    positive: dict[str, list[EpisodeResult]], tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    solved = _solved(positive, "libero_object", "libero_spatial")
    results = _run(tmp_path, "bridge", solved, unnorm_key="bridge_orig")
    record_property("result", summary(f"expert decoded with bridge_orig, on {len(solved)} solved episodes", results))
    bridge = load_norm_stats("bridge_orig")
    bridge_limit = float(np.max(np.abs([bridge.q01[:3], bridge.q99[:3]])))
    assert bridge_limit == pytest.approx(0.0417, abs=1e-4)
    # decoded with bridge_orig, no arm command exceeds bridge's own q01/q99 range: about 2.1 mm
    # commanded per step (0.0417 x 0.05 m), against up to 0.9375 (47 mm) with the LIBERO statistics
    assert _max_abs_xyz(results) <= bridge_limit
    assert [r.success for r in results] == [False] * len(solved), "bridge_orig decoding still solves a paired episode"


def test_skipping_the_gripper_inversion_fails(
    positive: dict[str, list[EpisodeResult]], tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    solved = _solved(positive, "libero_object")
    results = _run(tmp_path, "no_invert", solved, invert_gripper=False)
    record_property("result", summary(f"expert without the gripper inversion, on {len(solved)} solved episodes", results))
    # the expert starts with an open gripper (env -1 = training 1.0); without inversion it closes
    assert all(r.trace[0]["action"][6] == 1.0 for r in results)
    assert [r.success for r in results] == [False] * len(solved), "the uninverted gripper still solves a paired episode"
