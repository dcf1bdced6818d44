"""Compact, comparable fingerprints of a simulator state, for goldens and determinism checks.

* :func:`object_poses`: every ``<object>_pos`` (metres, world frame) and ``<object>_quat`` (xyzw)
  of a LIBERO observation, rounded (default 4 decimals: 0.1 mm).
* :func:`image_mean`: mean of each RGB channel (0-255 grey levels), rounded (default 1 decimal).
* :func:`average_hash`: a coarse perceptual hash (aHash): the grey image averaged over an
  ``size`` x ``size`` grid, one bit per cell (above the grid mean), as a hex string. Robust to
  noise of a few grey levels, sensitive to a brightness or layout change in part of the image.
* :func:`sha256_of`: an exact digest of arrays (bit-identity checks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

POSE_SUFFIXES = ("_pos", "_quat")
#: Observation keys ending in ``_pos``/``_quat`` that are not object poses.
_NOT_OBJECTS = ("robot0_", "_to_robot0_")


def _rounded(values: Any, decimals: int) -> list[float]:
    # + 0.0 turns -0.0 into 0.0 so that the golden does not flip on the sign of zero
    return [float(v) + 0.0 for v in np.round(np.asarray(values, dtype=np.float64), decimals)]


def object_poses(obs: Mapping[str, Any], decimals: int = 4) -> dict[str, list[float]]:
    """``{"<object>_pos": [x, y, z], "<object>_quat": [x, y, z, w], ...}`` sorted by key."""
    poses = {}
    for key in sorted(obs):
        if key.endswith(POSE_SUFFIXES) and not any(part in key for part in _NOT_OBJECTS):
            poses[key] = _rounded(obs[key], decimals)
    return poses


def image_mean(image: np.ndarray, decimals: int = 1) -> list[float]:
    """Per-channel mean of an (H, W, 3) image in grey levels."""
    return _rounded(np.asarray(image, dtype=np.float64).reshape(-1, image.shape[-1]).mean(axis=0), decimals)


def average_hash(image: np.ndarray, size: int = 8) -> str:
    """aHash of an (H, W, 3) image with H and W divisible by ``size``: ``size**2`` bits as hex."""
    grey = np.asarray(image, dtype=np.float64).mean(axis=-1)
    height, width = grey.shape
    if height % size or width % size:
        raise ValueError(f"image {grey.shape} is not divisible into a {size}x{size} grid")
    cells = grey.reshape(size, height // size, size, width // size).mean(axis=(1, 3))
    bits = (cells > cells.mean()).ravel()
    value = int("".join("1" if bit else "0" for bit in bits), 2)
    return f"{value:0{size * size // 4}x}"


def sha256_of(*arrays: Any) -> str:
    """SHA-256 over the raw bytes, dtypes and shapes of ``arrays`` (bit identity)."""
    digest = hashlib.sha256()
    for array in arrays:
        values = np.ascontiguousarray(array)
        digest.update(f"{values.dtype.str}{values.shape}".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()
