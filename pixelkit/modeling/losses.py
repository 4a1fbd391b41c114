"""Losses: label-smoothed text cross-entropy, masked point L1, CenterNet focal and box losses.

Every loss averages over *valid* elements only (labels != -100, mask == 1), so padding never
changes a loss value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

IGNORE_INDEX = -100


def text_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross-entropy over non-ignored tokens.

    Args:
        logits: (B, L, V).
        labels: (B, L), ``-100`` where ignored.
        label_smoothing: epsilon (paper: 0.1).
    """
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def point_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             reduction: str = "token") -> torch.Tensor:
    """Mean absolute error over valid positions and the 4 coordinates.

    Args:
        pred: (B, L, 4) predicted points in [0, 1].
        target: (B, L, 4); may hold anything (NaN included) where ``mask`` is 0.
        mask: (B, L) 1 where the target is valid.
        reduction: ``"token"``: mean over all valid positions of the batch, so a long
            narrative (~25 located words) outweighs a referring box (~3 positions);
            ``"row"``: mean per row first, then over rows with a target, so every prompt
            counts once whatever its length.

    Returns:
        A scalar; 0 (with a gradient path) when nothing is valid.
    """
    valid = mask.bool()
    if not valid.any():
        return pred.sum() * 0.0
    if reduction == "token":
        return (pred[valid].float() - target[valid].float()).abs().mean()
    err = (pred.float() - torch.nan_to_num(target.float())).abs().mean(-1) * valid  # (B, L)
    rows = valid.any(1)
    return (err.sum(1)[rows] / valid.sum(1)[rows]).mean()


def centernet_focal(logits: torch.Tensor, target: torch.Tensor, num_pos: int | torch.Tensor,
                    alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (Zhou et al. 2019, eq. 1).

    Args:
        logits: (...) heatmap logits.
        target: (...) Gaussian-splatted targets in [0, 1], exactly 1 at object centres.
        num_pos: number of objects (the normaliser; at least 1 is used).
    """
    logits, target = logits.float(), target.float()
    pos = target.eq(1).float()
    # log(sigmoid) / log(1 - sigmoid) from logits, numerically stable.
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = -((1 - p) ** alpha) * log_p * pos
    neg_loss = -((1 - target) ** beta) * (p ** alpha) * log_1mp * (1 - pos)
    n = torch.as_tensor(num_pos, dtype=logits.dtype, device=logits.device).clamp(min=1)
    return (pos_loss.sum() + neg_loss.sum()) / n


def box_losses(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and GIoU losses of matched boxes.

    Args:
        pred, target: (N, 4) xyxy boxes (normalised).

    Returns:
        (l1, giou), each a mean over N (0 when N == 0).
    """
    if pred.shape[0] == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    l1 = (pred.float() - target.float()).abs().mean()
    giou = generalized_box_iou_loss(pred.float(), target.float(), reduction="mean")
    return l1, giou
