"""Adapters: how the conformance suite (:mod:`vla_spec.conformance`) reaches an OpenVLA implementation.

An implementation is any object; it provides a *level* by having that level's methods, and may
provide any subset (an HTTP server provides only the policy level):

* **decode**: ``decode(token_ids, unnorm_key) -> actions``: int64 ids [..., 7] -> float64 actions
  [..., 7] in dataset units (gripper in the training convention, 1 = open), what ``predict_action``
  returns for those tokens.
* **processor**: any of ``jpeg_roundtrip(image) -> image`` (the LIBERO path's JPEG step, uint8
  H x W x 3 in and out), ``model_image(upright) -> image`` (an upright LIBERO frame -> the
  224 x 224 x 3 uint8 model image) and ``pixel_values(image) -> array`` (an H x W x 3 uint8 image ->
  float32 [6, 224, 224], DINOv2 channels first).
* **policy**: ``act(image, instruction, unnorm_key) -> PolicyAnswer``: one image (H x W x 3 uint8,
  already through the LIBERO path when that is wanted) and instruction -> the action, and the 7
  token ids when the implementation exposes them. A request the implementation declines (an unknown
  ``unnorm_key``) raises :class:`Refused`.

An optional ``norm_stats`` attribute (``{key: NormStats}``) says which statistics the implementation
holds; without it the suite assumes the shipped ones (:func:`vla_spec.normalization.shipped_norm_stats`).
``name`` labels it in reports.

Built-in adapters: :class:`NativeImpl` (this project's model: the spec itself, the default),
:class:`HFRemoteImpl` (a checkpoint's own remote code, loaded only when asked for), :class:`HTTPImpl`
(a server speaking the reference REST protocol, :mod:`vla_spec.rest`). :func:`load_impl` turns a
command-line string into one of them, or calls a user's ``module:factory``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_spec import images
from vla_spec.normalization import NormStats, UnnormKeyError

LEVELS: dict[str, tuple[str, ...]] = {
    "decode": ("decode",),
    "processor": ("jpeg_roundtrip", "model_image", "pixel_values"),
    "policy": ("act",),
}
DEFAULT_CHECKPOINT = "tiny-openvla"


class Refused(Exception):
    """The implementation declined a request (e.g. an unknown ``unnorm_key``); the message says why."""


@dataclass(frozen=True, eq=False)
class PolicyAnswer:
    """One action (7,) float64 in dataset units, and its 7 token ids when the implementation has them."""

    action: np.ndarray
    token_ids: np.ndarray | None = None


def levels(impl: Any) -> dict[str, tuple[str, ...]]:
    """The levels ``impl`` provides, each with the methods of it that ``impl`` has."""
    found = {level: tuple(m for m in methods if callable(getattr(impl, m, None))) for level, methods in LEVELS.items()}
    return {level: methods for level, methods in found.items() if methods}


class NativeImpl:
    """This project's OpenVLA (:mod:`vla_spec.model`) on a checkpoint folder or name: the spec itself.
    The model loads on the first ``act``; decoding and the processor need only the checkpoint's config."""

    def __init__(
        self, checkpoint: str = DEFAULT_CHECKPOINT, *, dtype: str = "float32", device: str = "cpu", model: Any = None
    ) -> None:
        from vla_spec.model.checkpoint import read_config
        from vla_spec.model.tiny import resolve_checkpoint
        from vla_spec.tokens import ActionTokenizer

        self.folder = resolve_checkpoint(checkpoint)
        self.config = read_config(self.folder)
        self.dtype, self.device, self._model = dtype, device, model
        self.name = f"native {self.folder.name} ({dtype}, {device})"
        self.norm_stats: Mapping[str, NormStats] = self.config.norm_stats
        self._tokenizer = ActionTokenizer(vocab_size=self.config.text_vocab_size, n_bins=self.config.n_action_bins)

    def model(self) -> Any:
        """The loaded :class:`vla_spec.model.OpenVLA` (cached per process, shared: read-only), or the
        ``model`` given (a modified copy of it: the tests' negative controls)."""
        import torch

        if self._model is not None:
            return self._model
        from vla_spec.model.loading import load_cached

        return load_cached(str(self.folder), getattr(torch, self.dtype), self.device)

    def decode(self, token_ids: Any, unnorm_key: str) -> np.ndarray:
        from vla_spec.actions import ActionProcessor

        return ActionProcessor.select(self.norm_stats, unnorm_key, self._tokenizer).decode(token_ids)[1]

    def jpeg_roundtrip(self, image: np.ndarray) -> np.ndarray:
        return images.jpeg_roundtrip(image)

    def model_image(self, upright: np.ndarray) -> np.ndarray:
        return images.model_image(upright)

    def pixel_values(self, image: np.ndarray) -> np.ndarray:
        from vla_spec.model.processor import process_images

        return process_images(image, self.config.image_size)[0].numpy()

    def act(self, image: np.ndarray, instruction: str, unnorm_key: str | None) -> PolicyAnswer:
        try:
            prediction = self.model().predict_action(image, instruction, unnorm_key)
        except UnnormKeyError as error:
            raise Refused(str(error)) from None
        return PolicyAnswer(prediction.actions[0], prediction.token_ids[0])


