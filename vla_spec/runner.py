"""Run many episodes: resume from the log, shard over worker processes, log each result on arrival.

:func:`run_episodes` opens (or resumes) the :mod:`episode log <vla_spec.episodes>`, drops the
episodes already in it and runs the rest, either in this process (``workers=1``) or in ``workers``
processes started with the ``spawn`` context, so that every worker builds its own simulator (EGL
contexts do not survive ``fork``). Only the parent writes the log, one fsynced line per episode,
as results arrive: a kill loses at most the episodes in flight, and rerunning the same call
finishes the rest.

Scheduling keeps a worker on one (suite, task) while that task has episodes left (its cached
environment is reused: building one costs 3-7 s); a free worker takes the task with the most
episodes left that no other worker is on, or else joins the busiest one (:class:`TaskScheduler`).
Episode outcomes do not depend on the worker (each episode seeds and resets its environment), so
any ``workers`` gives the same results. Environments are closed when a run ends (in this process
too), which frees their memory.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vla_spec.episodes import EpisodeLog, RunConfig, SpecKey, spec_key
from vla_spec.rollout import EpisodeResult, EpisodeSpec, Policy, run_episode
from vla_spec.sim.suites import STEP_BUDGETS

__all__ = ["TaskScheduler", "describe_policy", "run_episodes", "run_in_log", "video_path_for"]

#: How often (seconds) the parent checks that busy workers are still alive, and a worker its parent.
POLL_S = 1.0
#: How often (seconds) at most a worker reports the step count of its running episode.
STEP_REPORT_S = 0.5


def describe_policy(make_policy: Callable[[], Policy]) -> tuple[str, dict[str, Any]]:
    """A name and parameters for the log header: ``functools.partial(f, *args, **kw)`` gives
    ``("module.f", {"args": [...], **kw})``; a class or function gives its dotted name and ``{}``."""
    params: dict[str, Any] = {}
    target: Any = make_policy
    if isinstance(make_policy, functools.partial):
        target = make_policy.func
        if make_policy.args:
            params["args"] = list(make_policy.args)
        params.update(make_policy.keywords)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__qualname__)}"
    return name, params


def video_path_for(video_dir: Path, spec: EpisodeSpec) -> Path:
    """``<video_dir>/<suite>_task<NN>_init<NN>_seed<S>.mp4`` (``..._seed<S>_<camera>.mp4`` for a camera variation)."""
    camera = "" if spec.camera == "none" else f"_{spec.camera}"
    return Path(video_dir) / f"{spec.suite}_task{spec.task_id:02d}_init{spec.init_index:02d}_seed{spec.env_seed}{camera}.mp4"


class TaskScheduler:
    """Hands out episodes to workers, keeping each worker on one (suite, task) as long as it can.

    ``next_for(worker)`` returns the next episode of the worker's current task; when that task has
    none left, the worker moves to the task with the most episodes left that no other worker holds
    (ties: the earliest in the input), or, when every task is held, joins the one with the most left.
    Returns None when nothing is left. Every spec is handed out exactly once, in input order within
    a task.
    """

    def __init__(self, specs: Sequence[EpisodeSpec]) -> None:
        self._left: dict[tuple[str, int], deque[EpisodeSpec]] = {}
        for spec in specs:
            self._left.setdefault((spec.suite, spec.task_id), deque()).append(spec)
        self._order = {task: index for index, task in enumerate(self._left)}
        self._holding: dict[Hashable, tuple[str, int]] = {}

    def next_for(self, worker: Hashable) -> EpisodeSpec | None:
        task = self._holding.get(worker)
        if task is None or not self._left.get(task):
            self._holding.pop(worker, None)
            task = self._pick_task()
            if task is None:
                return None
            self._holding[worker] = task
        spec = self._left[task].popleft()
        if not self._left[task]:
            del self._left[task]
        return spec

    def _pick_task(self) -> tuple[str, int] | None:
        if not self._left:
            return None
        held = set(self._holding.values())
        free = [task for task in self._left if task not in held] or list(self._left)
        return max(free, key=lambda task: (len(self._left[task]), -self._order[task]))

    def ordered(self) -> list[EpisodeSpec]:
        """All remaining specs in the order one worker would run them (consumes the scheduler)."""
        out = []
        while (spec := self.next_for(0)) is not None:
            out.append(spec)
        return out


def _episode_kwargs(spec: EpisodeSpec, record_trace: bool, video_dir: Path | None) -> dict[str, Any]:
    return {"record_trace": record_trace, "video_path": None if video_dir is None else video_path_for(video_dir, spec)}


def _throttled(report: Callable[[int], None], every_s: float) -> Callable[[int], None]:
    """``report`` called at most once per ``every_s`` seconds (the step count of the last call)."""
    last = -every_s

    def on_step(steps: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            report(steps)

    return on_step


def _worker_main(
    make_policy: Callable[[], Policy],
    record_trace: bool,
    video_dir: Path | None,
    inbox: Any,
    outbox: Any,
    worker: int,
    report_steps: bool,
) -> None:
    """A worker process: build the policy, then run specs from ``inbox`` until it gets None.

    Ctrl-C reaches the whole process group: workers ignore it and the parent, which owns the log,
    stops them. With ``report_steps`` the worker sends ``("steps", worker, n)`` while an episode runs.
    """
    import multiprocessing

    from vla_spec.sim.env import clear_env_cache

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    on_step = _throttled(lambda steps: outbox.put(("steps", worker, steps)), STEP_REPORT_S) if report_steps else None
    try:
        policy = make_policy()
        while True:
            try:
                spec = inbox.get(timeout=POLL_S)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # orphaned (the parent was killed): stop instead of running on
                continue
            if spec is None:
                return
            result = run_episode(policy, spec, on_step=on_step, **_episode_kwargs(spec, record_trace, video_dir))
            outbox.put(("result", worker, result))
    except BaseException as error:  # noqa: BLE001 - report anything (a policy that fails to build) to the parent
        outbox.put(("error", worker, (_picklable(error), traceback.format_exc())))
    finally:
        clear_env_cache()


def _picklable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling (so the parent re-raises the same type), else a
    RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


class _Interruption:
    """Ctrl-C during a run, raised where this module can see it: the first SIGINT is only noted,
    and :meth:`check` (at every policy step and result) raises ``KeyboardInterrupt``; LIBERO and
    robosuite swallow one raised inside them (``env.reset``). A second Ctrl-C interrupts at once.
    Outside the main thread, or with SIGINT ignored, nothing changes."""

    def __init__(self) -> None:
        self.noted = False
        self.previous: Any = None

    def __enter__(self) -> _Interruption:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, _signum: int, _frame: Any) -> None:
        self.noted = True
        signal.signal(signal.SIGINT, self.previous)

    def check(self) -> None:
        if self.noted:
            self.noted = False
            raise KeyboardInterrupt

    def __exit__(self, *exc_info: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _Progress:
    """tqdm bars (or nothing): episodes, with successes so far as the postfix, and below it one bar
    per running episode counting its policy steps (tqdm shows the steps/s)."""

    def __init__(self, total: int, done: Sequence[EpisodeResult], enabled: bool, slots: int) -> None:
        self.wins = sum(bool(r.success) for r in done)
        self.count = len(done)
        self.bar: Any = None
        self.steps: list[Any] = []
        if enabled:
            from tqdm import tqdm

            options = {"file": sys.stderr, "dynamic_ncols": True}
            self.bar = tqdm(total=total, initial=self.count, unit="ep", desc="episodes", **options)
            self.steps = [tqdm(total=0, unit="step", position=1 + slot, leave=False, **options) for slot in range(slots)]
            self._postfix()
            self.bar.refresh()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"success {self.wins}/{self.count}", refresh=False)

    def start(self, slot: int, spec: EpisodeSpec) -> None:
        """Episode ``spec`` begins in ``slot`` (a worker, or 0 in this process)."""
        if self.steps:
            bar = self.steps[slot]
            bar.reset(total=STEP_BUDGETS[spec.suite])
            bar.set_description(f"{spec.suite} task {spec.task_id} init {spec.init_index}", refresh=True)

    def step(self, slot: int, steps: int) -> None:
        """The episode in ``slot`` has taken ``steps`` policy steps."""
        if self.steps:
            self.steps[slot].update(steps - self.steps[slot].n)

    def add(self, result: EpisodeResult) -> None:
        self.wins += bool(result.success)
        self.count += 1
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def close(self) -> None:
        for bar in [*self.steps, self.bar]:
            if bar is not None:
                bar.close()


def _run_here(
    make_policy: Callable[[], Policy], specs: Sequence[EpisodeSpec], log: EpisodeLog, progress: _Progress,
    record_trace: bool, video_dir: Path | None, interruption: _Interruption,
) -> None:
    from vla_spec.sim.env import clear_env_cache

    policy = make_policy()

    def on_step(steps: int) -> None:
        interruption.check()
        progress.step(0, steps)

    try:
        for spec in TaskScheduler(specs).ordered():
            interruption.check()
            progress.start(0, spec)
            result = run_episode(policy, spec, on_step=on_step, **_episode_kwargs(spec, record_trace, video_dir))
            log.append(result)
            progress.add(result)
    finally:
        clear_env_cache()  # free the ~2 GB now; closing at interpreter exit prints EGL errors


def _run_in_workers(
    make_policy: Callable[[], Policy], specs: Sequence[EpisodeSpec], log: EpisodeLog, progress: _Progress,
    record_trace: bool, video_dir: Path | None, workers: int, interruption: _Interruption,
) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    inboxes = [context.Queue() for _ in range(workers)]
    processes = [
        context.Process(
            target=_worker_main,
            args=(make_policy, record_trace, video_dir, inboxes[w], outbox, w, bool(progress.steps)),
            name=f"vla-spec-worker-{w}",
            daemon=True,
        )
        for w in range(workers)
    ]
    scheduler = TaskScheduler(specs)
    in_flight: dict[int, EpisodeSpec] = {}

    def hand_out(worker: int) -> None:
        spec = scheduler.next_for(worker)
        inboxes[worker].put(spec)  # None tells the worker to stop
        if spec is not None:
            in_flight[worker] = spec
            progress.start(worker, spec)

    try:
        for process in processes:
            process.start()
        for worker in range(workers):
            hand_out(worker)
        while in_flight:
            interruption.check()
            try:
                kind, worker, payload = outbox.get(timeout=POLL_S)
            except queue.Empty:
                for worker, spec in in_flight.items():
                    if not processes[worker].is_alive():
                        raise RuntimeError(
                            f"worker {worker} died (exit code {processes[worker].exitcode}) while running "
                            f"{spec_key(spec)}; finished episodes are in {log.path}: rerun to resume"
                        ) from None
                continue
            if kind == "steps":
                progress.step(worker, payload)
                continue
            if kind == "error":
                error, worker_traceback = payload
                error.add_note(f"raised in worker {worker}:\n{worker_traceback}")
                raise error
            if spec_key(payload) != spec_key(in_flight[worker]):
                raise RuntimeError(f"worker {worker} returned {spec_key(payload)} for {spec_key(in_flight[worker])}")
            del in_flight[worker]
            log.append(payload)
            progress.add(payload)
            hand_out(worker)
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


def _check_request(workers: int, specs: Sequence[EpisodeSpec]) -> None:
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not specs:
        raise ValueError("no episodes to run")


def run_in_log(
    log: EpisodeLog,
    make_policy: Callable[[], Policy],
    specs: Sequence[EpisodeSpec],
    *,
    workers: int = 1,
    record_trace: bool = False,
    video_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    retry_errors: bool = False,
) -> list[EpisodeResult]:
    """Run the specs not yet in the open ``log`` (see :func:`run_episodes`); return all results, in
    ``specs`` order. A ``KeyboardInterrupt`` stops the workers and propagates; finished episodes
    stay in the log."""
    _check_request(workers, specs)
    video = None if video_dir is None else Path(video_dir)
    pending = log.pending(specs, retry_errors=retry_errors)
    rerun = {spec_key(spec) for spec in pending}
    done = [log.finished[spec_key(spec)] for spec in specs if spec_key(spec) in log.finished and spec_key(spec) not in rerun]
    slots = min(workers, len(pending))
    bar = _Progress(len(specs), done, enabled=progress and bool(pending), slots=slots)
    try:
        with _Interruption() as interruption:
            if pending and workers == 1:
                _run_here(make_policy, pending, log, bar, record_trace, video, interruption)
            elif pending:
                _run_in_workers(make_policy, pending, log, bar, record_trace, video, slots, interruption)
    finally:
        bar.close()
    finished: dict[SpecKey, EpisodeResult] = log.finished
    return [finished[spec_key(spec)] for spec in specs]


def run_episodes(
    make_policy: Callable[[], Policy],
    specs: Sequence[EpisodeSpec],
    log_path: str | os.PathLike[str],
    workers: int = 1,
    record_trace: bool = False,
    video_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    policy_name: str | None = None,
    policy_params: Mapping[str, Any] | None = None,
    retry_errors: bool = False,
) -> list[EpisodeResult]:
    """Run every spec not yet in the log at ``log_path``; return all results, in ``specs`` order.

    ``make_policy`` builds the policy (once per process) and must be picklable for ``workers > 1``
    (a module-level class or function, or a ``functools.partial`` of one). ``policy_name`` and
    ``policy_params`` go to the log header (default: :func:`describe_policy`). ``workers=1`` runs
    in this process; more start that many ``spawn`` processes (capped at the number of episodes to
    run). Raises :class:`~vla_spec.episodes.LogMismatch` when the log belongs to another run; an
    exception raised while building the policy in a worker is re-raised here (the worker's
    traceback attached as a note); ``RuntimeError`` when a worker dies. Episode errors do not raise:
    they are recorded as failures (``EpisodeResult.error``); ``retry_errors`` runs those again.
    Finished episodes stay in the log.
    """
    _check_request(workers, specs)
    described_name, described_params = describe_policy(make_policy)
    config = RunConfig(
        policy=policy_name or described_name,
        policy_params=described_params if policy_params is None else policy_params,
        specs=tuple(specs),
        record_trace=record_trace,
        workers=workers,
        video_dir=None if video_dir is None else str(video_dir),
    )
    with EpisodeLog.open(log_path, config) as log:
        return run_in_log(
            log, make_policy, specs, workers=workers, record_trace=record_trace, video_dir=video_dir,
            progress=progress, retry_errors=retry_errors,
        )
