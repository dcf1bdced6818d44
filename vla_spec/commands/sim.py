"""``vla-spec rollout`` and ``vla-spec report``: run LIBERO episodes into a log, summarize logs.

::

    vla-spec rollout --suite libero_object --tasks 0-9 --inits 0-4 --policy expert --workers 2 \\
        --log runs/x.jsonl [--seeds 0-19] [--cameras none,shift-2cm] [--trace] [--video-dir DIR]
    vla-spec report runs/old.jsonl [--compare runs/new.jsonl] [--plot out.png]   # exit 1: new regressed

Rerunning ``rollout`` with the same arguments resumes the log (see :mod:`vla_spec.episodes`).
Ranges are ``0-9``, ``3`` or ``0,2,5-7`` (inclusive). Policies come from :data:`POLICIES`; a
policy's options (``--unnorm-key``...) come from :data:`POLICY_OPTIONS`, so adding a policy is one
entry in each. The simulator, tqdm and matplotlib are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vla_spec.commands import CliError
from vla_spec.statistics import DEFAULT_CONFIDENCE, PUBLISHED_OPENVLA, Proportion, PublishedResult, SuccessRow, percent
from vla_spec.factors import FACTORS as FACTOR_WORDS
from vla_spec.verdicts import DEFAULT_MARGIN

if TYPE_CHECKING:  # the simulator side is imported inside the handlers
    from vla_spec.episodes import LogContents
    from vla_spec.rollout import EpisodeResult, EpisodeSpec


@dataclass(frozen=True)
class PolicyEntry:
    """A policy by name: ``target`` is ``"module:callable"`` returning a Policy when called with
    the options in ``options`` (keyword arguments named after the option's ``dest``)."""

    target: str
    help: str
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


#: CLI options that policies may take: dest -> (flag, help). Only options given are passed on.
POLICY_OPTIONS: dict[str, tuple[str, str]] = {
    "unnorm_key": ("--unnorm-key", "norm-stats key to decode actions with (default: the suite's own)"),
    "checkpoint": (
        "--checkpoint",
        "OpenVLA checkpoint: a folder in the HF format, or tiny-vla-libero-object (trained here on expert "
        "demos) or tiny-openvla (the spec's test checkpoint, fails every episode)",
    ),
    "image": ("--image", "camera (default) or black: a constant black image, the image-blind control"),
    "threads": ("--threads", "torch CPU threads per process (default: torch's; 1 suits one per worker)"),
    "device": ("--device", "torch device for the model, e.g. cpu or cuda (default: cpu)"),
    "dtype": ("--dtype", "float32 or bfloat16 (default: float32)"),
    "decoder": ("--decoder", "fast (default: static KV cache, CUDA graphs on a GPU) or naive (the reference's loop)"),
    "url": ("--url", "policy server in the reference REST protocol, http://HOST:PORT (--policy http://HOST:PORT is short for it)"),
}

POLICIES: dict[str, PolicyEntry] = {
    "expert": PolicyEntry(
        "vla_spec.sim.expert:PickPlaceExpert",
        "scripted privileged pick-and-place expert (vla_spec.sim.expert), no camera; "
        "--unnorm-key bridge_orig makes it a negative control",
        ("unnorm_key",),
    ),
    "openvla": PolicyEntry(
        "vla_spec.sim.openvla_policy:OpenVLAPolicy",
        "an OpenVLA checkpoint (vla_spec.sim.openvla_policy; camera on): the evaluation's image path "
        "in, its action path out; --unnorm-key defaults to the suite (or {suite}_no_noops)",
        ("checkpoint", "unnorm_key", "device", "dtype", "decoder", "image", "threads"),
        required=("checkpoint",),
    ),
    "http": PolicyEntry(
        "vla_spec.sim.http_policy:HTTPPolicy",
        "a policy server in the reference REST protocol (vla-spec serve, OpenVLA's deploy.py, ...) at --url, "
        "or give --policy http://HOST:PORT; the image path runs here",
        ("url", "unnorm_key"),
        required=("url",),
    ),
    "wait": PolicyEntry(
        "vla_spec.commands.sim:WaitPolicy",
        "the protocol's wait action [0,0,0,0,0,0,-1] at every step: a null baseline, never succeeds",
    ),
}


class WaitPolicy:
    """Always the wait action (no motion, gripper open); needs no camera and fails every episode."""

    needs_camera = False

    def reset(self, task: Any) -> None:
        pass

    def act(self, obs: Any) -> Any:
        import numpy as np

        from vla_spec.rollout import PolicyStep
        from vla_spec.sim.suites import WAIT_ACTION

        return PolicyStep(action=np.asarray(WAIT_ACTION, dtype=np.float64))


def build_policy(name: str, **params: Any) -> Any:
    """Build the registered policy ``name`` (module level, so ``partial(build_policy, ...)`` pickles)."""
    if name not in POLICIES:
        raise CliError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    module_name, _, attribute = POLICIES[name].target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)(**params)


