"""The spec as a conformance suite: claims about OpenVLA's documented behaviour, checked on any
implementation through the adapters of :mod:`vla_spec.adapters`.

Each :class:`Claim` belongs to a level (decode, processor, policy), needs one adapter method, and
either holds or fails with the first counterexample. Expected values come from the reference facts
(``prismatic/vla/action_tokenizer.py``, ``predict_action``'s BOUNDS_Q99 un-normalization, the
processor's per-tower normalization, TensorFlow's default JPEG decode) through this project's spec
code, whose own tests pin it to literal numbers (``tests/test_tokens.py``, ``test_actions.py``,
``test_book_claims.py``, ``test_processor.py``); no claim re-derives that math here.

Decode claims are independent of each other: D2 reads the normalized value on the axis that is not
un-normalized (the gripper), D4 checks the arm axes against that same value, so a decode that runs
the bins the wrong way and one that skips the statistics fail different claims. Policy claims are
relations between answers (the model's actions are unknown in advance): the action lies on the
requested key's grid, changing the key changes only the statistics, the image and the instruction
matter, case does not.

:func:`run_claims` runs every claim that applies; :func:`format_table` prints the verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from vla_spec.adapters import LEVELS, PolicyAnswer, Refused, levels
from vla_spec.normalization import NormStats, normalize, shipped_norm_stats, unnormalize
from vla_spec.tokens import ActionTokenizer

TOKENIZER = ActionTokenizer()
ALL_IDS = np.arange(TOKENIZER.first_action_id, TOKENIZER.last_action_id + 1)  # 31744..31999
# The book's worked example (tests/test_book_claims.py): openvla-7b-finetuned-libero-object's tokens
# and the action the page prints (4 significant digits) under libero_object.
BOOK_TOKENS = (31882, 31894, 31881, 31905, 31888, 31875, 31999)
BOOK_ACTION = (0.09971, -0.1644, -0.06618, -0.01366, -0.0006008, -0.03933, -0.9961)
INSTRUCTION = "put the bowl on the stove"
OTHER_INSTRUCTION = "open the middle drawer of the cabinet"
PREFERRED_KEYS = ("libero_spatial", "libero_object")
UNKNOWN_KEY = "no_such_dataset"
GRID_TOLERANCE = 1e-5  # normalized units; a grid step is 2/255 = 7.8e-3


class ClaimFailed(AssertionError):
    """A claim does not hold; the message is the first counterexample."""


class NotApplicable(Exception):
    """The claim cannot be checked on this implementation (the reason says what it lacks)."""


def scene(seed: int, size: int = 224) -> np.ndarray:
    """A deterministic textured RGB test image (size x size x 3 uint8): smooth colour blobs plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), mode="RGB")
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)


