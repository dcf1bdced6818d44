"""The fused-GELU MLP projector (``arch_specifier = "no-align+fused-gelu-mlp"``).

``fc1`` (D -> 4D), GELU, ``fc2`` (4D -> H), GELU, ``fc3`` (H -> H); D = vision feature width
(2176), H = LLM hidden size (4096). Prismatic's ``projector.0/2/4`` are stored as ``fc1/fc2/fc3``.
The paper calls it a "2-layer MLP"; the code has three linear layers.
"""

from __future__ import annotations

import torch
from torch import nn


class FusedMLPProjector(nn.Module):
    """Maps vision patch features [B, N, D] to LLM embeddings [B, N, H]."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim, bias=True)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim, bias=True)
        self.fc3 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(features)))))
