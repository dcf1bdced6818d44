"""How fine the 255-centre action grid is, per axis, in normalized and physical units.

Normalized: consecutive bin centres are 2/255 apart, so any action is reproduced to within half of
that (1/255). In dataset units the grid step is ``(q99 - q01) / 255`` per masked axis. For LIBERO
the dataset units are the OSC_POSE controller input, which robosuite scales so that 1.0 commands
0.05 m of translation and 0.5 rad of rotation per control step (20 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_spec.normalization import AXIS_NAMES, NormStats
from vla_spec.tokens import ActionTokenizer

OSC_POSE_METRES_PER_UNIT = 0.05
OSC_POSE_RADIANS_PER_UNIT = 0.5
OSC_POSE_SCALE = np.array([OSC_POSE_METRES_PER_UNIT] * 3 + [OSC_POSE_RADIANS_PER_UNIT] * 3 + [1.0])
PHYSICAL_UNITS = ("m", "m", "m", "rad", "rad", "rad", "")


def normalized_step(tokenizer: ActionTokenizer | None = None) -> float:
    """Distance between consecutive bin centres in normalized units (2/255)."""
    centers = (tokenizer or ActionTokenizer()).bin_centers
    return float(centers[1] - centers[0])


@dataclass(frozen=True)
class AxisResolution:
    """One axis: grid step in normalized, dataset and (for OSC_POSE) physical units per step."""

    axis: str
    normalized: float
    dataset_units: float
    physical: float | None
    physical_unit: str


def axis_resolutions(stats: NormStats, tokenizer: ActionTokenizer | None = None) -> list[AxisResolution]:
    """Per-axis grid steps under ``stats``, assuming the LIBERO OSC_POSE scale for physical units.

    The unmasked gripper axis is not rescaled: its step is the normalized step and it has no
    physical unit.
    """
    step = normalized_step(tokenizer)
    dataset = np.where(stats.mask, (stats.q99 - stats.q01) * step / 2.0, step)
    rows = []
    for i, axis in enumerate(AXIS_NAMES[: stats.action_dim]):
        physical = float(dataset[i] * OSC_POSE_SCALE[i]) if stats.mask[i] else None
        rows.append(AxisResolution(axis, step, float(dataset[i]), physical, PHYSICAL_UNITS[i] if stats.mask[i] else ""))
    return rows