def parse_indices(text: str, what: str) -> tuple[int, ...]:
    """``"0-2,5"`` -> ``(0, 1, 2, 5)``: inclusive ranges, order kept, repeats dropped."""
    out: dict[int, None] = {}
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise CliError(f"bad {what} {text!r}: expected indices like 0-9, 3 or 0,2,5-7") from None
        if first < 0 or last < first:
            raise CliError(f"bad {what} {text!r}: {part.strip()!r} is not an increasing range of indices >= 0")
        out.update(dict.fromkeys(range(first, last + 1)))
    return tuple(out)


def check_suites(suites: Sequence[str]) -> None:
    """Every name in ``suites`` is a LIBERO suite (no simulator needed)."""
    from vla_spec.sim.suites import check_suite

    if not suites:
        raise CliError("--suite names no suite; give one such as libero_object")
    for suite in suites:
        try:
            check_suite(suite)
        except ValueError as error:  # check_suite raises it only for an unknown name
            raise CliError(str(error)) from None


def parse_cameras(text: str) -> tuple[str, ...]:
    """``"none,shift-2cm"`` -> ``("none", "shift-2cm")``: camera variation names, checked, order kept."""
    from vla_spec.sim.cameras import UnknownCameraVariation, parse_variation

    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise CliError(f"bad --cameras {text!r}: name at least one variation, e.g. none,shift-2cm")
    for name in names:
        try:
            parse_variation(name)
        except UnknownCameraVariation as error:
            raise CliError(f"--cameras: {error}") from None
    return names


def build_specs(
    suites: Sequence[str], tasks: Sequence[int], inits: Sequence[int], seeds: Sequence[int], cameras: Sequence[str] = ("none",)
) -> list[EpisodeSpec]:
    """Every (suite, task, init, seed, camera) combination, checked against the installed benchmark."""
    from vla_spec.rollout import EpisodeSpec
    from vla_spec.sim.suites import INIT_STATES_PER_TASK, num_tasks

    check_suites(suites)
    for suite in suites:
        available = num_tasks(suite)
        if max(tasks) >= available:
            raise CliError(f"{suite} has tasks 0-{available - 1}, not {max(tasks)}")
    if max(inits) >= INIT_STATES_PER_TASK:
        raise CliError(f"init indices run 0-{INIT_STATES_PER_TASK - 1}, not {max(inits)}")
    return [EpisodeSpec(s, t, i, e, c) for s in suites for t in tasks for i in inits for e in seeds for c in cameras]


def _add_ray_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="join this Ray cluster (auto, or ray://host:port) instead of starting one on 127.0.0.1",
    )


def register(subparsers: Any) -> None:
    """Add ``rollout`` and ``report`` to the ``vla-spec`` parser."""
    rollout = subparsers.add_parser(
        "rollout",
        help="run LIBERO episodes with a policy into a resumable JSONL log",
        description="Run every (suite, task, init, seed, camera) episode not yet in --log; rerun to resume.",
    )
    rollout.add_argument("--suite", required=True, help="suite(s), comma-separated, e.g. libero_object")
    rollout.add_argument("--tasks", default="0-9", help="task ids, e.g. 0-9 or 0,3 (default 0-9)")
    rollout.add_argument("--inits", default="0-49", help="initial-state indices (default 0-49)")
    rollout.add_argument("--seeds", default="0", help="env seeds, env.seed() before reset (default 0)")
    rollout.add_argument(
        "--policy",
        required=True,
        metavar="{" + ",".join(POLICIES) + "}",
        help="; ".join(f"{name}: {entry.help}" for name, entry in POLICIES.items()),
    )
    for dest, (flag, text) in POLICY_OPTIONS.items():
        rollout.add_argument(flag, dest=dest, default=None, help=text)
    rollout.add_argument(
        "--cameras", default="none",
        help="agentview camera variations, comma-separated (default none): shift±Ncm, lift±Ncm, yaw±Ndeg, pitch±Ndeg, "
        "jitterK (vla_spec.sim.cameras); the run is the product suites x tasks x inits x seeds x cameras",
    )
    rollout.add_argument(
        "--workers", type=int, default=1,
        help="environment workers, Ray actors with one simulator each (~2 GB RAM each; a model policy gets one "
        "more actor that answers them all in batches); 1 = in this process, no Ray",
    )
    _add_ray_address(rollout)
    rollout.add_argument(
        "--policy-replicas", type=int, metavar="N",
        help="policy actors of a model policy on Ray, each answering its own share of the environment workers "
        "(default: one per GPU of the cluster with --device cuda, else 1)",
    )
    rollout.add_argument("--log", required=True, type=Path, help="JSONL episode log to create or resume")
    rollout.add_argument("--overwrite", action="store_true", help="empty an existing --log first (its episodes are lost)")
    rollout.add_argument("--trace", action="store_true", help="record per-step tokens and actions in the log")
    rollout.add_argument("--retry-errors", action="store_true", help="rerun episodes of the log that ended with an error")
    rollout.add_argument("--video-dir", type=Path, help="write one mp4 per episode here (forces the camera)")
    rollout.add_argument("--no-progress", action="store_true", help="no progress bar")
    sequential = rollout.add_argument_group(
        "sequential mode", "run the episodes in a shuffled order (seed 0) and stop as soon as a sequential test "
        "(vla_spec.sequential: Wald's SPRT, false alarms <= --alpha however often it looks) decides; exit status 1 on regressed",
    )
    sequential.add_argument("--until-decided", action="store_true", help="stop once held or regressed is clear")
    sequential.add_argument(
        "--against", metavar="RATE|published|LOG",
        help="the reference: a success rate (0.884), published (OpenVLA's rate for the one --suite), or a baseline "
        "log holding every planned episode (then only the episodes the runs disagree on count)",
    )
    sequential.add_argument("--delta", type=float, default=0.1, help="against a rate: regressed means this much lower (0.1)")
    sequential.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate: saying regressed when it held (0.05)")
    sequential.add_argument("--beta", type=float, default=0.2, help="miss rate: saying held at the regressed rate (0.2)")
    rollout.set_defaults(func=run_rollout)

    demos = subparsers.add_parser(
        "demos",
        help="record successful scripted-expert episodes from fresh seeded scenes (LIBERO HDF5 layout)",
        description="Record demonstrations for training (vla_spec.demos); rerun to resume.",
    )
    demos.add_argument("--suite", required=True, help="one suite, e.g. libero_object")
    demos.add_argument("--tasks", default="0-9", help="task ids (default 0-9)")
    demos.add_argument("--seeds", required=True, help="scene seeds, env.seed(k) before reset, e.g. 1000-1019")
    demos.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on the executed arm command")
    demos.add_argument(
        "--workers", type=int, default=1,
        help="environment workers, Ray actors with one simulator each (~2 GB RAM each); 1 = in this process, no Ray",
    )
    _add_ray_address(demos)
    demos.add_argument("--out", required=True, type=Path, help="dataset folder (files go under OUT/SUITE/)")
    demos.add_argument("--no-progress", action="store_true", help="no progress bar")
    demos.set_defaults(func=run_demos)

    report = subparsers.add_parser(
        "report",
        help="success per task and suite with Wilson intervals, vs the published numbers or another log",
        description="Summarize an episode log; --compare OLD NEW gives regression verdicts (exit status 1 on a regression).",
    )
    report.add_argument("log", type=Path, help="JSONL episode log")
    report.add_argument(
        "--compare", type=Path, metavar="NEW",
        help="a second log (B, NEW) judged against the first (A, OLD): regressed / improved / held / cannot tell "
        "per task, suite and overall; exit status 1 when B regressed (a CI gate after an upgrade)",
    )
    report.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="held means a change this large (fraction, default 0.1 = 10 pp) is ruled out")
    report.add_argument("--plot", type=Path, help="write a bar chart with the intervals (PNG, SVG, PDF)")
    report.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level (0.95)")
    report.set_defaults(func=run_report)


