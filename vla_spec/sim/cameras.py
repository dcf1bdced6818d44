"""Named camera variations: the agentview camera moved or turned a little, part of an episode's spec.

"Works on my camera, fails on my colleague's": a policy trained on one camera pose may not survive a
small change of it. A variation is applied to the MuJoCo model right after ``env.reset()`` (which
rebuilds the model, so nothing carries over between episodes) and before ``set_init_state`` and the
wait steps (:func:`vla_spec.rollout.start_episode`); it changes what the camera sees, never the
physics. Names:

* ``none``: LIBERO's camera as built (the default);
* ``shift+Ncm`` / ``shift-Ncm``: N cm along the camera's own x axis (MuJoCo camera frame: x is the
  rendered image's right, before the 180 degree rotation the policy's image path applies);
* ``lift+Ncm`` / ``lift-Ncm``: N cm up / down (world z);
* ``yaw+Ndeg`` / ``yaw-Ndeg``: turned N degrees about the world's vertical axis through the camera
  (positive: counter-clockwise seen from above);
* ``pitch+Ndeg`` / ``pitch-Ndeg``: tilted N degrees about the camera's x axis (positive: up);
* ``jitterK``: a seeded random pose, ``numpy.random.default_rng(K)``: each of x, y, z uniform in
  ±2 cm (world frame), then yaw and pitch uniform in ±5 degrees (same definitions as above).

N may have decimals (``shift+0.5cm``). Combined names are not supported: one change at a time says
which one a policy is sensitive to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

#: The camera the variations move (the one OpenVLA reads).
CAMERA = "agentview"
DEFAULT_VARIATION = "none"
JITTER_SHIFT_M = 0.02
JITTER_DEG = 5.0

_SIGNED = r"([+-])(\d+(?:\.\d+)?)"
_PATTERNS = (
    (re.compile(rf"^(shift|lift){_SIGNED}cm$"), 0.01),
    (re.compile(rf"^(yaw|pitch){_SIGNED}deg$"), 1.0),
)
_JITTER = re.compile(r"^jitter(\d+)$")


class UnknownCameraVariation(ValueError):
    """A camera variation name that does not parse; the message lists the forms."""


@dataclass(frozen=True)
class CameraPose:
    """A change of the camera: ``shift_m`` along the camera's x axis, ``offset_m`` in the world
    frame (x, y, z, metres), then ``yaw_deg`` about world z and ``pitch_deg`` about the camera's x."""

    shift_m: float = 0.0
    offset_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0


@cache
def parse_variation(name: str) -> CameraPose:
    """The :class:`CameraPose` a variation name stands for (see the module docstring)."""
    if name == DEFAULT_VARIATION:
        return CameraPose()
    for pattern, unit in _PATTERNS:
        match = pattern.match(name)
        if match:
            kind, sign, size = match.groups()
            value = float(size) * unit * (1.0 if sign == "+" else -1.0)
            return {
                "shift": CameraPose(shift_m=value),
                "lift": CameraPose(offset_m=(0.0, 0.0, value)),
                "yaw": CameraPose(yaw_deg=value),
                "pitch": CameraPose(pitch_deg=value),
            }[kind]
    match = _JITTER.match(name)
    if match:
        rng = np.random.default_rng(int(match.group(1)))
        offset = rng.uniform(-JITTER_SHIFT_M, JITTER_SHIFT_M, size=3)
        yaw, pitch = rng.uniform(-JITTER_DEG, JITTER_DEG, size=2)
        return CameraPose(offset_m=(float(offset[0]), float(offset[1]), float(offset[2])), yaw_deg=float(yaw), pitch_deg=float(pitch))
    raise UnknownCameraVariation(
        f"unknown camera variation {name!r}; use none, shift+Ncm, shift-Ncm, lift+Ncm, lift-Ncm, yaw+Ndeg, yaw-Ndeg, "
        "pitch+Ndeg, pitch-Ndeg or jitterK (e.g. shift-2cm, yaw+5deg, jitter3)"
    )


def camera_pose(env: Any, camera: str = CAMERA) -> tuple[np.ndarray, np.ndarray]:
    """The camera's model position (metres) and quaternion (w, x, y, z), copies."""
    model = env.sim.model
    index = model.camera_name2id(camera)
    return np.array(model.cam_pos[index]), np.array(model.cam_quat[index])


def apply_variation(env: Any, name: str, camera: str = CAMERA) -> None:
    """Move ``camera`` of ``env``'s MuJoCo model by variation ``name`` (call after ``env.reset()``,
    which rebuilds the model; the change lasts until the next reset). ``none`` touches nothing."""
    from scipy.spatial.transform import Rotation

    pose = parse_variation(name)
    if pose == CameraPose():
        return
    model = env.sim.model
    index = model.camera_name2id(camera)
    rotation = Rotation.from_quat(model.cam_quat[index], scalar_first=True)
    position = model.cam_pos[index] + pose.shift_m * rotation.apply([1.0, 0.0, 0.0]) + np.asarray(pose.offset_m)
    turned = Rotation.from_euler("z", pose.yaw_deg, degrees=True) * rotation * Rotation.from_euler("x", pose.pitch_deg, degrees=True)
    model.cam_pos[index] = position
    model.cam_quat[index] = turned.as_quat(scalar_first=True)
