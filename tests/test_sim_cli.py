"""Spec: ``vla-spec report`` summarizes a log with Wilson intervals, the published-number verdict and,
with ``--compare``, the two-proportion test; ``rollout``/``report`` reject bad input with one line
and exit status 2 before touching the simulator. Synthetic logs: no simulator needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_spec.cli import CliError, main
from vla_spec.commands.sim import parse_indices
from vla_spec.episodes import EpisodeLog, RunConfig
from vla_spec.rollout import EpisodeResult, EpisodeSpec

VERSIONS = {"stack": "uv.lock 87629bc4667a", "python": "3.11.7", "mujoco": "3.3.2", "robosuite": "1.4.0", "libero": "0.1.1", "MUJOCO_GL": "egl", "git_sha": "0123456789abcdef"}


OPENVLA_SETUP = {"checkpoint": "/ckpt/tiny-vla-libero-object", "checkpoint_sha256": "0123456789abcdef" * 4, "dtype": "float32",
                 "device": "cpu", "image": "camera", "unnorm_key": {"libero_object": "libero_object", "libero_goal": "libero_goal"}}


def write_log(path: Path, outcomes: dict[tuple[str, int], list[bool]], error_on: int | None = None, policy: str = "openvla") -> Path:
    """A log with one episode per entry of ``outcomes[(suite, task)]`` (init index = position)."""
    specs = [EpisodeSpec(suite, task, i) for (suite, task), wins in outcomes.items() for i in range(len(wins))]
    setup = OPENVLA_SETUP if policy == "openvla" else {}
    params = {"checkpoint": "tiny-vla-libero-object"} if policy == "openvla" else {}
    with EpisodeLog.open(path, RunConfig(policy, params, tuple(specs), policy_setup=setup), VERSIONS) as log:
        for number, spec in enumerate(specs):
            success = outcomes[(spec.suite, spec.task_id)][spec.init_index]
            log.append(EpisodeResult(spec.suite, spec.task_id, "do it", spec.init_index, 0, 50, success, 1.0,
                                     "RuntimeError: boom" if number == error_on else None, None))
    return path


A = {("libero_object", 0): [True, True, True, False], ("libero_object", 1): [True, False, False, False], ("libero_goal", 0): [True, True]}
B = {("libero_object", 0): [False] * 4, ("libero_object", 1): [False] * 4, ("libero_goal", 0): [True, True]}


@pytest.mark.cpu
def test_report_prints_wilson_table_and_published_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "a.jsonl", A, error_on=5)
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{log}: policy openvla, checkpoint tiny-vla-libero-object (sha256 0123456789ab), float32 on cpu, "
        "unnorm_key libero_goal, libero_object; 10/10 episodes finished, 0 resume(s)"
    )
    assert out[1].startswith("  stack uv.lock 87629bc4667a: mujoco 3.3.2") and "git 0123456789" in out[1]
    assert "  note: 1 episode(s) ended with an error (counted as failures)" in out
    table = out[out.index(next(line for line in out if line.startswith("suite"))):]
    assert table[0].endswith("95 % Wilson interval   errors (counted as failures)")
    assert table[1:7] == [
        "libero_goal         0       2/2  100.0 %   [34.2 %, 100.0 %]        0",
        "libero_object       0       3/4   75.0 %   [30.1 %, 95.4 %]        0",
        "libero_object       1       1/4   25.0 %   [4.6 %, 69.9 %]        1",
        "libero_goal       all       2/2  100.0 %   [34.2 %, 100.0 %]        0",
        "libero_object     all       4/8   50.0 %   [21.5 %, 78.5 %]        1",
        "all suites        all      6/10   60.0 %   [31.3 %, 83.2 %]        1",
    ]
    assert "vs published OpenVLA, libero_object: below: published 88.4 % lies above our 95 % interval [21.5 %, 78.5 %] (4/8)" in out
    assert "vs published OpenVLA, libero_goal: consistent: published 79.2 % lies inside our 95 % interval [34.2 %, 100.0 %] (2/2)" in out


@pytest.mark.cpu
def test_report_compares_with_published_rates_only_for_openvla(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "a.jsonl", A, policy="expert")
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{log}: policy expert; 10/10 episodes finished, 0 resume(s)"
    assert not any("published OpenVLA" in line for line in out)
    assert out[-1] == "(no published rate to compare with: the log holds policy expert, not an OpenVLA checkpoint)"


@pytest.mark.cpu
def test_report_compare_over_the_same_episodes_is_paired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A solves 4 libero_object episodes that B does not, B none that A does not: McNemar's exact
    p = 2 * (1/2)^4 = 0.125 (Holm over the two suites: 0.25); libero_goal has no discordant pair
    (p = 1). Too few episodes to call it: cannot tell, exit status 0."""
    a, b = write_log(tmp_path / "a.jsonl", A), write_log(tmp_path / "b.jsonl", B)
    assert main(["report", str(a), "--compare", str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line[:21]: line for line in out if line.startswith(("libero_", "all suites")) and "paired" in line}
    assert rows["libero_object     all"].split()[4:] == ["-50.0", "pp", "[-78.5,", "-6.8]", "paired,", "A", "only", "4", "B", "only", "0",
                                                         "0.25", "cannot", "tell", "(underpowered:", "needs", "14", "paired", "episodes)"]
    assert rows["libero_goal       all"].endswith("A only 0 B only 0          1  cannot tell (no difference observed)")
    assert rows["all suites        all"].split()[-8:] == ["0.125", "cannot", "tell", "(underpowered:", "needs", "18", "paired", "episodes)"]
    assert out[-1] == "verdict: no regression"


@pytest.mark.cpu
def test_report_plots_both_logs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the sim extra): pip install -e '.[sim]'")
    a, b = write_log(tmp_path / "a.jsonl", A), write_log(tmp_path / "b.jsonl", B)
    plot = tmp_path / "plots" / "success.png"
    assert main(["report", str(a), "--compare", str(b), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000


@pytest.mark.cpu
def test_the_plot_names_what_ran_and_draws_the_published_rates(tmp_path: Path) -> None:
    """Per-task bars and a suite total for each suite, one bar set per log, the published rate as a
    line over each suite it applies to, a title naming the policy, the suites and the episode counts."""
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the sim extra): pip install -e '.[sim]'")
    from vla_spec.commands.sim import success_figure
    from vla_spec.episodes import read_log

    logs = {str(p): read_log(p) for p in (write_log(tmp_path / "a.jsonl", A), write_log(tmp_path / "b.jsonl", B, policy="expert"))}
    (ax,) = success_figure(logs).axes
    assert ax.get_title() == (
        "libero_goal, libero_object: success per task and suite total\n"
        "openvla tiny-vla-libero-object, 10 episodes vs expert, 10 episodes"
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "total", "0", "1", "total"]
    assert len(ax.patches) == 2 * 5  # one bar per log per task or suite total
    lines = {round(float(c.get_segments()[0][0][1]), 1) for c in ax.collections if c.get_linestyle()[0][1]}
    assert lines == {79.2, 88.4}  # the published rates, dashed; the expert's log adds none
    legend = [t.get_text() for t in ax.figure.legends[0].get_texts()]
    assert legend == ["published OpenVLA, libero_goal: 79.2 %", "published OpenVLA, libero_object: 88.4 %",
                      "a.jsonl: openvla tiny-vla-libero-object (6/10)", "b.jsonl: expert (2/10)"]


@pytest.mark.cpu
def test_report_compare_over_different_episodes_is_unpaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """4/8 vs 0/4 on libero_object (B runs inits 0-1 of each task, A 0-3): Fisher's exact test,
    two-sided: of 12 episodes with 4 successes B holds 4; P(B has k) = C(4,k) C(8,4-k) / C(12,4) =
    70, 224, 168, 32, 1 (/495) for k = 0..4; the tables no likelier than k = 0: (70 + 32 + 1) / 495 = 0.208."""
    a = write_log(tmp_path / "a.jsonl", {("libero_object", 0): [True, True, False, False], ("libero_object", 1): [True, True, False, False]})
    b = write_log(tmp_path / "b.jsonl", {("libero_object", 0): [False] * 2, ("libero_object", 1): [False] * 2})
    assert main(["report", str(a), "--compare", str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.startswith("libero_object     all") and " pp " in line)
    assert "4/8      0/4  -50.0 pp" in line and line.endswith("unpaired                       0.208  cannot tell (underpowered: needs 11 episodes per run)")


@pytest.mark.cpu
def test_report_notes_a_log_resumed_with_other_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "a.jsonl", {("libero_object", 0): [True, False]})
    config = RunConfig("openvla", {"checkpoint": "tiny-vla-libero-object"}, tuple(EpisodeSpec("libero_object", 0, i) for i in range(2)),
                       policy_setup=OPENVLA_SETUP)
    EpisodeLog.open(log, config, {**VERSIONS, "git_diff_sha256": "feedbeef" * 8}).close()
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out
    assert "1 resume(s)" in out
    assert "  note: resumed with other code (0123456789 + edits feedbeef): episodes may mix code versions" in out


@pytest.mark.cpu
def test_report_notes_logs_over_different_episodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_log(tmp_path / "a.jsonl", A)
    b = write_log(tmp_path / "b.jsonl", {("libero_object", 0): [False, True]})
    assert main(["report", str(a), "--compare", str(b)]) == 0
    assert "note: the logs cover different episodes (8 only in A, 0 only in B)" in capsys.readouterr().out


@pytest.mark.cpu
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{tmp}/none.jsonl"], "vla-spec report: error: episode log {tmp}/none.jsonl does not exist"),
        (["report", "{tmp}/empty.jsonl"], "vla-spec report: error: {tmp}/empty.jsonl has no finished episodes yet"),
        (["report", "{tmp}/empty.jsonl", "--confidence", "1.5"], "vla-spec report: error: confidence must lie strictly between 0 and 1, got 1.5"),
        (["rollout", "--suite", "libero_object", "--tasks", "1-x", "--policy", "wait", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: bad --tasks '1-x': expected indices like 0-9, 3 or 0,2,5-7"),
        (["rollout", "--suite", "libero_object", "--inits", "4-2", "--policy", "wait", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: bad --inits '4-2': '4-2' is not an increasing range of indices >= 0"),
        (["rollout", "--suite", "libero_100", "--policy", "wait", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: unknown LIBERO suite 'libero_100'; known: libero_spatial, libero_object, libero_goal, libero_10, libero_90 and LIBERO-PRO's {{suite}}_swap, _lan, _object"),
        (["rollout", "--suite", "libero_object", "--policy", "oracle", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: unknown policy 'oracle'; known: expert, http, openvla, wait"),
        (["rollout", "--suite", "libero_object", "--policy", "wait", "--unnorm-key", "bridge_orig", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --unnorm-key does not apply to policy 'wait'"),
        (["rollout", "--suite", "libero_object", "--policy", "wait", "--workers", "0", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --workers must be at least 1, got 0"),
        (["rollout", "--suite", "libero_object", "--policy", "wait", "--until-decided", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --until-decided and --against go together: --until-decided --against 0.884 (a rate), "
         "published or a baseline log"),
        (["rollout", "--suite", "libero_object", "--policy", "wait", "--against", "0.5", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --until-decided and --against go together: --until-decided --against 0.884 (a rate), "
         "published or a baseline log"),
        (["rollout", "--suite", "libero_object", "--policy", "wait", "--log", "{tmp}"],
         "vla-spec rollout: error: episode log {tmp} is a directory; give a file in it, e.g. {tmp}/run.jsonl"),
        (["rollout", "--suite", "libero_object", "--policy", "wait", "--log", "{tmp}/empty.jsonl/x.jsonl"],
         "vla-spec rollout: error: episode log {tmp}/empty.jsonl/x.jsonl cannot be created: {tmp}/empty.jsonl is a file, not a directory"),
        (["report", "{tmp}"], "vla-spec report: error: episode log {tmp} is a directory; give a file in it, e.g. {tmp}/run.jsonl"),
        # setup errors: found before the log is opened and before any episode runs
        (["rollout", "--suite", "libero_object", "--policy", "expert", "--unnorm-key", "nope", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --unnorm-key: unknown unnorm_key 'nope'; valid keys: bridge_orig, fractal20220817_data, "
         "libero_10, libero_goal, libero_object, libero_spatial"),
        (["rollout", "--suite", "libero_90", "--policy", "expert", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --suite: the expert encodes with the suite's statistics; none are shipped for libero_90 "
         "(bridge_orig, fractal20220817_data, libero_10, libero_goal, libero_object, libero_spatial)"),
        (["rollout", "--suite", "libero_object", "--policy", "openvla", "--checkpoint", "/nonexistent", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --checkpoint: checkpoint '/nonexistent' is neither a folder with config.json nor a named "
         "checkpoint (tiny-openvla, tiny-vla-libero-object); give the folder of an OpenVLA checkpoint in the Hugging Face format"),
        (["rollout", "--suite", "libero_object", "--policy", "openvla", "--checkpoint", "tiny-openvla", "--dtype", "float16", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --dtype: 'float16' is not supported; choose float32 or bfloat16"),
        (["rollout", "--suite", "libero_object", "--policy", "openvla", "--checkpoint", "tiny-openvla", "--image", "grey", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --image: 'grey' is not an image source; choose camera or black"),
        (["rollout", "--suite", "libero_object", "--policy", "openvla", "--checkpoint", "tiny-openvla", "--threads", "0", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --threads: '0' is not a whole number of threads >= 1"),
        (["rollout", "--suite", "libero_object", "--policy", "openvla", "--checkpoint", "tiny-openvla", "--unnorm-key", "bridge_orig", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --unnorm-key: checkpoint tiny-openvla: unknown unnorm_key 'bridge_orig'; valid keys: "
         "libero_10, libero_goal, libero_object, libero_spatial"),
        (["rollout", "--suite", "libero_goal", "--policy", "openvla", "--checkpoint", "tiny-vla-libero-object", "--log", "{tmp}/x.jsonl"],
         "vla-spec rollout: error: --suite: checkpoint tiny-vla-libero-object has no statistics for libero_goal (it has "
         "bridge_orig, libero_object); choose one of them as the unnorm_key"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with EpisodeLog.open(tmp_path / "empty.jsonl", RunConfig("wait", {}, (EpisodeSpec("libero_object", 0, 0),)), VERSIONS):
        pass
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == message.format(tmp=tmp_path) + "\n"
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.cpu
@pytest.mark.parametrize(("text", "expected"), [("0-9", tuple(range(10))), ("3", (3,)), ("0,2,5-7", (0, 2, 5, 6, 7)), ("4,1-2,2", (4, 1, 2))])
def test_index_ranges(text: str, expected: tuple[int, ...]) -> None:
    assert parse_indices(text, "--tasks") == expected


@pytest.mark.cpu
@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "1,,2", "1.5"])
def test_bad_index_ranges(text: str) -> None:
    with pytest.raises(CliError, match="--tasks"):
        parse_indices(text, "--tasks")


@pytest.mark.sim
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "8-10"], "vla-spec rollout: error: libero_object has tasks 0-9, not 10"),
        (["--inits", "49-50"], "vla-spec rollout: error: init indices run 0-49, not 50"),
    ],
)
def test_indices_beyond_the_installed_benchmark_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """Checked against the installed LIBERO benchmark (its task list), before any episode runs."""
    log = tmp_path / "x.jsonl"
    assert main(["rollout", "--suite", "libero_object", "--policy", "wait", "--log", str(log), *extra]) == 2
    err = capsys.readouterr().err  # importing robosuite prints its own warnings first
    assert err.splitlines()[-1] == message and "Traceback" not in err
    assert not log.exists()
