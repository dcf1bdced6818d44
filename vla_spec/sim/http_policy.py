"""A policy server as a LIBERO policy: the evaluation's image path here, the model behind HTTP.

Per step: the upright agentview (``Observation.image``) -> :func:`vla_spec.images.model_image`
(JPEG 95, Lanczos 224, centre crop; as :class:`vla_spec.sim.openvla_policy.OpenVLAPolicy`) ->
``POST /act`` in the reference REST protocol (:class:`vla_spec.adapters.HTTPImpl`) -> the server's
un-normalized action -> :func:`vla_spec.gripper.policy_to_env` -> ``env.step``. Any server that
speaks the protocol (``vla-spec serve``, OpenVLA's ``deploy.py``, a vLLM/SGLang/TensorRT deployment
behind it) is evaluated with the same protocol, logs and thresholds as the native model.

The ``unnorm_key`` defaults to the LIBERO evaluation's choice, decided by the server's answers in
:meth:`HTTPPolicy.check_setup`: the suite's name if the server accepts it, else
``{suite}_no_noops``. The server returns no token ids; the log's traces record actions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_spec.gripper import policy_to_env
from vla_spec.normalization import NO_NOOPS
from vla_spec.sim import PolicySetupError
from vla_spec.sim.interface import Observation, PolicyStep, TaskContext


class HTTPPolicy:
    """A LIBERO policy that asks a server at ``url`` (``http://HOST:PORT``) for each action."""

    needs_camera = True

    def __init__(self, url: str, *, unnorm_key: str | None = None, double_encode: bool = False) -> None:
        from vla_spec.adapters import HTTPImpl

        try:
            self.client = HTTPImpl(url, double_encode=double_encode)
        except ImportError as error:
            raise PolicySetupError("url", str(error)) from None
        self.unnorm_key = unnorm_key
        self._keys: dict[str, str] = {}
        self._instruction = ""
        self._key: str | None = None

    def _accepted_key(self, suite: str) -> str:
        """The first of ``unnorm_key`` (if given) or the suite's and ``{suite}_no_noops`` that the
        server answers (a black 224 x 224 image); :class:`PolicySetupError` if it takes none."""
        import httpx

        from vla_spec.adapters import Refused

        candidates = [self.unnorm_key] if self.unnorm_key is not None else [suite, suite + NO_NOOPS]
        reasons = []
        for key in candidates:
            try:
                self.client.act(np.zeros((224, 224, 3), np.uint8), "check the server", key)
            except Refused as error:
                reasons.append(f"{key}: {error}")
                continue
            except (httpx.TransportError, RuntimeError) as error:
                raise PolicySetupError("url", f"cannot use the server at {self.client.url}: {error}") from None
            return key
        option = "unnorm_key" if self.unnorm_key is not None else "suite"
        raise PolicySetupError(option, f"the server at {self.client.url} refuses {'; '.join(reasons)}")

    def check_setup(self, suites: Sequence[str]) -> dict[str, Any]:
        """Ask the server once per suite which key it accepts; return what the log header records."""
        self._keys = {suite: self._accepted_key(suite) for suite in suites}
        return {"url": self.client.url, "double_encode": self.client.double_encode, "unnorm_key": dict(self._keys)}

    def reset(self, task: TaskContext) -> None:
        if task.suite not in self._keys:
            self._keys[task.suite] = self._accepted_key(task.suite)
        self._key = self._keys[task.suite]
        self._instruction = task.instruction

    def act(self, obs: Observation) -> PolicyStep:
        from vla_spec.images import model_image

        if obs.image is None or self._key is None:
            raise RuntimeError("HTTPPolicy needs a camera observation and reset() before act()")
        answer = self.client.act(model_image(obs.image), self._instruction, self._key)
        return PolicyStep(action=policy_to_env(answer.action))
