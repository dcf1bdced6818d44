"""``vla-spec decode`` and ``vla-spec stats`` (in-process through ``main``, plus one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_spec.cli import main
from vla_spec.normalization import shipped_norm_stats

pytestmark = pytest.mark.cpu

BOOK_IDS = ["31882", "31894", "31881", "31905", "31888", "31875", "31999"]
BOOK_NORMALIZED = np.array([-20, -44, -18, -66, -32, -6, -254]) / 255  # c_k = -1 + (2k+1)/255
OSC_POSE = np.array([0.05] * 3 + [0.5] * 3)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def decode_json(capsys: pytest.CaptureFixture[str], key: str, *extra: str) -> dict:
    code, out, err = run(capsys, "decode", *BOOK_IDS, "--unnorm-key", key, "--json", *extra)
    assert code == 0 and err == ""
    return json.loads(out)


def test_decode_json_worked_example(capsys: pytest.CaptureFixture[str]) -> None:
    report = decode_json(capsys, "libero_object")
    stats = shipped_norm_stats()["libero_object"]
    expected = np.where(stats.mask, 0.5 * (BOOK_NORMALIZED + 1) * (stats.q99 - stats.q01) + stats.q01, BOOK_NORMALIZED)
    assert report["unnorm_key"] == "libero_object"
    assert report["axes"] == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert report["token_ids"] == [int(i) for i in BOOK_IDS]
    np.testing.assert_allclose(report["normalized"], BOOK_NORMALIZED, atol=1e-15)
    np.testing.assert_allclose(report["action"], expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(report["physical"][:6], expected[:6] * OSC_POSE, rtol=1e-14)
    assert report["physical"][6] is None
    assert report["physical_units"] == ["m", "m", "m", "rad", "rad", "rad", ""]
    assert (report["env_gripper"], report["gripper_meaning"]) == (1.0, "close")


def test_decode_text_names_axes_units_and_gripper_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "decode", *BOOK_IDS, "--unnorm-key", "libero_object")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "libero_object" in lines[0] and "0.05 m / 0.5 rad" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert rows["x"].split()[1:] == ["31882", "-0.078431", "+0.099711", "+0.004986", "m"]
    assert rows["yaw"].split()[-2:] == ["-0.019664", "rad"]
    assert rows["gripper"].endswith("env +1 (close)")


def test_decode_open_gripper(capsys: pytest.CaptureFixture[str]) -> None:
    # id 31744 decodes to +0.996 > 0.5: open (env -1)
    code, out, _ = run(capsys, "decode", *BOOK_IDS[:6], "31744", "--unnorm-key", "libero_spatial", "--json")
    assert code == 0 and json.loads(out)["gripper_meaning"] == "open" and json.loads(out)["env_gripper"] == -1.0


def test_decode_non_libero_key_has_no_physical_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    report = decode_json(capsys, "bridge_orig")
    assert report["physical"] is None and report["env_gripper"] is None
    np.testing.assert_allclose(report["normalized"], BOOK_NORMALIZED, atol=1e-15)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["31882", "x", *BOOK_IDS[2:], "--unnorm-key", "libero_object"], "'x' is not an integer"),
        (["31882.5", *BOOK_IDS[1:], "--unnorm-key", "libero_object"], "'31882.5' is not an integer"),
        ([*BOOK_IDS[:6], "--unnorm-key", "libero_object"], "expected 7 token ids (one per axis: x y z roll pitch yaw gripper), got 6"),
        ([*BOOK_IDS, "31872", "--unnorm-key", "libero_object"], "got 8"),
        ([*BOOK_IDS[:6], "32000", "--unnorm-key", "libero_object"], "[32000] are not action tokens (31744..31999); pass --allow-out-of-range"),
        (["-5", *BOOK_IDS[1:], "--unnorm-key", "libero_object"], "[-5] are not action tokens"),
        ([*BOOK_IDS, "--unnorm-key", "libero_90"], "unknown unnorm_key 'libero_90'; valid keys: bridge_orig, fractal20220817_data, libero_10"),
    ],
)
def test_decode_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    code, out, err = run(capsys, "decode", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("vla-spec decode: error: ")
    assert needle in err


def test_decode_without_a_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--unnorm-key is required, and the usage line says so (argparse: usage, then the error, exit 2)."""
    with pytest.raises(SystemExit) as exited:
        main(["decode", *BOOK_IDS])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.splitlines()[0].startswith("usage: vla-spec decode [-h] --unnorm-key KEY")
    assert err.splitlines()[-1] == "vla-spec decode: error: the following arguments are required: --unnorm-key"


def test_allow_out_of_range_clips_like_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "decode", "31743", *BOOK_IDS[1:6], "32000", "--unnorm-key", "libero_goal", "--json", "--allow-out-of-range")
    assert code == 0 and "warning" in err and "[31743, 32000]" in err
    normalized = json.loads(out)["normalized"]
    assert normalized[0] == pytest.approx(254 / 255) and normalized[6] == pytest.approx(-254 / 255)


def test_stats_json_lists_keys_and_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", "--json")
    report = json.loads(out)
    assert code == 0 and set(report) == set(shipped_norm_stats())
    spatial = report["libero_spatial"]
    assert (spatial["num_trajectories"], spatial["num_transitions"]) == (432, 52970)
    steps = [row["dataset_units"] for row in spatial["resolution"][:6]]
    np.testing.assert_allclose(steps, [0.00660, 0.00603, 0.00733, 0.000828, 0.00150, 0.00129], rtol=5e-3)
    np.testing.assert_allclose([row["physical"] for row in spatial["resolution"][:6]], np.array(steps) * OSC_POSE, rtol=1e-12)
    assert all(row["normalized"] == pytest.approx(2 / 255) for row in spatial["resolution"])
    assert all(row["physical"] is None for row in report["bridge_orig"]["resolution"])
    assert report["bridge_orig"]["num_transitions"] is None


def test_stats_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats")
    assert code == 0
    for key in shipped_norm_stats():
        assert f"\n{key}: trajectories " in out
    assert "libero_object: trajectories 454, transitions 66984" in out


def test_installed_console_script_in_a_subprocess() -> None:
    """The ``vla-spec`` script that ``pip install`` put beside this interpreter (not ``python -m``)."""
    script = Path(sys.executable).parent / "vla-spec"
    assert script.is_file(), f"no installed console script at {script}: pip install -e ."
    ok = subprocess.run(
        [str(script), "decode", *BOOK_IDS, "--unnorm-key", "libero_object", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["gripper_meaning"] == "close"
    bad = subprocess.run(
        [str(script), "decode", "1", "--unnorm-key", "libero_object"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_a_bug_inside_a_command_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only CliError becomes a one-line exit 2; a ValueError from deep inside is a bug and propagates."""
    from vla_spec.commands import spec

    def broken(*_args: object) -> None:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(spec, "decode_report", broken)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        main(["decode", *BOOK_IDS, "--unnorm-key", "libero_object"])
