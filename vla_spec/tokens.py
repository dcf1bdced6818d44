"""Action tokens: 7 integers per step, ids 31744..31999 of the 32000-token Llama-2 vocabulary.

Mirrors ``prismatic/vla/action_tokenizer.py`` of openvla/openvla (c8f03f4) exactly:

* ``bin_edges = linspace(-1, 1, 256)``: 256 edges, spacing 2/255.
* ``bin_centers``: the 255 midpoints of consecutive edges; centre k is ``-1 + (2k + 1)/255``.
* encode: ``id = vocab_size - digitize(clip(a, -1, 1), bin_edges)``; digitize lies in [1, 256], so
  ids lie in [31744, 31999] and larger actions get smaller ids.
* decode: ``bin_centers[clip(vocab_size - id - 1, 0, 254)]``; ids 31744 and 31745 both decode to the
  top centre, because 256 digitize values share 255 centres.

All values here are in *normalized* action space ([-1, 1]); see :mod:`vla_spec.normalization` for
the physical scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LLAMA2_VOCAB_SIZE = 32000
N_BINS = 256
ACTION_DIM = 7


def _to_numpy(values: Any) -> tuple[np.ndarray, Any]:
    """Return ``values`` as a numpy array, and the torch tensor it came from (or None)."""
    if type(values).__module__.startswith("torch"):
        import torch

        tensor = values.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bf16 exactly
            tensor = tensor.float()
        return tensor.numpy(), values
    return np.asarray(values), None


def _like(result: np.ndarray, source: Any) -> Any:
    """Return ``result`` as a torch tensor on ``source``'s device when ``source`` is a tensor."""
    if source is None:
        return result
    import torch

    return torch.from_numpy(np.ascontiguousarray(result)).to(source.device)


@dataclass(frozen=True)
class ActionTokenizer:
    """Maps normalized actions in [-1, 1] to Llama-2 token ids and back, as OpenVLA does.

    ``vocab_size`` is the *text* vocabulary (32000), not the padded embedding size (32064): the
    reference ``predict_action`` decodes against ``text_config.vocab_size - pad_to_multiple_of``.
    Accepts numpy arrays, nested lists or torch tensors of any shape; returns the same kind.
    """

    vocab_size: int = LLAMA2_VOCAB_SIZE
    n_bins: int = N_BINS
    min_action: float = -1.0
    max_action: float = 1.0
    bin_edges: np.ndarray = field(init=False, repr=False, compare=False)
    bin_centers: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        edges = np.linspace(self.min_action, self.max_action, self.n_bins)
        edges.setflags(write=False)
        centers = (edges[:-1] + edges[1:]) / 2.0
        centers.setflags(write=False)
        object.__setattr__(self, "bin_edges", edges)
        object.__setattr__(self, "bin_centers", centers)

    @property
    def first_action_id(self) -> int:
        """Smallest id encode can emit (31744): the id of the largest actions."""
        return self.vocab_size - self.n_bins

    @property
    def last_action_id(self) -> int:
        """Largest id encode can emit (31999): the id of actions at or below ``min_action``."""
        return self.vocab_size - 1

    @property
    def action_token_begin_idx(self) -> int:
        """The reference's ``vocab_size - (n_bins + 1)`` (31743); ids *above* it are action ids."""
        return self.vocab_size - (self.n_bins + 1)

    def encode(self, actions: Any) -> Any:
        """Normalized actions (any shape) -> int64 token ids of the same shape."""
        values, source = _to_numpy(actions)
        clipped = np.clip(values.astype(np.float64), self.min_action, self.max_action)
        ids = self.vocab_size - np.digitize(clipped, self.bin_edges)
        return _like(ids.astype(np.int64), source)

    def decode(self, ids: Any) -> Any:
        """Token ids (any shape) -> float64 bin centres of the same shape (out-of-range ids clip)."""
        values, source = _to_numpy(ids)
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {values.dtype}")
        index = np.clip(self.vocab_size - values.astype(np.int64) - 1, 0, self.bin_centers.shape[0] - 1)
        return _like(self.bin_centers[index], source)

    def is_action_id(self, ids: Any) -> np.ndarray:
        """Boolean mask: which ids lie in the 256-id action range [31744, 31999]."""
        values, _ = _to_numpy(ids)
        return (values >= self.first_action_id) & (values <= self.last_action_id)
