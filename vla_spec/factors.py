"""What each factor of an evaluation varies, and how many of its episodes are really independent.

An evaluation is a product: suites x tasks x init states x env seeds x camera variations. Success is
broken down by each factor that has more than one level (:func:`factor_rows`), with Wilson
intervals.

Not every episode is a new trial. Once the init state is set, ``env.seed`` changes nothing the
policy sees or the physics does (``tests/test_sim_matrix.py``: images bit-identical, states within
1e-12), so a deterministic policy (greedy decoding, the scripted expert) run on one starting state
(suite, task, init state, camera) with twenty seeds plays one episode twenty times. Counting them
as twenty trials would shrink every interval by a factor of about sqrt(20) for nothing.
:func:`collapse_repeats` keeps one episode per starting state whose episodes are all identical
(same outcome and same number of steps; same actions too when the log has traces) and keeps every
episode of a starting state whose seeds did make a difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vla_spec.statistics import DEFAULT_CONFIDENCE, Proportion, wilson_interval

#: Episode fields that are factors of an evaluation, with the words the report uses.
FACTORS: dict[str, str] = {"env_seed": "env seed", "init_index": "init state", "camera": "camera"}


class _Episode(Protocol):
    suite: str
    task_id: int
    init_index: int
    env_seed: int
    camera: str
    success: bool
    steps: int
    trace: Any


@dataclass(frozen=True)
class Repeats:
    """The independent trials of a log: ``trials`` (one episode per starting state whose episodes
    are identical, all episodes of the others), ``starts`` starting states, ``repeated`` starting
    states with several identical episodes, ``differing`` ones whose episodes differ."""

    trials: tuple[Any, ...]
    episodes: int
    starts: int
    repeated: int
    differing: int


def _start(episode: _Episode) -> tuple[str, int, int, str]:
    return (episode.suite, int(episode.task_id), int(episode.init_index), str(episode.camera))


def _play(episode: _Episode) -> tuple[Any, ...]:
    actions = None if episode.trace is None else tuple(tuple(step["action"]) for step in episode.trace)
    return (bool(episode.success), int(episode.steps), actions)


def collapse_repeats(episodes: Sequence[_Episode]) -> Repeats:
    """Group by starting state (suite, task, init, camera); see the module docstring."""
    groups: dict[tuple[str, int, int, str], list[_Episode]] = {}
    for episode in episodes:
        groups.setdefault(_start(episode), []).append(episode)
    trials: list[_Episode] = []
    repeated = differing = 0
    for members in groups.values():
        if len({_play(e) for e in members}) == 1:
            trials.append(min(members, key=lambda e: e.env_seed))
            repeated += len(members) > 1
        else:
            trials.extend(members)
            differing += 1
    return Repeats(tuple(trials), len(episodes), len(groups), repeated, differing)


def factor_rows(episodes: Sequence[_Episode], factor: str, confidence: float = DEFAULT_CONFIDENCE) -> list[tuple[Any, Proportion]]:
    """Success per level of ``factor`` (a key of :data:`FACTORS`), levels sorted."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; known: {', '.join(FACTORS)}")
    tallies: dict[Any, list[int]] = {}
    for episode in episodes:
        tally = tallies.setdefault(getattr(episode, factor), [0, 0])
        tally[0] += int(bool(episode.success))
        tally[1] += 1
    return [(level, wilson_interval(wins, n, confidence)) for level, (wins, n) in sorted(tallies.items())]


def varied_factors(episodes: Sequence[_Episode]) -> list[str]:
    """The factors with more than one level in ``episodes``, in :data:`FACTORS` order."""
    return [factor for factor in FACTORS if len({getattr(e, factor) for e in episodes}) > 1]
