"""An OpenVLA checkpoint as a LIBERO policy: the evaluation's image path in, its action path out.

Per step: the upright agentview (``Observation.image``, already rotated 180 degrees by
:mod:`vla_spec.sim.interface`) -> :func:`vla_spec.images.model_image` (JPEG 95, Lanczos 224, the
0.9-area centre crop) -> ``predict_action`` (the checkpoint's processor, network, decoder and
action processor: its un-normalized action) -> :class:`vla_spec.actions.LiberoOutputs` (gripper
binarize + invert) -> ``env.step``. The ``unnorm_key`` defaults to the LIBERO evaluation's choice:
the suite name, else ``{suite}_no_noops``; it is chosen per suite and checked in ``reset``.

It is a :class:`~vla_spec.sim.interface.BatchedPolicy`: ``model_input`` (the image path, uint8 out)
runs beside the simulator, ``act_batch`` answers many episodes with one ``predict_action`` (the
runner's policy actor); ``act`` is ``act_batch`` of one.

The checkpoint is explicit: a folder in the Hugging Face format or a name of
:data:`vla_spec.model.tiny.NAMED_CHECKPOINTS`. :meth:`OpenVLAPolicy.check_setup` checks, before any
episode, what would otherwise fail inside every episode (the checkpoint's files, the device, the
``unnorm_key`` for each suite) and returns what a log records about the run (the checkpoint's
content hash among it). ``decoder`` picks the greedy decoder (:data:`vla_spec.model.DECODERS`):
``fast`` by default (a static KV cache; on CUDA, CUDA graphs), ``naive`` for the reference's loop;
the log header records it. ``image="black"`` feeds a constant black image
instead of the camera (the image-blind control: a policy that succeeds without looking has not
learnt from pixels); the environment then renders nothing (``needs_camera`` is False; rendering
does not touch the physics, ``tests/test_sim_determinism.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vla_spec.actions import ActionProcessor, LiberoOutputs
from vla_spec.normalization import UnnormKeyError, libero_unnorm_key
from vla_spec.sim import PolicySetupError
from vla_spec.sim.interface import BatchItem, Observation, PolicyStep, TaskContext
from vla_spec.sim.suites import base_suite

DTYPES = ("float32", "bfloat16")
IMAGE_SOURCES = ("camera", "black")


EVALUATION_RECORD = "evaluation.json"  # a checkpoint's measured results, written after the run it records


def checkpoint_sha256(folder: Path) -> str:
    """SHA-256 over the names and contents of the checkpoint's files (all but hidden files, ``*.md``
    and the evaluation record ``evaluation.json``, which a checkpoint gains after it is measured and
    which names this digest), in name order: two checkpoints that load alike hash alike. Each file's
    own digest is read through :func:`file_sha256`, so a checkpoint is read in full once, not at
    every rollout."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix != ".md" and path.name != EVALUATION_RECORD:
            digest.update(path.name.encode() + b"\0")
            digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def digest_cache() -> Path:
    """Where file digests are kept between runs: ``$XDG_CACHE_HOME/vla-spec/file-sha256.json``
    (``~/.cache`` when XDG_CACHE_HOME is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vla-spec" / "file-sha256.json"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's contents, read once per version of the file: kept in
    :func:`digest_cache` under its resolved path with its size and modification time (ns), and read
    again only when either changes. A cache that cannot be written only costs the next run a re-read."""
    stat, key = path.stat(), str(path.resolve())
    store = digest_cache()
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):  # no cache yet, or a damaged one: start afresh
        known = {}
    known = known if isinstance(known, dict) else {}
    version = [stat.st_size, stat.st_mtime_ns]
    if known.get(key, [])[:2] != version:
        with open(path, "rb") as handle:
            known[key] = [*version, hashlib.file_digest(handle, "sha256").hexdigest()]
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            partial = store.with_name(f"{store.name}.{os.getpid()}")
            partial.write_text(json.dumps(known, indent=0))
            os.replace(partial, store)  # whole or not at all, also with other runs writing
        except OSError:
            pass
    return known[key][2]


