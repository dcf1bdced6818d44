"""One LIBERO episode under the OpenVLA evaluation protocol (``run_libero_eval.py``).

:func:`run_episode` does, for an :class:`EpisodeSpec`:

1. ``env.seed(env_seed)``; ``env.reset()``; the camera variation
   (:func:`vla_spec.sim.cameras.apply_variation`, ``none`` by default);
   ``obs = env.set_init_state(init_states[init_index])`` (:func:`start_episode`);
2. ``NUM_STEPS_WAIT`` (10) steps of ``WAIT_ACTION`` ``[0, 0, 0, 0, 0, 0, -1]``, ``done`` not checked;
3. ``policy.reset(task)``, then up to ``MAX_STEPS[suite]`` policy steps
   ``env.step(policy.act(obs).action)``; the episode succeeds as soon as ``done`` is True.

Any exception (policy or simulator) ends the episode as a failure with ``error`` set; it is never
raised. Environments are built lazily and cached per process (:func:`vla_spec.sim.env.get_env`),
keyed by ``(suite, task_id, cameras)``; only the agentview camera is rendered, and only when the
policy needs it or a video is asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_spec.sim.cameras import DEFAULT_VARIATION, apply_variation
from vla_spec.sim.env import POLICY_CAMERAS, drop_env, get_env
from vla_spec.sim.interface import (
    Observation,
    Policy,
    PolicyStep,
    TaskContext,
    make_observation,
    policy_image,
)
from vla_spec.sim.suites import ENV_SEED, NUM_STEPS_WAIT, WAIT_ACTION, init_states, task_info
from vla_spec.tokens import ACTION_DIM

__all__ = [
    "EpisodeResult",
    "EpisodeSpec",
    "Observation",
    "Policy",
    "PolicyStep",
    "TaskContext",
    "run_episode",
    "start_episode",
]

VIDEO_FPS = 20  # the controller frequency: one frame per env.step


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run (picklable)."""

    suite: str  # "libero_spatial" | "libero_object" | "libero_goal" | "libero_10" | "libero_90"
    task_id: int
    init_index: int  # index into the task's 50 initial states
    env_seed: int = ENV_SEED  # env.seed(...) before reset, as the OpenVLA evaluation does
    camera: str = DEFAULT_VARIATION  # agentview camera variation (vla_spec.sim.cameras)


@dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one episode; JSON-serializable with ``dataclasses.asdict``."""

    suite: str
    task_id: int
    instruction: str
    init_index: int
    env_seed: int
    steps: int  # policy steps taken (wait steps not counted)
    success: bool
    wall_time_s: float
    error: str | None  # "ExceptionType: message" when the episode raised (counts as a failure)
    trace: list[dict] | None  # per policy step {"tokens": [7 ints] or None, "action": [7 floats]}
    camera: str = DEFAULT_VARIATION  # agentview camera variation (logs written before it: "none")


def start_episode(env: Any, init_state: np.ndarray, *, env_seed: int = ENV_SEED, camera: str = DEFAULT_VARIATION) -> dict[str, Any]:
    """Seed, reset, move the camera (variation ``camera``), set the initial state and run the wait
    steps; return the last observation."""
    env.seed(env_seed)
    env.reset()
    apply_variation(env, camera)
    obs = env.set_init_state(init_state)
    for _ in range(NUM_STEPS_WAIT):
        obs, _reward, _done, _info = env.step(list(WAIT_ACTION))
    return obs


def _checked_action(step: PolicyStep) -> np.ndarray:
    action = np.asarray(step.action, dtype=np.float64)
    if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
        raise ValueError(f"policy action must be {ACTION_DIM} finite floats, got {step.action!r}")
    return action


def run_episode(
    policy: Policy,
    spec: EpisodeSpec,
    *,
    record_trace: bool = False,
    video_path: Path | None = None,
    on_step: Callable[[int], None] | None = None,
) -> EpisodeResult:
    """Run one episode of ``spec`` with ``policy`` (see the module docstring); never raises
    ``Exception``s. ``on_step(n)`` is called after each policy step with the steps taken so far."""
    started = time.perf_counter()
    cameras = POLICY_CAMERAS if bool(policy.needs_camera) or video_path is not None else ()
    instruction = ""
    steps = 0
    success = False
    error: str | None = None
    trace: list[dict] | None = [] if record_trace else None
    writer = None
    try:
        info = task_info(spec.suite, spec.task_id)
        instruction = info.instruction
        states = init_states(spec.suite, spec.task_id)
        if not 0 <= spec.init_index < len(states):
            raise IndexError(f"{spec.suite} task {spec.task_id} has init states 0..{len(states) - 1}, not {spec.init_index}")
        env = get_env(spec.suite, spec.task_id, cameras=cameras)
        obs = start_episode(env, states[spec.init_index], env_seed=spec.env_seed, camera=spec.camera)
        policy.reset(
            TaskContext(
                suite=spec.suite,
                task_id=spec.task_id,
                instruction=instruction,
                init_index=spec.init_index,
                max_steps=info.max_steps,
                env=env,
            )
        )
        if video_path is not None:
            import imageio

            Path(video_path).parent.mkdir(parents=True, exist_ok=True)
            writer = imageio.get_writer(str(video_path), fps=VIDEO_FPS)
            writer.append_data(policy_image(obs))
        for step_index in range(info.max_steps):
            out = policy.act(make_observation(obs, step_index))
            action = _checked_action(out)
            obs, _reward, done, _info = env.step(action.tolist())
            steps += 1
            if on_step is not None:
                on_step(steps)
            if trace is not None:
                trace.append({"tokens": None if out.tokens is None else [int(t) for t in out.tokens], "action": action.tolist()})
            if writer is not None:
                writer.append_data(policy_image(obs))
            if done:
                success = True
                break
    except Exception as exc:  # noqa: BLE001 - the protocol counts any exception as a failure
        error = f"{type(exc).__name__}: {exc}"
        success = False
        drop_env(spec.suite, spec.task_id, cameras=cameras)  # its state is unknown now
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
    return EpisodeResult(
        suite=spec.suite,
        task_id=spec.task_id,
        instruction=instruction,
        init_index=spec.init_index,
        env_seed=spec.env_seed,
        steps=steps,
        success=success,
        wall_time_s=time.perf_counter() - started,
        error=error,
        trace=trace,
        camera=spec.camera,
    )