def _policy_params(args: argparse.Namespace) -> dict[str, Any]:
    if args.policy.startswith(("http://", "https://")):  # --policy http://HOST:PORT: the http policy at that URL
        if args.url is not None:
            raise CliError("give the server once: --policy http://HOST:PORT or --policy http --url http://HOST:PORT")
        args.policy, args.url = "http", args.policy
    entry = POLICIES.get(args.policy)
    if entry is None:
        raise CliError(f"unknown policy {args.policy!r}; known: {', '.join(sorted(POLICIES))}")
    given = {dest: getattr(args, dest) for dest in POLICY_OPTIONS if getattr(args, dest) is not None}
    extra = [POLICY_OPTIONS[dest][0] for dest in given if dest not in entry.options]
    if extra:
        raise CliError(f"{', '.join(extra)} does not apply to policy {args.policy!r}")
    missing = [POLICY_OPTIONS[dest][0] for dest in entry.required if dest not in given]
    if missing:
        raise CliError(f"policy {args.policy!r} needs {', '.join(missing)}: {POLICY_OPTIONS[entry.required[0]][1]}")
    return given


def _policy_setup(name: str, params: Mapping[str, Any], suites: Sequence[str]) -> dict[str, Any]:
    """Build the policy here once and let it check that it can run ``suites`` on this machine
    (checkpoint, device, dtype, unnorm_key...) before the log is opened; returns what the log
    header records about it (``check_setup``; a policy without one records nothing)."""
    from vla_spec.sim import PolicySetupError

    if "checkpoint" in params:
        from vla_spec.model.tiny import resolve_checkpoint

        try:
            resolve_checkpoint(params["checkpoint"])
        except FileNotFoundError as error:
            raise CliError(f"--checkpoint: {error}") from None
    try:
        policy = build_policy(name, **params)
        check = getattr(policy, "check_setup", None)
        return {} if check is None else dict(check(suites))
    except PolicySetupError as error:
        flag = POLICY_OPTIONS[error.option][0] if error.option in POLICY_OPTIONS else f"--{error.option}"
        raise CliError(f"{flag}: {error}") from None


def _open_log(args: argparse.Namespace, config: Any) -> Any:
    """The episode log for ``config`` (created, resumed or, with --overwrite, emptied)."""
    from vla_spec.episodes import EpisodeLog, LogError, LogMismatch

    try:
        return EpisodeLog.open(args.log, config, overwrite=args.overwrite)
    except LogMismatch as error:
        raise CliError(f"{error}: --log NEW.jsonl, or --overwrite to discard the episodes in it") from None
    except LogError as error:
        raise CliError(str(error)) from None


