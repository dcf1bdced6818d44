"""Paired negative controls of the closed loop (``tests/test_closed_loop.py``): the trained tiny VLA
with its input or its action path broken must fail episodes that it solves.

The pair: the first episode that the model card records as solved (``evaluation.json``:
libero_object task 3, init state 0) runs again here as it is, and must still be solved (else the
controls have nothing to control, and the test says so); then each control replays it and must
fail it:

* image-blind: a constant black image in place of the camera;
* wrong ``unnorm_key`` (``bridge_orig``): well-formed tokens decoded at WidowX scale.

An episode solved with the camera and the right statistics but not without them is a success that
came from the pixels and the action path, not from luck of the scene (README and the model card
report the controls on more solved episodes). This module runs its own positive half instead of
reusing the 20-episode run, so that a distributed run does it beside that run on the other worker;
its three episodes run in this process (the runner's one-worker path: the same policy code, no
Ray actors to start), the image-blind one without rendering (its policy reads no camera).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.closed_loop import SUITE, model_card, run_tiny_vla, summary
from vla_spec.rollout import EpisodeSpec

pytestmark = pytest.mark.sim

CONTROL_EPISODES = 1  # solved episodes each control replays, in this process


@pytest.fixture(scope="module")
def solved(tmp_path_factory: pytest.TempPathFactory) -> list[EpisodeSpec]:
    """The first CONTROL_EPISODES episodes the model card records as solved, solved again here."""
    recorded = [EpisodeSpec(SUITE, task, init) for task, init in model_card()["held_out"]["solved"]][:CONTROL_EPISODES]
    results = run_tiny_vla(tmp_path_factory.mktemp("paired"), "solved", recorded, workers=1)
    unsolved = [(r.task_id, r.init_index) for r in results if not r.success]
    assert not unsolved, (
        f"episodes (task, init) {unsolved} are recorded as solved in the model card but fail now: the controls "
        "would control nothing (the held-out run in tests/test_closed_loop.py says whether the rate changed too)"
    )
    return recorded


@pytest.mark.parametrize(
    ("name", "options"),
    [("image_blind", {"image": "black"}), ("wrong_unnorm_key", {"unnorm_key": "bridge_orig"})],
)
def test_controls_fail_the_solved_episodes(
    tmp_path: Path, solved: list[EpisodeSpec], name: str, options: dict,
    record_property: pytest.RecordProperty,
) -> None:
    results = run_tiny_vla(tmp_path, name, solved, workers=1, **options)
    record_property("result", summary(f"{name} {options}, on {len(solved)} solved episodes", results))
    assert [r.success for r in results] == [False] * len(solved)
