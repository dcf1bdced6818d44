"""Goldens: syrupy JSON snapshots stored under ``<repo>/golden/<test module>/``.

One folder per test module keeps syrupy's unused-snapshot detection exact (it scans the folder of
each test file). Record or refresh with ``pytest --snapshot-update``; a changed golden then shows
up as a reviewable JSON diff.
"""

from __future__ import annotations

from pathlib import Path

from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation

GOLDEN_DIRNAME = "golden"


def _project_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise FileNotFoundError(f"no pyproject.toml above {start}: goldens live in <project root>/{GOLDEN_DIRNAME}")


class GoldenExtension(JSONSnapshotExtension):
    """JSON snapshots in ``golden/<test_module_stem>/<test name>.json``."""

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        test_file = Path(test_location.filepath)
        return str(_project_root(test_file.parent) / GOLDEN_DIRNAME / test_file.stem)