class HFRemoteImpl:
    """A checkpoint's own remote code (``trust_remote_code=True``: only when the user points at it).

    Processor level: the checkpoint's ``AutoProcessor``. Policy level: the action from the remote
    model's own ``predict_action`` (its 29871 rule, decode and un-normalization), and the token ids
    that the same call generated (read as its ``generate`` returns them: one forward per answer).
    Runs where the remote code runs: ``tox -e reference`` (transformers 4.40.1, timm 0.9.10)."""

    def __init__(self, folder: str | Path, *, dtype: str = "float32", device: str = "cpu") -> None:
        import torch

        from vla_spec.model.hf_remote import HFRemoteOpenVLA

        self.remote = HFRemoteOpenVLA(folder, dtype=getattr(torch, dtype), device=device)
        self.name = f"hf-remote {Path(folder).name} ({dtype}, {device})"
        self.norm_stats: Mapping[str, NormStats] = self.remote.norm_stats

    def _inputs(self, image: np.ndarray, instruction: str) -> Any:
        from PIL import Image

        from vla_spec.prompt import build_prompt

        return self.remote.processor(build_prompt(instruction), Image.fromarray(images.check_rgb_uint8(image), mode="RGB"))

    def pixel_values(self, image: np.ndarray) -> np.ndarray:
        return self._inputs(image, "unused")["pixel_values"][0].float().numpy()

    def act(self, image: np.ndarray, instruction: str, unnorm_key: str | None) -> PolicyAnswer:
        import torch

        inputs = self._inputs(image, instruction).to(self.remote.device, dtype=self.remote.dtype)
        model = self.remote.model
        generated: list[Any] = []
        generate = model.generate

        def recording_generate(*args: Any, **kwargs: Any) -> Any:
            generated.append(generate(*args, **kwargs))
            return generated[-1]

        model.generate = recording_generate  # an instance attribute: the class's code is untouched
        try:
            with torch.inference_mode():
                action = np.asarray(model.predict_action(**inputs, unnorm_key=unnorm_key, do_sample=False), np.float64)
        except (AssertionError, KeyError) as error:  # the reference's _check_unnorm_key asserts
            raise Refused(str(error)) from None
        finally:
            del model.generate
        tokens = generated[0][0, -len(action) :].cpu().numpy().astype(np.int64)
        return PolicyAnswer(action, tokens)


