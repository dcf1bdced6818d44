"""Scripted-expert demonstrations recorded as a training set, in LIBERO's HDF5 demo layout.

One episode per ``(suite, task_id, seed)``: ``env.seed(seed)``; ``env.reset()`` (LIBERO places the
objects at random from the task's init regions, the distribution the 50 official init states were
drawn from, so none of the official states is seen in training); the protocol's 10 wait steps;
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
Each file is written to a temporary name and renamed, so an interrupted run leaves only whole
files; a failed episode leaves ``<name>.failed.json``. Rerunning skips both: recording resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
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


def record_demo(spec: DemoSpec, out: Path) -> DemoOutcome:
    """Record one expert episode for ``spec`` into ``out`` (see the module docstring)."""
    import h5py

    from vla_spec.gripper import env_to_training
    from vla_spec.images import model_image
    from vla_spec.sim.env import POLICY_CAMERAS, get_env
    from vla_spec.sim.expert import PickPlaceExpert
    from vla_spec.sim.interface import TaskContext, make_observation
    from vla_spec.sim.suites import NUM_STEPS_WAIT, WAIT_ACTION, task_info

    target, failed = demo_path(out, spec), failed_path(out, spec)
    if target.exists() or failed.exists():
        steps = _num_samples(target) if target.exists() else 0
        return DemoOutcome(spec, target if target.exists() else None, steps, skipped=True)
    info = task_info(spec.suite, spec.task_id)
    env = get_env(spec.suite, spec.task_id, cameras=POLICY_CAMERAS)
    env.seed(spec.seed)
    obs = env.reset()
    for _ in range(NUM_STEPS_WAIT):
        obs, _reward, _done, _info = env.step(list(WAIT_ACTION))
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
    target.parent.mkdir(parents=True, exist_ok=True)
    if not success:
        failed.write_text(json.dumps({"spec": spec.__dict__, "steps": len(actions)}) + "\n", encoding="utf-8")
        return DemoOutcome(spec, None, len(actions), skipped=False)
    partial = target.with_suffix(".hdf5.partial")
    with h5py.File(partial, "w") as handle:
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
    os.replace(partial, target)
    return DemoOutcome(spec, target, len(actions), skipped=False)


def _num_samples(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as handle:
        return int(handle["data/demo_0"].attrs["num_samples"])


def _record_in_worker(spec: DemoSpec, out: str) -> DemoOutcome:
    return record_demo(spec, Path(out))


def _worker_init() -> None:
    from vla_spec.sim.libero import load_triton_before_egl

    load_triton_before_egl()


def record_demos(specs: Sequence[DemoSpec], out: Path, *, workers: int = 1, progress: bool = True) -> list[DemoOutcome]:
    """Record every spec not yet on disk, over ``workers`` spawned processes.

    Seed-major (every task's first seed, then every task's second, ...): a run stopped part-way
    holds about the same number of scenes for every task."""
    from tqdm import tqdm

    ordered = sorted(specs, key=lambda s: (s.suite, s.seed, s.task_id))
    outcomes: list[DemoOutcome] = []
    bar = tqdm(total=len(ordered), disable=not progress, desc="demos", unit="ep")
    if workers <= 1:
        for spec in ordered:
            outcomes.append(record_demo(spec, out))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
            futures = [pool.submit(_record_in_worker, spec, str(out)) for spec in ordered]
            for future in futures:
                outcomes.append(future.result())
                bar.update()
                kept = sum(o.path is not None for o in outcomes)
                bar.set_postfix(kept=kept, failed=len(outcomes) - kept)
    bar.close()
    return outcomes


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
