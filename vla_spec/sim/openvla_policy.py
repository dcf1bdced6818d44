"""An OpenVLA checkpoint as a LIBERO policy: the evaluation's image path in, its action path out.

Per step: the upright agentview (``Observation.image``, already rotated 180 degrees by
:mod:`vla_spec.sim.interface`) -> :func:`vla_spec.images.model_image` (JPEG 95, Lanczos 224, the
0.9-area centre crop) -> ``predict_action`` -> 7 token ids -> :class:`ActionDecoder` (decode,
un-normalize with the checkpoint's statistics, gripper binarize + invert) -> ``env.step``.
The ``unnorm_key`` defaults to the LIBERO evaluation's choice: the suite name, else
``{suite}_no_noops``.
"""

from __future__ import annotations

from typing import Any

from vla_spec.normalization import libero_unnorm_key, resolve_unnorm_key
from vla_spec.sim.interface import ActionDecoder, Observation, PolicyStep, TaskContext

DTYPES = ("float32", "bfloat16")


class OpenVLAPolicy:
    """A greedy OpenVLA policy; the model loads once per process, on first use."""

    needs_camera = True

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        unnorm_key: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        center_crop: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.checkpoint = checkpoint
        self.unnorm_key = unnorm_key
        self.device = device
        self.dtype = dtype
        self.center_crop = center_crop
        self._model: Any = None
        self._decoder: ActionDecoder | None = None
        self._instruction = ""
        self._key = ""

    def _load(self) -> Any:
        if self._model is None:
            import torch

            from vla_spec.model.loading import load_cached
            from vla_spec.model.tiny import tiny_checkpoint_path

            path = self.checkpoint or str(tiny_checkpoint_path())
            self._model = load_cached(path, getattr(torch, self.dtype), self.device)
        return self._model

    def reset(self, task: TaskContext) -> None:
        model = self._load()
        if self.unnorm_key is None:
            self._key = libero_unnorm_key(task.suite, model.norm_stats)
        else:
            self._key = resolve_unnorm_key(model.norm_stats, self.unnorm_key)
        self._decoder = ActionDecoder(model.norm_stats[self._key])
        self._instruction = task.instruction

    def act(self, obs: Observation) -> PolicyStep:
        from vla_spec.images import model_image

        if obs.image is None or self._decoder is None:
            raise RuntimeError("OpenVLAPolicy needs a camera observation and reset() before act()")
        image = model_image(obs.image, center_crop_enabled=self.center_crop)
        prediction = self._load().predict_action(image, self._instruction, self._key)
        tokens = tuple(int(t) for t in prediction.token_ids[0])
        return PolicyStep(action=self._decoder.to_env(tokens), tokens=tokens)