class HTTPImpl:
    """A policy server in the reference REST protocol (:mod:`vla_spec.rest`): policy level only.

    ``url`` is ``http://HOST:PORT`` (``/act`` is appended unless given); ``double_encode`` sends the
    ``{"encoded": ...}`` variant; ``norm_stats``: the served checkpoint's statistics, when known
    (else the suite assumes the shipped ones). A 4xx answer, or the reference server's ``"error"``, raises
    :class:`Refused`; a 5xx answer raises ``RuntimeError`` with the server's reason. ``client`` is an
    ``httpx.Client`` to use instead of a new one (e.g. an in-process test client)."""

    def __init__(
        self,
        url: str,
        *,
        double_encode: bool = False,
        timeout_s: float = 120.0,
        client: Any = None,
        norm_stats: Mapping[str, NormStats] | None = None,
    ) -> None:
        from vla_spec.rest import ACT_PATH, require_serve_extra

        require_serve_extra()
        import httpx

        base = url.rstrip("/")
        self.url = base if base.endswith(ACT_PATH) else base + ACT_PATH
        self.double_encode = double_encode
        self.name = f"http {self.url}" + (" (double-encoded)" if double_encode else "")
        self.client = client if client is not None else httpx.Client(timeout=timeout_s)
        if norm_stats is not None:
            self.norm_stats = norm_stats

    def act(self, image: np.ndarray, instruction: str, unnorm_key: str | None) -> PolicyAnswer:
        from vla_spec.rest import BadRequest, decode_action, encode_request

        body = encode_request(image, instruction, unnorm_key, double_encode=self.double_encode)
        response = self.client.post(self.url, content=body, headers={"content-type": "application/json"})
        if 400 <= response.status_code < 500:
            raise Refused(f"HTTP {response.status_code}: {_detail(response.text)}")
        if response.status_code != 200:
            raise RuntimeError(f"{self.url} answered HTTP {response.status_code}: {_detail(response.text)}")
        try:
            action = decode_action(response.text, double_encoded=self.double_encode)
        except (BadRequest, ValueError) as error:  # the reference server answers "error" with status 200
            raise Refused(f"HTTP 200 without an action: {error}") from None
        return PolicyAnswer(np.asarray(action, dtype=np.float64))


def _detail(text: str) -> str:
    """The one-line reason of an error answer (FastAPI's ``{"detail": ...}``, else the text)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text[:200]
    return str(value.get("detail", value)) if isinstance(value, dict) else str(value)[:200]


def _has_remote_code(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and "auto_map" in json.loads(config.read_text())


def load_impl(text: str | None, *, dtype: str = "float32", device: str = "cpu") -> Any:
    """An implementation from a command-line string:

    * empty/None: :class:`NativeImpl` on ``tiny-openvla``;
    * ``http://HOST:PORT`` or ``https://...``: :class:`HTTPImpl`;
    * ``native:CHECKPOINT`` or ``hf-remote:FOLDER``: that built-in adapter;
    * a checkpoint folder: :class:`HFRemoteImpl` when its ``config.json`` has an ``auto_map`` (remote
      code), else :class:`NativeImpl`; a checkpoint name (``tiny-vla-libero-object``): native;
    * ``module:factory``: ``factory()`` from an importable module.

    Raises ``ValueError`` naming what ``text`` was taken for and why it cannot be loaded."""
    from vla_spec.model.tiny import NAMED_CHECKPOINTS

    if not text:
        return NativeImpl(DEFAULT_CHECKPOINT, dtype=dtype, device=device)
    if text.startswith(("http://", "https://")):
        return HTTPImpl(text)
    prefix, colon, rest = text.partition(":")
    if colon and prefix == "native":
        return NativeImpl(rest, dtype=dtype, device=device)
    if colon and prefix == "hf-remote":
        return HFRemoteImpl(rest, dtype=dtype, device=device)
    path = Path(text).expanduser()
    if path.is_dir():
        if _has_remote_code(path):
            return HFRemoteImpl(path, dtype=dtype, device=device)
        return NativeImpl(str(path), dtype=dtype, device=device)
    if text in NAMED_CHECKPOINTS:
        return NativeImpl(text, dtype=dtype, device=device)
    if not colon or not rest:
        raise ValueError(
            f"{text!r} is neither a folder, a checkpoint name ({', '.join(NAMED_CHECKPOINTS)}), a URL (http://HOST:PORT) "
            "nor module:factory"
        )
    try:
        module = importlib.import_module(prefix)
    except ImportError as error:
        raise ValueError(f"{text!r}: cannot import module {prefix!r} ({error}); is it on PYTHONPATH?") from None
    factory = getattr(module, rest, None)
    if not callable(factory):
        raise ValueError(f"{text!r}: module {prefix!r} has no callable {rest!r}")
    return factory()