@contextlib.contextmanager
def _ray_joined(address: str | None) -> Iterator[None]:
    """The Ray cluster at ``address`` joined for the whole block (the runner reuses the session), or
    nothing when ``address`` is None. Enter it before the simulator and the policy load and before
    any file is written: an address that takes no connection is a one-line :class:`CliError`
    naming the fix within seconds (:func:`vla_spec.actors.check_address`)."""
    from vla_spec.actors import ray_session

    with contextlib.ExitStack() as stack:
        if address is not None:
            try:
                stack.enter_context(ray_session(address))
            except ConnectionError as error:
                raise CliError(f"--ray-address: {error}") from None
        yield


def run_rollout(args: argparse.Namespace) -> int:
    from vla_spec.episodes import LogError, check_log_path

    params = _policy_params(args)
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.policy_replicas is not None and args.policy_replicas < 1:
        raise CliError(f"--policy-replicas must be at least 1, got {args.policy_replicas}")
    if args.until_decided != (args.against is not None):
        raise CliError("--until-decided and --against go together: --until-decided --against 0.884 (a rate), published or a baseline log")
    try:
        check_log_path(args.log)
    except LogError as error:
        raise CliError(str(error)) from None
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    tasks, inits = parse_indices(args.tasks, "--tasks"), parse_indices(args.inits, "--inits")
    seeds = parse_indices(args.seeds, "--seeds")
    cameras = parse_cameras(args.cameras)
    with _ray_joined(args.ray_address):
        return _rollout(args, params, suites, (tasks, inits, seeds, cameras))


def _rollout(args: argparse.Namespace, params: Mapping[str, Any], suites: Sequence[str],
             ranges: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[str]]) -> int:
    """``rollout`` once its arguments are parsed (``ranges``: tasks, inits, seeds, cameras) and its
    Ray cluster, if any, joined."""
    import sys

    from vla_spec.episodes import EpisodeLog, RunConfig
    from vla_spec.runner import run_in_log
    from vla_spec.sim.libero import SimulatorUnavailable

    check_suites(suites)
    setup = _policy_setup(args.policy, params, suites)
    try:
        specs = build_specs(suites, *ranges)
    except SimulatorUnavailable as error:
        raise CliError(str(error)) from None
    config = RunConfig(
        args.policy, params, tuple(specs), record_trace=args.trace, workers=args.workers,
        video_dir=None if args.video_dir is None else str(args.video_dir), policy_setup=setup,
    )
    plan = _sequential_plan(args, specs) if args.until_decided else None
    log: EpisodeLog | None = None
    try:  # the log is opened inside: a Ctrl-C just after its header is written still says how to resume
        with _open_log(args, config) as log:
            if log.resumed:  # a subset of specs: a log of other episodes is refused when opened
                print(f"resuming: {len(log.resumed)} of {len(specs)} episodes already in the log {args.log}", file=sys.stderr)
            if plan is not None:
                return _run_until_decided(log, args, params, specs, *plan)
            results = run_in_log(
                log,
                functools.partial(build_policy, args.policy, **params),
                specs,
                workers=args.workers,
                record_trace=args.trace,
                video_dir=args.video_dir,
                progress=not args.no_progress,
                retry_errors=args.retry_errors,
                ray_address=args.ray_address,
                policy_replicas=args.policy_replicas,
            )
    except KeyboardInterrupt:
        ran = 0 if log is None else len(log.finished.keys() - log.resumed)
        print(f"interrupted after {ran} episode(s); rerun the same command to resume", file=sys.stderr)
        return 130
    except (SimulatorUnavailable, ConnectionError) as error:
        raise CliError(str(error)) from None
    wins = sum(bool(r.success) for r in results)
    print(f"{wins}/{len(results)} episodes succeeded; log: {args.log} (per task: vla-spec report {args.log})")
    errors = [r for r in results if r.error]
    if errors:
        print(
            f"{len(errors)} episode(s) ended with an error (a bug or a broken setup, not a policy failure), e.g. "
            f"{errors[0].suite} task {errors[0].task_id}: {errors[0].error}; fix it and rerun with --retry-errors"
        )
    return 0


