"""Spec: the command line under a newcomer's mistakes (issue 14), through the installed ``vla-spec``
script. Setup errors fail fast (one line, exit 2, no log written); a log that disagrees with the
command names the field and the way out; Ctrl-C stops cleanly and the rerun resumes; the header
records what ran; progress shows steps inside the running episodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vla_spec.episodes import read_log

SCRIPT = Path(sys.executable).parent / "vla-spec"
ROLLOUT = ["rollout", "--suite", "libero_object", "--tasks", "0"]


def vla_spec(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script (the one ``pip install`` put beside this interpreter)."""
    assert SCRIPT.is_file(), f"no installed console script at {SCRIPT}: pip install -e ."
    return subprocess.run([str(SCRIPT), *argv], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def last_line(stderr: str) -> str:
    """The error line (importing robosuite may print its own warnings first)."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def in_process(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``vla-spec ARGV`` run by :func:`vla_spec.cli.main` in this process: (exit status, stderr).

    The same parser and handlers as the console script without a new interpreter (about 0.5-2.5 s
    each); the console script itself is run by ``test_help_version_and_choices`` and below."""
    from vla_spec.cli import main

    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.mark.cpu
def test_setup_errors_fail_before_the_log_is_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown key, a directory as the log, and a directory given to report: one line, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert in_process(*ROLLOUT, "--policy", "expert", "--unnorm-key", "nope", "--log", "x.jsonl", capsys=capsys) == (
        2,
        "vla-spec rollout: error: --unnorm-key: unknown unnorm_key 'nope'; valid keys: bridge_orig, "
        "fractal20220817_data, libero_10, libero_goal, libero_object, libero_spatial\n",
    )
    assert in_process(*ROLLOUT, "--policy", "openvla", "--checkpoint", "tiny-openvla", "--decoder", "fastest", "--log", "x.jsonl",
                      capsys=capsys) == (2, "vla-spec rollout: error: --decoder: 'fastest' is not a decoder; choose fast or naive\n")
    (tmp_path / "runs").mkdir()
    assert in_process(*ROLLOUT, "--policy", "wait", "--log", "runs", capsys=capsys) == (
        2,
        "vla-spec rollout: error: episode log runs is a directory; give a file in it, e.g. runs/run.jsonl\n",
    )
    assert in_process("report", "runs", capsys=capsys) == (
        2,
        "vla-spec report: error: episode log runs is a directory; give a file in it, e.g. runs/run.jsonl\n",
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs"]


@pytest.mark.sim
def test_ctrl_c_just_after_the_header_still_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C between the header's write and the first episode (a race CI met): exit 130 with the
    resume line, not the bare 'interrupted'; the header is kept, so the rerun resumes the log.
    (The sim tier: ``rollout`` checks that LIBERO imports before it opens the log.)"""
    from vla_spec.episodes import EpisodeLog

    def interrupted(log: EpisodeLog) -> EpisodeLog:
        raise KeyboardInterrupt

    monkeypatch.setattr(EpisodeLog, "__enter__", interrupted)
    monkeypatch.chdir(tmp_path)
    status, stderr = in_process(*ROLLOUT, "--inits", "0", "--policy", "wait", "--log", "c.jsonl", capsys=capsys)
    assert (status, stderr.splitlines()[-1]) == (130, "interrupted after 0 episode(s); rerun the same command to resume")
    kept = read_log(tmp_path / "c.jsonl")
    assert (kept.header.config["policy"], kept.results) == ("wait", ())


@pytest.mark.cpu
def test_cuda_without_cuda_fails_before_any_episode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    monkeypatch.chdir(tmp_path)
    done = in_process(*ROLLOUT, "--policy", "openvla", "--checkpoint", "tiny-openvla", "--device", "cuda", "--log", "x.jsonl", capsys=capsys)
    build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
    assert done == (2, f"vla-spec rollout: error: --device: 'cuda' needs CUDA, which is not available here ({build}); use cpu\n")
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.cpu
def test_help_version_and_choices() -> None:
    from vla_spec import __version__
    from vla_spec.cli import build_parser

    parser = build_parser()
    assert "``" not in parser.format_help() and "examples:" in parser.format_help()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--version"])
    assert exited.value.code == 0
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert "--policy {expert,openvla,http,wait}" in commands["rollout"].format_usage()
    assert "--unnorm-key KEY" in commands["decode"].format_usage() and "[--unnorm-key" not in commands["decode"].format_usage()
    version = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (version.returncode, version.stdout) == (0, f"vla-spec {__version__}\n")


@pytest.mark.cpu
def test_decode_accepts_a_no_noops_key(capsys: pytest.CaptureFixture[str]) -> None:
    """``{suite}_no_noops`` (the OFT checkpoints' key) names the suite's regenerated dataset: the same statistics."""
    from vla_spec.cli import main

    ids = ["31882", "31894", "31881", "31905", "31888", "31875", "31999"]
    assert main(["decode", *ids, "--unnorm-key", "libero_object", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["decode", *ids, "--unnorm-key", "libero_object_no_noops", "--json"]) == 0
    no_noops = json.loads(capsys.readouterr().out)
    assert no_noops == {**plain, "unnorm_key": "libero_object_no_noops"}


@pytest.mark.cpu
def test_the_openvla_policy_records_its_checkpoint_dtype_device_and_key() -> None:
    """What the log header's ``policy_setup`` holds for ``--policy openvla`` (read without loading weights)."""
    from vla_spec.model.tiny import NAMED_CHECKPOINTS
    from vla_spec.sim.openvla_policy import OpenVLAPolicy, checkpoint_sha256

    folder = NAMED_CHECKPOINTS["tiny-vla-libero-object"]
    setup = OpenVLAPolicy("tiny-vla-libero-object", threads="1").check_setup(["libero_object"])
    assert setup == {
        "checkpoint": str(folder.resolve()),
        "checkpoint_sha256": checkpoint_sha256(folder),
        "dtype": "float32",
        "device": "cpu",
        "decoder": "fast",
        "image": "camera",
        "unnorm_key": {"libero_object": "libero_object"},
    }
    assert checkpoint_sha256(folder) != checkpoint_sha256(NAMED_CHECKPOINTS["tiny-openvla"])


@pytest.mark.cpu
def test_a_checkpoint_is_hashed_once_per_version_of_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log's ``checkpoint_sha256``: SHA-256 over ``name NUL sha256(content)`` of each file in name
    order (FIPS 180-2's example: sha256(b"abc") = ba7816bf...), the model card and the evaluation
    record (which names the digest) left out; each file is read again only when
    its size or modification time changes, not at every rollout."""
    import hashlib

    from vla_spec.sim import openvla_policy
    from vla_spec.sim.openvla_policy import checkpoint_sha256

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "README.md").write_text("not hashed")
    (folder / "evaluation.json").write_text('{"checkpoint_sha256_prefix": "not hashed"}')
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    expected = hashlib.sha256(b"model.safetensors\0" + bytes.fromhex(abc)).hexdigest()
    assert checkpoint_sha256(folder) == expected

    def unread(*args: object) -> None:
        raise AssertionError("the file was read again")

    read = hashlib.file_digest
    monkeypatch.setattr(openvla_policy.hashlib, "file_digest", unread)
    assert checkpoint_sha256(folder) == expected  # from the cache
    (folder / "model.safetensors").write_bytes(b"abd")
    os.utime(folder / "model.safetensors", ns=(1, 1))  # same size, another time: another version
    with pytest.raises(AssertionError, match="read again"):
        checkpoint_sha256(folder)
    monkeypatch.setattr(openvla_policy.hashlib, "file_digest", read)
    assert checkpoint_sha256(folder) != expected


@pytest.mark.cpu
def test_check_setup_resolves_the_key_as_reset_does() -> None:
    """Both policies' setup checks go through the one resolution (``ActionProcessor.select``):
    ``{suite}_no_noops`` is accepted there as it is in ``reset`` and ``decode``, and recorded as asked."""
    from vla_spec.sim import PolicySetupError
    from vla_spec.sim.expert import PickPlaceExpert
    from vla_spec.sim.openvla_policy import OpenVLAPolicy

    policy = OpenVLAPolicy("tiny-vla-libero-object", unnorm_key="libero_object_no_noops")
    assert policy.check_setup(["libero_object"])["unnorm_key"] == {"libero_object": "libero_object_no_noops"}
    expert = PickPlaceExpert(unnorm_key="libero_goal_no_noops")
    assert expert.check_setup(["libero_object"])["unnorm_key"] == {"libero_object": "libero_goal_no_noops"}
    with pytest.raises(PolicySetupError, match="unknown unnorm_key 'bridge_orig_no_noops'") as error:
        PickPlaceExpert(unnorm_key="bridge_orig_no_noops").check_setup(["libero_object"])
    assert error.value.option == "unnorm_key"


@pytest.mark.cpu
def test_progress_shows_steps_and_steps_per_second_of_a_running_episode(capsys: pytest.CaptureFixture[str]) -> None:
    from vla_spec.rollout import EpisodeSpec
    from vla_spec.runner import _Progress
    from vla_spec.sim.suites import MAX_STEPS

    progress = _Progress(total=4, done=[], enabled=True, slots=2)
    progress.start(1, EpisodeSpec("libero_object", 3, 7))
    time.sleep(0.05)
    progress.step(1, 40)
    line = str(progress.steps[1])
    progress.close()
    assert line.startswith("libero_object task 3 init 7:") and f" 40/{MAX_STEPS['libero_object']} " in line and "step/s]" in line


def _wait_for(path: Path, ready: Callable[[list[str]], bool], process: subprocess.Popen[str], timeout: float) -> None:
    """Until the complete lines of ``path`` are ``ready``."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if ready(text[: text.rfind("\n") + 1].splitlines()):
            return
        assert process.poll() is None, f"the rollout ended early with exit status {process.returncode}"
        assert time.monotonic() < deadline, f"{path} was not ready within {timeout} s"
        time.sleep(0.1)


def _interrupt(argv: list[str], cwd: Path, log: Path, ready: Callable[[list[str]], bool]) -> subprocess.CompletedProcess[str]:
    """Start the installed script, press Ctrl-C once the lines of ``log`` are ``ready``. Output goes
    to files beside ``cwd``: a pipe nobody reads while waiting would fill up and block the writer."""
    out, err = cwd.parent / f"{cwd.name}.out", cwd.parent / f"{cwd.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(
            [str(SCRIPT), *argv], cwd=cwd, stdout=stdout, stderr=stderr, text=True,
            # a shell without job control starts background jobs with SIGINT ignored, and children inherit that
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            _wait_for(log, ready, process, timeout=300)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out.read_text(), err.read_text())


@pytest.mark.sim
def test_ctrl_c_then_resume_and_progress_in_the_episode(tmp_path: Path) -> None:
    """Ctrl-C after the first of two episodes: exit 130 and one line; the rerun says what it resumes,
    shows the running episode's steps and steps/s, and prints one summary line (the table is report's)."""
    argv = [*ROLLOUT, "--inits", "0-1", "--policy", "wait", "--log", "a.jsonl"]
    work = tmp_path / "work"
    work.mkdir()
    stopped = _interrupt(argv, work, work / "a.jsonl", lambda lines: len(lines) == 2)
    assert (stopped.returncode, last_line(stopped.stderr)) == (130, "interrupted after 1 episode(s); rerun the same command to resume")
    resumed = vla_spec(*argv, cwd=work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming: 1 of 2 episodes already in the log a.jsonl\n" in resumed.stderr
    assert "libero_object task 0 init 1:" in resumed.stderr and "step/s]" in resumed.stderr
    assert resumed.stdout.splitlines()[-1] == "0/2 episodes succeeded; log: a.jsonl (per task: vla-spec report a.jsonl)"
    assert "Wilson" not in resumed.stdout  # the table is report's, not printed twice by the main command
    assert len(read_log(work / "a.jsonl").results) == 2


@pytest.mark.sim
def test_the_header_records_the_checkpoint_and_a_mismatch_names_the_field(tmp_path: Path) -> None:
    """--policy openvla records checkpoint path and hash, dtype, device and unnorm_key; a rerun with
    another dtype is refused naming the fields and the two ways out; --overwrite takes one."""
    from vla_spec.model.tiny import NAMED_CHECKPOINTS
    from vla_spec.sim.openvla_policy import checkpoint_sha256

    argv = [*ROLLOUT, "--inits", "0", "--policy", "openvla", "--checkpoint", "tiny-openvla", "--log", "b.jsonl", "--no-progress"]
    work = tmp_path / "work"
    work.mkdir()
    stopped = _interrupt(argv, work, work / "b.jsonl", lambda lines: len(lines) == 1)
    assert (stopped.returncode, last_line(stopped.stderr)) == (130, "interrupted after 0 episode(s); rerun the same command to resume")
    header = read_log(work / "b.jsonl").header
    folder = NAMED_CHECKPOINTS["tiny-openvla"]
    assert header.config["policy_params"] == {"checkpoint": "tiny-openvla"}
    assert header.config["policy_setup"] == {
        "checkpoint": str(folder.resolve()), "checkpoint_sha256": checkpoint_sha256(folder), "dtype": "float32",
        "device": "cpu", "decoder": "fast", "image": "camera", "unnorm_key": {"libero_object": "libero_object"},
    }
    refused = vla_spec(*argv, "--dtype", "bfloat16", cwd=work)
    assert (refused.returncode, last_line(refused.stderr)) == (
        2,
        "vla-spec rollout: error: b.jsonl was started with another configuration (policy_params.dtype: None in the log, "
        "'bfloat16' now; policy_setup.dtype: 'float32' in the log, 'bfloat16' now); rerun with the log's arguments to "
        "resume it, or start a new log: --log NEW.jsonl, or --overwrite to discard the episodes in it",
    )
    overwritten = _interrupt(
        [*argv, "--dtype", "bfloat16", "--overwrite"], work, work / "b.jsonl", lambda lines: '"dtype": "bfloat16"' in "".join(lines)
    )
    assert overwritten.returncode == 130
    assert read_log(work / "b.jsonl").header.config["policy_setup"]["dtype"] == "bfloat16"
    assert os.listdir(work) == ["b.jsonl"]
