"""Recording demonstrations, the driver's side (no simulator): an episode the expert failed leaves
its failure record, and a rerun skips it without starting a simulator or Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_spec.demos import DemoOutcome, DemoRecording, DemoSpec, failed_path, record_demos, recorded_before, save


@pytest.mark.cpu
def test_a_failed_episode_leaves_its_record_and_a_rerun_skips_it(tmp_path: Path) -> None:
    spec = DemoSpec("libero_object", 3, 1011, 0.3)
    assert recorded_before(spec, tmp_path) is None
    assert save(DemoRecording(spec, 280, None), tmp_path) == DemoOutcome(spec, None, 280, skipped=False)
    record = tmp_path / "libero_object" / "task03_seed01011.failed.json"
    assert failed_path(tmp_path, spec) == record and sorted(p.name for p in record.parent.iterdir()) == [record.name]
    assert json.loads(record.read_text(encoding="utf-8")) == {
        "spec": {"suite": "libero_object", "task_id": 3, "seed": 1011, "noise_std": 0.3}, "steps": 280}
    skipped = DemoOutcome(spec, None, 0, skipped=True)
    assert recorded_before(spec, tmp_path) == skipped
    assert record_demos([spec], tmp_path, workers=2, progress=False) == [skipped]  # nothing to record: no Ray, no simulator


@pytest.mark.cpu
def test_demos_at_a_ray_address_that_does_not_answer_fail_in_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``demos --ray-address`` joins the cluster first, as ``rollout`` does (whose test holds the
    listening-port negative control): a refused port is exit 2 with one line, no file, no Ray."""
    import socket
    import sys

    from vla_spec.cli import main

    ray_was_imported = "ray" in sys.modules
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        status = main(["demos", "--suite", "libero_object", "--tasks", "0", "--seeds", "1", "--workers", "2",
                       "--ray-address", address, "--out", str(tmp_path / "demos"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"vla-spec demos: error: --ray-address: cannot join the Ray cluster at {address!r} (no answer on ")
    assert not (tmp_path / "demos").exists()
    assert ray_was_imported or "ray" not in sys.modules
