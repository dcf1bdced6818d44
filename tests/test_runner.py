"""Spec: the runner hands every episode out once, keeps workers on one task, and (sim tier) survives
a real SIGKILL mid-episode: rerunning keeps the finished episodes, repeats none and finishes the
rest; a killed environment actor costs only its episode in flight; 1 worker and 2 workers give
identical results, also with a batched policy on its own actor (the same tokens, step by step), and
an episode whose policy raises is logged with its error."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_spec.cli import CliError
from vla_spec.commands.sim import WaitPolicy, build_policy
from vla_spec.rollout import EpisodeResult, EpisodeSpec
from vla_spec.rollout import video_path_for
from vla_spec.runner import RunStats, TaskScheduler, describe_policy, policy_groups, run_episodes
from vla_spec.sim.interface import BatchItem, PolicyStep, TaskContext
from vla_spec.sim.openvla_policy import OpenVLAPolicy

REPO = Path(__file__).resolve().parent.parent
# Four cheap episodes (the scripted expert needs no camera): two tasks x two initial states.
SIM_SPECS = [EpisodeSpec("libero_object", task, init) for task in (0, 1) for init in (0, 1)]
ROLLOUT_ARGS = ["rollout", "--suite", "libero_object", "--tasks", "0,1", "--inits", "0-1", "--policy", "expert", "--no-progress"]


def outcome(result: EpisodeResult) -> tuple:
    """Everything that must not depend on how an episode was scheduled."""
    return (result.suite, result.task_id, result.init_index, result.env_seed, result.instruction, result.steps, result.success, result.error)


# --- cpu tier: scheduling and bookkeeping -------------------------------------------------------


@pytest.mark.cpu
def test_scheduler_keeps_each_worker_on_its_task_and_splits_tasks() -> None:
    specs = [EpisodeSpec("libero_goal", 5, 0)] + [EpisodeSpec("libero_object", t, i) for t in (0, 1) for i in range(3)]
    scheduler = TaskScheduler(specs)
    handed = [(worker, scheduler.next_for(worker)) for worker in (0, 1, 0, 1, 0, 1, 0, 1)]
    assert [(w, s.task_id, s.init_index) for w, s in handed if s] == [
        (0, 0, 0), (1, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 2), (1, 1, 2), (0, 5, 0),
    ]
    assert handed[-1] == (1, None)


@pytest.mark.cpu
def test_scheduler_lets_an_idle_worker_join_a_busy_task() -> None:
    specs = [EpisodeSpec("libero_10", 3, i) for i in range(4)]
    scheduler = TaskScheduler(specs)
    assert [scheduler.next_for(w).init_index for w in (0, 1, 1, 0)] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert scheduler.next_for(0) is None and scheduler.next_for(1) is None


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), unique=True, min_size=1, max_size=20),
    st.lists(st.integers(0, 2), min_size=1, max_size=60),
)
@pytest.mark.cpu
def test_scheduler_hands_out_every_spec_once_in_task_order(pairs: list[tuple[int, int]], requests: list[int]) -> None:
    specs = [EpisodeSpec("libero_90", task, init) for task, init in pairs]
    scheduler = TaskScheduler(specs)
    left = Counter(spec.task_id for spec in specs)
    last_task: dict[int, int] = {}
    handed: list[EpisodeSpec] = []
    for worker in [*requests, *[0] * len(specs)]:
        spec = scheduler.next_for(worker)
        if spec is None:
            continue
        previous = last_task.get(worker)
        assert previous in (None, spec.task_id) or left[previous] == 0, "left a task that still had episodes"
        left[spec.task_id] -= 1
        last_task[worker] = spec.task_id
        handed.append(spec)
    assert sorted(handed, key=specs.index) == specs
    for task in {s.task_id for s in specs}:
        assert [s for s in handed if s.task_id == task] == [s for s in specs if s.task_id == task]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 8), st.booleans())
@pytest.mark.cpu
def test_policy_groups_give_each_worker_to_one_replica_in_at_most_two_turns(workers: int, replicas: int, overlap: bool) -> None:
    groups = policy_groups(workers, min(replicas, workers), overlap)
    assert sorted(w for _, members in groups for w in members) == list(range(workers))
    for replica in {r for r, _ in groups}:
        sizes = [len(members) for r, members in groups if r == replica]
        assert len(sizes) <= 1 + overlap and max(sizes) - min(sizes) <= 1
    assert all(w % min(replicas, workers) == r for r, members in groups for w in members)


@pytest.mark.cpu
def test_policy_groups_and_replicas_by_example() -> None:
    """Two turns per replica with overlap; one policy actor per GPU of the cluster for a CUDA model."""
    from vla_spec.actors import default_replicas

    assert policy_groups(4, 1, overlap=False) == [(0, [0, 1, 2, 3])]
    assert policy_groups(4, 1, overlap=True) == [(0, [0, 2]), (0, [1, 3])]
    assert policy_groups(5, 2, overlap=True) == [(0, [0, 4]), (0, [2]), (1, [1]), (1, [3])]
    assert policy_groups(2, 2, overlap=True) == [(0, [0]), (1, [1])]
    assert default_replicas({"CPU": 32.0, "GPU": 2.0}, on_gpu=True) == 2
    assert default_replicas({"CPU": 32.0}, on_gpu=True) == 1
    assert default_replicas({"CPU": 32.0, "GPU": 2.0}, on_gpu=False) == 1


@pytest.mark.cpu
def test_a_cluster_too_small_for_the_actors_is_refused_in_one_line() -> None:
    """Every actor takes one CPU (a policy actor on CUDA one GPU too); what does not fit is refused
    with the fix, and what fits exactly passes (the negative control)."""
    from vla_spec.actors import check_resources

    with pytest.raises(RuntimeError, match=r"^3 environment workers need 3 CPUs in the Ray cluster, which has 2; use fewer --workers$"):
        check_resources({"CPU": 2.0}, 3)
    with pytest.raises(RuntimeError, match=r"^2 environment workers and 1 policy replicas need 3 CPUs .* has 2; use fewer --workers or --policy-replicas$"):
        check_resources({"CPU": 2.0}, 2, 1)
    with pytest.raises(RuntimeError, match=r"^2 policy replicas need 2 GPUs in the Ray cluster, which has 1; use fewer --policy-replicas$"):
        check_resources({"CPU": 8.0, "GPU": 1.0}, 4, 2, on_gpu=True)
    check_resources({"CPU": 3.0}, 3)
    check_resources({"CPU": 6.0, "GPU": 2.0}, 4, 2, on_gpu=True)


@pytest.mark.cpu
def test_policy_description_and_video_names() -> None:
    assert describe_policy(functools.partial(build_policy, "expert", unnorm_key="bridge_orig")) == (
        "vla_spec.commands.sim.build_policy",
        {"args": ["expert"], "unnorm_key": "bridge_orig"},
    )
    assert describe_policy(WaitPolicy) == ("vla_spec.commands.sim.WaitPolicy", {})
    assert video_path_for(Path("v"), EpisodeSpec("libero_10", 3, 12, 7)) == Path("v/libero_10_task03_init12_seed7.mp4")
    assert video_path_for(None, EpisodeSpec("libero_10", 3, 12, 7)) is None


@pytest.mark.cpu
def test_run_episodes_rejects_nonsense_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_episodes(WaitPolicy, SIM_SPECS, tmp_path / "log.jsonl", workers=0)
    with pytest.raises(ValueError, match="no episodes"):
        run_episodes(WaitPolicy, [], tmp_path / "log.jsonl")
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.cpu
def test_a_policy_that_fails_to_build_raises_here_before_any_worker(tmp_path: Path) -> None:
    """The policy is built in the driver first: its own exception type (so the CLI prints one line),
    nothing logged, and no Ray started (when this run of pytest has not started Ray already: the sim
    tier's session fixture keeps one up, started by earlier tests)."""
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    with pytest.raises(CliError, match="unknown policy 'nope'"):
        run_episodes(functools.partial(build_policy, "nope"), SIM_SPECS[:1], tmp_path / "log.jsonl", workers=2, progress=False)
    assert _episode_lines(tmp_path / "log.jsonl") == []
    if not ray_was_up:
        assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.cpu
def test_a_batch_of_episodes_gets_the_answers_of_single_calls() -> None:
    """OpenVLAPolicy.act_batch over episodes of two suites (two unnorm_keys, instructions of
    different lengths) gives each item the tokens and env command that a call for it alone gives."""
    from tests.goldens import load_image

    policy = OpenVLAPolicy("tiny-openvla")
    tasks = [TaskContext("libero_spatial", 0, "put the bowl on the stove", 0, 220),
             TaskContext("libero_goal", 3, "open the middle drawer of the cabinet", 1, 300)]
    items = [BatchItem(tasks[i % 2], i, load_image(name)) for i, name in enumerate(["scene", "gradient", "marker", "scene"])]
    batch = policy.act_batch(items)
    singles = [policy.act_batch([item])[0] for item in items]
    assert [(s.tokens, s.action.tolist()) for s in batch] == [(s.tokens, s.action.tolist()) for s in singles]
    assert len({s.tokens for s in batch}) > 1, "the items must get different answers, or the comparison shows nothing"


@pytest.mark.cpu
def test_the_policy_decodes_fast_by_default_and_naive_on_request_with_the_same_answers() -> None:
    """``decoder="fast"`` (the default: the static-cache decoder) runs over the same weights in memory
    as ``"naive"`` (the reference's loop) and, on these frames, gives the same tokens and commands."""
    from tests.goldens import load_image
    from vla_spec.model.fast_decoding import is_accelerated

    assert OpenVLAPolicy("tiny-openvla").decoder == "fast"
    policies = {name: OpenVLAPolicy("tiny-openvla", decoder=name) for name in ("fast", "naive")}
    task = TaskContext("libero_spatial", 0, "put the bowl on the stove", 0, 220)
    items = [BatchItem(task, i, load_image(name)) for i, name in enumerate(["scene", "gradient", "marker"])]
    answers = {name: [(s.tokens, s.action.tolist()) for s in policy.act_batch(items)] for name, policy in policies.items()}
    fast, naive = policies["fast"]._model, policies["naive"]._model
    assert is_accelerated(fast) and not is_accelerated(naive)
    assert fast.language_model is naive.language_model, "one copy of the weights"
    assert answers["fast"] == answers["naive"]
    assert len({tokens for tokens, _ in answers["fast"]}) > 1, "the frames must get different answers"


@pytest.mark.cpu
def test_the_image_blind_policy_needs_no_camera_and_sees_what_a_black_frame_becomes() -> None:
    """``image="black"`` asks for no rendering; its model input is what the evaluation's image path
    makes of a black camera frame (all zeros)."""
    import numpy as np

    from vla_spec.images import model_image
    from vla_spec.sim.interface import Observation

    blind, seeing = OpenVLAPolicy("tiny-openvla", image="black"), OpenVLAPolicy("tiny-openvla")
    assert (blind.needs_camera, seeing.needs_camera) == (False, True)
    black_frame = np.zeros((256, 256, 3), dtype=np.uint8)  # the agentview camera's size
    assert np.array_equal(blind.model_input(Observation({}, None, 0)), model_image(black_frame))
    with pytest.raises(RuntimeError, match="needs a camera observation"):
        seeing.model_input(Observation({}, None, 0))


@pytest.mark.cpu
def test_a_ray_address_that_does_not_answer_fails_in_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ray-address`` at a port that refuses connections (bound, not listening): exit 2 with one
    line naming the address and the fix, within the connect timeout, before the simulator, the
    policy or Ray load and before the log exists; the same port listening passes the check
    (negative control), and ``auto`` is left to Ray."""
    import socket

    from vla_spec.actors import check_address
    from vla_spec.cli import main

    ray_was_imported = "ray" in sys.modules
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        for address in (f"ray://127.0.0.1:{port}", f"127.0.0.1:{port}"):
            started = time.monotonic()
            status = main([*ROLLOUT_ARGS, "--workers", "2", "--ray-address", address, "--log", str(tmp_path / "log.jsonl")])
            assert time.monotonic() - started < 5
            err = capsys.readouterr().err
            assert status == 2 and err.count("\n") == 1, err
            assert err.startswith(f"vla-spec rollout: error: --ray-address: cannot join the Ray cluster at {address!r} "
                                  f"(no answer on 127.0.0.1:{port}: ")
            assert err.endswith("); start one with `ray start --head`, or leave --ray-address out for a local one\n")
        closed.listen()
        check_address(f"ray://127.0.0.1:{port}")
    assert not (tmp_path / "log.jsonl").exists()
    assert ray_was_imported or "ray" not in sys.modules
    check_address("auto")
    with pytest.raises(ConnectionError, match="cannot join the Ray cluster at 'ray://host:x' .*Port could not be cast"):
        check_address("ray://host:x")


# --- sim tier: the real simulator ---------------------------------------------------------------


@pytest.mark.sim
def test_a_ray_session_already_joined_is_reused_and_an_address_is_still_checked(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    """``rollout --ray-address`` joins the cluster early; the runner's ``ray_session`` then reuses
    that session (no second start, no shutdown). The address is checked every time, so an address
    that takes no connection fails in one line even where this process already has a session (the
    cpu test above gives the same line without one), and the same port listening passes (the
    negative control)."""
    import socket

    from vla_spec.actors import ray_session

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(ConnectionError, match=f"cannot join the Ray cluster at {address!r} \\(no answer on "):
            with ray_session(address):
                pass
        server.listen()
        with ray_session(address) as ray:
            assert ray is ray_cluster and ray.is_initialized()
    assert ray_cluster.is_initialized(), "a reused session is not shut down"


@pytest.mark.sim
def test_the_embedded_session_starts_no_idle_workers(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    """An embedded Ray starts no Python workers ahead (``PRESTART_WORKERS``): the runner only makes
    actors, which start their own, and each idle worker costs CPU all run long. (With
    ``RAY_prestart_worker_first_driver=1`` set before the session, two ``ray::IDLE`` appear.)"""
    deadline = time.monotonic() + 3.0  # Ray starts its idle workers within about a second
    while time.monotonic() < deadline:
        assert _descendants_titled(b"ray::IDLE") == [], "Ray started idle workers ahead"
        time.sleep(0.2)


#: Ray's process title for an environment actor running a whole episode.
ENV_ACTOR_RUNNING = b"ray::EnvWorker.run"


def _descendants_titled(prefix: bytes) -> list[int]:
    """Pids of this process's descendants (Ray's raylet and its workers) whose command line starts with ``prefix``."""
    parents: dict[int, int] = {}
    titles: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
    found = []
    for pid, title in titles.items():
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, os.getpid()):
            ancestor = parents.get(ancestor)
        if ancestor == os.getpid() and title.startswith(prefix):
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def one_worker_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[EpisodeResult], float]:
    """The reference: SIM_SPECS with the expert in this process (workers=1), and its wall time."""
    started = time.perf_counter()
    results = run_episodes(functools.partial(build_policy, "expert"), SIM_SPECS, tmp_path_factory.mktemp("w1") / "log.jsonl", progress=False)
    return results, time.perf_counter() - started


@pytest.mark.sim
def test_two_workers_give_the_same_results_as_one(
    ray_cluster, one_worker_run: tuple[list[EpisodeResult], float], tmp_path: Path, record_property: pytest.RecordProperty  # type: ignore[no-untyped-def]
) -> None:
    reference, wall_1 = one_worker_run
    started = time.perf_counter()
    results = run_episodes(functools.partial(build_policy, "expert"), SIM_SPECS, tmp_path / "log.jsonl", workers=2, progress=False)
    wall_2 = time.perf_counter() - started
    assert [outcome(r) for r in results] == [outcome(r) for r in reference]
    assert any(r.success for r in reference), "the expert should solve some of these (positive control)"
    record_property("wall_s_workers_1", round(wall_1, 1))
    record_property("wall_s_workers_2", round(wall_2, 1))
    record_property("result", f"{len(SIM_SPECS)} expert episodes: 1 worker {wall_1:.1f} s, 2 workers {wall_2:.1f} s, speedup {wall_1 / wall_2:.2f}x")


def _episode_lines(path: Path) -> list[bytes]:
    """Complete episode lines of a log, raw bytes (a partial last line is left out)."""
    raw = path.read_bytes() if path.exists() else b""
    complete = raw[: raw.rfind(b"\n") + 1]
    return [line for line in complete.splitlines() if json.loads(line).get("kind") == "episode"]


@pytest.mark.sim
def test_resume_after_sigkill_mid_episode(one_worker_run: tuple[list[EpisodeResult], float], tmp_path: Path) -> None:
    reference, _ = one_worker_run
    log = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "vla_spec.cli", *ROLLOUT_ARGS, "--log", str(log)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # one worker: the episodes run in the rollout's own process (no Ray to start; a killed Ray actor
    # is the tests' below), so the kill lands mid-episode in the process that writes the log
    first = subprocess.Popen([*command, "--workers", "1"], cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not _episode_lines(log):
            assert first.poll() is None, f"rollout ended before it could be killed:\n{first.stdout.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no episode finished within 300 s"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole run: parent and its spawned workers
        first.wait()
        first.stdout.close()  # type: ignore[union-attr]
    assert first.returncode == -signal.SIGKILL
    before = _episode_lines(log)
    assert 1 <= len(before) < len(SIM_SPECS), "the kill must come after one episode and before the last"

    second = subprocess.run([*command, "--workers", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]

    after = _episode_lines(log)
    assert after[: len(before)] == before, "episodes finished before the kill were rewritten"
    runs = Counter((r["suite"], r["task_id"], r["init_index"], r["env_seed"]) for r in map(json.loads, after))
    assert runs == Counter({(s.suite, s.task_id, s.init_index, s.env_seed): 1 for s in SIM_SPECS})
    kinds = [json.loads(line)["kind"] for line in log.read_text().splitlines()]
    assert kinds.count("header") == 1 and kinds.count("resume") == 1
    by_key = {(r["task_id"], r["init_index"]): r for r in map(json.loads, after)}
    resumed = [EpisodeResult(**{k: v for k, v in by_key[(s.task_id, s.init_index)].items() if k != "kind"}) for s in SIM_SPECS]
    assert [outcome(r) for r in resumed] == [outcome(r) for r in reference]


@pytest.mark.sim
def test_a_policy_that_does_nothing_fails_after_the_full_budget(tmp_path: Path) -> None:
    """Negative control: the wait action never solves a task, so the episode uses all its steps."""
    from vla_spec.sim.suites import MAX_STEPS

    (result,) = run_episodes(WaitPolicy, SIM_SPECS[:1], tmp_path / "log.jsonl", progress=False)
    assert (result.success, result.steps, result.error) == (False, MAX_STEPS["libero_object"], None)


@pytest.mark.sim
def test_a_killed_environment_actor_costs_only_its_episode_in_flight(
    ray_cluster, one_worker_run: tuple[list[EpisodeResult], float], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """SIGKILL of an environment actor in the middle of an episode: Ray restarts it and runs that
    episode again from the start; nothing else is lost or repeated, and the results are the
    reference's (without the restart the run would end in an error)."""
    reference, _ = one_worker_run
    log, out = tmp_path / "log.jsonl", []
    earlier = set(_descendants_titled(b"ray::EnvWorker"))  # actors of earlier runs may still be on their way out
    run = threading.Thread(target=lambda: out.append(run_episodes(
        functools.partial(build_policy, "expert"), SIM_SPECS, log, workers=2, progress=False)))
    run.start()
    deadline = time.monotonic() + 300
    while not (busy := sorted(set(_descendants_titled(ENV_ACTOR_RUNNING)) - earlier)):
        assert run.is_alive() and time.monotonic() < deadline, "no environment actor started an episode"
        time.sleep(0.05)
    os.kill(busy[0], signal.SIGKILL)
    run.join(timeout=600)
    assert out, "the run did not finish (its exception is printed above)"
    assert busy[0] not in _descendants_titled(b"ray::"), "the actor was not killed"
    assert [outcome(r) for r in out[0]] == [outcome(r) for r in reference]
    runs = Counter((r["task_id"], r["init_index"]) for r in map(json.loads, _episode_lines(log)))
    assert runs == Counter({(s.task_id, s.init_index): 1 for s in SIM_SPECS})


