"""Test support: real LIBERO frames and TensorFlow's LIBERO image path on them (issue 12).

``golden/reference_images/`` holds, per frame ``{suite}-task{t}-init{i}``:

* ``raw/NAME.png``: ``obs["agentview_image"]`` as rendered (256 x 256, upside down) after
  :func:`vla_spec.rollout.start_episode` on ``init_states[i]`` of task ``t`` (mujoco 3.3.2);
* ``tf_no_crop/NAME.png``: TensorFlow's ``get_libero_image`` + ``resize_image`` (rotate 180,
  ``encode_jpeg`` q95, ``decode_image``, ``resize(lanczos3, antialias=True)``, round, clip, uint8);
* ``tf_center_crop/NAME.png``: that image through ``get_vla_action``'s centre crop
  (``convert_image_dtype``, ``crop_and_resize`` of the sqrt(0.9) box, back to uint8).

``manifest.json`` records the versions that made them. Recorded by
``scripts/record_reference_images.py`` (``render`` in the sim stack, ``tensorflow`` in
``tox -e reference-images``).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np

from vla_spec import images

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "golden" / "reference_images"
#: Three initial states of task 0 in each evaluation suite: 12 frames.
FRAMES: tuple[tuple[str, int, int], ...] = tuple(
    (suite, 0, init) for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10") for init in range(3)
)
STAGES = ("raw", "tf_no_crop", "tf_center_crop")
#: The issue's parity bound, which the negative controls miss (or only just meet, for a matrix product's
#: order): at most this fraction of uint8 values off by one grey level, none off by more.
MAX_OFF_BY_ONE = 1e-4


def frame_name(suite: str, task_id: int, init: int) -> str:
    return f"{suite}-task{task_id}-init{init}"


@functools.cache
def first_observation(suite: str, task_id: int, init: int, camera: str) -> dict[str, Any]:
    """The observation at the first policy step of the episode (LIBERO's two cameras; agentview moved
    by the camera variation ``camera``), made once per process: the sim tier's drift goldens
    (``tests/test_sim_drift.py``) look at the same frames as this module's. Treat it as read-only;
    pass the arguments by position (the cache's key is the call as written)."""
    from vla_spec.rollout import start_episode
    from vla_spec.sim import suites
    from vla_spec.sim.env import LIBERO_CAMERAS, get_env

    env = get_env(suite, task_id, cameras=LIBERO_CAMERAS)
    return start_episode(env, suites.init_states(suite, task_id)[init], camera=camera)


def render_frame(suite: str, task_id: int, init: int) -> np.ndarray:
    """The raw agentview frame (H x W x 3 uint8, upside down) at the first policy step of the episode."""
    return np.ascontiguousarray(first_observation(suite, task_id, init, "none")["agentview_image"], dtype=np.uint8).copy()


def png_path(stage: str, name: str) -> Path:
    return REFERENCE_DIR / stage / f"{name}.png"


def read_png(stage: str, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(png_path(stage, name)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def write_png(stage: str, name: str, image: np.ndarray) -> None:
    from PIL import Image

    path = png_path(stage, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path, optimize=True)


def off_by(ours: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """(fraction of values that differ, largest absolute difference) of two uint8 images."""
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return float(np.count_nonzero(diff)) / diff.size, int(diff.max())


def within_parity(ours: np.ndarray, reference: np.ndarray) -> bool:
    """At most :data:`MAX_OFF_BY_ONE` of the values off by one grey level, none off by more."""
    fraction, largest = off_by(ours, reference)
    return largest <= 1 and fraction <= MAX_OFF_BY_ONE


def pil_accurate_roundtrip(upright: np.ndarray) -> np.ndarray:
    """The JPEG step before issue 12: PIL's encode and PIL's decode (the accurate IDCT)."""
    from PIL import Image

    with Image.open(io.BytesIO(images.jpeg_bytes(upright))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def pil_lanczos(image: np.ndarray) -> np.ndarray:
    """The resize before issue 12: PIL's LANCZOS to 224 x 224 (another kernel than TF's)."""
    from PIL import Image

    size = (images.MODEL_IMAGE_SIZE, images.MODEL_IMAGE_SIZE)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
