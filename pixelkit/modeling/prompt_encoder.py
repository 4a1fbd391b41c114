"""SAM-style prompt encoder: boxes and points -> sparse prompt tokens.

A prompt is a short list of labelled 2-D points in the model frame ([0, 1] of the padded
square): positive / negative clicks, or the two corners of a box. Each becomes one token:
a random-Fourier positional encoding of the point plus a learned embedding of its type.
"No prompt" is the whole-image box [0, 0, 1, 1], as in the paper. Padding points (label
``PAD``) get a learned "not a point" embedding and no positional term, like SAM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Point labels (SAM's convention, plus box corners).
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised coordinates (Tancik et al.; SAM).

    Args:
        dim: output width (even).
        scale: std of the Gaussian projection.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"positional encoding width must be even, got {dim}")
        self.register_buffer("gaussian", scale * torch.randn(2, dim // 2))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) in [0, 1] -> (..., dim)."""
        proj = (2 * coords - 1).to(self.gaussian.dtype) @ self.gaussian * (2 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """Encoding of the cell centres of an h x w grid: (h * w, dim), row-major."""
        dev = self.gaussian.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack([xx, yy], dim=-1).view(-1, 2))


def pack_prompts(
    batch_size: int,
    boxes: torch.Tensor | None = None,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and/or points -> one padded list of labelled points per sample.

    Args:
        batch_size: B.
        boxes: (B, 4) xyxy in [0, 1], or None. Rows of NaN mean "no box for this sample".
        points: (B, N, 2) xy in [0, 1], or None.
        labels: (B, N) with 1 positive, 0 negative, -1 padding; default all positive.
        device: where to build the default prompt.

    Returns:
        coords (B, P, 2) and labels (B, P). A sample with neither box nor valid point gets
        the whole-image box.
    """
    coords_parts, label_parts = [], []
    if boxes is not None:
        device = boxes.device
        has_box = torch.isfinite(boxes).all(dim=-1)                       # (B,)
        corners = torch.nan_to_num(boxes).view(-1, 2, 2)                   # (B, 2, 2)
        box_labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=device)
        box_labels = torch.where(has_box[:, None], box_labels, torch.full_like(box_labels, PAD))
        coords_parts.append(corners)
        label_parts.append(box_labels)
    if points is not None:
        device = points.device
        if labels is None:
            labels = torch.ones(points.shape[:2], dtype=torch.long, device=device)
        coords_parts.append(points.float())
        label_parts.append(labels.long())
    if not coords_parts:
        coords = torch.zeros(batch_size, 0, 2, device=device)
        plabels = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
    else:
        coords = torch.cat(coords_parts, dim=1)
        plabels = torch.cat(label_parts, dim=1)
    # Whole-image box where a sample has no prompt at all.
    empty = (plabels == PAD).all(dim=1) if plabels.shape[1] else torch.ones(
        batch_size, dtype=torch.bool, device=device)
    if empty.any():
        whole = torch.tensor([[0.0, 0.0], [1.0, 1.0]], device=device).expand(batch_size, 2, 2)
        whole_labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=device)
        whole_labels = torch.where(empty[:, None], whole_labels, torch.full_like(whole_labels, PAD))
        coords = torch.cat([coords, whole], dim=1)
        plabels = torch.cat([plabels, whole_labels.expand(batch_size, 2)], dim=1)
    return coords, plabels


class PromptEncoder(nn.Module):
    """Labelled points -> prompt tokens (B, P, D).

    Args:
        dim: token width D (the extractor's width).
        pe_scale: std of the random Fourier projection.
    """

    def __init__(self, dim: int, pe_scale: float = 1.0) -> None:
        super().__init__()
        self.pe = PositionEmbeddingRandom(dim, pe_scale)
        # One learned embedding per point type: negative, positive, box corner 1, corner 2.
        self.type_embed = nn.Embedding(4, dim)
        self.not_a_point = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.not_a_point, std=0.02)

    def forward(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: coords (B, P, 2) in [0, 1]; labels (B, P). Returns tokens (B, P, D)."""
        pad = labels == PAD
        tokens = self.pe.encode(coords.clamp(0, 1))
        tokens = tokens + self.type_embed(labels.clamp(min=0))
        return torch.where(pad[..., None], self.not_a_point.to(tokens.dtype), tokens)

    def dense_pe(self, h: int, w: int) -> torch.Tensor:
        """Positional encoding of the image grid: (h * w, D)."""
        return self.pe.grid(h, w)
