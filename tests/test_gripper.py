"""Gripper conventions (facts §3 "Gripper post-processing"): env -1 open / +1 close, training 1 open / 0 close."""

from __future__ import annotations

import numpy as np
import pytest

from vla_spec.gripper import (
    ENV_CLOSE,
    ENV_OPEN,
    env_to_training,
    invert_gripper_action,
    normalize_gripper_action,
    policy_to_env,
)
from vla_spec.tokens import ActionTokenizer

pytestmark = pytest.mark.cpu

CENTRES = ActionTokenizer().bin_centers


def with_gripper(values: np.ndarray) -> np.ndarray:
    """Actions (n, 7) with zeros in the arm dims and ``values`` as the gripper."""
    actions = np.zeros((len(values), 7))
    actions[:, 6] = values
    return actions


def test_env_constants() -> None:
    assert (ENV_OPEN, ENV_CLOSE) == (-1.0, 1.0)


def test_truth_table_over_all_255_centres() -> None:
    env = policy_to_env(with_gripper(CENTRES))[:, 6]
    assert np.all(env[CENTRES > 0.5] == -1.0)  # open
    assert np.all(env[CENTRES < 0.5] == 1.0)  # close
    assert (CENTRES > 0.5).sum() == 255 - 191 and (CENTRES < 0.5).sum() == 191  # c_191 is the first above


def test_no_centre_is_exactly_one_half_so_sign_zero_never_occurs() -> None:
    assert not np.any(CENTRES == 0.5)
    assert CENTRES[191] == pytest.approx(0.50196, abs=1e-5) and CENTRES[190] < 0.5
    assert set(policy_to_env(with_gripper(CENTRES))[:, 6].tolist()) == {-1.0, 1.0}


def test_centre_127_is_zero_and_closes() -> None:
    assert CENTRES[127] == 0.0
    assert policy_to_env(with_gripper(np.array([0.0])))[0, 6] == ENV_CLOSE


def test_post_processing_steps() -> None:
    g = with_gripper(np.array([0.0, 0.25, 0.5, 1.0]))
    assert normalize_gripper_action(g, binarize=False)[:, 6].tolist() == [-1.0, -0.5, 0.0, 1.0]
    assert normalize_gripper_action(g)[:, 6].tolist() == [-1.0, -1.0, 0.0, 1.0]
    assert invert_gripper_action(g)[:, 6].tolist() == [-0.0, -0.25, -0.5, -1.0]


def test_arm_dims_and_input_are_left_alone() -> None:
    action = np.arange(7, dtype=float) / 10
    out = policy_to_env(action)
    assert out[:6].tolist() == action[:6].tolist() and action[6] == 0.6


def test_env_to_training() -> None:
    assert env_to_training(with_gripper(np.array([-1.0, 1.0])))[:, 6].tolist() == [1.0, 0.0]  # open, close


@pytest.mark.parametrize("command", [ENV_OPEN, ENV_CLOSE])
def test_env_to_training_to_env_round_trip(command: float) -> None:
    trained = env_to_training(with_gripper(np.array([command])))
    tok = ActionTokenizer()
    decoded = trained.copy()
    decoded[:, 6] = tok.decode(tok.encode(trained[:, 6]))  # what the model emits for that target
    assert policy_to_env(decoded)[0, 6] == command
