"""Test support: the tiny checkpoint, the fixed golden inputs (images x instructions) and the
record that is snapshotted.

Images are the PNGs in ``golden/images`` (256 x 256 x 3 uint8, written by
``scripts/make_tiny_checkpoint.py --images-only``); each is fed through the model processor as is
(not through the LIBERO path, which :mod:`tests.test_images` pins separately). The tiny model is
``golden/tiny-openvla`` (:data:`vla_spec.model.tiny.NAMED_CHECKPOINTS`), loaded once per process.

A record is keyed by *device class* (``"cpu-float32"``, ``"cuda-bfloat16"``, ...): the CPU float32
golden is exact; a golden of another class may differ from it only where a step was a near-tie
(:mod:`vla_spec.model.agreement`: dtype-aware, in the less precise dtype of the two records).
Margins and top-1 logits are stored at full precision (``margin_resolution`` 0) with a ``near_tie``
flag per step under :data:`TIE_RULE`. Goldens recorded before stored margins rounded to 0.1 and no
top-1 logits; they are read with :data:`LEGACY_MARGIN_RESOLUTION` and their flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from vla_spec.model.agreement import DEFAULT_TIE_MARGIN, FRACTION_BITS, TIE_ULPS, near_tie_divergences, near_ties
from vla_spec.model.tiny import NAMED_CHECKPOINTS

if TYPE_CHECKING:  # torch is imported when a model is loaded, not when tests are collected
    import torch

    from vla_spec.model.decoding import Decoder
    from vla_spec.model.modeling import OpenVLA

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
TINY_CHECKPOINT = NAMED_CHECKPOINTS["tiny-openvla"]
IMAGE_DIR = GOLDEN_DIR / "images"
CPU_GOLDEN = GOLDEN_DIR / "test_model_golden" / "test_tiny_golden_cpu_float32.json"
GOLDEN_IMAGES = ("black", "white", "gradient", "scene", "marker")
GOLDEN_INSTRUCTIONS = (
    "put the bowl on the stove",
    "open the middle drawer of the cabinet",
    "pick up the alphabet soup and place it in the basket",
)
GOLDEN_UNNORM_KEY = "libero_spatial"
#: The rule of the stored ``near_tie`` flags: bfloat16, the least precise dtype a golden is held against.
TIE_RULE = {"floor": DEFAULT_TIE_MARGIN, "ulps": TIE_ULPS, "dtype": "bfloat16"}
LEGACY_MARGIN_RESOLUTION = 0.1  # goldens without "margin_resolution" stored margins rounded to 0.1


def load_tiny(dtype: torch.dtype | None = None, device: str = "cpu") -> OpenVLA:
    """The tiny model (default float32), cached per (dtype, device): treat it as read-only."""
    import torch

    from vla_spec.model.loading import load_cached

    return load_cached(str(TINY_CHECKPOINT), dtype or torch.float32, device)


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
    import torch

    with torch.inference_mode():
        result = model.predict_action([images[i] for i, _ in cases], [t for _, t in cases], unnorm_key, decoder=decoder)
    ties = near_ties(result.margins, top_logits=result.top_logits, dtype=TIE_RULE["dtype"])
    return {
        "device_class": device_class(model),
        "unnorm_key": result.unnorm_key,
        "tie_rule": TIE_RULE,
        "margin_resolution": 0.0,
        "cases": [
            {
                "image": image,
                "instruction": text,
                "token_ids": [int(v) for v in result.token_ids[row]],
                "actions": [round(float(v), 6) for v in result.actions[row]],
                "margins": [float(v) for v in result.margins[row]],
                "top_logits": [float(v) for v in result.top_logits[row]],
                "near_tie": [bool(v) for v in ties[row]],
            }
            for row, (image, text) in enumerate(cases)
        ],
    }


def read_cpu_golden(path: Path = CPU_GOLDEN) -> dict[str, Any]:
    """The committed exact CPU float32 golden of the tiny checkpoint."""
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def record_dtype(record: dict[str, Any]) -> str:
    """The dtype of a record's device class (``"cuda-bfloat16"`` -> ``"bfloat16"``)."""
    return str(record["device_class"]).rpartition("-")[2]


def reference_ties(reference: dict[str, Any], dtype: str) -> np.ndarray:
    """Which steps of ``reference`` [cases, 7] may flip in ``dtype``: its stored flags, and its margins
    (to their stored resolution) against the dtype-aware threshold at its top-1 logits, when stored."""
    cases = reference["cases"]
    return near_ties(
        [c["margins"] for c in cases],
        top_logits=[c["top_logits"] for c in cases] if all("top_logits" in c for c in cases) else None,
        dtype=dtype,
        resolution=float(reference.get("margin_resolution", LEGACY_MARGIN_RESOLUTION)),
        flags=[c["near_tie"] for c in cases],
    )


def divergences_from(record: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Cases of ``record`` whose tokens leave ``reference``'s at a step that was not a near-tie in the
    less precise dtype of the two.

    Use it to check a golden of another device class (e.g. CUDA bfloat16) against the CPU one:
    ``divergences_from(golden_record(model), read_cpu_golden()) == []``.
    """
    keys = [(c["image"], c["instruction"]) for c in reference["cases"]]
    if [(c["image"], c["instruction"]) for c in record["cases"]] != keys:
        raise ValueError("the two records cover different cases: regenerate them with the same golden_cases()")
    if record["unnorm_key"] != reference["unnorm_key"]:
        raise ValueError(f"unnorm_key differs: {record['unnorm_key']!r} vs {reference['unnorm_key']!r}")
    dtype = min(record_dtype(record), record_dtype(reference), key=FRACTION_BITS.__getitem__)
    return near_tie_divergences(
        [c["token_ids"] for c in record["cases"]],
        [c["token_ids"] for c in reference["cases"]],
        reference_ties(reference, dtype),
    )
