"""Grid resolution per axis (facts §1 and §4 "Derived test vectors"; OSC_POSE scale from facts §3)."""

from __future__ import annotations

import numpy as np
import pytest

from vla_spec.normalization import AXIS_NAMES, shipped_norm_stats
from vla_spec.resolution import PHYSICAL_UNITS, axis_resolutions, normalized_step

pytestmark = pytest.mark.cpu

SPATIAL_STEPS = [0.00660, 0.00603, 0.00733, 0.000828, 0.00150, 0.00129]  # facts, 3 significant digits
OSC_POSE = [0.05] * 3 + [0.5] * 3  # m and rad per unit of controller input


def test_normalized_step_is_2_over_255() -> None:
    assert normalized_step() == pytest.approx(2 / 255, rel=1e-12)


def test_spatial_dataset_unit_steps() -> None:
    rows = axis_resolutions(shipped_norm_stats()["libero_spatial"])
    assert [row.axis for row in rows] == list(AXIS_NAMES)
    steps = [row.dataset_units for row in rows[:6]]
    np.testing.assert_allclose(steps, SPATIAL_STEPS, rtol=5e-3)


@pytest.mark.parametrize("key", ["libero_spatial", "libero_object", "libero_goal", "libero_10"])
def test_physical_step_is_dataset_step_times_osc_pose_scale(key: str) -> None:
    stats = shipped_norm_stats()[key]
    rows = axis_resolutions(stats)
    expected = (stats.q99 - stats.q01)[:6] / 255 * np.array(OSC_POSE)
    np.testing.assert_allclose([row.physical for row in rows[:6]], expected, rtol=1e-12)
    assert [row.physical_unit for row in rows] == ["m", "m", "m", "rad", "rad", "rad", ""]
    assert PHYSICAL_UNITS[:6] == ("m", "m", "m", "rad", "rad", "rad")


def test_unmasked_gripper_has_normalized_step_and_no_physical_unit() -> None:
    gripper = axis_resolutions(shipped_norm_stats()["libero_spatial"])[6]
    assert gripper.axis == "gripper" and gripper.physical is None and gripper.physical_unit == ""
    assert gripper.dataset_units == pytest.approx(2 / 255, rel=1e-12)


def test_spatial_physical_steps_are_sub_millimetre() -> None:
    rows = axis_resolutions(shipped_norm_stats()["libero_spatial"])
    # 0.00660 * 0.05 m = 0.33 mm, 0.000828 * 0.5 rad = 0.41 mrad
    np.testing.assert_allclose([r.physical for r in rows[:6]], np.array(SPATIAL_STEPS) * OSC_POSE, rtol=5e-3)
