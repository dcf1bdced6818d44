"""Run many episodes: resume from the log, run them here or on Ray, log each result on arrival.

:func:`run_episodes` opens (or resumes) the :mod:`episode log <vla_spec.episodes>`, drops the
episodes already in it and runs the rest, either in this process (``workers=1``, no Ray address)
or on Ray (:mod:`vla_spec.actors`): ``workers`` environment actors, one simulator each, and, for a
:class:`~vla_spec.sim.interface.BatchedPolicy` (a model), policy actors (replicas: by default one
per GPU of the cluster, ``num_gpus=1`` each, on a CUDA device; one on the CPU), each serving its own
share of the environment actors in one or two groups (:func:`policy_groups`). A group's round: each
of its environment actors answers (its next observation as the policy's uint8 model input, or its
finished episode), then its policy actor answers them all in one batched call. Groups run
independently, so with two groups per replica one group's simulators step while the other's batch
is computed. A policy that must sit beside the simulator (the scripted expert reads the
environment) runs whole episodes inside each environment actor. Ray starts embedded (127.0.0.1, no
dashboard) unless ``ray_address`` joins a cluster.

Only this process (the driver) writes the log, one fsynced line per episode, as results arrive: a
kill loses at most the episodes in flight, and rerunning the same call finishes the rest. An
environment actor that dies (SIGKILL, a crash) is restarted by Ray and only its episode in flight
is lost: it runs again from the start. An actor that dies more often than
:data:`~vla_spec.actors.ENV_RESTARTS` times ends the run with an error (rerun to resume).

Scheduling keeps a worker on one (suite, task) while that task has episodes left (its cached
environment is reused: building one costs 3-7 s); a free worker takes the task with the most
episodes left that no other worker is on, or else joins the busiest one (:class:`TaskScheduler`).
Episode outcomes do not depend on the worker, the batch, the replica or the group (each episode
seeds and resets its environment, its actions depend only on its own observations, and a batch of N
gives the tokens of N single calls), so any ``workers`` and ``policy_replicas`` give the same
results. Environments are closed when a run ends (in this process too), which frees their memory.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_spec.episodes import EpisodeLog, RunConfig, SpecKey, spec_key
from vla_spec.rollout import EpisodeResult, EpisodeSpec, Policy, run_episode, video_path_for
from vla_spec.sim.interface import BatchedPolicy, BatchItem
from vla_spec.sim.suites import STEP_BUDGETS

__all__ = ["RunStats", "TaskScheduler", "describe_policy", "policy_groups", "run_episodes", "run_in_log"]


@dataclass
class RunStats:
    """What a run measured, filled in by :func:`run_in_log`: policy steps of the episodes run, and
    how many rounds the policy actor answered at each batch size."""

    policy_steps: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)


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
    """tqdm bars (or nothing): episodes, with successes so far, policy steps per second over the
    episodes finished in this run and the policy actor's last batch size as the postfix, and below
    it one bar per running episode counting its policy steps (tqdm shows the steps/s)."""

    def __init__(self, total: int, done: Sequence[EpisodeResult], enabled: bool, slots: int) -> None:
        self.wins = sum(bool(r.success) for r in done)
        self.count = len(done)
        self.policy_steps = 0
        self.batch_size: int | None = None
        self.began = time.monotonic()
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
            rate = self.policy_steps / max(time.monotonic() - self.began, 1e-9)
            batch = "" if self.batch_size is None else f", batch {self.batch_size}"
            self.bar.set_postfix_str(f"success {self.wins}/{self.count}, {rate:.1f} step/s{batch}", refresh=False)

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

    def batch(self, size: int) -> None:
        """The policy actor answers a round of ``size`` episodes."""
        if size != self.batch_size:
            self.batch_size = size
            self._postfix()

    def add(self, result: EpisodeResult) -> None:
        self.wins += bool(result.success)
        self.count += 1
        self.policy_steps += result.steps
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def close(self) -> None:
        for bar in [*self.steps, self.bar]:
            if bar is not None:
                bar.close()


def _run_here(
    policy: Policy, specs: Sequence[EpisodeSpec], log: EpisodeLog, progress: _Progress,
    record_trace: bool, video_dir: Path | None, interruption: _Interruption, stats: RunStats,
) -> None:
    from vla_spec.sim.env import clear_env_cache

    def on_step(steps: int) -> None:
        interruption.check()
        progress.step(0, steps)

    try:
        for spec in TaskScheduler(specs).ordered():
            interruption.check()
            progress.start(0, spec)
            result = run_episode(policy, spec, on_step=on_step, record_trace=record_trace, video_path=video_path_for(video_dir, spec))
            log.append(result)
            progress.add(result)
            stats.policy_steps += result.steps
    finally:
        clear_env_cache()  # free the ~2 GB now; closing at interpreter exit prints EGL errors


def policy_groups(workers: int, replicas: int, overlap: bool) -> list[tuple[int, list[int]]]:
    """Environment workers ``0..workers-1`` in groups, as ``(replica, workers)``: worker ``w`` is
    served by replica ``w % replicas``; with ``overlap`` a replica's workers form two groups (every
    other one), so one group's batch is computed while the other's simulators step. Each group is
    asked as one batch once all its workers have answered."""
    groups = []
    for replica in range(replicas):
        served = list(range(replica, workers, replicas))
        halves = [served[0::2], served[1::2]] if overlap and len(served) > 1 else [served]
        groups += [(replica, half) for half in halves if half]
    return groups


def _run_on_ray(
    policy: Policy, make_policy: Callable[[], Policy], specs: Sequence[EpisodeSpec], log: EpisodeLog, progress: _Progress,
    record_trace: bool, video_dir: Path | None, workers: int, interruption: _Interruption, address: str | None,
    stats: RunStats, replicas: int | None, overlap: bool,
) -> None:
    """``workers`` environment actors and, for a :class:`BatchedPolicy`, policy actors (replicas)
    that answer the running episodes of their groups (:func:`policy_groups`) in one call each."""
    from vla_spec.actors import (
        ENV_WORKER_OPTIONS, POLICY_WORKER_OPTIONS, POLL_S, EnvWorker, PolicyWorker, check_resources, default_replicas,
        env_worker_lost, ray_session,
    )

    batched = isinstance(policy, BatchedPolicy)
    on_gpu = batched and str(getattr(policy, "device", "cpu")).startswith("cuda")
    # an embedded cluster has room for a policy replica per environment actor at most
    with ray_session(address, num_cpus=workers * (1 + batched)) as ray:
        from ray.exceptions import ActorUnavailableError, RayActorError

        resources = ray.cluster_resources()
        count = min(workers, replicas or default_replicas(resources, on_gpu)) if batched else 0
        check_resources(resources, workers, count, on_gpu)
        env_actor = ray.remote(EnvWorker).options(**ENV_WORKER_OPTIONS)
        envs = [env_actor.remote(make_policy, record_trace, video_dir) for _ in range(workers)]
        policy_actor = ray.remote(PolicyWorker).options(**POLICY_WORKER_OPTIONS, num_gpus=int(on_gpu))
        policies = [policy_actor.remote(make_policy) for _ in range(count)]
        groups = policy_groups(workers, max(count, 1), overlap)
        group_of = {worker: index for index, (_, members) in enumerate(groups) for worker in members}
        questions: list[dict[int, BatchItem]] = [{} for _ in groups]  # per group: worker -> its question
        scheduler = TaskScheduler(specs)
        running: dict[int, EpisodeSpec] = {}
        env_calls: dict[Any, int] = {}  # in flight: environment call -> worker
        policy_calls: dict[Any, list[int]] = {}  # in flight: policy call -> the workers it answers, in order

        def begin(worker: int, spec: EpisodeSpec | None = None) -> None:
            spec = spec or scheduler.next_for(worker)
            if spec is None:
                return
            running[worker] = spec
            progress.start(worker, spec)
            start = envs[worker].begin if batched else envs[worker].run
            env_calls[start.options(max_task_retries=-1).remote(spec)] = worker  # after a restart Ray runs it again

        def finish(worker: int, result: EpisodeResult) -> None:
            spec = running.pop(worker)
            if spec_key(result) != spec_key(spec):
                raise RuntimeError(f"worker {worker} returned {spec_key(result)} for {spec_key(spec)}")
            log.append(result)
            progress.add(result)
            stats.policy_steps += result.steps
            begin(worker)

        def ask(group: int) -> None:
            """The group's batch to its replica, once all its workers have answered."""
            if not questions[group] or any(group_of[worker] == group for worker in env_calls.values()):
                return
            order, questions[group] = sorted(questions[group].items()), {}  # in worker order
            stats.batch_sizes[len(order)] += 1
            progress.batch(len(order))
            replica = policies[groups[group][0]]
            policy_calls[replica.act_batch.remote([item for _, item in order])] = [worker for worker, _ in order]

        def on_env(worker: int, ref: Any) -> None:
            try:
                reply = ray.get(ref)
            except ActorUnavailableError:
                reply = None  # it died in a step; Ray restarts it
            except RayActorError as error:
                raise env_worker_lost(worker, error, f"finished episodes are in {log.path}") from None
            if reply is None:  # its actor was restarted during the episode: run the episode again
                begin(worker, running[worker])
            elif isinstance(reply, EpisodeResult):
                finish(worker, reply)
            else:
                questions[group_of[worker]][worker] = reply
                progress.step(worker, reply.step)
            ask(group_of[worker])

        def on_policy(asked: list[int], ref: Any) -> None:
            try:
                replies = ray.get(ref)
            except RayActorError as error:
                raise RuntimeError(f"a policy actor died ({error}); finished episodes are in {log.path}: "
                                   "rerun to resume") from None
            for worker, reply in zip(asked, replies, strict=True):
                step = envs[worker].fail if isinstance(reply, str) else envs[worker].step
                env_calls[step.remote(reply)] = worker

        try:
            for worker in range(workers):
                begin(worker)
            while env_calls or policy_calls:
                interruption.check()
                for ref in ray.wait([*env_calls, *policy_calls], num_returns=1, timeout=POLL_S)[0]:
                    if ref in env_calls:
                        on_env(env_calls.pop(ref), ref)
                    else:
                        on_policy(policy_calls.pop(ref), ref)
            ray.get([env.close.remote() for env in envs])
        finally:
            for actor in [*envs, *policies]:
                ray.kill(actor)


