"""Spec: camera variations are named, exact and reproducible (``vla_spec.sim.cameras``); a bad name
is one line naming the forms. The simulator side (the view moves, the physics does not) is in
``tests/test_sim_matrix.py``."""

from __future__ import annotations

import pytest

from vla_spec.cli import main
from vla_spec.sim.cameras import CameraPose, UnknownCameraVariation, parse_variation

pytestmark = pytest.mark.cpu


@pytest.mark.parametrize(
    ("name", "pose"),
    [
        ("none", CameraPose()),
        ("shift-2cm", CameraPose(shift_m=-0.02)),
        ("shift+0.5cm", CameraPose(shift_m=0.005)),
        ("lift+3cm", CameraPose(offset_m=(0.0, 0.0, 0.03))),
        ("yaw+5deg", CameraPose(yaw_deg=5.0)),
        ("pitch-2.5deg", CameraPose(pitch_deg=-2.5)),
    ],
)
def test_names_mean_what_they_say(name: str, pose: CameraPose) -> None:
    assert parse_variation(name) == pose


def test_jitter_is_seeded_and_bounded() -> None:
    poses = [parse_variation(f"jitter{k}") for k in range(20)]
    assert parse_variation("jitter3") == poses[3]  # the same name, the same pose
    assert len(set(poses)) == 20
    for pose in poses:
        assert max(abs(v) for v in pose.offset_m) <= 0.02 and abs(pose.yaw_deg) <= 5 and abs(pose.pitch_deg) <= 5


@pytest.mark.parametrize("name", ["shift2cm", "yaw+5", "roll+5deg", "shift-2mm", "jitter", ""])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UnknownCameraVariation, match="use none, shift"):
        parse_variation(name)


def test_the_cli_names_the_bad_variation(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    argv = ["rollout", "--suite", "libero_object", "--policy", "wait", "--cameras", "none,tilt", "--log", str(tmp_path / "x.jsonl")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "vla-spec rollout: error: --cameras: unknown camera variation 'tilt'; use none, shift+Ncm, shift-Ncm, lift+Ncm, "
        "lift-Ncm, yaw+Ndeg, yaw-Ndeg, pitch+Ndeg, pitch-Ndeg or jitterK (e.g. shift-2cm, yaw+5deg, jitter3)"
    )
