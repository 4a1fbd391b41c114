"""Referring-segmentation mask metrics: cumulative IoU (cIoU) and mean IoU (gIoU).

Definitions (as in LAVT, ReLA/GRES and the official PixelLLM ``RefCocoEvaluator``):

* ``cIoU`` = sum over the data set of intersections / sum of unions. Large objects
  dominate it.
* ``gIoU`` = mean over samples of the per-sample IoU. Every sample weighs the same.

Empty-versus-empty convention: when both masks of a sample are empty the per-sample IoU
is 0/0. Practice differs: LAVT (``this_iou = 0.0 if U == 0 else I / U``) and the official
PixelLLM evaluator (``I / (U + 1e-5)``) give 0, while ReLA/GRES, the benchmark where
empty ground truths actually occur ("no-target" expressions), counts a correctly empty
prediction as IoU 1. We default to ReLA's 1.0 (a correct "nothing here" answer is a
perfect answer) and expose ``empty_iou`` to reproduce the others; on RefCOCO-style data
the ground truth is never empty, so the choice does not change those numbers. Such pairs
add 0 to both sums of cIoU; if every pair is empty-empty, cIoU is ``empty_iou`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["mask_iou_scores"]


def _as_mask(mask: Any, name: str) -> np.ndarray:
    """Converts one mask to a 2-D bool array, refusing soft (probability) masks."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) mask, got shape {arr.shape}")
    if arr.dtype != bool:
        # A float mask of probabilities would silently become "everything > 0"; make the
        # caller threshold explicitly instead.
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(
                f"{name}: mask of dtype {arr.dtype} has values other than 0/1; "
                "threshold it to a boolean mask first"
            )
        arr = arr.astype(bool)
    return arr


def mask_iou_scores(
    pred_masks: Sequence[Any] | np.ndarray | torch.Tensor,
    gt_masks: Sequence[Any] | np.ndarray | torch.Tensor,
    empty_iou: float = 1.0,
) -> dict[str, float]:
    """cIoU and gIoU of predicted against ground-truth masks.

    Args:
        pred_masks: one ``(H_i, W_i)`` boolean (or 0/1) mask per sample; sizes may differ
            between samples. A stacked ``(N, H, W)`` array or tensor also works.
        gt_masks: the ground-truth masks, same count and per-sample size.
        empty_iou: per-sample IoU given to a pair where both masks are empty (see the
            module docstring: 1.0 as in ReLA/GRES, 0.0 as in LAVT / official PixelLLM).

    Returns:
        ``{"cIoU": float, "gIoU": float, "num_samples": int, "num_empty_pairs": int}``.

    Raises:
        ValueError: on no samples, a count mismatch, a size mismatch within a sample,
            or a non-binary mask.
    """
    preds = list(pred_masks)
    gts = list(gt_masks)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks but {len(gts)} ground-truth masks")
    if not preds:
        raise ValueError("mask_iou_scores: no masks given")
    inter_sum = 0
    union_sum = 0
    per_sample = np.empty(len(preds), np.float64)
    num_empty = 0
    for i, (p, g) in enumerate(zip(preds, gts)):
        pm = _as_mask(p, f"pred_masks[{i}]")
        gm = _as_mask(g, f"gt_masks[{i}]")
        if pm.shape != gm.shape:
            raise ValueError(
                f"sample {i}: predicted mask {pm.shape} and ground truth {gm.shape} differ "
                "in size; resize the prediction to the original image first"
            )
        inter = int(np.logical_and(pm, gm).sum())
        union = int(np.logical_or(pm, gm).sum())
        inter_sum += inter
        union_sum += union
        if union == 0:
            num_empty += 1
            per_sample[i] = empty_iou
        else:
            per_sample[i] = inter / union
    c_iou = inter_sum / union_sum if union_sum > 0 else float(empty_iou)
    return {
        "cIoU": float(c_iou),
        "gIoU": float(per_sample.mean()),
        "num_samples": len(preds),
        "num_empty_pairs": num_empty,
    }
