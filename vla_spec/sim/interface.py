"""Where the policy and the simulator meet: the one place observations become policy inputs and
policy outputs become ``env.step`` commands. Every policy (scripted expert, tiny model, OpenVLA)
goes through these functions; nothing else flips images or gripper signs.

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

The action path, token ids -> ``env.step`` (:class:`ActionDecoder`):
``ActionTokenizer.decode`` -> ``unnormalize(stats)`` -> ``policy_to_env`` (binarize + invert).
The expert reaches tokens the other way (:class:`ActionEncoder`): environment command ->
``env_to_training`` -> ``normalize(stats)`` -> ``ActionTokenizer.encode``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vla_spec.gripper import env_to_training, normalize_gripper_action, policy_to_env
from vla_spec.images import rotate_180
from vla_spec.normalization import NormStats, load_norm_stats, normalize, unnormalize
from vla_spec.tokens import ACTION_DIM, ActionTokenizer

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
class ActionDecoder:
    """Token ids -> environment command, the LIBERO evaluation's path.

    ``stats`` are the statistics selected by the ``unnorm_key``; ``invert_gripper=False`` skips the
    final sign flip of ``policy_to_env`` (a negative control: then the gripper closes when the
    model means open).
    """

    stats: NormStats
    invert_gripper: bool = True
    tokenizer: ActionTokenizer = field(default_factory=ActionTokenizer)

    def model_action(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decoded, un-normalized action (7,): controller units, gripper in training convention."""
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.shape != (ACTION_DIM,):
            raise ValueError(f"expected {ACTION_DIM} action token ids, got shape {ids.shape}")
        return unnormalize(self.tokenizer.decode(ids), self.stats)

    def to_env(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Environment command (7,) for ``env.step``."""
        action = self.model_action(tokens)
        if self.invert_gripper:
            return policy_to_env(action)
        return normalize_gripper_action(action, binarize=True)


@dataclass(frozen=True)
class ActionEncoder:
    """Environment command -> the 7 token ids a perfect OpenVLA would emit for it (training path).

    Arm dims outside ``[q01, q99]`` of ``stats`` are clipped by ``normalize`` (as in training data);
    the gripper is mapped to the training convention and passes un-normalized.
    """

    stats: NormStats
    tokenizer: ActionTokenizer = field(default_factory=ActionTokenizer)

    def tokens(self, env_command: Sequence[float] | np.ndarray) -> tuple[int, ...]:
        command = np.asarray(env_command, dtype=np.float64)
        if command.shape != (ACTION_DIM,):
            raise ValueError(f"expected a {ACTION_DIM}-dim environment command, got shape {command.shape}")
        ids = self.tokenizer.encode(normalize(env_to_training(command), self.stats))
        return tuple(int(i) for i in ids)


@dataclass(frozen=True)
class TokenizedActionPath:
    """Environment command -> tokens -> environment command, through OpenVLA's real action path.

    Encodes with the suite's statistics and decodes with ``decoder`` (its ``unnorm_key`` and
    ``invert_gripper``): with the defaults the round trip only quantizes; the negative controls
    change exactly one knob.
    """

    encoder: ActionEncoder
    decoder: ActionDecoder

    @classmethod
    def for_suite(cls, suite: str, *, unnorm_key: str | None = None, invert_gripper: bool = True) -> "TokenizedActionPath":
        """Encode with ``suite``'s stats; decode with ``unnorm_key``'s (default: the suite's)."""
        encode_stats = load_norm_stats(suite)
        decode_stats = encode_stats if unnorm_key in (None, suite) else load_norm_stats(unnorm_key)
        return cls(ActionEncoder(encode_stats), ActionDecoder(decode_stats, invert_gripper=invert_gripper))

    def __call__(self, env_command: Sequence[float] | np.ndarray) -> PolicyStep:
        tokens = self.encoder.tokens(env_command)
        return PolicyStep(action=self.decoder.to_env(tokens), tokens=tokens)