class Probe:
    """One implementation under test, with its statistics and a memo of its policy answers."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self._answers: dict[tuple[int, str, str | None], PolicyAnswer] = {}
        self.images = {"a": scene(1), "b": scene(2), "black": np.zeros((224, 224, 3), np.uint8)}

    @cached_property
    def norm_stats(self) -> Mapping[str, NormStats]:
        stats = getattr(self.impl, "norm_stats", None)
        return stats if stats is not None else shipped_norm_stats()

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """Up to two keys to test with, libero_spatial and libero_object when present. For a policy
        that does not say which statistics it holds (a server), the first two shipped keys it accepts."""
        preferred = tuple(k for k in PREFERRED_KEYS if k in self.norm_stats)
        candidates = preferred + tuple(k for k in sorted(self.norm_stats) if k not in preferred)
        if getattr(self.impl, "norm_stats", None) is not None or not callable(getattr(self.impl, "act", None)):
            return candidates[:2]
        accepted: list[str] = []
        for key in candidates:
            try:
                self.act("a", key=key)
            except Refused:
                continue
            accepted.append(key)
            if len(accepted) == 2:
                break
        if not accepted:
            raise NotApplicable(f"the implementation refuses every shipped unnorm_key ({', '.join(candidates)})")
        return tuple(accepted)

    def act(self, image: str, instruction: str = INSTRUCTION, key: str | None = None) -> PolicyAnswer:
        key = self.keys[0] if key is None else key
        memo = (id(self.images[image]), instruction, key)
        if memo not in self._answers:
            answer = self.impl.act(self.images[image], instruction, key)
            action = np.asarray(answer.action, dtype=np.float64)
            if action.shape != (7,):
                raise ClaimFailed(f"act returned an action of shape {action.shape}, not (7,)")
            self._answers[memo] = PolicyAnswer(action, answer.token_ids)
        return self._answers[memo]


@dataclass(frozen=True)
class Claim:
    """``name`` (level.topic), the method it needs, the sentence it checks, and the check."""

    name: str
    method: str
    sentence: str
    check: Callable[[Probe], None]

    @property
    def level(self) -> str:
        return self.name.split(".")[0]

    @property
    def test(self) -> str:
        """The pytest node that runs this claim (``pytest -m cpu --impl IMPL``)."""
        return f"tests/test_conformance.py::test_claim[{self.name}]"


@dataclass(frozen=True)
class Verdict:
    """``status``: holds, fails, n/a (not provided or not checkable) or error (the check raised)."""

    claim: Claim
    status: str
    detail: str = ""


def _first_mismatch(got: np.ndarray, expected: np.ndarray, tolerance: float, label: Callable[[tuple[int, ...]], str]) -> str | None:
    bad = np.argwhere(~(np.abs(got - expected) <= tolerance))
    if len(bad) == 0:
        return None
    where = tuple(int(i) for i in bad[0])
    return f"{label(where)}: got {got[where]:.6g}, expected {expected[where]:.6g} ({len(bad)} of {got.size} values differ)"


# --- decode ------------------------------------------------------------------------------------


def _decode_all(probe: Probe, key: str) -> np.ndarray:
    """The implementation's decode of every action id on every axis: [256, 7]."""
    decoded = np.asarray(probe.impl.decode(np.repeat(ALL_IDS[:, None], 7, axis=1), key), dtype=np.float64)
    if decoded.shape != (len(ALL_IDS), 7):
        raise ClaimFailed(f"decode of [256, 7] ids returned shape {decoded.shape}")
    return decoded


def _unmasked_axis(probe: Probe, key: str) -> int:
    free = np.flatnonzero(~probe.norm_stats[key].mask)
    if len(free) == 0:
        raise NotApplicable(f"{key} un-normalizes every axis: no axis shows the normalized value")
    return int(free[0])


def check_book_example(probe: Probe) -> None:
    if "libero_object" not in probe.norm_stats:
        raise NotApplicable("the implementation has no libero_object statistics")
    own, official = probe.norm_stats["libero_object"], shipped_norm_stats()["libero_object"]
    if not (np.array_equal(own.q01, official.q01) and np.array_equal(own.q99, official.q99)):
        raise NotApplicable("its libero_object statistics are its own, not OpenVLA's (the book's action assumes OpenVLA's)")
    got = np.asarray(probe.impl.decode(np.array([BOOK_TOKENS]), "libero_object"), dtype=np.float64).reshape(-1)
    bad = _first_mismatch(got, np.array(BOOK_ACTION), 5e-4 * np.abs(BOOK_ACTION), lambda w: f"axis {w[0]} of {BOOK_TOKENS}")
    if bad:
        raise ClaimFailed(bad)


def check_bin_centres(probe: Probe) -> None:
    for key in probe.keys:
        axis = _unmasked_axis(probe, key)
        got = _decode_all(probe, key)[:, axis]
        bad = _first_mismatch(got, TOKENIZER.decode(ALL_IDS), 1e-9, lambda w: f"{key}: id {ALL_IDS[w[0]]} (axis {axis})")
        if bad:
            raise ClaimFailed(bad)


def check_direction(probe: Probe) -> None:
    for key in probe.keys:
        decoded = _decode_all(probe, key)
        for axis in range(7):
            column = decoded[:, axis]
            rises = np.flatnonzero(np.diff(column) > 0)
            if len(rises) or not column[-1] < column[0]:
                at = int(rises[0]) if len(rises) else 0
                raise ClaimFailed(
                    f"{key} axis {axis}: id {ALL_IDS[at + 1]} decodes to {column[at + 1]:.6g} > id {ALL_IDS[at]}'s "
                    f"{column[at]:.6g} (ids 31744..31999 must run from the largest action down)"
                )


