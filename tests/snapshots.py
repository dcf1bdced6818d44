"""Test support: syrupy JSON snapshots stored under ``<repo>/golden/<test module>/``.

One folder per test module keeps syrupy's unused-snapshot detection exact (it scans the folder of
each test file). Record or refresh with ``pytest --snapshot-update``; a changed golden then shows
up as a reviewable JSON diff.

Everything compares exactly except the logit values stored at full precision (keys in
:data:`LOGIT_TOLERANCE`): float32 sums differ in their last bits between CPUs (vector widths,
thread counts), so those compare to an absolute tolerance in logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation

GOLDEN_DIRNAME = "golden"
LOGIT_TOLERANCE = {"margins": 1e-4, "top_logits": 1e-4}


def _project_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise FileNotFoundError(f"no pyproject.toml above {start}: goldens live in <project root>/{GOLDEN_DIRNAME}")


def same_json(got: Any, want: Any, tolerance: float = 0.0) -> bool:
    """Equal JSON values; numbers under a :data:`LOGIT_TOLERANCE` key within that tolerance."""
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(
            same_json(got[k], want[k], LOGIT_TOLERANCE.get(k, tolerance)) for k in got
        )
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(same_json(g, w, tolerance) for g, w in zip(got, want))
    numbers = (int, float)
    if tolerance and isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=0.0, abs_tol=tolerance)
    return bool(got == want)


class GoldenExtension(JSONSnapshotExtension):
    """JSON snapshots in ``golden/<test_module_stem>/<test name>.json``."""

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        test_file = Path(test_location.filepath)
        return str(_project_root(test_file.parent) / GOLDEN_DIRNAME / test_file.stem)

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        if serialized_data == snapshot_data:
            return True
        try:
            return same_json(json.loads(serialized_data), json.loads(snapshot_data))
        except (TypeError, ValueError):
            return False