def check_device(device: str) -> None:
    """Raise :class:`PolicySetupError` unless ``device`` names a torch device usable here."""
    if device == "cpu":  # always usable: no need to pay torch's import (seconds) to say so
        return
    import torch

    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise PolicySetupError("device", f"{device!r} is not a torch device ({error}); use cpu or cuda") from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            raise PolicySetupError("device", f"{device!r} needs CUDA, which is not available here ({build}); use cpu")
        if target.index is not None and target.index >= count:
            raise PolicySetupError("device", f"{device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif target.type != "cpu":
        try:
            torch.empty(0, device=target)
        except (RuntimeError, AssertionError) as error:
            raise PolicySetupError("device", f"{device!r} is not usable here ({error}); use cpu") from None


class OpenVLAPolicy:
    """A greedy OpenVLA policy; the model loads once per process, on first use."""

    def __init__(
        self,
        checkpoint: str,
        *,
        unnorm_key: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        center_crop: bool = True,
        image: str = "camera",
        threads: int | str | None = None,
        decoder: str = "fast",
    ) -> None:
        from vla_spec.model import DECODERS
        from vla_spec.model.tiny import resolve_checkpoint

        if dtype not in DTYPES:
            raise PolicySetupError("dtype", f"{dtype!r} is not supported; choose {' or '.join(DTYPES)}")
        if image not in IMAGE_SOURCES:
            raise PolicySetupError("image", f"{image!r} is not an image source; choose {' or '.join(IMAGE_SOURCES)}")
        if decoder not in DECODERS:
            raise PolicySetupError("decoder", f"{decoder!r} is not a decoder; choose {' or '.join(DECODERS)}")
        if threads is not None and (not str(threads).isdigit() or int(threads) < 1):
            raise PolicySetupError("threads", f"{threads!r} is not a whole number of threads >= 1")
        self.checkpoint = str(resolve_checkpoint(checkpoint))
        self.unnorm_key = unnorm_key
        self.device = device
        self.dtype = dtype
        self.center_crop = center_crop
        self.image = image
        self.decoder = decoder
        self.threads = None if threads is None else int(threads)
        self._model: Any = None
        self._outputs: dict[str, LiberoOutputs] = {}  # by suite
        self._task: TaskContext | None = None

    @property
    def needs_camera(self) -> bool:
        """Whether the policy reads the camera: not for the black image, so nothing is rendered then."""
        return self.image == "camera"

    def check_setup(self, suites: Sequence[str]) -> dict[str, Any]:
        """Check the device, the checkpoint's files and the ``unnorm_key`` for each suite without
        loading the weights; return what the log header records. Raises :class:`PolicySetupError`."""
        from vla_spec.model.checkpoint import CheckpointError, read_config, weight_files
        from vla_spec.model.tokenizer import MissingTokenizerError, require_tokenizer_files

        check_device(self.device)
        folder = Path(self.checkpoint)
        try:
            weight_files(folder)
            norm_stats = read_config(folder).norm_stats  # what from_pretrained gives model.norm_stats
        except (CheckpointError, ValueError) as error:
            raise PolicySetupError("checkpoint", f"{folder}: {error}") from None
        try:
            require_tokenizer_files(folder)
        except MissingTokenizerError as error:
            raise PolicySetupError("checkpoint", str(error)) from None
        keys = {}
        for suite in suites:
            try:  # as reset does, on the statistics read from the files
                keys[suite] = ActionProcessor.select(norm_stats, self._unnorm_key(suite, norm_stats)).unnorm_key
            except UnnormKeyError as error:
                if self.unnorm_key is not None:
                    raise PolicySetupError("unnorm_key", f"checkpoint {folder.name}: {error}") from None
                raise PolicySetupError(
                    "suite",
                    f"checkpoint {folder.name} has no statistics for {suite} (it has {', '.join(sorted(norm_stats))}); "
                    "choose one of them as the unnorm_key",
                ) from None
        return {
            "checkpoint": str(folder.resolve()),
            "checkpoint_sha256": checkpoint_sha256(folder),
            "dtype": self.dtype,
            "device": self.device,
            "decoder": self.decoder,
            "image": self.image,
            "unnorm_key": keys,
        }

    def _unnorm_key(self, suite: str, norm_stats: Mapping[str, Any]) -> str:
        """The key asked for in ``suite``'s episodes: ``unnorm_key``, else the LIBERO evaluation's
        choice (:func:`libero_unnorm_key`); :meth:`ActionProcessor.select` resolves it."""
        return libero_unnorm_key(base_suite(suite), norm_stats) if self.unnorm_key is None else self.unnorm_key

    def _load(self) -> Any:
        if self._model is None:
            import torch

            from vla_spec.model.loading import load_cached

            if self.threads is not None:
                torch.set_num_threads(self.threads)
            self._model = load_cached(self.checkpoint, getattr(torch, self.dtype), self.device, self.decoder)
        return self._model

    def _outputs_for(self, suite: str) -> LiberoOutputs:
        """The action path for ``suite``'s episodes (its ``unnorm_key``), made once per suite."""
        if suite not in self._outputs:
            model = self._load()
            self._outputs[suite] = LiberoOutputs(model.action_processor(self._unnorm_key(suite, model.norm_stats)))
        return self._outputs[suite]

    def reset(self, task: TaskContext) -> None:
        self._outputs_for(task.suite)  # loads the model, checks the unnorm_key
        self._task = replace(task, env=None)

    def model_input(self, obs: Observation) -> np.ndarray:
        """The 224 x 224 uint8 image the model gets for ``obs``: the camera frame through
        :func:`vla_spec.images.model_image` (JPEG 95, Lanczos, centre crop), or black (what that
        path makes of a black frame)."""
        from vla_spec.images import MODEL_IMAGE_SIZE, model_image

        if self.image == "black":
            return np.zeros((MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE, 3), dtype=np.uint8)
        if obs.image is None:
            raise RuntimeError("OpenVLAPolicy needs a camera observation (needs_camera is True)")
        return model_image(obs.image, center_crop_enabled=self.center_crop)

    def act_batch(self, items: Sequence[BatchItem]) -> list[PolicyStep]:
        """One ``predict_action`` per suite (its ``unnorm_key``) over the items' images, handed over
        as one [B, 224, 224, 3] uint8 array (normalizing them is the model's processor's job);
        answers in ``items`` order. A batch gives each item the tokens of a call for it alone."""
        answers: dict[int, PolicyStep] = {}
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.task.suite, []).append(index)
        for suite, indices in groups.items():
            outputs = self._outputs_for(suite)
            images = np.stack([items[i].image for i in indices])  # [B, 224, 224, 3] uint8
            prediction = self._load().predict_action(images, [items[i].task.instruction for i in indices], outputs.processor.unnorm_key)
            for row, index in enumerate(indices):
                answers[index] = PolicyStep(
                    action=outputs.env_command(prediction.actions[row]),
                    tokens=tuple(int(t) for t in prediction.token_ids[row]),
                )
        return [answers[index] for index in range(len(items))]

    def act(self, obs: Observation) -> PolicyStep:
        if self._task is None:
            raise RuntimeError("OpenVLAPolicy.act needs reset() first")
        return self.act_batch([BatchItem(self._task, obs.step, self.model_input(obs))])[0]
