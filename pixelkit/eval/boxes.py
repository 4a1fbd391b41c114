"""Box IoU helpers and referring-expression accuracy (P@0.5).

All boxes at this boundary are ``xyxy`` in pixels of the original image (any consistent
unit works: IoU is scale-free). IoU is computed with :func:`torchvision.ops.box_iou` in
float64 so that hand-worked boundary cases (IoU exactly 0.5) are not blurred by float32
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["as_boxes", "box_iou_matrix", "box_iou_pairs", "refer_accuracy"]

# Rows processed per block in `box_iou_pairs`: the block's full IoU matrix is built and its
# diagonal kept, so memory stays O(block**2) instead of O(N**2) for large eval sets.
_PAIR_BLOCK = 1024


def as_boxes(boxes: Any, name: str = "boxes") -> np.ndarray:
    """Converts boxes to a validated ``(N, 4)`` float64 array.

    Args:
        boxes: ``(N, 4)`` xyxy boxes as a numpy array, torch tensor (any device, grad is
            detached) or nested list; an empty sequence gives ``(0, 4)``.
        name: what to call the argument in error messages.

    Returns:
        ``(N, 4)`` float64 array.

    Raises:
        ValueError: on a wrong shape, a non-finite value, or a box with ``x2 < x1`` or
            ``y2 < y1`` (an inverted box would give a negative area and a meaningless IoU).
    """
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4) xyxy boxes, got {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: row {int(np.argmax(bad))} is not finite: {arr[bad][0]}")
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if inverted.any():
        i = int(np.argmax(inverted))
        raise ValueError(f"{name}: row {i} is not xyxy (x2 < x1 or y2 < y1): {arr[i].tolist()}")
    return arr


def box_iou_matrix(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Pairwise IoU of two sets of xyxy boxes.

    Args:
        boxes1: ``(N, 4)`` xyxy boxes.
        boxes2: ``(M, 4)`` xyxy boxes.

    Returns:
        ``(N, M)`` float64 IoU. Two zero-area boxes (union 0) get IoU 0, not NaN, as in
        the official PixelLLM ``box_iou`` (``np.where(union > 0, inter / union, 0)``).
    """
    b1 = as_boxes(boxes1, "boxes1")
    b2 = as_boxes(boxes2, "boxes2")
    if len(b1) == 0 or len(b2) == 0:
        return np.zeros((len(b1), len(b2)), np.float64)
    iou = box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
    return np.nan_to_num(iou, nan=0.0)


def box_iou_pairs(pred_boxes: Any, gt_boxes: Any) -> np.ndarray:
    """IoU of corresponding boxes (``pred[i]`` with ``gt[i]``).

    Args:
        pred_boxes: ``(N, 4)`` xyxy boxes.
        gt_boxes: ``(N, 4)`` xyxy boxes.

    Returns:
        ``(N,)`` float64 IoU per pair.

    Raises:
        ValueError: if the two sets differ in length.
    """
    p = as_boxes(pred_boxes, "pred_boxes")
    g = as_boxes(gt_boxes, "gt_boxes")
    if len(p) != len(g):
        raise ValueError(f"pred_boxes has {len(p)} boxes but gt_boxes has {len(g)}")
    out = np.empty(len(p), np.float64)
    for start in range(0, len(p), _PAIR_BLOCK):
        stop = start + _PAIR_BLOCK
        out[start:stop] = np.diagonal(box_iou_matrix(p[start:stop], g[start:stop]))
    return out


def refer_accuracy(
    pred_boxes: Any | Sequence[Sequence[float]],
    gt_boxes: Any | Sequence[Sequence[float]],
    iou_threshold: float = 0.5,
) -> float:
    """Referring-expression accuracy P@``iou_threshold``: share of pairs with IoU > threshold.

    The comparison is strict (IoU exactly 0.5 is a miss), as in the official PixelLLM
    ``RefCocoEvaluator`` (``max(box_iou[:k]) > self.iou_threshold``) and MDETR.

    Args:
        pred_boxes: ``(N, 4)`` predicted xyxy boxes, one per expression.
        gt_boxes: ``(N, 4)`` ground-truth xyxy boxes, same order.
        iou_threshold: IoU that a hit must strictly exceed.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: if there are no pairs or the lengths differ.
    """
    ious = box_iou_pairs(pred_boxes, gt_boxes)
    if len(ious) == 0:
        raise ValueError("refer_accuracy: no (prediction, ground truth) pairs given")
    return float(np.mean(ious > iou_threshold))