def _check_request(workers: int, specs: Sequence[EpisodeSpec], policy_replicas: int | None = None) -> None:
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if policy_replicas is not None and policy_replicas < 1:
        raise ValueError(f"policy_replicas must be at least 1, got {policy_replicas}")
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
    ray_address: str | None = None,
    stats: RunStats | None = None,
    policy_replicas: int | None = None,
    overlap: bool = True,
) -> list[EpisodeResult]:
    """Run the specs not yet in the open ``log`` (see :func:`run_episodes`); return all results, in
    ``specs`` order; ``stats``, when given, is filled in. A ``KeyboardInterrupt`` stops the actors
    and propagates; finished episodes stay in the log."""
    _check_request(workers, specs, policy_replicas)
    policy = make_policy()  # here first: a policy that cannot be built fails before any worker starts
    video = None if video_dir is None else Path(video_dir)
    pending = log.pending(specs, retry_errors=retry_errors)
    rerun = {spec_key(spec) for spec in pending}
    done = [log.finished[spec_key(spec)] for spec in specs if spec_key(spec) in log.finished and spec_key(spec) not in rerun]
    slots = min(workers, len(pending))
    here = workers == 1 and ray_address is None
    # per-episode step bars where steps are seen: here, or rounds of a batched policy
    step_bars = slots if here or isinstance(policy, BatchedPolicy) else 0
    bar = _Progress(len(specs), done, enabled=progress and bool(pending), slots=step_bars)
    try:
        with _Interruption() as interruption:
            if pending and here:
                _run_here(policy, pending, log, bar, record_trace, video, interruption, stats or RunStats())
            elif pending:
                _run_on_ray(policy, make_policy, pending, log, bar, record_trace, video, slots, interruption, ray_address,
                            stats or RunStats(), policy_replicas, overlap)
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
    ray_address: str | None = None,
    stats: RunStats | None = None,
    policy_replicas: int | None = None,
    overlap: bool = True,
) -> list[EpisodeResult]:
    """Run every spec not yet in the log at ``log_path``; return all results, in ``specs`` order.

    ``make_policy`` builds the policy (here first, then once per actor) and must be picklable for
    Ray (a module-level class or function, or a ``functools.partial`` of one). ``policy_name`` and
    ``policy_params`` go to the log header (default: :func:`describe_policy`). ``workers=1`` without
    ``ray_address`` runs in this process; otherwise on Ray with that many environment actors (capped
    at the number of episodes to run), embedded or joining the cluster at ``ray_address``
    (``"auto"``, ``"ray://host:port"``). A batched policy gets ``policy_replicas`` policy actors
    (default: one per GPU of the cluster for a model on CUDA, else one; at most one per environment
    actor), each serving its own environment actors; ``overlap`` splits each replica's actors in two
    groups that take turns (:func:`policy_groups`). Raises :class:`~vla_spec.episodes.LogMismatch` when the log
    belongs to another run, the policy's own exception when it cannot be built, ``RuntimeError`` when
    an actor cannot start or the policy actor keeps dying. Episode errors do not raise: they are
    recorded as failures (``EpisodeResult.error``); ``retry_errors`` runs those again. Finished
    episodes stay in the log; ``stats``, when given, is filled in (:class:`RunStats`).
    """
    _check_request(workers, specs, policy_replicas)
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
            progress=progress, retry_errors=retry_errors, ray_address=ray_address, stats=stats,
            policy_replicas=policy_replicas, overlap=overlap,
        )
