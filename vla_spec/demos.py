"""Scripted-expert demonstrations recorded as a training set, in LIBERO's HDF5 demo layout.

One episode per ``(suite, task_id, seed)``: ``env.seed(seed)``; ``env.reset()`` (LIBERO places the
objects at random from the task's init regions, the distribution the 50 official init states were
drawn from, so none of the official states is seen in training); the protocol's 10 wait steps
(:func:`vla_spec.rollout.start_episode` without an init state);
then :class:`vla_spec.sim.expert.PickPlaceExpert` until ``done`` or the suite's step budget.
Only successful episodes are kept.

Per policy step the dataset holds what the model will see and what it must say:

* ``obs/agentview_rgb``: (T, 224, 224, 3) uint8, the agentview image through the evaluation's
  LIBERO image path *before* the crop: rotated 180 degrees, JPEG 95 round trip, Lanczos 224
  (:func:`vla_spec.images.model_image` with ``center_crop_enabled=False``). Training applies the
  0.9-area random crop; evaluation the 0.9-area centre crop. (LIBERO's own files store 128 px
  upside-down renders under this name; ours are upright and 224 px.)
* ``actions``: (T, 7) float64, the executed expert command in OpenVLA's *training* convention
  (x, y, z, roll, pitch, yaw in controller units; gripper 1 = open, 0 = close:
  :func:`vla_spec.gripper.env_to_training`).
* ``states`` (T, state_dim) MuJoCo states, ``robot_states`` (T, 9) = eef pos (3), eef quat xyzw (4),
  gripper qpos (2); ``rewards``/``dones`` (T,).

With ``noise_std > 0`` the environment executes the expert command plus Gaussian noise on the six
arm dims (controller units, clipped to [-1, 1]) while ``actions`` keeps the clean command: the
expert's corrections from perturbed states are then in the data (DART, Laskey et al. 2017).

Layout: ``<out>/<suite>/task<TT>_seed<SSSSS>.hdf5``, one demo per file (``data/demo_0``), with
``data`` attributes ``problem_info`` (JSON with ``language_instruction``), ``env_args`` (JSON),
``bddl_file_name``, and ``demo_0`` attributes ``num_samples``, ``seed``, ``noise_std``.
An episode is recorded into an HDF5 file in memory (:func:`record_episode`, in this process or in
a Ray environment actor, :class:`vla_spec.actors.EnvWorker`), and this process (the driver) alone
writes files: each to a temporary name, then renamed, so an interrupted run leaves only whole
files; a failed episode leaves ``<name>.failed.json``. Rerunning skips both: recording resumes.
"""

from __future__ import annotations

import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_KEY = "obs/agentview_rgb"
#: A step is a no-op when the translation ``||action[:3]|| < NOOP_THRESHOLD`` (controller units) and
#: the gripper equals the previous step's. OpenVLA's ``*_no_noops`` LIBERO datasets drop steps with
#: ``||action[:6]|| < 1e-4`` and an unchanged gripper (raw teleoperation). Two deviations, for the
#: expert's data: its commands pass through the 256-bin token path, where "hold still" decodes to
#: the bin centres nearest zero (|a_i| <= 0.009 seen; moving commands are >= 0.1), so the threshold
#: is 0.02 (1 mm per step); and it keeps correcting the orientation while it holds still (more so
#: under noise), so rotation is not counted.
NOOP_THRESHOLD = 0.02


