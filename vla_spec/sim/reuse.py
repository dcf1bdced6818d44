"""Hard resets without compiling again: robosuite's compiled model and render context, kept per XML.

LIBERO's environments reset hard (robosuite's ``hard_reset=True``): every ``env.reset()`` frees the
simulation, compiles the task's MJCF again and builds a new render context, which uploads every mesh
and texture to the renderer (Mesa's llvmpipe here). Measured on libero_object task 3 with the
agentview camera (``start_episode``: seed, reset, initial state, 10 wait steps): 1.7 CPU-s per
episode start, 0.67 with this module, the same frames and states.

:func:`keep_compiled_models` patches robosuite (once per process) so that a reset whose XML is the
one compiled last:

* gets a copy of the compiled ``MjModel`` (each simulation its own copy, so a change to a model, such
  as a camera variation of :mod:`vla_spec.sim.cameras`, never carries over to the next episode);
* takes over the render context of the simulation that robosuite freed before it (its GL context and
  ``MjrContext``, which hold the meshes and textures of an identical model), with a new scene,
  camera and options, exactly as robosuite builds them for a new context.

A context is taken over only once its simulation was freed (``MjSim.free``, which robosuite's hard
reset and ``env.close`` call): two live environments of the same XML never share one. One XML is
kept per process (an environment of another task compiles and builds as before); the context of
the XML it replaces is freed with its own GL context current (:func:`_forget`).
"""

from __future__ import annotations

import atexit
import copy
import functools
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any


@dataclass
class _Kept:
    """The compiled model of one XML, and the render context that its simulations pass on."""

    digest: str
    model: Any  # mujoco.MjModel, never handed out: simulations get copies
    context: Any = None  # robosuite MjRenderContextOffscreen
    owner: Any = None  # weakref to the live MjSim using ``context``, None once it was freed

    def in_use(self) -> bool:
        return self.owner is not None and self.owner() is not None


_kept: _Kept | None = None


def _forget() -> None:
    """Drop the kept model and context. A context no simulation uses is freed now, with its own GL
    context current: an ``MjrContext`` frees its textures and buffers by number in whatever GL
    context is current, so freed later (at a garbage collection, after another context was made
    current) it would delete that context's objects, and that environment would render wrong frames."""
    global _kept
    if _kept is not None and _kept.context is not None and not _kept.in_use():
        _kept.context.gl_ctx.make_current()
    _kept = None  # a context in use stays with its simulation, which robosuite frees as before


def _compile(sim_class: type, xml: str) -> Any:
    """``MjSim.from_xml_string``: a simulation of a copy of the model compiled from ``xml``."""
    import mujoco

    global _kept
    digest = hashlib.sha256(xml.encode()).hexdigest()
    if _kept is None or _kept.digest != digest:
        _forget()
        _kept = _Kept(digest, mujoco.MjModel.from_xml_string(xml))
    sim = sim_class(copy.copy(_kept.model))
    sim._vla_spec_digest = digest  # a name, not the _Kept: no reference cycle keeps a context alive
    return sim


@functools.cache
def _forget_at_exit() -> None:
    """Free the kept context at exit while EGL still can: registered after robosuite's
    ``eglTerminate`` (at its first context), so it runs before it (atexit runs the last first)."""
    atexit.register(_forget)


def _kept_for(sim: Any) -> _Kept | None:
    digest = getattr(sim, "_vla_spec_digest", None)
    return _kept if _kept is not None and digest == _kept.digest else None


def _render_context(build: Any, sim: Any, device_id: int = -1) -> Any:
    """robosuite's ``MjRenderContextOffscreen(sim, device_id)``, taking over the kept context when
    ``sim``'s model is the kept one and the context's last simulation was freed."""
    import mujoco

    kept = _kept_for(sim)
    if kept is None or (kept.context is not None and kept.in_use()):
        return build(sim, device_id=device_id)
    if kept.context is None:
        kept.context = build(sim, device_id=device_id)
        _forget_at_exit()
    else:  # as MjRenderContext.__init__, less the GL context and the MjrContext
        context = kept.context
        context.gl_ctx.make_current()
        sim.forward()
        sim.add_render_context(context)
        context.sim, context.model, context.data = sim, sim.model, sim.data
        context.scn = mujoco.MjvScene(sim.model._model, maxgeom=1000)
        context.cam = mujoco.MjvCamera()
        context.cam.fixedcamid = 0
        context.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        context.vopt = mujoco.MjvOption()
        context.pert = mujoco.MjvPerturb()
        context.pert.active = 0
        context.pert.select = 0
        context.pert.skinselect = -1
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, context.con)
    kept.owner = weakref.ref(sim)
    return kept.context


def _free(original: Any, sim: Any) -> None:
    """``MjSim.free``: the kept context, if ``sim`` used it, passes to the next simulation."""
    kept = _kept_for(sim)
    if kept is not None and kept.owner is not None and kept.owner() is sim:
        kept.owner = None
    original(sim)


def keep_compiled_models() -> None:
    """Patch robosuite (idempotent) as the module docstring says; call after LIBERO is imported."""
    import robosuite.environments.base as base
    from robosuite.utils import binding_utils

    sim_class = binding_utils.MjSim
    if getattr(sim_class, "_vla_spec_keeps_models", False):
        return
    build, free = binding_utils.MjRenderContextOffscreen, sim_class.free
    sim_class.from_xml_string = classmethod(_compile)
    sim_class.free = lambda sim: _free(free, sim)
    base.MjRenderContextOffscreen = lambda sim, device_id=-1: _render_context(build, sim, device_id)
    sim_class._vla_spec_keeps_models = True


def forget_compiled_models() -> None:
    """Drop the kept model and context (see :func:`_forget`)."""
    _forget()
