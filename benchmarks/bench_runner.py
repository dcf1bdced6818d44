"""Episodes per hour of ``vla-spec rollout`` with 1 and N environment workers (a benchmark, not a test).

Runs the same LIBERO episodes with an OpenVLA checkpoint (default: the trained tiny VLA,
``golden/tiny-vla-libero-object``) once per ``--workers`` value, each into a fresh log: ``1`` runs
in this process (no Ray), more run on an embedded Ray with that many environment actors and
``--policy-replicas`` policy actors answering them in batches, once per ``--overlap`` mode (off: one
group per policy actor, simulators and model take turns; on: two groups that alternate, so one
group's simulators step while the other's batch is computed). Reports wall time (Ray start-up
included), episodes per hour, policy steps per second, the mean episode length and the batch sizes
the policy actors formed (rounds per size); checks that every run gave the same outcomes (steps,
success, error). ``--stop-at N`` makes a smoke run: the policy raises at policy step N, so every
episode ends there (logged with that error, as a failure).

    MUJOCO_GL=egl python benchmarks/bench_runner.py --tasks 0,1 --inits 0-1 --workers 1 2 --overlap off on --json out.json
    MUJOCO_GL=egl python benchmarks/bench_runner.py --tasks 0,1 --inits 0 --workers 2 --overlap off on --stop-at 20  # smoke
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

from collections.abc import Sequence
from typing import Any

from vla_spec.commands.sim import build_specs, parse_indices
from vla_spec.runner import RunStats, run_episodes
from vla_spec.sim.interface import BatchItem, PolicyStep
from vla_spec.sim.openvla_policy import OpenVLAPolicy


class StopsAt(OpenVLAPolicy):
    """:class:`OpenVLAPolicy` whose answer raises at policy step ``stop_at`` (``--stop-at``)."""

    def __init__(self, *args: Any, stop_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def act_batch(self, items: Sequence[BatchItem]) -> list[PolicyStep]:
        if any(item.step >= self.stop_at for item in items):
            raise RuntimeError(f"--stop-at {self.stop_at}: the smoke run ends here")
        return super().act_batch(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="tiny-vla-libero-object")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--tasks", default="0,1")
    parser.add_argument("--inits", default="0-1")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="1", help="torch threads of the policy (default 1)")
    parser.add_argument("--policy-replicas", type=int, help="policy actors on Ray (default: the runner's)")
    parser.add_argument("--overlap", nargs="+", choices=["off", "on"], default=["on"], help="modes to run on Ray (default on)")
    parser.add_argument("--stop-at", type=int, metavar="STEP", help="smoke run: end every episode at this policy step")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    specs = build_specs([args.suite], parse_indices(args.tasks, "--tasks"), parse_indices(args.inits, "--inits"), (0,))
    policy, extra = (OpenVLAPolicy, {}) if args.stop_at is None else (StopsAt, {"stop_at": args.stop_at})
    make_policy = functools.partial(policy, args.checkpoint, device=args.device, threads=args.threads, **extra)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        runs = [(workers, mode) for workers in args.workers for mode in (args.overlap if workers > 1 else ["-"])]
        for workers, mode in runs:
            stats = RunStats()
            load = os.getloadavg()
            started = time.perf_counter()
            results = run_episodes(make_policy, specs, Path(folder) / f"w{workers}{mode}.jsonl", workers=workers,
                                   progress=False, stats=stats, policy_replicas=args.policy_replicas, overlap=mode == "on")
            wall = time.perf_counter() - started
            rows.append({
                "workers": workers,
                "overlap": mode,
                "episodes": len(results),
                "wall_s": round(wall, 1),
                "episodes_per_hour": round(3600 * len(results) / wall, 1),
                "policy_steps_per_s": round(stats.policy_steps / wall, 2),
                "mean_steps": round(stats.policy_steps / len(results), 1),
                "successes": sum(r.success for r in results),
                "errors": sum(r.error is not None for r in results),
                "batch_sizes": {str(size): rounds for size, rounds in sorted(stats.batch_sizes.items())},
                "load_average_start": [round(x, 2) for x in load],
                "outcomes": [(r.task_id, r.init_index, r.steps, r.success, r.error) for r in results],
            })
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "outcomes"}), flush=True)
    same = all(row["outcomes"] == rows[0]["outcomes"] for row in rows)
    print(f"same outcomes in every run: {same}; cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": rows, "same_outcomes": same,
                                         "cpus": os.cpu_count(), "load_average_end": os.getloadavg()}, indent=1))
    if not same:
        raise SystemExit("outcomes differ between runs")


if __name__ == "__main__":
    main()
