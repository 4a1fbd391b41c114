"""Region tokens of the ``regions`` location format (Groma, Ma et al. 2024).

Groma gives its LM the image's region proposals as tokens: each proposal's image features,
pooled with RoIAlign and projected to the LM's width, stand beside a region token
``<ri>``, and the LM refers to a region by writing that token. Here the two are one
position: the pooled feature is added to the embedding of ``<ri>``, so the token the LM
reads at a region is the token it writes to name it (a referring answer ``<r3>``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


class RegionEncoder(nn.Module):
    """Proposals -> one feature per region, at the LM's width.

    Args:
        channels: C of the image features.
        width: the LM's hidden size D.
        pool: RoIAlign output side (``pool x pool`` cells per region).
    """

    def __init__(self, channels: int, width: int, pool: int = 4) -> None:
        super().__init__()
        self.pool = pool
        self.proj = nn.Sequential(nn.Linear(channels * pool * pool, width), nn.GELU(),
                                  nn.Linear(width, width))

    def forward(self, features: torch.Tensor, regions: torch.Tensor,
                image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool and project every region.

        Args:
            features: (B_img, C, h, w) image features covering the model's square.
            regions: (B, K, 4) xyxy in [0, 1] of the square, NaN rows for padding.
            image_index: (B,) image of each row (default ``arange(B)``).

        Returns:
            ``(tokens, mask)``: (B, K, D) region features and (B, K) 1 for real regions.
        """
        B, K, _ = regions.shape
        h, w = features.shape[-2:]
        valid = torch.isfinite(regions).all(-1)
        if K == 0:  # no proposals in the batch (an image without objects)
            return regions.new_zeros(B, 0, self.proj[-1].out_features), valid.long()
        scale = regions.new_tensor([w, h, w, h])
        boxes = torch.nan_to_num(regions) * scale                    # feature-map cells
        if image_index is None:
            image_index = torch.arange(B, device=regions.device)
        rows = image_index.to(regions.device).repeat_interleave(K)
        rois = torch.cat([rows[:, None].to(boxes.dtype), boxes.reshape(-1, 4)], 1)
        pooled = roi_align(features, rois.to(features.dtype), output_size=self.pool,
                           spatial_scale=1.0, sampling_ratio=2, aligned=True)  # (B*K, C, p, p)
        tokens = self.proj(pooled.flatten(1)).view(B, K, -1)
        return tokens, valid.long()
