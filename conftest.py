"""Test tiers, options and the skips that say what to install or set.

Tiers (markers, enforced with --strict-markers; every test carries exactly one):
  cpu  fast, no simulator, no GPU          pytest -m cpu    needs .[model]  (on pytest-xdist workers)
  sim  the real LIBERO simulator on CPU    pytest -m sim    needs .[model,sim]  (on 2 pytest-xdist workers)
  gpu  a CUDA GPU                          pytest -m gpu    needs .[model] and CUDA
"""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

TIERS = ("cpu", "sim", "gpu")

# torch runs the tests' tiny models on one intra-op thread unless OMP_NUM_THREADS says otherwise:
# several OpenMP threads gain nothing on models this small and, on a busy machine, wait on each
# other (the cpu tier ran 2.5x slower with two threads under load). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The cyclic GC: importing torch, transformers and timm leaves about 480 000 tracked objects, and with
# Python's default threshold (700 allocations) the collector scans that heap again and again while
# it grows (about 1.5 s of the torch worker's CPU, 9 full collections). 10 000 makes it 0.6 s.
GC_THRESHOLD = 10_000
gc.set_threshold(GC_THRESHOLD)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vla-spec")
    group.addoption(
        "--openvla-path",
        default=os.environ.get("VLA_SPEC_OPENVLA_PATH"),
        help="local OpenVLA checkpoint directory in the Hugging Face format (env: VLA_SPEC_OPENVLA_PATH)",
    )
    group.addoption(
        "--llama-tokenizer",
        default=os.environ.get("VLA_SPEC_LLAMA_TOKENIZER"),
        help="path to the Llama-2 tokenizer.model (env: VLA_SPEC_LLAMA_TOKENIZER)",
    )
    group.addoption(
        "--reference-answers",
        default=os.environ.get("VLA_SPEC_REFERENCE_ANSWERS"),
        help="the remote code's recorded answers (scripts/make_reference_checkpoint.py record; tox -e reference) "
        "that tests/test_model_hf_parity.py compares with the native model (env: VLA_SPEC_REFERENCE_ANSWERS)",
    )
    group.addoption(
        "--episodes-per-task",
        type=int,
        default=int(os.environ.get("VLA_SPEC_EPISODES_PER_TASK", "2")),
        help="closed-loop gpu tier: initial states per task, 0..N-1 (default 2; 50 is the full protocol) "
        "(env: VLA_SPEC_EPISODES_PER_TASK)",
    )
    group.addoption(
        "--rollout-workers",
        type=int,
        default=int(os.environ.get("VLA_SPEC_ROLLOUT_WORKERS", "1")),
        help="closed-loop gpu tier: environment workers (more than 1 runs on Ray with one batched policy "
        "actor on the GPU; default 1, in the test process) (env: VLA_SPEC_ROLLOUT_WORKERS)",
    )
    group.addoption(
        "--all-tasks",
        action="store_true",
        default=os.environ.get("VLA_SPEC_ALL_TASKS") == "1",
        help="sim tier in full: per-task simulator goldens over all 40 LIBERO tasks, not one per suite, and the "
        "expert's positive control on more init states (env: VLA_SPEC_ALL_TASKS=1)",
    )
    group.addoption(
        "--impl",
        default=os.environ.get("VLA_SPEC_IMPL"),
        help="the implementation the conformance claims judge (tests/test_conformance.py): module:factory, a checkpoint "
        "folder (remote code if it has any), native:CHECKPOINT or http://HOST:PORT; default the native tiny-openvla. "
        "Given, only the tests that judge it run (env: VLA_SPEC_IMPL)",
    )


# The cpu tier alone (``pytest -m cpu``, no ``-n`` given) runs on up to CPU_TIER_WORKERS pytest-xdist
# workers, one per available core: its tests are many and short. A run with the sim tier (``-m sim``,
# ``-m "cpu or sim"``) runs on up to SIM_TIER_WORKERS: each worker holds a simulator (about 2.5 GB)
# and the Ray-based modules start their own embedded cluster, so the single-process sim modules run
# beside the Ray-based ones instead of after them. The gpu tier runs in one process;
# ``-n 0`` turns distribution off.
CPU_TIER_WORKERS = 4
SIM_TIER_WORKERS = 2
SIM_RUNS = ("sim", "cpu or sim")
DISTRIBUTED_RUNS = {"cpu": CPU_TIER_WORKERS} | dict.fromkeys(SIM_RUNS, SIM_TIER_WORKERS)