def _sequential_plan(args: argparse.Namespace, specs: Sequence[EpisodeSpec]) -> tuple[Any, Any, str]:
    """(the test, results -> its 0/1 stream, what it compares) from --against, --delta, --alpha, --beta."""
    from vla_spec.episodes import spec_key
    from vla_spec.sequential import PAIRED_ALTERNATIVE, SequentialTest, paired_stream, published_stream

    suites = sorted({spec.suite for spec in specs})
    try:
        if args.against == "published" or args.against.replace(".", "", 1).isdigit():
            if args.against == "published":
                if len(suites) != 1 or suites[0] not in PUBLISHED_OPENVLA:
                    raise CliError(f"--against published needs one suite with a published rate ({', '.join(PUBLISHED_OPENVLA)})")
                rate = PUBLISHED_OPENVLA[suites[0]].rate_percent / 100.0
            else:
                rate = float(args.against)
            test = SequentialTest(rate, rate - args.delta, args.alpha, args.beta)
            return test, published_stream, f"success rate {percent(rate)} (held) vs {percent(rate - args.delta)} (regressed)"
        baseline = _read_log(Path(args.against)).finished()
        missing = [spec for spec in specs if spec_key(spec) not in baseline]
        if missing:
            raise CliError(f"--against {args.against} lacks {len(missing)} of the {len(specs)} planned episodes, e.g. "
                           f"{spec_key(missing[0])}: run the baseline's episodes, or give a rate")
        test = SequentialTest(0.5, PAIRED_ALTERNATIVE, args.alpha, args.beta)

        def stream(results: Sequence[EpisodeResult]) -> list[int]:
            return paired_stream(list(results), baseline, [spec_key(r) for r in results])

        return test, stream, (f"{args.against}, paired: NEW wins half the disagreeing episodes (held) vs "
                              f"{percent(PAIRED_ALTERNATIVE, 0)} (regressed)")
    except ValueError as error:
        raise CliError(f"--until-decided: {error}") from None


def _run_until_decided(log: Any, args: argparse.Namespace, params: Mapping[str, Any], specs: Sequence[EpisodeSpec],
                       test: Any, stream: Any, against: str) -> int:
    """Run ``specs`` in a seeded shuffled order, ``--workers`` episodes at a time, until ``test``
    decides on the stream of the finished ones (identical repeats counted once,
    :func:`vla_spec.factors.collapse_repeats`); exit status 1 when it says regressed."""
    import random
    import sys

    from vla_spec.factors import collapse_repeats
    from vla_spec.runner import run_in_log
    from vla_spec.sequential import first_decision

    order = list(specs)
    random.Random(0).shuffle(order)  # tasks and inits interleaved: any prefix is a fair sample
    make_policy = functools.partial(build_policy, args.policy, **params)
    results: list[EpisodeResult] = []
    verdict, used = None, 0
    for start in range(0, len(order), args.workers):
        results += run_in_log(log, make_policy, order[start:start + args.workers], workers=args.workers,
                              record_trace=args.trace, video_dir=args.video_dir, progress=False, retry_errors=args.retry_errors,
                              ray_address=args.ray_address, policy_replicas=args.policy_replicas)
        outcomes = stream(collapse_repeats(results).trials)  # an identical repeat is no new trial
        verdict, used = first_decision(test, outcomes)
        wins = sum(bool(r.success) for r in results)
        print(f"sequential: {len(results)} episodes ({wins} solved), {len(outcomes)} outcomes, log LR "
              f"{test.llr(sum(outcomes), len(outcomes)):+.2f} (held <= {test.lower:+.2f}, regressed >= {test.upper:+.2f})", file=sys.stderr)
        if verdict is not None:
            break
    decided = f"{verdict} after {used} outcome(s)" if verdict else f"undecided after all {len(order)} episodes (cannot tell)"
    print(f"sequential test against {against}, alpha {args.alpha:g}, beta {args.beta:g}: {decided}; "
          f"{len(results)} of {len(order)} planned episodes run; log: {args.log}")
    return 1 if verdict == "regressed" else 0


def run_demos(args: argparse.Namespace) -> int:
    from vla_spec.demos import DemoSpec, record_demos, summarize
    from vla_spec.sim.libero import SimulatorUnavailable

    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.noise < 0:
        raise CliError(f"--noise must be >= 0, got {args.noise}")
    tasks, seeds = parse_indices(args.tasks, "--tasks"), parse_indices(args.seeds, "--seeds")
    with _ray_joined(args.ray_address):
        build_specs([args.suite], tasks, (0,), (0,))  # checks the suite and task range
        specs = [DemoSpec(args.suite, t, s, args.noise) for t in tasks for s in seeds]
        try:
            outcomes = record_demos(specs, args.out, workers=args.workers, ray_address=args.ray_address,
                                    progress=not args.no_progress)
        except SimulatorUnavailable as error:
            raise CliError(str(error)) from None
    summary = summarize(outcomes)
    print(f"demos: {args.out / args.suite}: {summary['kept']} kept, {summary['failed']} failed, {summary['steps']} steps")
    return 0


def _label(row: SuccessRow) -> tuple[str, str]:
    return (row.suite or "all suites", "all" if row.task_id is None else str(row.task_id))


def format_success_table(results: Sequence[EpisodeResult], confidence: float = DEFAULT_CONFIDENCE) -> str:
    """Per task, per suite and overall: successes/n, rate and Wilson interval, one row each."""
    from vla_spec.statistics import success_rows

    rows = success_rows(results, confidence)
    show_errors = any(row.errors for row in rows)
    head = f"{'suite':<16}{'task':>5}{'success':>10}{'rate':>9}   {percent(confidence, 0)} Wilson interval"
    lines = [head + ("   errors (counted as failures)" if show_errors else "")]
    for row in rows:
        p = row.proportion
        suite, task = _label(row)
        line = f"{suite:<16}{task:>5}{f'{p.successes}/{p.n}':>10}{percent(p.rate):>9}   [{percent(p.low)}, {percent(p.high)}]"
        lines.append(line + (f"{row.errors:>9}" if show_errors else ""))
    return "\n".join(lines)


