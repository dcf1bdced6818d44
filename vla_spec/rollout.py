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
from vla_spec.sim.env import POLICY_CAMERAS, drop_env, frames_unrendered, get_env
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
    "Episode",
    "Observation",
    "Policy",
    "PolicyStep",
    "TaskContext",
    "error_text",
    "run_episode",
    "start_episode",
    "video_path_for",
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


def video_path_for(video_dir: Path | None, spec: EpisodeSpec) -> Path | None:
    """``<video_dir>/<suite>_task<NN>_init<NN>_seed<S>.mp4`` (``..._seed<S>_<camera>.mp4`` for a camera
    variation); None when no ``video_dir`` is given (no video is written)."""
    if video_dir is None:
        return None
    camera = "" if spec.camera == "none" else f"_{spec.camera}"
    return Path(video_dir) / f"{spec.suite}_task{spec.task_id:02d}_init{spec.init_index:02d}_seed{spec.env_seed}{camera}.mp4"


def start_episode(
    env: Any, init_state: np.ndarray | None, *, env_seed: int = ENV_SEED, camera: str = DEFAULT_VARIATION
) -> dict[str, Any]:
    """Seed, reset, move the camera (variation ``camera``), set the initial state and run the wait
    steps; return the last observation. ``init_state`` None keeps the scene the seeded reset drew
    (the demonstrations' fresh scenes). Only the last wait step renders its frame
    (:func:`~vla_spec.sim.env.frames_unrendered`): the earlier ones are never read."""
    env.seed(env_seed)
    env.reset()
    apply_variation(env, camera)
    with frames_unrendered(env):
        if init_state is not None:
            env.set_init_state(init_state)
        for _ in range(NUM_STEPS_WAIT - 1):
            env.step(list(WAIT_ACTION))
    obs, _reward, _done, _info = env.step(list(WAIT_ACTION))
    return obs


def _checked_action(step: PolicyStep) -> np.ndarray:
    action = np.asarray(step.action, dtype=np.float64)
    if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
        raise ValueError(f"policy action must be {ACTION_DIM} finite floats, got {step.action!r}")
    return action


class Episode:
    """One episode, step by step: the simulator side of :func:`run_episode`. A runner that gets
    actions from elsewhere (a batched policy on another process) drives it the same way:
    ``task = start()``; while not ``over``: ``advance(step)`` with the policy's answer to
    ``observation``; ``fail(error)`` when anything raised; ``close()``; ``result()``.
    Builds (or reuses) the process's cached environment with the policy camera when
    ``needs_camera`` or a video is asked."""

    def __init__(self, spec: EpisodeSpec, *, needs_camera: bool, record_trace: bool = False, video_path: Path | None = None) -> None:
        self.spec = spec
        self.cameras = POLICY_CAMERAS if needs_camera or video_path is not None else ()
        self.video_path = video_path
        self.instruction = ""
        self.steps = 0  # policy steps taken (wait steps not counted)
        self.success = False
        self.error: str | None = None
        self.trace: list[dict] | None = [] if record_trace else None
        self._started = time.perf_counter()
        self._max_steps = 0
        self._env: Any = None
        self._obs: dict[str, Any] = {}
        self._writer: Any = None

    def start(self) -> TaskContext:
        """Seed, reset, set the initial state, run the wait steps; the policy's ``reset`` argument."""
        spec = self.spec
        info = task_info(spec.suite, spec.task_id)
        self.instruction = info.instruction
        self._max_steps = info.max_steps
        states = init_states(spec.suite, spec.task_id)
        if not 0 <= spec.init_index < len(states):
            raise IndexError(f"{spec.suite} task {spec.task_id} has init states 0..{len(states) - 1}, not {spec.init_index}")
        self._env = get_env(spec.suite, spec.task_id, cameras=self.cameras)
        self._obs = start_episode(self._env, states[spec.init_index], env_seed=spec.env_seed, camera=spec.camera)
        if self.video_path is not None:
            import imageio

            Path(self.video_path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(str(self.video_path), fps=VIDEO_FPS)
            self._writer.append_data(policy_image(self._obs))
        return TaskContext(
            suite=spec.suite, task_id=spec.task_id, instruction=self.instruction, init_index=spec.init_index,
            max_steps=info.max_steps, env=self._env,
        )

    @property
    def observation(self) -> Observation:
        """What the policy sees now (step ``steps``)."""
        return make_observation(self._obs, self.steps)

    @property
    def over(self) -> bool:
        """Solved, or the step budget is spent (or it failed)."""
        return self.success or self.error is not None or self.steps >= self._max_steps

    def advance(self, out: PolicyStep) -> None:
        """Apply the policy's answer to :attr:`observation` with ``env.step``."""
        action = _checked_action(out)
        self._obs, _reward, done, _info = self._env.step(action.tolist())
        self.steps += 1
        if self.trace is not None:
            self.trace.append({"tokens": None if out.tokens is None else [int(t) for t in out.tokens], "action": action.tolist()})
        if self._writer is not None:
            self._writer.append_data(policy_image(self._obs))
        self.success = bool(done)

    def fail(self, error: str) -> None:
        """End as a failure with ``error`` (``"ExceptionType: message"``); the environment, its state
        now unknown, is dropped from the cache."""
        self.error = error
        self.success = False
        drop_env(self.spec.suite, self.spec.task_id, cameras=self.cameras)

    def close(self) -> None:
        """Close the video writer, if any."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
            self._writer = None

    def result(self) -> EpisodeResult:
        spec = self.spec
        return EpisodeResult(
            suite=spec.suite, task_id=spec.task_id, instruction=self.instruction, init_index=spec.init_index,
            env_seed=spec.env_seed, steps=self.steps, success=self.success,
            wall_time_s=time.perf_counter() - self._started, error=self.error, trace=self.trace, camera=spec.camera,
        )


def error_text(error: BaseException) -> str:
    """How an episode's error is logged: ``"ExceptionType: message"``."""
    return f"{type(error).__name__}: {error}"


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
    episode = Episode(spec, needs_camera=bool(policy.needs_camera), record_trace=record_trace, video_path=video_path)
    try:
        policy.reset(episode.start())
        while not episode.over:
            episode.advance(policy.act(episode.observation))
            if on_step is not None:
                on_step(episode.steps)
    except Exception as exc:  # noqa: BLE001 - the protocol counts any exception as a failure
        episode.fail(error_text(exc))
    finally:
        episode.close()
    return episode.result()