# The sim modules that run longest, longest first (wall seconds in a distributed run on this 2-core
# machine, session 13: the closed loop's 20 episodes 1143, the expert's controls 246, the runner's
# about 200, the closed loop's paired controls 138, the demos 100, the command line's mistakes 85,
# the determinism processes 57, the matrix 60, the server 42, the reference images 34). A
# distributed run starts them first, each module one unit of work (its module fixtures are shared):
# the 20-episode run takes one worker, the rest fill the other around it, and the short modules
# come last, so that neither worker waits long for the other at the end.
LONG_SIM_MODULES = (
    "tests/test_closed_loop.py", "tests/test_sim_controls.py", "tests/test_runner.py", "tests/test_closed_loop_controls.py",
    "tests/test_demos.py", "tests/test_cli_mistakes.py", "tests/test_sim_determinism.py", "tests/test_sim_matrix.py",
    "tests/test_serve.py", "tests/test_images_reference.py",
)

# The cpu tests that import torch (and with it transformers, timm and torchvision: about 6 s of CPU),
# as node id prefixes (a module ``path::`` or one test). Under the distributed cpu tier they all run
# on one worker, as one unit, first; the other workers take the rest and never import torch, and
# that worker joins them when it is done. The test modules import torch inside their tests, so that
# collecting them does not; a cpu test outside this list that imports torch fails at its teardown,
# and under ``-m cpu`` a test module that imports torch when collected is a collection error.
TORCH_TESTS = (
    "tests/test_conformance.py::",
    "tests/test_fast_decoding.py::",
    "tests/test_liveness.py::",
    "tests/test_model_golden.py::",
    "tests/test_model_hf_parity.py::",
    "tests/test_model_loading.py::",
    "tests/test_processor.py::",
    "tests/test_prompt_tokens.py::",
    "tests/test_cli_mistakes.py::test_cuda_without_cuda_fails_before_any_episode",
    "tests/test_runner.py::test_a_batch_of_episodes_gets_the_answers_of_single_calls",
    "tests/test_runner.py::test_the_policy_decodes_fast_by_default_and_naive_on_request_with_the_same_answers",
    "tests/test_tokens.py::test_torch_in_torch_out_same_device",
)

# cpu test modules whose tests share a module fixture that runs a child process (Triton's
# interpreter: about 9 s): one unit of work each under the distributed cpu tier, so that one worker
# pays for the child, not every worker that draws one of its tests.
ONE_UNIT_CPU_MODULES = ("tests/test_triton_interpreter.py::",)
_DISTRIBUTED = pytest.StashKey[bool]()
_TORCH_BEFORE = pytest.StashKey[bool]()


