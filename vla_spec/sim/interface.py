"""Where the policy and the simulator meet: the episode loop's view of a policy, and the one place
LIBERO observations become policy inputs (the image is rotated here and nowhere else). Policy
outputs become ``env.step`` commands through :class:`vla_spec.actions.LiberoOutputs`, the only
place gripper signs are flipped.

Conventions
-----------
* Image: LIBERO renders in OpenGL convention (upside down). :func:`policy_image` applies
  ``img[::-1, ::-1]``, a 180 degree rotation (both axes; *not* ``flipud``), as OpenVLA's
  ``get_libero_image`` does "to match train preprocessing". Result: (256, 256, 3) uint8, upright.
* Environment action (what ``env.step`` takes): 7 floats, OSC_POSE deltas in controller units
  (1.0 commands 0.05 m or 0.5 rad per step; about 0.011 m per step is reached at +1), then the
  gripper: -1 opens, +1 closes.
* Model action (what a decoded token means): ``x, y, z, roll, pitch, yaw`` in the same controller
  units after :func:`vla_spec.unnormalize`, gripper in the training convention (1 open, 0 close).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vla_spec.images import rotate_180

AGENTVIEW_KEY = "agentview_image"


def policy_image(obs: Mapping[str, Any]) -> np.ndarray:
    """The agentview image as OpenVLA sees it: ``obs["agentview_image"][::-1, ::-1]`` (rotated 180
    degrees), contiguous (H, W, 3) uint8. Raises ``KeyError`` naming the fix for camera-less envs."""
    if AGENTVIEW_KEY not in obs:
        raise KeyError(
            f"observation has no {AGENTVIEW_KEY!r}: the environment was built without cameras "
            "(camera=False); a policy that looks must set needs_camera = True"
        )
    return rotate_180(np.asarray(obs[AGENTVIEW_KEY]))


@dataclass(frozen=True)
class TaskContext:
    """What a policy learns at the start of an episode.

    ``env`` is the LIBERO environment itself: privileged (object poses, goal predicates). Only
    scripted experts may read it; a learned policy must use ``instruction`` and observations only.
    """

    suite: str
    task_id: int
    instruction: str  # task.language, e.g. "pick up the alphabet soup and place it in the basket"
    init_index: int
    max_steps: int
    env: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class Observation:
    """One observation handed to ``Policy.act``.

    ``image`` is :func:`policy_image` of the raw observation (upright, (256, 256, 3) uint8), or None
    when the environment has no camera. ``raw`` is LIBERO's observation dict unchanged (its images
    upside down; robot and object state in metres / quaternions xyzw). ``step`` counts policy steps
    from 0.
    """

    raw: Mapping[str, Any] = field(repr=False)
    image: np.ndarray | None
    step: int


def make_observation(raw: Mapping[str, Any], step: int) -> Observation:
    """Wrap a LIBERO observation dict; the image is rotated here and nowhere else."""
    image = policy_image(raw) if AGENTVIEW_KEY in raw else None
    return Observation(raw=raw, image=image, step=step)


@dataclass(frozen=True)
class PolicyStep:
    """A policy's output for one step: the environment command and, if it has them, its 7 tokens."""

    action: np.ndarray  # (7,) float64 environment command (gripper -1 open / +1 close)
    tokens: tuple[int, ...] | None = None


@runtime_checkable
class Policy(Protocol):
    """The episode loop's view of a policy.

    ``needs_camera``: whether ``act`` reads ``obs.image`` (camera envs are about 10x slower).
    ``reset`` is called once per episode after the wait steps; ``act`` once per policy step.
    """

    needs_camera: bool

    def reset(self, task: TaskContext) -> None: ...

    def act(self, obs: Observation) -> PolicyStep: ...


@dataclass(frozen=True)
class BatchItem:
    """One episode's question to a batched policy: its task (``env`` left out: it stays with the
    simulator), the policy step it is at, and the policy's model input for the observation
    (:meth:`BatchedPolicy.model_input`: a uint8 image, computed where the simulator runs)."""

    task: TaskContext
    step: int
    image: np.ndarray


@runtime_checkable
class BatchedPolicy(Policy, Protocol):
    """A policy that can answer many episodes in one call: the runner gives it a policy actor of its
    own (on ``device``) and asks it once per round for every running episode.

    ``model_input(obs)`` runs beside the simulator (per frame, CPU); ``act_batch(items)`` answers
    each item as ``act`` would have answered it alone (a batch of N gives the tokens of N single
    calls). ``act`` must be ``act_batch`` of one item."""

    device: str  # torch device of the model: "cpu", "cuda", ...

    def model_input(self, obs: Observation) -> np.ndarray: ...

    def act_batch(self, items: Sequence[BatchItem]) -> list[PolicyStep]: ...
