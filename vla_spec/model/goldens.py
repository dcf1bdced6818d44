"""The fixed golden inputs (images x instructions) and the record that is snapshotted.

Images are the PNGs in ``golden/images`` (256 x 256 x 3 uint8, written by
``scripts/make_tiny_checkpoint.py --images-only``); each is fed through the model processor as is
(not through the LIBERO path, which :mod:`tests.test_images` pins separately).

A record is keyed by *device class* (``"cpu-float32"``, ``"cuda-bfloat16"``, ...): the CPU float32
golden is exact; a golden of another class may differ from it only where a step was a near-tie,
see :func:`vla_spec.model.agreement.near_tie_divergences`. Margins are stored rounded to 0.1 logit
(informative, and stable across machines) plus a ``near_tie`` flag per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_spec.model.agreement import DEFAULT_TIE_MARGIN, near_tie_divergences
from vla_spec.model.decoding import Decoder
from vla_spec.model.modeling import OpenVLA

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden"
IMAGE_DIR = GOLDEN_DIR / "images"
CPU_GOLDEN = GOLDEN_DIR / "test_model_golden" / "test_tiny_golden_cpu_float32.json"
GOLDEN_IMAGES = ("black", "white", "gradient", "scene", "marker")
GOLDEN_INSTRUCTIONS = (
    "put the bowl on the stove",
    "open the middle drawer of the cabinet",
    "pick up the alphabet soup and place it in the basket",
)
GOLDEN_UNNORM_KEY = "libero_spatial"


def load_image(name: str) -> np.ndarray:
    """A fixture image as H x W x 3 uint8 RGB."""
    from PIL import Image

    with Image.open(IMAGE_DIR / f"{name}.png") as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def golden_cases() -> list[tuple[str, str]]:
    """All (image name, instruction) pairs, image-major."""
    return [(image, text) for image in GOLDEN_IMAGES for text in GOLDEN_INSTRUCTIONS]


def device_class(model: OpenVLA) -> str:
    """``"<device type>-<dtype>"`` of the model, e.g. ``"cpu-float32"`` or ``"cuda-bfloat16"``."""
    return f"{model.device.type}-{str(model.dtype).removeprefix('torch.')}"


def golden_record(model: OpenVLA, decoder: Decoder | None = None, unnorm_key: str = GOLDEN_UNNORM_KEY) -> dict[str, Any]:
    """Run every golden case in one batch; return the JSON-ready record."""
    cases = golden_cases()
    images = {name: load_image(name) for name in GOLDEN_IMAGES}
    with torch.inference_mode():
        result = model.predict_action([images[i] for i, _ in cases], [t for _, t in cases], unnorm_key, decoder=decoder)
    return {
        "device_class": device_class(model),
        "unnorm_key": result.unnorm_key,
        "tie_margin": DEFAULT_TIE_MARGIN,
        "cases": [
            {
                "image": image,
                "instruction": text,
                "token_ids": [int(v) for v in result.token_ids[row]],
                "actions": [round(float(v), 6) for v in result.actions[row]],
                "margins": [round(float(v), 1) for v in result.margins[row]],
                "near_tie": [bool(v < DEFAULT_TIE_MARGIN) for v in result.margins[row]],
            }
            for row, (image, text) in enumerate(cases)
        ],
    }


def read_cpu_golden(path: Path = CPU_GOLDEN) -> dict[str, Any]:
    """The committed exact CPU float32 golden of the tiny checkpoint."""
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def divergences_from(record: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Cases of ``record`` whose tokens leave ``reference``'s at a step that was not a near-tie.

    Use it to check a golden of another device class (e.g. CUDA bfloat16) against the CPU one:
    ``divergences_from(golden_record(model), read_cpu_golden()) == []``.
    """
    keys = [(c["image"], c["instruction"]) for c in reference["cases"]]
    if [(c["image"], c["instruction"]) for c in record["cases"]] != keys:
        raise ValueError("the two records cover different cases: regenerate them with the same golden_cases()")
    if record["unnorm_key"] != reference["unnorm_key"]:
        raise ValueError(f"unnorm_key differs: {record['unnorm_key']!r} vs {reference['unnorm_key']!r}")
    return near_tie_divergences(
        [c["token_ids"] for c in record["cases"]],
        [c["token_ids"] for c in reference["cases"]],
        [c["margins"] for c in reference["cases"]],
        tie_margin=reference["tie_margin"],
    )