def check_unnormalization(probe: Probe) -> None:
    for key in probe.keys:
        stats = probe.norm_stats[key]
        decoded = _decode_all(probe, key)
        normalized = decoded[:, _unmasked_axis(probe, key)]
        expected = unnormalize(np.repeat(normalized[:, None], 7, axis=1), stats)
        arm = np.flatnonzero(stats.mask)
        bad = _first_mismatch(
            decoded[:, arm], expected[:, arm], 1e-6 * (1 + np.abs(expected[:, arm])),
            lambda w: f"{key}: id {ALL_IDS[w[0]]} axis {arm[w[1]]} (normalized {normalized[w[0]]:.6g})",
        )
        if bad:
            raise ClaimFailed(bad + "; expected 0.5 (x + 1)(q99 - q01) + q01")


# --- processor ---------------------------------------------------------------------------------


def check_jpeg_fast_idct(probe: Probe) -> None:
    try:
        import simplejpeg
    except ImportError:
        raise NotApplicable("simplejpeg is not installed (pip install -e '.[model]')") from None
    from vla_spec.images import jpeg_bytes

    frame = scene(3, 256)
    reference = simplejpeg.decode_jpeg(jpeg_bytes(frame), colorspace="RGB", fastdct=True, fastupsample=False)
    got = np.asarray(probe.impl.jpeg_roundtrip(frame))
    if got.shape != reference.shape or got.dtype != np.uint8:
        raise ClaimFailed(f"jpeg_roundtrip returned {got.dtype} {got.shape}, expected uint8 {reference.shape}")
    diff = got.astype(np.int16) - reference
    bad = _first_mismatch(got.astype(np.float64), reference.astype(np.float64), 0, lambda w: f"pixel {w}")
    if bad:
        raise ClaimFailed(f"{bad}; mean |diff| {np.abs(diff).mean():.3f} grey levels vs TF's default (fast IDCT) decode")


def check_model_image(probe: Probe) -> None:
    for value in (0, 255):
        got = np.asarray(probe.impl.model_image(np.full((256, 256, 3), value, np.uint8)))
        if got.shape != (224, 224, 3) or got.dtype != np.uint8:
            raise ClaimFailed(f"a 256 x 256 frame became {got.dtype} {got.shape}, expected uint8 (224, 224, 3)")
        if not np.all(got == value):
            raise ClaimFailed(f"a constant {value} frame came out with values {np.unique(got)[:5].tolist()}...")


def _pixel_values(probe: Probe) -> tuple[np.ndarray, np.ndarray]:
    image = probe.images["a"]
    got = np.asarray(probe.impl.pixel_values(image), dtype=np.float64)
    if got.shape != (6, 224, 224):
        raise ClaimFailed(f"pixel_values of a 224 x 224 image has shape {got.shape}, expected (6, 224, 224)")
    return got, image.transpose(2, 0, 1).astype(np.float64) / 255.0


