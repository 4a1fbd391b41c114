"""Point head: an MLP from each LM hidden state to two points (x0, y0, x1, y1) in [0, 1].

For a caption word both points are regressed to its utterance's trace box; for a referring
expression they are the box corners (read at the position that emits EOS). The head only
reads hidden states, so it never changes the generated text.
"""

from __future__ import annotations

import torch
from torch import nn

from pixelkit.config import PointHeadConfig


class PointHead(nn.Module):
    """MLP(h) -> sigmoid -> (x0, y0, x1, y1).

    Args:
        in_dim: LM hidden size.
        cfg: head config.
    """

    def __init__(self, in_dim: int, cfg: PointHeadConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(cfg.num_layers - 1):
            layers += [nn.Linear(dim, cfg.hidden_dim), nn.GELU()]
            dim = cfg.hidden_dim
        layers.append(nn.Linear(dim, 4))
        self.mlp = nn.Sequential(*layers)
        # Start every prediction near the image centre with small spread, not at a corner.
        nn.init.zeros_(self.mlp[-1].bias)
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> points (..., 4) in [0, 1]."""
        return torch.sigmoid(self.mlp(hidden).float())