#: The batched policy's episodes stop (raise) at this policy step: short, and they show that an
#: episode whose policy raises is logged with its error.
STOP_AT = 12
BATCH_SPECS = [EpisodeSpec("libero_object", task, 0) for task in (0, 1)]


class StopsAtStep(OpenVLAPolicy):
    """The trained tiny VLA, raising for every item at policy step :data:`STOP_AT`."""

    def act_batch(self, items: Sequence[BatchItem]) -> list[PolicyStep]:
        if any(item.step >= STOP_AT for item in items):
            raise RuntimeError(f"stop at step {max(item.step for item in items)}")
        return super().act_batch(items)


@pytest.fixture(scope="module")
def batched_here(tmp_path_factory: pytest.TempPathFactory) -> list[EpisodeResult]:
    """The reference for the batched policy: BATCH_SPECS in this process, with traces."""
    log = tmp_path_factory.mktemp("here") / "log.jsonl"
    return run_episodes(functools.partial(StopsAtStep, "tiny-vla-libero-object", threads=1), BATCH_SPECS, log,
                        record_trace=True, progress=False)


def _batched_on_ray(log: Path, stats: RunStats, policy: type[StopsAtStep] = StopsAtStep, **options: Any) -> list[EpisodeResult]:
    """BATCH_SPECS on Ray with two environment actors; ``record`` goes to ``policy``, the other ``options`` to the runner."""
    extra = {"record": options.pop("record")} if "record" in options else {}
    return run_episodes(functools.partial(policy, "tiny-vla-libero-object", threads=1, **extra), BATCH_SPECS, log, workers=2,
                        record_trace=True, progress=False, stats=stats, **options)


