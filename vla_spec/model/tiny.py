"""The checkpoints committed under ``golden/``, by name, and the tiny test checkpoint's loader.

* ``tiny-openvla`` (``golden/tiny-openvla``): the spec's test checkpoint (below); it fails every
  LIBERO episode by design.
* ``tiny-vla-libero-object`` (``golden/tiny-vla-libero-object``): a tiny OpenVLA trained on
  scripted-expert LIBERO-Object demonstrations (``scripts/train_tiny_vla.py``; its ``README.md`` is
  the model card): the first model to succeed in the simulator here.

The test checkpoint has the official OpenVLA file layout and tensor names but tiny towers and a tiny Llama; it was
fitted briefly so that its action tokens depend on the image and the instruction. Its tokenizer is
the project's own (ids differ from Llama-2's except BOS 1, EOS 2, 29871 and ``<PAD>`` 32000).
Rebuild with ``python scripts/make_tiny_checkpoint.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vla_spec.model.loading import load_cached
from vla_spec.model.modeling import OpenVLA

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
TINY_CHECKPOINT = GOLDEN / "tiny-openvla"
#: Checkpoint names usable wherever a checkpoint folder is asked for (``--checkpoint NAME``).
NAMED_CHECKPOINTS: dict[str, Path] = {
    "tiny-openvla": TINY_CHECKPOINT,
    "tiny-vla-libero-object": GOLDEN / "tiny-vla-libero-object",
}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A named checkpoint's folder, or ``name_or_path`` itself if it is a folder with ``config.json``."""
    text = str(name_or_path)
    path = NAMED_CHECKPOINTS.get(text, Path(text).expanduser())
    if not (path / "config.json").is_file():
        names = ", ".join(NAMED_CHECKPOINTS)
        raise FileNotFoundError(
            f"checkpoint {text!r} is neither a folder with config.json nor a named checkpoint ({names}); "
            "give the folder of an OpenVLA checkpoint in the Hugging Face format"
        )
    return path


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