def _asked(config: pytest.Config) -> str:
    """The run's marker expression (``-m``), stripped: ``"cpu"``, ``"cpu or sim"``, or ``""``."""
    return (config.getoption("markexpr") or "").strip()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-m cpu``, ``-m sim`` or ``-m "cpu or sim"``: distribute over the available cores (before
    xdist reads ``-n``; not with ``--collect-only`` or ``--pdb``), with the scheduler below."""
    if hasattr(config, "workerinput") or getattr(config.option, "numprocesses", 0) is not None:
        return  # an xdist worker, -n given, or xdist disabled (-p no:xdist)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    runs_tests = not config.getoption("collectonly") and not config.getoption("usepdb")
    asked = _asked(config)
    if asked in DISTRIBUTED_RUNS and cores > 1 and runs_tests:
        config.option.numprocesses = min(cores, DISTRIBUTED_RUNS[asked])
        # the cpu tier alone: the biggest unit (TORCH_TESTS) first; with the sim tier: collection order
        config.option.loadscopereorder = asked == "cpu"
        config.stash[_DISTRIBUTED] = True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # type: ignore[no-untyped-def]
    """The distributed run's scheduler. The cpu tier alone: TORCH_TESTS one unit of work, each of
    ONE_UNIT_CPU_MODULES one, every other test its own. With the sim tier: a module is one unit (its module fixtures, a simulator's first
    observations or a closed-loop run, are shared), handed out in collection order, which puts
    LONG_SIM_MODULES first. (xdist's ``loadgroup`` would group by marks, but it loses them under
    pytest 9.2: pytest-dev/pytest-xdist#1386.)"""
    if not config.stash.get(_DISTRIBUTED, False):
        return None
    from xdist.scheduler import LoadScopeScheduling

    cpu_tier_alone = _asked(config) == "cpu"

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if cpu_tier_alone:
                if nodeid.startswith(TORCH_TESTS):
                    return "torch"
                return nodeid.partition("::")[0] if nodeid.startswith(ONE_UNIT_CPU_MODULES) else nodeid
            return nodeid.partition("::")[0]

        def _assign_work_unit(self, node) -> None:  # type: ignore[no-untyped-def]
            """A worker runs a test only once another is queued behind it, so xdist queues a second
            unit behind the 20-episode run at once. That unit is the queue's last (a short module),
            not the next long one: the other worker takes the long ones while the run goes on
            (session 13: the runner's 230 s waited behind the run while the other worker idled)."""
            longest = self.assigned_work.get(node, {}).get(LONG_SIM_MODULES[0], {})  # node id -> done
            if not cpu_tier_alone and self.workqueue and not all(longest.values()):
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
            super()._assign_work_unit(node)

    return TierScheduling(config, log)


# A test module's own tier line: ``pytestmark = pytest.mark.sim`` (or the first of a list).
_MODULE_TIER = re.compile(r"^pytestmark = \[?pytest\.mark\.(cpu|sim|gpu)\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m cpu``, a test module whose ``pytestmark`` puts all its tests in another tier is not
    imported: none of them can be a cpu test (each test has exactly one tier), and every cpu worker
    would import and assertion-rewrite it for nothing (0.37 s of a worker's 2.5 s collection)."""
    name = collection_path.name
    if _asked(config) != "cpu" or not (name.startswith("test_") and name.endswith(".py")):
        return None
    tier = _MODULE_TIER.search(collection_path.read_text(encoding="utf-8"))
    return True if tier and tier.group(1) != "cpu" else None


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    """Under ``-m cpu``, a test module that imports torch when collected is a collection error: every
    xdist worker collects every module, so each would import torch."""
    before = "torch" in sys.modules
    report = yield
    asked = _asked(collector.config)
    if isinstance(collector, pytest.Module) and asked == "cpu" and not before and "torch" in sys.modules and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} imports torch when collected: every cpu-tier worker would pay that import "
            "(seconds); import torch and the modules of vla_spec.model inside the tests that need them"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # type: ignore[no-untyped-def]
    item.stash[_TORCH_BEFORE] = "torch" in sys.modules
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    """A cpu test that imports torch must be in TORCH_TESTS (after the fixtures are torn down)."""
    result = yield
    imported = not item.stash.get(_TORCH_BEFORE, True) and "torch" in sys.modules
    if imported and item.get_closest_marker("cpu") and not item.nodeid.startswith(TORCH_TESTS):
        pytest.fail(
            f"{item.nodeid} imported torch but is not in conftest.TORCH_TESTS, so the distributed cpu tier "
            "may run it on a worker that would pay torch's import (seconds): add it there, or keep torch out of it",
            pytrace=False,
        )
    return result


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Freeze what is left for the exit: the interpreter's full collections at exit then skip it
    (with torch loaded, a process's exit took 1.5-1.7 s, now 0.4 s; the distributed run waits for it)."""
    gc.freeze()


def _missing_tier_requirement(tier: str) -> str | None:
    """Why a tier cannot run here, or None when it can."""
    missing_model = [name for name in ("torch", "transformers", "timm") if importlib.util.find_spec(name) is None]
    if missing_model:
        return f"{tier} tier needs the model extra ({', '.join(missing_model)} missing): pip install -e '.[model]'"
    if tier == "sim":
        if importlib.util.find_spec("libero") is None or importlib.util.find_spec("robosuite") is None:
            return "sim tier needs the LIBERO simulator: pip install -e '.[sim]'"
    if tier == "gpu":
        if importlib.util.find_spec("torch") is None:
            return "gpu tier needs torch with CUDA and the model extra: pip install -e '.[model]'"
        import torch

        if not torch.cuda.is_available():
            return "gpu tier needs a CUDA GPU (torch.cuda.is_available() is False on this machine)"
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests of a tier that cannot run here, with the reason; but a run that asked for
    exactly one tier (``-m gpu``) and cannot run it at all is a usage error (exit status 4), not a
    green run of skips. (Last, after ``-m`` has deselected: only the tiers that run are checked, so
    ``-m cpu`` does not import torch to ask about CUDA.) A run with the sim tier puts
    LONG_SIM_MODULES first."""
    asked = _asked(config)
    if asked in TIERS:
        reason = _missing_tier_requirement(asked)
        if reason:
            raise pytest.UsageError(f"-m {asked} cannot run on this machine: {reason}")
    if config.getoption("impl"):  # judge the given implementation only: the other tests judge this project
        judged = [item for item in items if "impl" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in judged])
        items[:] = judged
    if asked in SIM_RUNS:  # LONG_SIM_MODULES first, longest first (a stable sort)
        items.sort(key=lambda item: _long_sim_rank(item.nodeid))
    reasons: dict[str, str | None] = {}
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid} must carry exactly one tier marker of {TIERS}, has {tiers}")
        tier = tiers[0]
        if tier not in reasons:
            reasons[tier] = _missing_tier_requirement(tier)
        if reasons[tier]:
            item.add_marker(pytest.mark.skip(reason=reasons[tier]))


def _long_sim_rank(nodeid: str) -> int:
    module = nodeid.partition("::")[0]
    return LONG_SIM_MODULES.index(module) if module in LONG_SIM_MODULES else len(LONG_SIM_MODULES)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """The figures that tests measure and record (``record_property("result", line)``: success rates
    and their intervals), printed after the run whatever the capture mode or number of workers."""
    lines = [
        f"{report.nodeid}: {value}"
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == "result"
    ]
    if lines:
        terminalreporter.section("measured results")
        for line in lines:
            terminalreporter.write_line(line)


def _existing_path(config: pytest.Config, option: str, what: str) -> Path:
    value = config.getoption(option)
    if not value:
        pytest.skip(f"{what} not given: pass --{option.replace('_', '-')} or set its env var")
    path = Path(value).expanduser()
    if not path.exists():
        pytest.fail(f"--{option.replace('_', '-')} points to {path}, which does not exist")
    return path


@pytest.fixture(scope="session")
def llama_tokenizer_path(pytestconfig: pytest.Config) -> Path:
    """The real Llama-2 ``tokenizer.model`` (not redistributable: given by option or env var)."""
    return _existing_path(pytestconfig, "llama_tokenizer", "the Llama-2 tokenizer.model (VLA_SPEC_LLAMA_TOKENIZER)")


@pytest.fixture(scope="session")
def reference_answers(pytestconfig: pytest.Config) -> Path:
    """The reference remote code's answers JSON, given by option or env var."""
    return _existing_path(pytestconfig, "reference_answers", "the reference's answers (VLA_SPEC_REFERENCE_ANSWERS)")


@pytest.fixture(scope="session")
def openvla_path(pytestconfig: pytest.Config) -> Path:
    """A real OpenVLA checkpoint directory (HF format), given by option or env var."""
    return _existing_path(pytestconfig, "openvla_path", "an OpenVLA checkpoint (VLA_SPEC_OPENVLA_PATH)")


@pytest.fixture(scope="session")
def impl(pytestconfig: pytest.Config):  # type: ignore[no-untyped-def]
    """The implementation under test (``--impl``; default the native model on tiny-openvla)."""
    from vla_spec.adapters import load_impl

    try:
        return load_impl(pytestconfig.getoption("impl"))
    except ValueError as error:
        raise pytest.UsageError(f"--impl: {error}") from None


@pytest.fixture
def golden(snapshot):  # type: ignore[no-untyped-def]
    """A syrupy snapshot stored as JSON under ``golden/<test module>/``."""
    from tests.snapshots import GoldenExtension

    return snapshot.use_extension(GoldenExtension)


@pytest.fixture(scope="session")
def ray_cluster(pytestconfig: pytest.Config):  # type: ignore[no-untyped-def]
    """One embedded Ray (127.0.0.1) for every run of the session that goes through Ray: its start-up
    (several seconds) is paid once. Its CPUs hold two environment actors and up to two policy actors,
    or ``--rollout-workers`` environment actors and as many policy actors (the gpu tier)."""
    if importlib.util.find_spec("ray") is None:  # not importorskip: ray_session sets up Ray's import itself
        pytest.skip("the runner's Ray path needs ray (the sim extra): pip install -e '.[sim]'")
    from vla_spec.actors import ray_session

    with ray_session(None, num_cpus=2 * max(2, pytestconfig.getoption("rollout_workers"))) as ray:
        yield ray