def noop_mask(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """(T,) bool: which steps of one episode's (T, 7) actions are no-ops (the first step never is).

    Left in, the expert's hold-still steps (while the gripper closes or opens) teach a policy that
    a closed gripper means "do not move": closed in mid-air, it freezes for the rest of the episode.
    """
    still = np.linalg.norm(actions[:, :3], axis=1) < threshold
    same_gripper = np.r_[False, actions[1:, 6] == actions[:-1, 6]]
    return still & same_gripper


@dataclass(frozen=True)
class DemoSpec:
    """One demonstration to record (picklable)."""

    suite: str
    task_id: int
    seed: int  # env.seed(seed) before env.reset(): the random scene
    noise_std: float = 0.0  # Gaussian noise on the executed arm command (controller units)

    def stem(self) -> str:
        return f"task{self.task_id:02d}_seed{self.seed:05d}"


@dataclass(frozen=True)
class DemoOutcome:
    """What recording one spec gave: the file (None when the expert failed) and the step count."""

    spec: DemoSpec
    path: Path | None
    steps: int
    skipped: bool  # already on disk from an earlier run


def demo_path(out: Path, spec: DemoSpec) -> Path:
    return Path(out) / spec.suite / f"{spec.stem()}.hdf5"


def failed_path(out: Path, spec: DemoSpec) -> Path:
    return Path(out) / spec.suite / f"{spec.stem()}.failed.json"


@dataclass(frozen=True)
class DemoRecording:
    """One recorded episode, as it travels to the driver: the whole demo file (None when the
    expert failed) and the policy steps taken."""

    spec: DemoSpec
    steps: int
    hdf5: bytes | None


def record_episode(spec: DemoSpec) -> DemoRecording:
    """Run one expert episode for ``spec`` on this process's cached environment (see the module
    docstring) and, when it succeeds, build its demo file in memory."""
    import h5py

    from vla_spec.gripper import env_to_training
    from vla_spec.images import model_image
    from vla_spec.rollout import start_episode
    from vla_spec.sim.env import POLICY_CAMERAS, get_env
    from vla_spec.sim.expert import PickPlaceExpert
    from vla_spec.sim.interface import TaskContext, make_observation
    from vla_spec.sim.suites import task_info

    info = task_info(spec.suite, spec.task_id)
    env = get_env(spec.suite, spec.task_id, cameras=POLICY_CAMERAS)
    obs = start_episode(env, None, env_seed=spec.seed)
    expert = PickPlaceExpert()
    context = TaskContext(  # init_index -1: a fresh seeded scene, not one of the official init states
        suite=spec.suite, task_id=spec.task_id, instruction=info.instruction, init_index=-1, max_steps=info.max_steps, env=env
    )
    expert.reset(context)
    noise = np.random.default_rng([spec.seed, spec.task_id])
    images, actions, states, robot_states = [], [], [], []
    success = False
    for step in range(info.max_steps):
        observation = make_observation(obs, step)
        images.append(model_image(observation.image, center_crop_enabled=False))
        states.append(np.asarray(env.get_sim_state(), dtype=np.float64))
        robot_states.append(np.concatenate([obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"]]))
        command = np.asarray(expert.act(observation).action, dtype=np.float64)
        actions.append(env_to_training(command))
        executed = command.copy()
        if spec.noise_std > 0:
            executed[:6] = np.clip(executed[:6] + noise.normal(0.0, spec.noise_std, size=6), -1.0, 1.0)
        obs, _reward, done, _info = env.step(executed.tolist())
        if done:
            success = True
            break
    if not success:
        return DemoRecording(spec, len(actions), None)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        data = handle.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": info.name, "language_instruction": info.instruction, "suite": spec.suite, "task_id": spec.task_id}
        )
        data.attrs["env_args"] = json.dumps({"env_name": "OffScreenRenderEnv", "camera_names": list(POLICY_CAMERAS)})
        data.attrs["bddl_file_name"] = info.bddl_file
        demo = data.create_group("demo_0")
        demo.attrs.update({"num_samples": len(actions), "seed": spec.seed, "noise_std": spec.noise_std})
        demo.create_dataset(IMAGE_KEY, data=np.stack(images), compression="gzip", compression_opts=4, chunks=(1, 224, 224, 3))
        demo.create_dataset("actions", data=np.stack(actions))
        demo.create_dataset("states", data=np.stack(states), compression="gzip")
        demo.create_dataset("robot_states", data=np.stack(robot_states))
        rewards = np.zeros(len(actions))
        rewards[-1] = 1.0
        demo.create_dataset("rewards", data=rewards)
        demo.create_dataset("dones", data=rewards.astype(np.uint8))
    return DemoRecording(spec, len(actions), buffer.getvalue())


def recorded_before(spec: DemoSpec, out: Path) -> DemoOutcome | None:
    """The outcome of ``spec`` from an earlier run (its demo file or failure record under ``out``), or None."""
    target, failed = demo_path(out, spec), failed_path(out, spec)
    if target.exists():
        return DemoOutcome(spec, target, _num_samples(target), skipped=True)
    if failed.exists():
        return DemoOutcome(spec, None, 0, skipped=True)
    return None


def save(recording: DemoRecording, out: Path) -> DemoOutcome:
    """Write ``recording`` under ``out``: its demo file (via a temporary name) or its failure record."""
    spec = recording.spec
    target = demo_path(out, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    if recording.hdf5 is None:
        failed = failed_path(out, spec)
        failed.write_text(json.dumps({"spec": spec.__dict__, "steps": recording.steps}) + "\n", encoding="utf-8")
        return DemoOutcome(spec, None, recording.steps, skipped=False)
    partial = target.with_suffix(".hdf5.partial")
    partial.write_bytes(recording.hdf5)
    os.replace(partial, target)
    return DemoOutcome(spec, target, recording.steps, skipped=False)


def _num_samples(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as handle:
        return int(handle["data/demo_0"].attrs["num_samples"])


def _record_on_ray(specs: Sequence[DemoSpec], workers: int, address: str | None, keep: Callable[[DemoRecording], None]) -> None:
    """Record ``specs`` on ``workers`` Ray environment actors (:class:`vla_spec.actors.EnvWorker`),
    handed out in order as actors come free; ``keep`` each recording as it arrives. An actor that
    dies is restarted by Ray and records its spec again."""
    from vla_spec.actors import ENV_WORKER_OPTIONS, POLL_S, EnvWorker, check_resources, env_worker_lost, ray_session

    with ray_session(address, num_cpus=workers) as ray:
        from ray.exceptions import ActorUnavailableError, RayActorError

        check_resources(ray.cluster_resources(), workers)
        envs = [ray.remote(EnvWorker).options(**ENV_WORKER_OPTIONS).remote() for _ in range(workers)]
        waiting, calls = deque(specs), {}  # in flight: call -> (worker, spec)

        def hand(worker: int, spec: DemoSpec) -> None:
            calls[envs[worker].call.options(max_task_retries=-1).remote(record_episode, spec)] = (worker, spec)  # retried after a restart

        try:
            for worker in range(workers):
                hand(worker, waiting.popleft())
            while calls:
                for ref in ray.wait(list(calls), num_returns=1, timeout=POLL_S)[0]:  # the timeout lets Ctrl-C through
                    worker, spec = calls.pop(ref)
                    try:
                        keep(ray.get(ref))
                    except ActorUnavailableError:
                        hand(worker, spec)
                        continue
                    except RayActorError as error:
                        raise env_worker_lost(worker, error, "the demos recorded so far are saved") from None
                    if waiting:
                        hand(worker, waiting.popleft())
            ray.get([env.close.remote() for env in envs])
        finally:
            for env in envs:
                ray.kill(env)


def record_demos(
    specs: Sequence[DemoSpec], out: Path, *, workers: int = 1, ray_address: str | None = None, progress: bool = True
) -> list[DemoOutcome]:
    """Record every spec not yet on disk; the outcomes in seed-major order (every task's first
    seed, then every task's second, ...: a run stopped part-way holds about the same number of
    scenes for every task). ``workers=1`` without ``ray_address`` records in this process; otherwise
    on that many Ray environment actors (capped at the specs to record), on an embedded Ray or the
    cluster at ``ray_address``, handed out in the same order."""
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    ordered = sorted(specs, key=lambda s: (s.suite, s.seed, s.task_id))
    outcomes = {spec: done for spec in ordered if (done := recorded_before(spec, out)) is not None}
    todo = [spec for spec in ordered if spec not in outcomes]
    bar = tqdm(total=len(ordered), initial=len(outcomes), disable=not progress, desc="demos", unit="ep")

    def keep(recording: DemoRecording) -> None:
        outcomes[recording.spec] = save(recording, out)
        kept = sum(o.path is not None for o in outcomes.values())
        bar.update()
        bar.set_postfix(kept=kept, failed=len(outcomes) - kept)

    try:
        if workers == 1 and ray_address is None:
            for spec in todo:
                keep(record_episode(spec))
        elif todo:
            _record_on_ray(todo, min(workers, len(todo)), ray_address, keep)
    finally:
        bar.close()
    return [outcomes[spec] for spec in ordered]


@dataclass(frozen=True)
class DemoSet:
    """Demonstration steps loaded into memory (see :func:`load_demos`)."""

    images: np.ndarray  # (N, 224, 224, 3) uint8, before the crop
    actions: np.ndarray  # (N, 7) float64, training convention
    instruction_index: np.ndarray  # (N,) int64 into ``instructions``
    episode_index: np.ndarray  # (N,) int64 into ``files``
    instructions: tuple[str, ...]
    files: tuple[str, ...]


def demo_files(folder: Path) -> list[Path]:
    """Every recorded demo file under ``folder`` (recursively), sorted."""
    files = sorted(Path(folder).rglob("*.hdf5"))
    if not files:
        raise FileNotFoundError(f"no demonstrations (*.hdf5) under {folder}: record them with `vla-spec demos`")
    return files


def load_demos(files: Iterable[Path], *, stride: int = 1, drop_noops: bool = True) -> DemoSet:
    """Load demo files; ``drop_noops`` removes no-op steps (:func:`noop_mask`, as OpenVLA's
    ``*_no_noops`` data), then ``stride`` keeps every ``stride``-th remaining step (1 = all)."""
    import h5py

    images, actions, instruction_index, episode_index = [], [], [], []
    instructions: dict[str, int] = {}
    names = []
    for number, path in enumerate(files):
        with h5py.File(path, "r") as handle:
            instruction = json.loads(handle["data"].attrs["problem_info"])["language_instruction"]
            demo = handle["data/demo_0"]
            episode_actions = demo["actions"][:]
            keep = np.flatnonzero(~noop_mask(episode_actions) if drop_noops else np.ones(len(episode_actions), bool))[::stride]
            images.append(demo[IMAGE_KEY][:][keep])
            actions.append(episode_actions[keep])
        count = len(actions[-1])
        instruction_index.append(np.full(count, instructions.setdefault(instruction, len(instructions))))
        episode_index.append(np.full(count, number))
        names.append(str(path))
    return DemoSet(
        images=np.concatenate(images),
        actions=np.concatenate(actions),
        instruction_index=np.concatenate(instruction_index),
        episode_index=np.concatenate(episode_index),
        instructions=tuple(instructions),
        files=tuple(names),
    )


def summarize(outcomes: Sequence[DemoOutcome]) -> dict[str, Any]:
    kept = [o for o in outcomes if o.path is not None]
    return {
        "episodes": len(outcomes),
        "kept": len(kept),
        "failed": len(outcomes) - len(kept),
        "steps": int(sum(o.steps for o in kept)),
    }
