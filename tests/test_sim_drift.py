"""Simulator drift goldens: what the policy would see at its first step, per task.

After ``env.seed(0)``, ``reset``, ``set_init_state(init_states[0])`` and the 10 wait steps, record
the object poses (4 decimals: 0.1 mm), the end-effector position, and the agentview image as the
policy sees it (rotated 180 degrees): per-channel mean (1 decimal) and an 8x8 average hash.
Recorded under mujoco 3.3.2 (the pinned stack). A newer MuJoCo (>= 3.3.3) renders LIBERO's floors
darker (agentview mean about 103 instead of 139): these goldens then fail, which is the point
(``tox -e sim-mujoco-latest``).

One camera variation's view is recorded as well (:mod:`vla_spec.sim.cameras`).

Task 0 of each suite by default; all 40 with ``--all-tasks`` (or ``VLA_SPEC_ALL_TASKS=1``). All 40
cases are always collected and the others skipped, so that syrupy keeps their goldens (it reports
the goldens of tests that were not generated as unused, fails, and deletes them on update).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.goldens import GOLDEN_DIR
from tests.reference_images import first_observation
from vla_spec.sim import suites
from vla_spec.sim.fingerprint import average_hash, image_mean, object_poses
from vla_spec.sim.interface import policy_image

pytestmark = pytest.mark.sim

INIT_INDEX = 0


DEFAULT_TASK = 0
CASES = [(suite, task_id) for suite in suites.EVAL_SUITES for task_id in range(suites.TASKS_PER_EVAL_SUITE)]


def first_view(suite: str, task_id: int, camera: str = "none") -> dict[str, object]:
    """The fingerprint of the first policy observation of ``init_states[INIT_INDEX]`` (agentview
    moved by the camera variation ``camera``); the observation is shared with
    ``tests/test_images_reference.py``, which renders the same frames."""
    obs = first_observation(suite, task_id, INIT_INDEX, camera)
    image = policy_image(obs)
    return {
        "object_poses": object_poses(obs),
        "eef_pos": [float(v) + 0.0 for v in np.round(obs["robot0_eef_pos"], 4)],
        "agentview_mean_rgb": image_mean(image),
        "agentview_ahash8": average_hash(image),
        "eye_in_hand_mean_rgb": image_mean(obs["robot0_eye_in_hand_image"][::-1, ::-1]),
    }


@pytest.mark.parametrize("suite_task", CASES, ids=[f"{suite}-task{task_id}" for suite, task_id in CASES])
def test_first_view_matches_golden(suite_task: tuple[str, int], golden, pytestconfig: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if suite_task[1] != DEFAULT_TASK and not pytestconfig.getoption("all_tasks"):
        pytest.skip("per-task drift golden: run with --all-tasks (VLA_SPEC_ALL_TASKS=1)")
    assert first_view(*suite_task) == golden


def test_a_perturbed_first_view_matches_golden(golden) -> None:  # type: ignore[no-untyped-def]
    """One camera variation (``yaw+5deg``, libero_object task 0) is recorded too: a change in how
    variations are applied (axis, sign, order, units) changes its agentview fingerprint, while the
    poses and the eye-in-hand view stay those of the default camera's golden."""
    view = first_view("libero_object", 0, camera="yaw+5deg")
    default = json.loads((GOLDEN_DIR / "test_sim_drift" / "test_first_view_matches_golden[libero_object-task0].json").read_text())
    assert view["agentview_ahash8"] != default["agentview_ahash8"]
    assert (view["object_poses"], view["eye_in_hand_mean_rgb"]) == (default["object_poses"], default["eye_in_hand_mean_rgb"])
    assert view == golden
