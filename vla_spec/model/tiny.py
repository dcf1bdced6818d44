"""Checkpoint names: ``--checkpoint NAME`` wherever a checkpoint folder is asked for (user API).

:data:`NAMED_CHECKPOINTS` maps names to the checkpoints committed under ``golden/`` (a source
checkout; they are not packaged), and :func:`resolve_checkpoint` turns a name or a folder into the
folder. ``vla-spec rollout --policy openvla --checkpoint NAME`` and
:class:`vla_spec.sim.openvla_policy.OpenVLAPolicy` take either.

* ``tiny-openvla`` (``golden/tiny-openvla``): the spec's test checkpoint, the official file layout and
  tensor names with tiny towers and a tiny Llama, fitted briefly so that its action tokens depend on
  the image and the instruction; its tokenizer is the project's own (ids differ from Llama-2's
  except BOS 1, EOS 2, 29871 and ``<PAD>`` 32000). It fails every LIBERO episode by design.
  Rebuild with ``python scripts/make_tiny_checkpoint.py``.
* ``tiny-vla-libero-object`` (``golden/tiny-vla-libero-object``): a tiny OpenVLA trained on
  scripted-expert LIBERO-Object demonstrations (``scripts/train_tiny_vla.py``; its ``README.md`` is
  the model card): the first model to succeed in the simulator here.
"""

from __future__ import annotations

from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
#: Checkpoint names usable wherever a checkpoint folder is asked for (``--checkpoint NAME``).
NAMED_CHECKPOINTS: dict[str, Path] = {
    "tiny-openvla": GOLDEN / "tiny-openvla",
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
