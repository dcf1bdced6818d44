"""What comes out of the model: 7 token ids -> normalized action -> un-normalized action -> ``env.step``.

The one place token ids become actions. Every caller goes through these objects: the native model's
``predict_action``, the hf-remote adapter, the OpenVLA policy, the scripted expert's round trip
through tokens, and ``vla-spec decode``.

* :class:`ActionProcessor` is the checkpoint's output transform: its action tokenizer (at the
  checkpoint's text vocabulary, 32000 for Llama-2) and the statistics of ONE resolved
  ``unnorm_key``. ``decode``: ids -> bin centres in [-1, 1] (:mod:`vla_spec.tokens`) -> dataset units
  (:func:`vla_spec.normalization.unnormalize`; gripper un-scaled, training convention 1 = open).
  ``encode`` is its inverse for training targets (BOUNDS_Q99 ``normalize``, then the tokenizer).
  The key is resolved here (:meth:`ActionProcessor.select`) and nowhere else.
* :class:`LiberoOutputs` composes the LIBERO evaluation's post-processing on top
  (:func:`vla_spec.gripper.policy_to_env`: gripper binarized and inverted, -1 open / +1 close): the
  environment command, 7 floats in OSC_POSE controller units (1.0 = 0.05 m or 0.5 rad per step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_spec.gripper import env_to_training, normalize_gripper_action, policy_to_env
from vla_spec.normalization import NormStats, load_norm_stats, normalize, unnormalize
from vla_spec.tokens import ActionTokenizer


@dataclass(frozen=True, eq=False)
class ActionPrediction:
    """One action per sample. ``token_ids`` [B, 7] int64; ``normalized`` [B, 7] float64 bin centres
    in [-1, 1]; ``actions`` [B, 7] float64 in dataset units (gripper: raw bin centre, training
    convention 1 = open); ``margins`` [B, 7] float32 top-1 minus top-2 logit; ``unnorm_key``;
    ``top_logits`` [B, 7] float32 top-1 logit (None when the decoder did not report it)."""

    token_ids: np.ndarray
    normalized: np.ndarray
    actions: np.ndarray
    margins: np.ndarray
    unnorm_key: str
    top_logits: np.ndarray | None = None


@dataclass(frozen=True)
class ActionProcessor:
    """A checkpoint's output transform for one ``unnorm_key``: token ids <-> dataset-unit actions."""

    stats: NormStats
    tokenizer: ActionTokenizer = field(default_factory=ActionTokenizer)

    @classmethod
    def select(
        cls, norm_stats: Mapping[str, NormStats], unnorm_key: str | None, tokenizer: ActionTokenizer | None = None
    ) -> "ActionProcessor":
        """The statistics of ``unnorm_key`` (:func:`vla_spec.normalization.load_norm_stats`: resolved
        as the reference ``_check_unnorm_key``, None only for a single dataset, an unknown key lists
        the valid ones, ``{suite}_no_noops`` accepted for a LIBERO suite) with ``tokenizer``
        (default: Llama-2's 32000-token vocabulary)."""
        stats = load_norm_stats(unnorm_key, norm_stats)
        return cls(stats) if tokenizer is None else cls(stats, tokenizer)

    @property
    def unnorm_key(self) -> str:
        return self.stats.key

    @property
    def action_dim(self) -> int:
        """Tokens per action (7)."""
        return self.stats.action_dim

    def decode(self, token_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (..., 7) -> (normalized bin centres, un-normalized actions), both float64."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim == 0 or ids.shape[-1] != self.action_dim:
            raise ValueError(f"expected {self.action_dim} action token ids per action, got shape {ids.shape}")
        normalized = self.tokenizer.decode(ids)
        return normalized, unnormalize(normalized, self.stats)

    def encode(self, actions: Any) -> np.ndarray:
        """Dataset-unit actions (..., 7), gripper in the training convention -> int64 token ids."""
        return self.tokenizer.encode(normalize(actions, self.stats))

    def prediction(self, token_ids: Any, margins: Any, top_logits: Any = None) -> ActionPrediction:
        """The :class:`ActionPrediction` of decoded ids [B, 7], their margins and top-1 logits [B, 7]."""
        ids = np.asarray(token_ids, dtype=np.int64)
        normalized, actions = self.decode(ids)
        return ActionPrediction(
            token_ids=ids,
            normalized=normalized,
            actions=actions,
            margins=np.asarray(margins, dtype=np.float32),
            unnorm_key=self.unnorm_key,
            top_logits=None if top_logits is None else np.asarray(top_logits, dtype=np.float32),
        )


@dataclass(frozen=True)
class LiberoOutputs:
    """The LIBERO evaluation's action path: :class:`ActionProcessor`, then the gripper rule.

    ``invert_gripper=False`` skips the final sign flip of ``policy_to_env`` (a negative control:
    then the gripper closes when the model means open).
    """

    processor: ActionProcessor
    invert_gripper: bool = True

    def env_command(self, action: Any) -> np.ndarray:
        """An un-normalized action (..., 7) -> the environment command (gripper -1 open / +1 close)."""
        if self.invert_gripper:
            return policy_to_env(action)
        return normalize_gripper_action(action, binarize=True)

    def __call__(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """7 token ids -> the environment command (7,) for ``env.step``."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.shape != (self.processor.action_dim,):
            raise ValueError(f"expected {self.processor.action_dim} action token ids, got shape {ids.shape}")
        return self.env_command(self.processor.decode(ids)[1])

    def tokens(self, env_command: Sequence[float] | np.ndarray) -> tuple[int, ...]:
        """The inverse: an environment command -> the 7 ids a perfect OpenVLA would emit for it.

        Arm dims outside ``[q01, q99]`` are clipped by ``normalize`` (as in training data); the
        gripper is mapped to the training convention (1 open, 0 close) and passes un-normalized."""
        command = np.asarray(env_command, dtype=np.float64)
        if command.shape != (self.processor.action_dim,):
            raise ValueError(f"expected a {self.processor.action_dim}-dim environment command, got shape {command.shape}")
        return tuple(int(i) for i in self.processor.encode(env_to_training(command)))