def _suite_totals(results: Sequence[EpisodeResult], confidence: float) -> dict[str, Proportion]:
    """Suite -> its success proportion (the suite rows of :func:`success_rows`)."""
    from vla_spec.statistics import success_rows

    return {row.suite: row.proportion for row in success_rows(results, confidence) if row.suite and row.task_id is None}


def _code_version(versions: Mapping[str, Any]) -> str:
    """``"0123456789"`` or ``"0123456789 + edits 1a2b3c4d"`` (the uncommitted diff's hash)."""
    sha, diff = versions.get("git_sha"), versions.get("git_diff_sha256")
    text = sha[:10] if sha else "unknown"
    if diff:
        text += f" + edits {diff[:8]}"
    elif versions.get("git_dirty"):
        text += " (dirty)"
    return text


def describe_policy(config: Mapping[str, Any]) -> str:
    """``"openvla, checkpoint tiny-vla-libero-object (sha256 0123456789ab), float32 on cpu,
    unnorm_key libero_object"``: what a log's header says ran."""
    setup = dict(config.get("policy_setup") or {})
    words = [str(config.get("policy"))]
    if "checkpoint" in setup:
        words.append(
            f"checkpoint {Path(setup['checkpoint']).name} (sha256 {setup['checkpoint_sha256'][:12]}), "
            f"{setup['dtype']} on {setup['device']}"
        )
    keys = sorted(set(dict(setup.get("unnorm_key") or {}).values()))
    if keys:
        words.append(f"unnorm_key {', '.join(keys)}")
    if setup.get("image", "camera") != "camera":
        words.append(f"{setup['image']} image")
    if setup.get("invert_gripper") is False:
        words.append("gripper not inverted")
    if not setup and config.get("policy_params"):  # a log written before policy_setup was recorded
        words.append(str(dict(config["policy_params"])))
    return ", ".join(words)


def _describe_log(name: str, log: LogContents) -> list[str]:
    config, versions = log.header.config, log.header.versions
    planned = len(config.get("specs") or ())
    stack = ", ".join(f"{k} {versions.get(k)}" for k in ("mujoco", "robosuite", "libero", "torch", "transformers", "MUJOCO_GL"))
    lines = [
        f"{name}{log.path}: policy {describe_policy(config)}; "
        f"{len(log.results)}/{planned} episodes finished, {len(log.resumes)} resume(s)",
        f"  stack {versions.get('stack', 'not recorded')}: {stack}; git {_code_version(versions)}",
    ]
    other_code = sorted({_code_version(r.versions) for r in log.resumes} - {_code_version(versions)})
    if other_code:
        lines.append(f"  note: resumed with other code ({'; '.join(other_code)}): episodes may mix code versions")
    if log.truncated:
        lines.append("  note: the last line was partial (a killed writer) and is ignored")
    errors = sum(1 for r in log.results if r.error)
    if errors:
        lines.append(f"  note: {errors} episode(s) ended with an error (counted as failures)")
    return lines


def _published(log: LogContents, suite: str) -> PublishedResult | None:
    """OpenVLA's published rate for ``suite``, when the log holds an OpenVLA checkpoint."""
    return PUBLISHED_OPENVLA.get(suite) if log.header.config.get("policy") == "openvla" else None


def _verdict_lines(log: LogContents, confidence: float) -> list[str]:
    from vla_spec.statistics import compare_to_published

    lines = []
    for suite, p in sorted(_suite_totals(log.results, confidence).items()):
        if _published(log, suite) is not None:
            v = compare_to_published(suite, p.successes, p.n, confidence)
            lines.append(f"vs published OpenVLA, {suite}: {v.verdict}: {v.reason}")
    if not lines:
        lines.append(f"(no published rate to compare with: the log holds policy {log.header.config.get('policy')}, not an OpenVLA checkpoint)")
    return lines


def _pairing_key(old: Sequence[EpisodeResult], new: Sequence[EpisodeResult]) -> tuple[Any, str]:
    """How episodes of the two logs pair: by their whole key, except for the env seed or camera
    when each log holds one value of it and the two differ (one camera against another over the
    same episodes is a paired comparison); the second item names what was crossed, or is empty."""
    from vla_spec.episodes import spec_key

    drop = []
    for index, field in ((3, "env_seed"), (4, "camera")):
        a, b = {getattr(r, field) for r in old}, {getattr(r, field) for r in new}
        if len(a) == 1 and len(b) == 1 and a != b:
            drop.append((index, f"{FACTOR_WORDS[field]} {a.pop()} (A) and {b.pop()} (B)"))

    def key(result: EpisodeResult) -> tuple[Any, ...]:
        return tuple(value for index, value in enumerate(spec_key(result)) if index not in dict(drop))

    return key, "; ".join(words for _, words in drop)


