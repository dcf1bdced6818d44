"""Is the model looking at its inputs? The check that catches openvla issue #346.

On transformers >= 4.50 the reference remote code silently skipped the vision path: forward hooks on
the towers and the projector recorded 0 calls and every image gave token 31872 x 7. The check here
runs the model on a black and a white image with one instruction, and on one image with two
instructions, and reports:

* ``calls``: forward calls of ``vision_backbone.featurizer``, ``vision_backbone.fused_featurizer``
  and ``projector`` (each must be >= 1);
* ``image_delta``: max |logit difference| of the first generated position, black vs white image;
* ``instruction_delta``: the same for two instructions on one image.

Any input a working model must react to must move the logits by more than ``min_delta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vla_spec.model.modeling import OpenVLA

HOOKED_MODULES = ("vision_backbone.featurizer", "vision_backbone.fused_featurizer", "projector")
DEFAULT_INSTRUCTIONS = ("put the bowl on the stove", "open the middle drawer of the cabinet")


@dataclass(frozen=True)
class LivenessReport:
    """Outcome of :func:`check_liveness`; ``ok`` is True when ``problems`` is empty."""

    calls: dict[str, int]
    image_delta: float
    instruction_delta: float
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def check_liveness(
    model: OpenVLA,
    instructions: tuple[str, str] = DEFAULT_INSTRUCTIONS,
    image_size: int = 224,
    min_delta: float = 1e-4,
) -> LivenessReport:
    """Run the three probes (black/white image, two instructions, hook counts) and report."""
    calls = {name: 0 for name in HOOKED_MODULES}
    handles = []
    for name in HOOKED_MODULES:

        def count(*_: object, _name: str = name) -> None:
            calls[_name] += 1

        handles.append(model.get_submodule(name).register_forward_hook(count))
    try:
        black = np.zeros((image_size, image_size, 3), np.uint8)
        white = np.full((image_size, image_size, 3), 255, np.uint8)
        logits = model.next_token_logits(model.prefix([black, white, black], [instructions[0], instructions[0], instructions[1]]))
    finally:
        for handle in handles:
            handle.remove()
    image_delta = float((logits[0] - logits[1]).abs().max())
    instruction_delta = float((logits[0] - logits[2]).abs().max())
    problems = [f"{name} was never called (the image is not used)" for name, n in calls.items() if n == 0]
    if not image_delta > min_delta:
        problems.append(f"black and white images give the same logits (max diff {image_delta:.3g} <= {min_delta})")
    if not instruction_delta > min_delta:
        problems.append(f"two instructions give the same logits (max diff {instruction_delta:.3g} <= {min_delta})")
    if not torch.isfinite(logits).all():
        problems.append("logits are not finite")
    return LivenessReport(calls=calls, image_delta=image_delta, instruction_delta=instruction_delta, problems=tuple(problems))
