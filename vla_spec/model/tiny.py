"""The committed tiny checkpoint (``golden/tiny-openvla``), loaded once per process for tests.

It has the official OpenVLA file layout and tensor names but tiny towers and a tiny Llama; it was
fitted briefly so that its action tokens depend on the image and the instruction. Its tokenizer is
the project's own (ids differ from Llama-2's except BOS 1, EOS 2, 29871 and ``<PAD>`` 32000).
Rebuild with ``python scripts/make_tiny_checkpoint.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vla_spec.model.loading import load_cached
from vla_spec.model.modeling import OpenVLA

TINY_CHECKPOINT = Path(__file__).resolve().parents[2] / "golden" / "tiny-openvla"


def tiny_checkpoint_path() -> Path:
    """The folder of the tiny checkpoint (a source checkout only: it is not packaged)."""
    if not (TINY_CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"tiny checkpoint not found at {TINY_CHECKPOINT}: run from a source checkout, or rebuild it with "
            "python scripts/make_tiny_checkpoint.py"
        )
    return TINY_CHECKPOINT


def load_tiny(dtype: torch.dtype = torch.float32, device: str = "cpu") -> OpenVLA:
    """The tiny model, cached per (dtype, device): treat it as read-only (do not swap its decoder)."""
    return load_cached(str(tiny_checkpoint_path()), dtype, device)