def _comparison_lines(old: LogContents, new: LogContents, confidence: float, margin: float) -> tuple[list[str], bool]:
    """The verdict table of NEW (B) against OLD (A) (:mod:`vla_spec.verdicts`) and whether any row regressed."""
    from vla_spec.verdicts import compare_logs

    key, across = _pairing_key(old.results, new.results)
    try:
        rows = compare_logs(old.results, new.results, key, confidence=confidence, margin=margin)
    except ValueError as error:
        return [f"compare: {error}"], False
    level = percent(confidence, 0)
    lines = [
        f"B (NEW) vs A (OLD): regressed / improved when the test rejects no change at {percent(1 - confidence, 0)} "
        f"(Holm-adjusted over tasks and over suites), held when the {level} interval of B - A lies within "
        f"±{100 * margin:g} pp (--margin), else cannot tell",
        "paired (same episodes in both): McNemar's exact test, Newcombe's paired interval; "
        "unpaired: Fisher's exact test, Newcombe's hybrid score interval; needed: episodes for power 0.8 at this difference",
        f"{'suite':<16}{'task':>5}{'A':>9}{'B':>9}  {'B - A [' + level + ' interval]':<28}{'test':<28}{'p':>8}  verdict",
    ]
    for row in rows:
        suite, task = row.suite or "all suites", "all" if row.task_id is None else str(row.task_id)
        change = f"{100 * row.difference:+.1f} pp [{100 * row.low:+.1f}, {100 * row.high:+.1f}]"
        test = f"paired, A only {row.old_only} B only {row.new_only}" if row.paired else "unpaired"
        verdict = row.verdict
        if verdict == "cannot tell":
            unit = "paired episodes" if row.paired else "episodes per run"
            verdict += f" (underpowered: needs {row.needed} {unit})" if row.needed else " (no difference observed)"
        lines.append(
            f"{suite:<16}{task:>5}{f'{row.old.successes}/{row.old.n}':>9}{f'{row.new.successes}/{row.new.n}':>9}  "
            f"{change:<28}{test:<28}{row.p_value:>8.3g}  {verdict}"
        )
    regressed = [row for row in rows if row.verdict == "regressed"]
    names = ", ".join(f"{r.suite or 'all suites'}{'' if r.task_id is None else f' task {r.task_id}'}" for r in regressed)
    lines.append(f"verdict: B regressed ({names}): exit status 1" if regressed else "verdict: no regression")
    if across:
        lines.append(f"note: episodes paired across {across} (the logs differ only there)")
    only_a = {key(r) for r in old.results} - {key(r) for r in new.results}
    only_b = {key(r) for r in new.results} - {key(r) for r in old.results}
    if only_a or only_b:
        lines.append(f"note: the logs cover different episodes ({len(only_a)} only in A, {len(only_b)} only in B)")
    return lines, bool(regressed)


def _short_policy(config: Mapping[str, Any]) -> str:
    """The policy, and its checkpoint's folder name when it has one: for titles and legends."""
    checkpoint = dict(config.get("policy_setup") or {}).get("checkpoint") or dict(config.get("policy_params") or {}).get("checkpoint")
    return f"{config.get('policy')} {Path(checkpoint).name}" if checkpoint else str(config.get("policy"))


