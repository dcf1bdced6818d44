"""Test support for the closed loop: the trained tiny VLA (``tiny-vla-libero-object``), its model
card's record (``evaluation.json`` beside the weights), a run of it through :class:`OpenVLAPolicy`
and the normal episode runner (by default 2 workers on Ray, float32, one torch thread each), and the one-line
summary of a run that the tests record (``record_property("result", ...)``, printed after the run
by ``conftest.pytest_terminal_summary``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from vla_spec.rollout import EpisodeResult, EpisodeSpec
from vla_spec.statistics import PublishedResult, wilson_interval

CHECKPOINT = "tiny-vla-libero-object"
SUITE = "libero_object"
WORKERS = 2


def run_tiny_vla(
    folder: Path, name: str, specs: list[EpisodeSpec], workers: int = WORKERS, **policy_options: object
) -> list[EpisodeResult]:
    """``specs`` run closed loop by the trained tiny VLA (``policy_options`` change it: ``image``,
    ``unnorm_key``) on ``workers`` environment workers (1: in this process), logged to
    ``folder/name.jsonl``; an episode that raised fails the test."""
    from vla_spec.runner import run_episodes
    from vla_spec.sim.openvla_policy import OpenVLAPolicy

    options = {"checkpoint": CHECKPOINT, "threads": 1, **policy_options}
    results = run_episodes(
        functools.partial(OpenVLAPolicy, **options), specs, folder / f"{name}.jsonl", workers=workers, progress=False
    )
    assert_no_errors(results)
    return results


def assert_no_errors(results: list[EpisodeResult]) -> None:
    """An episode that raised is a bug in the run, not a failed episode: the test fails, naming each."""
    errors = [f"{r.suite}/{r.task_id}/{r.init_index}: {r.error}" for r in results if r.error]
    assert not errors, f"episodes raised: {errors}"


def summary(name: str, results: list[EpisodeResult]) -> str:
    """``name: 5/20 (25.0 %), Wilson 95 % [11.2 %, 46.9 %]``: what a run shows, for the run's summary."""
    return f"{name}: {wilson_interval(sum(r.success for r in results), len(results))}"


def model_card() -> dict[str, Any]:
    """The checkpoint's record of its measured held-out run (``evaluation.json``)."""
    from vla_spec.model.tiny import resolve_checkpoint

    return json.loads((resolve_checkpoint(CHECKPOINT) / "evaluation.json").read_text(encoding="utf-8"))


def model_card_result() -> PublishedResult:
    """The checkpoint's reported libero_object result, as a published rate to compare with."""
    held_out = model_card()["held_out"]
    rate = 100.0 * held_out["successes"] / held_out["episodes"]
    return PublishedResult(CHECKPOINT, rate, 0.0, 1, held_out["episodes"], f"model card: {held_out['command']}")