@pytest.mark.sim
def test_a_batched_policy_on_ray_answers_as_in_this_process(
    ray_cluster, batched_here: list[EpisodeResult], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Two episodes of the trained tiny VLA, in this process and on Ray with two environment actors
    and a policy actor, without overlap: the same tokens and actions at every step, every round a
    batch of 2, and the policy's error logged for each episode (counted as a failure)."""
    stats = RunStats()
    on_ray = _batched_on_ray(tmp_path / "ray.jsonl", stats, overlap=False)
    assert [(r.steps, r.success, r.error) for r in batched_here] == [(STOP_AT, False, f"RuntimeError: stop at step {STOP_AT}")] * 2
    assert [r.trace for r in on_ray] == [r.trace for r in batched_here]
    assert [outcome(r) for r in on_ray] == [outcome(r) for r in batched_here]
    assert stats.batch_sizes == Counter({2: STOP_AT + 1})  # steps 0..STOP_AT, the last one raising
    assert len({tuple(step["tokens"]) for r in batched_here for step in r.trace}) > 1, "tokens must vary, or the comparison shows little"


@pytest.mark.sim
def test_an_environment_actor_killed_between_policy_rounds_costs_only_its_episode(
    ray_cluster, batched_here: list[EpisodeResult], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """SIGKILL of an environment actor of a batched run once it has stepped: the runner begins its
    episode again on the restarted actor; traces and outcomes are the reference's, and the extra
    rounds show that the episode ran again."""
    earlier = set(_descendants_titled(b"ray::EnvWorker"))
    stats, out = RunStats(), []
    run = threading.Thread(target=lambda: out.append(_batched_on_ray(tmp_path / "ray.jsonl", stats)))
    run.start()
    deadline = time.monotonic() + 300
    while not (stepping := sorted(set(_descendants_titled(b"ray::EnvWorker.step")) - earlier)):
        assert run.is_alive() and time.monotonic() < deadline, "no environment actor was seen in a step"
        time.sleep(0.02)
    os.kill(stepping[0], signal.SIGKILL)
    run.join(timeout=600)
    assert out, "the run did not finish (its exception is printed above)"
    assert [r.trace for r in out[0]] == [r.trace for r in batched_here]
    assert [outcome(r) for r in out[0]] == [outcome(r) for r in batched_here]
    assert sum(size * rounds for size, rounds in stats.batch_sizes.items()) > 2 * (STOP_AT + 1), "no step was asked twice"


class RecordsItsBatches(StopsAtStep):
    """:class:`StopsAtStep` that appends ``"<pid> <task ids>"`` to the file ``record`` for every batch it answers."""

    def __init__(self, *args: Any, record: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def act_batch(self, items: Sequence[BatchItem]) -> list[PolicyStep]:
        with open(self.record, "a") as out:
            out.write(f"{os.getpid()} {' '.join(str(item.task.task_id) for item in items)}\n")
        return super().act_batch(items)


@pytest.mark.sim
def test_two_policy_replicas_each_answer_only_their_own_environment_actor(
    ray_cluster, batched_here: list[EpisodeResult], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Two environment actors (one task each) and two policy actors: the reference's traces and
    outcomes, every batch one episode, and each policy process saw one task only, a different one."""
    stats, record = RunStats(), tmp_path / "batches.txt"
    results = _batched_on_ray(tmp_path / "ray.jsonl", stats, RecordsItsBatches, policy_replicas=2, record=str(record))
    assert [r.trace for r in results] == [r.trace for r in batched_here]
    assert [outcome(r) for r in results] == [outcome(r) for r in batched_here]
    assert stats.batch_sizes == Counter({1: 2 * (STOP_AT + 1)})
    seen: dict[str, set[str]] = {}
    for line in record.read_text().splitlines():
        pid, *tasks = line.split()
        seen.setdefault(pid, set()).update(tasks)
    assert sorted(map(sorted, seen.values())) == [["0"], ["1"]]
