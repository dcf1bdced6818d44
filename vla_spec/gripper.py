"""Gripper conventions: what the model was trained on and what LIBERO's robot expects.

* Environment (robosuite Panda gripper): -1 = open, +1 = close.
* Training target (OpenVLA's LIBERO datasets): the env command clipped to [0, 1] and inverted with
  ``1 - x``, so 1 = open, 0 = close. The gripper axis is not normalized (mask False), so the model
  emits a raw bin centre in [-1, 1] for it.
* Evaluation post-processing (``robot_utils.py``): ``g <- sign(2 g - 1)`` (normalize + binarize),
  then ``g <- -g`` (invert). A centre above 0.5 opens (-1), below 0.5 closes (+1).

Functions take actions of shape (..., 7) and return new arrays; the last entry is the gripper.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ENV_OPEN = -1.0
ENV_CLOSE = 1.0


def normalize_gripper_action(action: Any, binarize: bool = True) -> np.ndarray:
    """Map the gripper from [0, 1] to [-1, 1] (``2 g - 1``) and, if ``binarize``, to its sign."""
    result = np.array(action, dtype=np.float64, copy=True)
    result[..., -1] = 2.0 * result[..., -1] - 1.0
    if binarize:
        result[..., -1] = np.sign(result[..., -1])
    return result


def invert_gripper_action(action: Any) -> np.ndarray:
    """Flip the gripper sign: training's 1 = open becomes the environment's -1 = open."""
    result = np.array(action, dtype=np.float64, copy=True)
    result[..., -1] = -result[..., -1]
    return result


def policy_to_env(action: Any) -> np.ndarray:
    """The LIBERO evaluation's post-processing of an un-normalized action: normalize, binarize, invert."""
    return invert_gripper_action(normalize_gripper_action(action, binarize=True))


def env_to_training(action: Any) -> np.ndarray:
    """An environment command (-1 open .. +1 close) in the training convention (1 open, 0 close)."""
    result = np.array(action, dtype=np.float64, copy=True)
    result[..., -1] = 1.0 - np.clip(result[..., -1], 0.0, 1.0)
    return result
