"""Per-embodiment action statistics and the maps between normalized and physical actions.

Action layout (7 dims): x, y, z, roll, pitch, yaw (deltas in the dataset's units; for LIBERO the
OSC_POSE controller input in [-1, 1]) and gripper. ``mask`` marks the dims that are normalized:
``[True]*6 + [False]``, so the gripper passes through un-scaled.

* :func:`unnormalize` is the reference ``predict_action`` map (no epsilon, no clip):
  ``where(mask, 0.5 * (x + 1) * (q99 - q01) + q01, x)``.
* :func:`normalize` is the training map BOUNDS_Q99:
  ``clip(2 * (a - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)`` on masked dims, and 0 where min == max.

Statistics are selected by ``unnorm_key`` (a dataset name); :func:`resolve_unnorm_key` mirrors the
reference ``_check_unnorm_key`` (and accepts ``{suite}_no_noops`` for a LIBERO suite's statistics),
:func:`libero_unnorm_key` the LIBERO evaluation's fallback. Every caller (``predict_action``, the
policies, their setup checks, ``vla-spec decode``) resolves a key through these two functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

BOUNDS_Q99_EPS = 1e-8
AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
#: ``{suite}_no_noops`` names a LIBERO suite's regenerated dataset (the OpenVLA-OFT checkpoints' key);
#: the released OpenVLA checkpoints key the same statistics by the suite name (facts section 3-4).
NO_NOOPS = "_no_noops"


class UnnormKeyError(KeyError):
    """An ``unnorm_key`` that does not select exactly one set of statistics."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _vector(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NormStats:
    """Action statistics of one dataset (float64 vectors of length ``action_dim``).

    ``proprio`` holds the checkpoint's proprio statistics by name (q01, q99, mean, ...) when present;
    OpenVLA never uses them (``load_proprio=False``), so they are all zeros for its LIBERO datasets.
    """

    key: str
    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    num_transitions: int | None = None
    num_trajectories: int | None = None
    proprio: Mapping[str, np.ndarray] | None = None  # e.g. 7-dim zeros in OpenVLA LIBERO checkpoints

    @property
    def action_dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_entry(cls, key: str, entry: Mapping[str, Any]) -> "NormStats":
        """Build from one value of a ``dataset_statistics.json`` / ``config.json["norm_stats"]``."""
        action = entry.get("action")
        if not isinstance(action, Mapping) or "q01" not in action or "q99" not in action:
            raise ValueError(f"norm stats for {key!r} need an 'action' entry with 'q01' and 'q99'")
        q01 = _vector(action["q01"])
        mask = np.asarray(action.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        mask.setflags(write=False)
        optional = {name: _vector(action[name]) for name in ("mean", "std", "min", "max") if name in action}
        raw_proprio = entry.get("proprio")
        proprio = {n: _vector(v) for n, v in raw_proprio.items()} if isinstance(raw_proprio, Mapping) else None
        return cls(
            key=key,
            q01=q01,
            q99=_vector(action["q99"]),
            mask=mask,
            num_transitions=entry.get("num_transitions"),
            num_trajectories=entry.get("num_trajectories"),
            proprio=proprio,
            **optional,
        )


def parse_norm_stats(raw: Mapping[str, Any]) -> dict[str, NormStats]:
    """Parse a whole ``{dataset_name: entry}`` mapping, as stored in checkpoints."""
    return {key: NormStats.from_entry(key, entry) for key, entry in raw.items()}


def read_norm_stats_file(path: str | Path) -> dict[str, NormStats]:
    """Read a ``dataset_statistics.json`` file."""
    with open(path, encoding="utf-8") as handle:
        return parse_norm_stats(json.load(handle))


def shipped_entries(keys: Sequence[str]) -> dict[str, Any]:
    """The raw ``norm_stats`` entries (as stored in checkpoints) of the shipped statistics ``keys``."""
    folder = resources.files("vla_spec.stats")
    entries: dict[str, Any] = {}
    for key in keys:
        entries.update(json.loads(folder.joinpath(f"{key}.json").read_text(encoding="utf-8")))
    return entries


@cache
def shipped_norm_stats() -> Mapping[str, NormStats]:
    """All statistics shipped in ``vla_spec/stats`` (four LIBERO suites, bridge_orig, fractal)."""
    keys = sorted(item.name.removesuffix(".json") for item in resources.files("vla_spec.stats").iterdir() if item.name.endswith(".json"))
    return parse_norm_stats(shipped_entries(keys))


def is_libero_key(key: str) -> bool:
    """LIBERO statistics are in OSC_POSE controller units, so they have a physical meaning."""
    return key.startswith("libero")


def resolve_unnorm_key(norm_stats: Mapping[str, Any], unnorm_key: str | None) -> str:
    """Return the key of ``norm_stats`` to use, as the reference ``_check_unnorm_key`` does.

    ``None`` is allowed only when there is exactly one dataset; an unknown key is an error that
    lists the valid keys. One addition to the reference: ``{suite}_no_noops`` of a LIBERO suite
    that ``norm_stats`` holds only under the suite name resolves to the suite (the same dataset,
    regenerated without no-op steps).
    """
    valid = ", ".join(sorted(norm_stats)) or "(none)"
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise UnnormKeyError(
                f"unnorm_key is None but the model was trained on {len(norm_stats)} datasets; "
                f"pass one of: {valid}"
            )
        return next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        suite = unnorm_key.removesuffix(NO_NOOPS)
        if suite != unnorm_key and is_libero_key(suite) and suite in norm_stats:
            return suite
        raise UnnormKeyError(f"unknown unnorm_key {unnorm_key!r}; valid keys: {valid}")
    return unnorm_key


def libero_unnorm_key(suite_name: str, norm_stats: Mapping[str, Any]) -> str:
    """The LIBERO evaluation's choice: the suite name, else ``{suite}_no_noops`` if only that exists."""
    if suite_name not in norm_stats and f"{suite_name}_no_noops" in norm_stats:
        return f"{suite_name}_no_noops"
    return resolve_unnorm_key(norm_stats, suite_name)


def load_norm_stats(unnorm_key: str | None, registry: Mapping[str, NormStats] | None = None) -> NormStats:
    """Statistics for ``unnorm_key`` from ``registry`` (default: the shipped statistics), resolved by
    :func:`resolve_unnorm_key`; under the name asked for (``libero_object_no_noops`` gives
    libero_object's statistics with that key)."""
    stats = shipped_norm_stats() if registry is None else registry
    key = resolve_unnorm_key(stats, unnorm_key)
    return stats[key] if unnorm_key in (None, key) else replace(stats[key], key=unnorm_key)


def _check_last_dim(values: np.ndarray, stats: NormStats, what: str) -> None:
    if values.ndim == 0 or values.shape[-1] != stats.action_dim:
        raise ValueError(
            f"{what} must have last dimension {stats.action_dim} (the action dim of "
            f"{stats.key!r}), got shape {values.shape}"
        )


def unnormalize(normalized: Any, stats: NormStats) -> np.ndarray:
    """Normalized actions (..., 7) in [-1, 1] -> dataset units, as ``predict_action`` does."""
    x = np.asarray(normalized, dtype=np.float64)
    _check_last_dim(x, stats, "normalized actions")
    return np.where(stats.mask, 0.5 * (x + 1.0) * (stats.q99 - stats.q01) + stats.q01, x)


def normalize(actions: Any, stats: NormStats) -> np.ndarray:
    """Dataset-unit actions (..., 7) -> [-1, 1] with BOUNDS_Q99, as OpenVLA training does."""
    a = np.asarray(actions, dtype=np.float64)
    _check_last_dim(a, stats, "actions")
    scaled = np.clip(2.0 * (a - stats.q01) / (stats.q99 - stats.q01 + BOUNDS_Q99_EPS) - 1.0, -1.0, 1.0)
    result = np.where(stats.mask, scaled, a)
    if stats.min is not None and stats.max is not None:
        result = np.where(stats.min == stats.max, 0.0, result)
    return result


def dataset_statistics(actions: Any, *, num_trajectories: int, mask: Sequence[bool] | None = None) -> dict[str, Any]:
    """One ``dataset_statistics.json`` entry computed from training actions (N, D), as OpenVLA's
    ``get_dataset_statistics`` does: mean, std, max, min, q01 and q99 (``np.quantile`` at 0.01 and
    0.99) per dim, the normalization ``mask`` (default: every dim but the last, the gripper, which
    is left un-normalized), all-zero ``proprio`` (OpenVLA trains without proprio), and counts."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"actions must be (N, D) with N >= 2 steps, got shape {a.shape}")
    dim = a.shape[1]
    mask_values = [True] * (dim - 1) + [False] if mask is None else [bool(m) for m in mask]
    if len(mask_values) != dim:
        raise ValueError(f"mask has {len(mask_values)} entries for {dim}-dim actions")
    action = {
        "mean": a.mean(axis=0),
        "std": a.std(axis=0),
        "max": a.max(axis=0),
        "min": a.min(axis=0),
        "q01": np.quantile(a, 0.01, axis=0),
        "q99": np.quantile(a, 0.99, axis=0),
    }
    zeros = [0.0] * dim
    return {
        "action": {**{name: [float(v) for v in values] for name, values in action.items()}, "mask": mask_values},
        "proprio": {name: zeros for name in ("mean", "std", "max", "min", "q01", "q99")},
        "num_transitions": int(a.shape[0]),
        "num_trajectories": int(num_trajectories),
    }
