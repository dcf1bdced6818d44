"""What the runner (and :mod:`vla_spec.demos`) puts on Ray: environment actors (one simulator each),
policy actors (a batched policy each), and the Ray session they live in.

* :class:`EnvWorker`: one process, one cached LIBERO environment at a time (task-affine: the
  runner keeps it on one task). With a policy that runs beside the simulator (the scripted
  expert, which reads the environment) it runs whole episodes (:meth:`EnvWorker.run`); for a
  :class:`~vla_spec.sim.interface.BatchedPolicy` it runs them step by step (:meth:`EnvWorker.begin`,
  :meth:`EnvWorker.step`), answering each step with a :class:`~vla_spec.sim.interface.BatchItem`
  (the policy's uint8 model input) or, when the episode is over, its
  :class:`~vla_spec.rollout.EpisodeResult`. Another whole-episode job runs there through
  :meth:`EnvWorker.call` (a demonstration: :func:`vla_spec.demos.record_episode`).
* :class:`PolicyWorker`: the batched policy (the model loaded once, on its device); one
  ``act_batch`` per round answers the running episodes of a group of environment actors. A run
  has :func:`default_replicas` of them unless told (one per GPU), each serving its own groups. An
  item whose answer raises gets its own error text and the others their answers (a failed batch is
  asked again item by item: a batch of N gives the tokens of N single calls, so the answers are
  the same).
* :func:`ray_session`: joins the cluster at an address (``"auto"``, ``"ray://host:port"``; one
  that takes no connection fails in seconds, :func:`check_address`, even where a session exists),
  reuses a Ray already started in this process (a test session), or starts an embedded one bound to 127.0.0.1 with no
  dashboard, no idle workers started ahead and a small object store, shut down when the run ends.

Restarts are Ray's: an environment actor restarts up to :data:`ENV_RESTARTS` times; a call that
starts an episode (``run``, ``begin``) is retried by Ray until the actor is back, so a lost episode
runs again from its start, and a lost step is not (the runner begins that episode again). A
policy actor, which keeps no per-episode state, restarts and retries its call.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from vla_spec.rollout import Episode, EpisodeResult, EpisodeSpec, Policy, error_text, run_episode, video_path_for
from vla_spec.sim.interface import BatchedPolicy, BatchItem, PolicyStep

__all__ = [
    "ENV_RESTARTS", "ENV_WORKER_OPTIONS", "POLICY_WORKER_OPTIONS", "EnvWorker", "PolicyWorker", "check_address", "check_resources",
    "default_replicas", "env_worker_lost", "ray_session",
]

#: Object store of an embedded Ray (bytes): a round moves one 224 x 224 x 3 uint8 image (150 kB)
#: per environment, so 32 environments need under 5 MB; Ray's floor is 75 MiB.
OBJECT_STORE_BYTES = 128 * 1024**2
#: How often an environment actor is restarted (SIGKILL, a simulator crash) before the run fails.
ENV_RESTARTS = 10
#: How often the policy actor is restarted (and its call retried) before the run fails.
POLICY_RESTARTS = 3
#: ``ray.remote`` options of the actors (the policy actor adds ``num_gpus=1`` on a CUDA device).
ENV_WORKER_OPTIONS: dict[str, Any] = {"num_cpus": 1, "max_restarts": ENV_RESTARTS, "max_task_retries": 0}
POLICY_WORKER_OPTIONS: dict[str, Any] = {"num_cpus": 1, "max_restarts": POLICY_RESTARTS, "max_task_retries": POLICY_RESTARTS}
#: Ray resolves this node's address to the loopback when this is "0" at ``import ray`` (its switch
#: for single-machine clusters): an embedded cluster then listens on 127.0.0.1 only.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: How long (seconds) :func:`check_address` waits for a TCP connection to a cluster's address.
CONNECT_TIMEOUT_S = 5.0
#: How often (seconds) a driver looks up from waiting on Ray (to see Ctrl-C).
POLL_S = 0.5
#: Ray's memory monitor (killing workers under memory pressure) runs unless this is "0".
MEMORY_MONITOR = "RAY_memory_monitor_refresh_ms"
#: An embedded Ray starts idle Python workers for the first driver unless this is "0". The runner
#: only makes actors, which start their own; each idle worker burned about 0.7 CPU-s a minute
#: (measured: an idle embedded cluster, 3.2 CPU-s a minute with them, 1.6 without).
PRESTART_WORKERS = "RAY_prestart_worker_first_driver"


def default_replicas(resources: Mapping[str, float], on_gpu: bool) -> int:
    """How many policy actors a run gets unless told: one per GPU of the cluster (``resources``:
    ``ray.cluster_resources()``) for a model on CUDA, at least one; one for a model on the CPU."""
    return max(1, int(resources.get("GPU", 0))) if on_gpu else 1


def check_resources(resources: Mapping[str, float], workers: int, replicas: int = 0, on_gpu: bool = False) -> None:
    """Raise ``RuntimeError`` (one line, with the fix) when the cluster (``resources``:
    ``ray.cluster_resources()``) cannot place ``workers`` environment actors and ``replicas`` policy
    actors (one GPU each when ``on_gpu``) at once: the actors left over would wait for ever."""
    needed = ENV_WORKER_OPTIONS["num_cpus"] * workers + replicas * POLICY_WORKER_OPTIONS["num_cpus"]
    if resources.get("CPU", 0) < needed:
        actors = f"{workers} environment workers" + (f" and {replicas} policy replicas" if replicas else "")
        fix = "--workers or --policy-replicas" if replicas else "--workers"
        raise RuntimeError(f"{actors} need {needed} CPUs in the Ray cluster, which has {resources.get('CPU', 0):g}; use fewer {fix}")
    if on_gpu and resources.get("GPU", 0) < replicas:
        raise RuntimeError(f"{replicas} policy replicas need {replicas} GPUs in the Ray cluster, which has "
                           f"{resources.get('GPU', 0):g}; use fewer --policy-replicas")


def env_worker_lost(worker: int, error: Any, kept: str) -> RuntimeError:
    """The run's error when environment actor ``worker`` could not start or died more than
    :data:`ENV_RESTARTS` times (``error``: Ray's ``RayActorError``); ``kept`` says where the
    finished work is."""
    what = "could not start" if error.actor_init_failed else f"died more than {ENV_RESTARTS} times"
    return RuntimeError(f"environment worker {worker} {what}: {error}; {kept}: rerun to resume")


def _ignore_ctrl_c() -> None:
    """Ctrl-C reaches the whole process group: the driver, which owns the log, stops the actors."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EnvWorker:
    """One simulator and its episodes; builds the policy with ``make_policy`` (a batched policy
    only prepares model inputs here, its model loads on the policy actor; none for :meth:`call`
    alone)."""

    def __init__(self, make_policy: Callable[[], Policy] | None = None, record_trace: bool = False, video_dir: Path | None = None) -> None:
        _ignore_ctrl_c()
        self.policy = None if make_policy is None else make_policy()
        self.record_trace = record_trace
        self.video_dir = video_dir
        self.episode: Episode | None = None
        self.task: Any = None

    def run(self, spec: EpisodeSpec) -> EpisodeResult:
        """The whole episode with the policy in this process."""
        assert self.policy is not None
        return run_episode(self.policy, spec, record_trace=self.record_trace, video_path=video_path_for(self.video_dir, spec))

    def call(self, job: Callable[..., Any], *args: Any) -> Any:
        """``job(*args)`` in this actor's process, on its cached environments (a whole episode of
        another kind: :func:`vla_spec.demos.record_episode`)."""
        return job(*args)

    def begin(self, spec: EpisodeSpec) -> BatchItem | EpisodeResult:
        """Start ``spec``; its first question to the batched policy (or its result, if it failed)."""
        assert self.policy is not None
        self.episode = Episode(spec, needs_camera=bool(self.policy.needs_camera), record_trace=self.record_trace,
                               video_path=video_path_for(self.video_dir, spec))
        try:
            self.task = replace(self.episode.start(), env=None)  # the environment stays here
        except Exception as error:  # noqa: BLE001 - the protocol counts any exception as a failure
            return self.fail(error_text(error))
        return self._next()

    def step(self, answer: PolicyStep) -> BatchItem | EpisodeResult | None:
        """Apply the policy's answer; the next question, or the result when the episode is over;
        None when this actor has no episode (Ray restarted it since :meth:`begin`)."""
        if self.episode is None:
            return None
        try:
            self.episode.advance(answer)
        except Exception as error:  # noqa: BLE001
            return self.fail(error_text(error))
        return self._next()

    def _next(self) -> BatchItem | EpisodeResult:
        assert self.episode is not None and isinstance(self.policy, BatchedPolicy)
        if self.episode.over:
            return self._end()
        try:
            return BatchItem(self.task, self.episode.steps, self.policy.model_input(self.episode.observation))
        except Exception as error:  # noqa: BLE001
            return self.fail(error_text(error))

    def fail(self, error: str) -> EpisodeResult | None:
        """End the running episode as a failure with ``error`` (the policy's answer raised); None
        as :meth:`step`."""
        if self.episode is None:
            return None
        self.episode.fail(error)
        return self._end()

    def _end(self) -> EpisodeResult:
        assert self.episode is not None
        self.episode.close()
        result, self.episode = self.episode.result(), None
        return result

    def close(self) -> None:
        """Close the cached environment (frees its memory; closing at exit prints EGL errors)."""
        from vla_spec.sim.env import clear_env_cache

        clear_env_cache()


class PolicyWorker:
    """The batched policy: ``act_batch`` answers a round of episodes in one call."""

    def __init__(self, make_policy: Callable[[], BatchedPolicy]) -> None:
        _ignore_ctrl_c()
        self.policy = make_policy()

    def act_batch(self, items: Sequence[BatchItem]) -> list[PolicyStep | str]:
        """The policy's answer to each item, or the error text of an item whose answer raised."""
        try:
            return list(self.policy.act_batch(items))
        except Exception as error:  # noqa: BLE001 - find the items that raise, answer the others
            if len(items) == 1:
                return [error_text(error)]
        return [self.act_batch([item])[0] for item in items]


def _cannot_join(address: str, why: object) -> ConnectionError:
    return ConnectionError(f"cannot join the Ray cluster at {address!r} ({why}); start one with `ray start --head`, "
                           "or leave --ray-address out for a local one")


def check_address(address: str) -> None:
    """Fail fast, before Ray is imported, when ``address`` (``"auto"``, ``"ray://host:port"``,
    ``"host:port"``) names a host and port that take no TCP connection within
    :data:`CONNECT_TIMEOUT_S`: ``ray.init`` would retry for 30 s (a ``ray://`` address) or minutes
    (a GCS address) first. ``"auto"`` and an address without a port are left to ``ray.init``."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise _cannot_join(address, error) from None
    if host is None or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise _cannot_join(address, f"no answer on {host}:{port}: {error}") from None


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray for one run (see the module docstring), yielding the ``ray`` module; ``num_cpus`` sizes
    an embedded cluster (default: this machine's cores). ``address`` is checked first, every time
    (:func:`check_address`: one TCP connection), so an address that takes no connection fails the
    same whatever else this process did. A Ray already initialized in this process (a caller joined
    ``address`` earlier, a test session) is then reused as it is: no start, no shutdown. Ray
    imported (elsewhere) before an embedded start listens on all interfaces. Raises
    ``ConnectionError`` (one line, with the fix) when the cluster at ``address`` cannot be joined."""
    if address is not None:
        check_address(address)
    joined = sys.modules.get("ray")
    if joined is not None and joined.is_initialized():  # the caller's session
        yield joined
        return
    if address is None:
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    import ray

    if address is None:
        # Ray's memory monitor kills workers when the whole machine is short of memory, whoever uses
        # it; on a shared machine that turns other programs' use into restart loops. Off: the
        # kernel's OOM killer remains, and the runner survives its kills like any other.
        os.environ.setdefault(MEMORY_MONITOR, "0")
        os.environ.setdefault(PRESTART_WORKERS, "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, configure_logging=False)
    else:
        try:
            ray.init(address=address, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise _cannot_join(address, error) from None
    try:
        yield ray
    finally:
        ray.shutdown()