def _check_tower(probe: Probe, channels: slice, mean: tuple[float, ...], std: tuple[float, ...], tower: str) -> None:
    got, unit = _pixel_values(probe)
    expected = (unit - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    bad = _first_mismatch(got[channels], expected, 1e-4, lambda w: f"{tower} channel {w[0]} pixel {w[1:]}")
    if bad:
        raise ClaimFailed(f"{bad}; expected (x / 255 - {mean}) / {std}")


def check_dinov2_normalization(probe: Probe) -> None:
    from vla_spec.model.processor import DINOV2_MEAN, DINOV2_STD

    _check_tower(probe, slice(0, 3), DINOV2_MEAN, DINOV2_STD, "DINOv2")


def check_siglip_normalization(probe: Probe) -> None:
    from vla_spec.model.processor import SIGLIP_MEAN, SIGLIP_STD

    _check_tower(probe, slice(3, 6), SIGLIP_MEAN, SIGLIP_STD, "SigLIP")


# --- policy ------------------------------------------------------------------------------------



def check_answer_is_finite(probe: Probe) -> None:
    action = probe.act("a").action
    if not np.all(np.isfinite(action)):
        raise ClaimFailed(f"action {action.tolist()} is not finite")


def check_tokens_decode_to_action(probe: Probe) -> None:
    key = probe.keys[0]
    answer = probe.act("a", key=key)
    if answer.token_ids is None:
        raise NotApplicable("the implementation does not expose token ids")
    from vla_spec.actions import ActionProcessor

    expected = ActionProcessor.select(probe.norm_stats, key).decode(np.asarray(answer.token_ids))[1]
    bad = _first_mismatch(answer.action, expected, 1e-6, lambda w: f"{key}: tokens {list(answer.token_ids)} axis {w[0]}")
    if bad:
        raise ClaimFailed(bad)


def check_on_grid(probe: Probe) -> None:
    for key in probe.keys:
        action = probe.act("a", key=key).action
        normalized = normalize(action, probe.norm_stats[key])
        distance = np.min(np.abs(normalized[:, None] - TOKENIZER.bin_centers[None, :]), axis=1)
        off = np.flatnonzero(distance > GRID_TOLERANCE)
        if len(off):
            axis = int(off[0])
            raise ClaimFailed(
                f"{key}: axis {axis} = {action[axis]:.6g} is {normalized[axis]:.6g} normalized, "
                f"{distance[axis]:.3g} from the nearest bin centre"
            )


def check_key_selects_statistics(probe: Probe) -> None:
    if len(probe.keys) < 2:
        raise NotApplicable("the implementation has only one unnorm_key")
    first, second = probe.keys
    a, b = probe.act("a", key=first).action, probe.act("a", key=second).action
    na, nb = normalize(a, probe.norm_stats[first]), normalize(b, probe.norm_stats[second])
    bad = _first_mismatch(nb, na, 1e-5, lambda w: f"axis {w[0]} normalized under {second} vs {first}")
    if bad or np.array_equal(a, b):
        raise ClaimFailed(
            f"same image and instruction: {first} gives {np.round(a, 5).tolist()}, {second} gives {np.round(b, 5).tolist()}"
            f"{'; ' + bad if bad else ''} (the key must change only the statistics)"
        )


def check_unknown_key_refused(probe: Probe) -> None:
    try:
        answer = probe.impl.act(probe.images["a"], INSTRUCTION, UNKNOWN_KEY)
    except Refused:
        return
    raise ClaimFailed(f"unnorm_key {UNKNOWN_KEY!r} was answered with {np.round(answer.action, 5).tolist()} instead of refused")


def check_image_used(probe: Probe) -> None:
    answers = {name: probe.act(name).action for name in ("a", "b", "black")}
    if all(np.array_equal(answers["a"], other) for other in answers.values()):
        raise ClaimFailed(f"three different images all give {np.round(answers['a'], 5).tolist()} (openvla issue #346)")


def check_instruction_used(probe: Probe) -> None:
    if np.array_equal(probe.act("a").action, probe.act("a", OTHER_INSTRUCTION).action):
        raise ClaimFailed(f"{INSTRUCTION!r} and {OTHER_INSTRUCTION!r} give the same action")


def check_instruction_lowercased(probe: Probe) -> None:
    lower, upper = probe.act("a").action, probe.act("a", INSTRUCTION.upper()).action
    if not np.array_equal(lower, upper):
        raise ClaimFailed(f"{INSTRUCTION.upper()!r} gives {np.round(upper, 5).tolist()}, lowercase {np.round(lower, 5).tolist()}")


def check_deterministic(probe: Probe) -> None:
    first = probe.act("a").action
    again = np.asarray(probe.impl.act(probe.images["a"], INSTRUCTION, probe.keys[0]).action, dtype=np.float64)
    if not np.array_equal(first, again):
        raise ClaimFailed(f"the same request gave {np.round(first, 5).tolist()}, then {np.round(again, 5).tolist()}")


CLAIMS: tuple[Claim, ...] = (
    Claim("decode.book-example", "decode", "the book's tokens decode to its printed action under libero_object", check_book_example),
    Claim("decode.bin-centres", "decode", "id t decodes to bin centre -1 + (2k + 1)/255, k = clip(31999 - t, 0, 254)", check_bin_centres),
    Claim("decode.direction", "decode", "a larger id is a smaller action on every axis (vocab_size - id)", check_direction),
    Claim("decode.unnormalize", "decode", "arm axes are un-normalized with the key's q01/q99 (BOUNDS_Q99)", check_unnormalization),
    Claim("processor.jpeg-fast-idct", "jpeg_roundtrip", "the JPEG round trip decodes as TF's default (fast integer IDCT)", check_jpeg_fast_idct),
    Claim("processor.model-image", "model_image", "a LIBERO frame becomes a 224 x 224 uint8 image; constant frames stay constant", check_model_image),
    Claim("processor.dinov2-norm", "pixel_values", "channels 0-2: (x/255 - ImageNet mean) / ImageNet std", check_dinov2_normalization),
    Claim("processor.siglip-norm", "pixel_values", "channels 3-5: (x/255 - 0.5) / 0.5", check_siglip_normalization),
    Claim("policy.finite", "act", "the answer is 7 finite numbers", check_answer_is_finite),
    Claim("policy.tokens-decode", "act", "the action is the spec's decode of the emitted tokens", check_tokens_decode_to_action),
    Claim("policy.on-grid", "act", "every axis lies on the requested key's grid of bin centres", check_on_grid),
    Claim("policy.unnorm-key", "act", "another unnorm_key changes only the statistics", check_key_selects_statistics),
    Claim("policy.unknown-key", "act", "an unknown unnorm_key is refused, not decoded with other statistics", check_unknown_key_refused),
    Claim("policy.image-used", "act", "different images give different actions", check_image_used),
    Claim("policy.instruction-used", "act", "different instructions give different actions", check_instruction_used),
    Claim("policy.lowercase", "act", "the instruction is lowercased: case does not change the action", check_instruction_lowercased),
    Claim("policy.deterministic", "act", "the same request gives the same action (greedy decoding)", check_deterministic),
)
CLAIMS_BY_NAME = {claim.name: claim for claim in CLAIMS}


def run_claim(claim: Claim, probe: Probe) -> Verdict:
    """One claim's verdict; an adapter that raises anything but a failed claim is an ``error``."""
    provided = {method for methods in levels(probe.impl).values() for method in methods}
    if claim.method not in provided:
        return Verdict(claim, "n/a", f"no {claim.method}() ({claim.level} level not provided)")
    try:
        claim.check(probe)
    except ClaimFailed as failure:
        return Verdict(claim, "fails", str(failure))
    except NotApplicable as reason:
        return Verdict(claim, "n/a", str(reason))
    except Exception as error:  # noqa: BLE001 - reported per claim; the traceback is the caller's to print
        return Verdict(claim, "error", f"{type(error).__name__}: {error}")
    return Verdict(claim, "holds")


def run_claims(impl: Any, claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """Every claim on ``impl`` (one shared :class:`Probe`), in order."""
    probe = Probe(impl)
    return [run_claim(claim, probe) for claim in claims]


def format_table(verdicts: list[Verdict], name: str, stats_known: bool = True) -> str:
    """The conformance table: claim, verdict, sentence and first counterexample (or why not
    applicable); a level the implementation does not provide is one line. ``stats_known=False``
    says that the shipped statistics were assumed."""
    width = max(len(v.claim.name) for v in verdicts)
    lines = [f"conformance of {name}", f"{'claim':<{width}}  {'verdict':<7}  sentence / first counterexample"]
    if not stats_known:
        lines.insert(1, "statistics: not given by the implementation; the shipped ones are assumed (conform --norm-stats)")
    for level in LEVELS:
        rows = [v for v in verdicts if v.claim.level == level]
        if rows and all(v.status == "n/a" and v.detail.startswith("no ") for v in rows):
            lines.append(f"{level + '.*':<{width}}  {'n/a':<7}  {level} level not provided ({', '.join(LEVELS[level])})")
            continue
        for verdict in rows:
            lines.append(f"{verdict.claim.name:<{width}}  {verdict.status:<7}  {verdict.claim.sentence}")
            if verdict.detail:
                lines.append(f"{'':<{width}}  {'':<7}  -> {verdict.detail}")
    counts = {status: sum(v.status == status for v in verdicts) for status in ("holds", "fails", "error", "n/a")}
    node = CLAIMS[0].test.split("[")[0]
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()) + f"; pytest node of a claim: {node}[CLAIM]")
    return "\n".join(lines)