def success_figure(logs: Mapping[str, LogContents], confidence: float = DEFAULT_CONFIDENCE) -> Any:
    """A matplotlib Figure (Agg): per-task success of each log (bars side by side) with Wilson-interval error bars, each
    suite's total as a darker bar after its tasks, OpenVLA's published rate as a dashed line over
    the suites where it applies, and a title naming the policies, suites and episode counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vla_spec.statistics import success_rows

    tables = {name: {_label(r): r.proportion for r in success_rows(log.results, confidence)} for name, log in logs.items()}
    suites = sorted({suite for table in tables.values() for suite, _ in table if suite != "all suites"})
    groups = {suite: sorted({int(t) for table in tables.values() for s, t in table if s == suite and t != "all"}) for suite in suites}
    positions: dict[tuple[str, str], float] = {}
    x = 0.0
    for suite in suites:
        for task in groups[suite]:
            positions[(suite, str(task))] = x
            x += 1
        positions[(suite, "all")] = x + 0.3  # the suite total stands a little apart
        x += 1.9
    width = 0.8 / len(tables)
    fig = Figure(figsize=(max(7.0, 0.3 * len(positions) * len(tables) + 3), 4.8), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, no GUI and no pyplot state
    ax = fig.add_subplot()
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    for k, (name, table) in enumerate(tables.items()):
        log = logs[name]
        labels = [label for label in positions if label in table]
        xs = [positions[label] + (k - (len(tables) - 1) / 2) * width for label in labels]
        props = [table[label] for label in labels]
        rates = [100 * p.rate for p in props]
        errors = [[100 * (p.rate - p.low) for p in props], [100 * (p.high - p.rate) for p in props]]
        total = next(p for label, p in table.items() if label[1] == "all" and (len(suites) == 1 or label[0] == "all suites"))
        legend = f"{Path(name).name}: {_short_policy(log.header.config)} ({total.successes}/{total.n})"
        color = colors[k % len(colors)]
        bars = ax.bar(xs, rates, width, color=color, alpha=0.75, label=legend)
        ax.errorbar(xs, rates, yerr=errors, fmt="o", markersize=4, color=color, ecolor=color, elinewidth=1.5, capsize=3)
        for bar, label in zip(bars, labels):
            if label[1] == "all":
                bar.set_edgecolor("black")
                bar.set_hatch("//")
        if len(positions) * len(tables) <= 30:
            for x_pos, p in zip(xs, props):
                ax.text(x_pos, 100 * p.high + 1.5, f"{p.successes}/{p.n}", ha="center", va="bottom", fontsize=7)
    for suite in suites:
        published = next((_published(log, suite) for log in logs.values() if _published(log, suite)), None)
        if published is not None:
            left, right = positions[(suite, str(groups[suite][0]))] - 0.5, positions[(suite, "all")] + 0.5
            ax.hlines(published.rate_percent, left, right, colors="crimson", linestyles="--", linewidth=1.5,
                      label=f"published OpenVLA, {suite}: {published.rate_percent:.1f} %")
    ax.set_xticks(list(positions.values()), [task if task != "all" else "total" for _, task in positions])
    for suite in suites:
        first, last = positions[(suite, str(groups[suite][0]))], positions[(suite, "all")]
        ax.annotate(f"{suite}: task id", xy=((first + last) / 2, 0), xycoords=("data", "axes fraction"), xytext=(0, -24),
                    textcoords="offset points", ha="center", va="top", fontsize=10)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(f"success % ({percent(confidence, 0)} Wilson interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    runs = " vs ".join(f"{_short_policy(log.header.config)}, {len(log.results)} episodes" for log in logs.values())
    ax.set_title(f"{', '.join(suites)}: success per task and suite total\n{runs}", fontsize=11)
    fig.legend(fontsize=8, loc="outside lower center", ncols=1 if len(tables) > 1 else 2, frameon=False)
    return fig


def plot_success(path: Path, logs: Mapping[str, LogContents], confidence: float = DEFAULT_CONFIDENCE) -> None:
    """Write :func:`success_figure` to ``path`` (PNG at 150 dpi, SVG, PDF...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    success_figure(logs, confidence).savefig(path, dpi=150)


def _read_log(path: Path) -> LogContents:
    """The log at ``path``; a missing or unreadable file is the user's error (one line)."""
    from vla_spec.episodes import read_log

    try:
        return read_log(path)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from None


def _trials(log: LogContents, confidence: float) -> tuple[LogContents, list[str]]:
    """The log with identical repeats collapsed (:func:`vla_spec.factors.collapse_repeats`: what every
    table, verdict and comparison of the report counts), and the lines that say so and break success
    down by each varied factor (seeds over all episodes, the other factors over the trials)."""
    import dataclasses

    from vla_spec.factors import FACTORS, collapse_repeats, factor_rows, varied_factors

    repeats = collapse_repeats(log.results)
    lines = []
    if repeats.repeated or repeats.differing:
        lines.append(
            f"  independent trials: {len(repeats.trials)} of {repeats.episodes} episodes; {repeats.starts} starting states "
            f"(suite, task, init, camera): {repeats.repeated} played identically under every env seed (env.seed changes "
            f"nothing once the init state is set) and count once, {repeats.differing} differed between seeds and count "
            "every episode"
        )
    for factor in varied_factors(log.results):
        rows = factor_rows(log.results if factor == "env_seed" else repeats.trials, factor, confidence)
        cells = [f"{level}: {p.successes}/{p.n} [{percent(p.low, 0)}, {percent(p.high, 0)}]" for level, p in rows]
        lines.append(f"  by {FACTORS[factor]}: " + "; ".join(cells))
    return dataclasses.replace(log, results=repeats.trials), lines


def run_report(args: argparse.Namespace) -> int:
    from vla_spec.statistics import z_value

    try:
        z_value(args.confidence)  # a bad level fails before any work
    except ValueError as error:
        raise CliError(str(error)) from None
    if not 0.0 < args.margin <= 1.0:
        raise CliError(f"--margin must lie in (0, 1] (a fraction: 0.1 is 10 percentage points), got {args.margin}")
    regressed = False
    log = _read_log(args.log)
    if not log.results:
        raise CliError(f"{args.log} has no finished episodes yet")
    lines = _describe_log("A: " if args.compare else "", log)
    log, breakdown = _trials(log, args.confidence)
    lines += [*breakdown, format_success_table(log.results, args.confidence), *_verdict_lines(log, args.confidence)]
    logs = {str(args.log): log}
    if args.compare:
        other = _read_log(args.compare)
        if not other.results:
            raise CliError(f"{args.compare} has no finished episodes yet")
        lines += ["", *_describe_log("B: ", other)]
        other, breakdown = _trials(other, args.confidence)
        lines += [*breakdown, format_success_table(other.results, args.confidence)]
        comparison, regressed = _comparison_lines(log, other, args.confidence, args.margin)
        lines += [*_verdict_lines(other, args.confidence), "", *comparison]
        logs[str(args.compare)] = other
    if args.plot:
        plot_success(args.plot, logs, args.confidence)
        lines.append(f"plot: {args.plot}")
    print("\n".join(lines))
    return 1 if regressed else 0
