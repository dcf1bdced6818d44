"""Where the distributed cpu tier's time goes, per process: a pytest plugin and its summary.

    VLA_SPEC_TIMELINE=t.jsonl python -m pytest -p benchmarks.cpu_tier_timeline -m cpu -q
    python benchmarks/cpu_tier_timeline.py t.jsonl

The plugin appends one JSON line per phase and process (the controller ``ctl`` and each xdist
worker): wall-clock time (s since the epoch) and the process's CPU (user + sys, s) at start-up,
after collection, at the first test, at the session's end and at exit (``atexit``: before the
interpreter's own clean-up, which the controller still waits for). The summary gives, per
process, its CPU to collect and in all, and when (s from the controller's start) its tests ended
and it exited: the torch worker (``conftest.TORCH_TESTS``) is the one with the most CPU, and the
run's wall time is its end plus the controller's wait for it. Figures from a loaded machine are
larger and noisier: compare CPU, and old against new in turn.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

_started: list[str] = []  # the first test's node id, once it starts


def _record(phase: str) -> None:
    cpu = os.times()
    line = {"process": os.environ.get("PYTEST_XDIST_WORKER", "ctl"), "phase": phase, "time": time.time(),
            "cpu": round(cpu.user + cpu.system, 3)}
    with open(os.environ["VLA_SPEC_TIMELINE"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    if "VLA_SPEC_TIMELINE" not in os.environ:
        raise SystemExit("benchmarks.cpu_tier_timeline: set VLA_SPEC_TIMELINE to the file to append to")
    _record("start")
    atexit.register(_record, "exit")


def pytest_collection_finish(session) -> None:  # type: ignore[no-untyped-def]
    _record("collected")


def pytest_runtest_setup(item) -> None:  # type: ignore[no-untyped-def]
    if not _started:
        _started.append(item.nodeid)
        _record("first-test")


def pytest_sessionfinish(session) -> None:  # type: ignore[no-untyped-def]
    _record("finished")


def summary(lines: list[dict]) -> str:
    """One row per process: CPU at collection and in all; wall s (from the controller's start) at
    its tests' end and at its exit."""
    start = min(line["time"] for line in lines if line["process"] == "ctl")
    phases: dict[str, dict[str, dict]] = {}
    for line in lines:
        phases.setdefault(line["process"], {})[line["phase"]] = line
    rows = ["process  collect-cpu  cpu    tests-end  exit"]
    for process, seen in sorted(phases.items()):
        last = seen.get("exit", seen.get("finished"))
        collected = f"{seen['collected']['cpu']:.2f}" if "collected" in seen else "-"  # the controller collects nothing
        ended = seen.get("finished", last)["time"] - start
        rows.append(f"{process:8} {collected:>11}  {last['cpu']:5.2f}  {ended:9.1f}  {last['time'] - start:4.1f}")
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/cpu_tier_timeline.py TIMELINE.jsonl")
    with open(sys.argv[1], encoding="utf-8") as handle:
        print(summary([json.loads(line) for line in handle if line.strip()]))
