"""An OpenVLA checkpoint as a LIBERO policy: the evaluation's image path in, its action path out.

Per step: the upright agentview (``Observation.image``, already rotated 180 degrees by
:mod:`vla_spec.sim.interface`) -> :func:`vla_spec.images.model_image` (JPEG 95, Lanczos 224, the
0.9-area centre crop) -> ``predict_action`` (the checkpoint's processor, network, decoder and
action processor: its un-normalized action) -> :class:`vla_spec.actions.LiberoOutputs` (gripper
binarize + invert) -> ``env.step``. The ``unnorm_key`` defaults to the LIBERO evaluation's choice:
the suite name, else ``{suite}_no_noops``; it is chosen once per episode, in ``reset``.

The checkpoint is explicit: a folder in the Hugging Face format or a name of
:data:`vla_spec.model.tiny.NAMED_CHECKPOINTS`. ``image="black"`` feeds a constant black image
instead of the camera (the image-blind control: a policy that succeeds without looking has not
learnt from pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_spec.actions import LiberoOutputs
from vla_spec.normalization import libero_unnorm_key
from vla_spec.sim.interface import Observation, PolicyStep, TaskContext

DTYPES = ("float32", "bfloat16")
IMAGE_SOURCES = ("camera", "black")


class OpenVLAPolicy:
    """A greedy OpenVLA policy; the model loads once per process, on first use."""

    needs_camera = True

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
    ) -> None:
        from vla_spec.model.tiny import resolve_checkpoint

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if image not in IMAGE_SOURCES:
            raise ValueError(f"image must be one of {IMAGE_SOURCES}, got {image!r}")
        self.checkpoint = str(resolve_checkpoint(checkpoint))
        self.unnorm_key = unnorm_key
        self.device = device
        self.dtype = dtype
        self.center_crop = center_crop
        self.image = image
        self.threads = None if threads is None else int(threads)
        self._model: Any = None
        self._outputs: LiberoOutputs | None = None
        self._instruction = ""

    def _load(self) -> Any:
        if self._model is None:
            import torch

            from vla_spec.model.loading import load_cached

            if self.threads is not None:
                torch.set_num_threads(self.threads)
            self._model = load_cached(self.checkpoint, getattr(torch, self.dtype), self.device)
        return self._model

    def reset(self, task: TaskContext) -> None:
        model = self._load()
        key = libero_unnorm_key(task.suite, model.norm_stats) if self.unnorm_key is None else self.unnorm_key
        self._outputs = LiberoOutputs(model.action_processor(key))
        self._instruction = task.instruction

    def act(self, obs: Observation) -> PolicyStep:
        from vla_spec.images import model_image

        if obs.image is None or self._outputs is None:
            raise RuntimeError("OpenVLAPolicy needs a camera observation and reset() before act()")
        upright = obs.image if self.image == "camera" else np.zeros_like(obs.image)
        image = model_image(upright, center_crop_enabled=self.center_crop)
        prediction = self._load().predict_action(image, self._instruction, self._outputs.processor.unnorm_key)
        return PolicyStep(
            action=self._outputs.env_command(prediction.actions[0]),
            tokens=tuple(int(t) for t in prediction.token_ids[0]),
        )
