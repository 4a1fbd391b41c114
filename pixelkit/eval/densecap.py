"""Dense-captioning mAP (the DenseCap protocol of Johnson et al., as in official PixelLLM).

References read while writing this module:

* google-research/scenic ``scenic/projects/pixel_llm/densecap_evaluator.py``
  (``DensecapEval``: ``merge_gt_boxes``, ``compute_metrics``) and
  ``scenic/projects/pixel_llm/evaluators.py`` (``DensecapEvaluator`` wrapper);
* jcjohnson/densecap ``eval/eval_utils.lua`` (``DenseCaptioningEvaluator``),
  ``densecap/box_utils.lua`` (``iou_matrix``, ``merge_boxes``) and ``eval/meteor_bridge.py``.

Protocol implemented by :func:`densecap_map`:

1. Per image, ground-truth boxes are merged greedily: with ``A[i, j] = IoU >= 0.7``
   (``A[i, i]`` always true), take the box with the most still-unmerged neighbours
   (first such box on ties), merge it with all its unmerged neighbours (one hop, not the
   transitive closure), repeat. A merged box is the mean of its members' boxes; its
   references are the members' captions, pooled.
2. Per image, predictions are visited by descending score; each takes the merged ground
   truth of highest IoU (the first on ties). It is *matched* only if that IoU is > 0 and
   that ground truth is still unused; a matched ground truth becomes used. There is no
   fall-back to the best *unused* ground truth (unlike COCO), and the ground truth is
   used up even if the IoU is below the IoU threshold or the caption is wrong, because
   matching is done once, before thresholds are applied.
3. All predictions of all images are sorted by score (stable: ties keep image order,
   then per-image score order). For IoU threshold ``u`` and METEOR threshold ``m`` a
   prediction is a true positive iff it is matched, ``IoU >= u`` and
   ``METEOR(caption, pooled references) > m`` (strictly); otherwise a false positive.
4. ``AP = mean_{t=0..99} max{precision_k : recall_k >= t/100}`` (0 where no recall
   reaches ``t/100``), recall over the number of merged ground truths of all images.
5. ``mAP`` = mean AP over IoU thresholds {.3, .4, .5, .6, .7} x METEOR thresholds
   {0, .05, .1, .15, .2, .25}; ``mAP_detection`` = mean AP over the IoU thresholds with
   no caption condition.

Differences from the reference code (all deliberate, none changes a typical result):

* IoU is continuous (``torchvision.ops.box_iou`` on xyxy), as in scenic; Johnson's Lua
  uses the ``+1`` pixel convention (``(x2 - x1 + 1) * (y2 - y1 + 1)``).
* The merge forces ``A[i, i]`` true as Johnson's ``iou_matrix`` does (``D[i][i] = 1``);
  scenic's ``box_iou`` gives a zero-area ground-truth box IoU 0 with itself, so such a
  box is never put in a cluster and silently disappears from the positives.
* Detection AP: scenic and Johnson encode it as METEOR threshold -1 (always passed since
  METEOR >= 0); here it is computed with no caption condition, which is the same.
* METEOR thresholds: scenic (and the later Johnson ``eval_utils.lua``) use
  {0, .05, .1, .15, .2, .25}; one older Johnson version used {.05, ..., .25} only.
* Johnson's Lua marks ``used[jmax]`` even when a prediction overlaps nothing
  (``jmax = -1`` indexes the last ground truth in Torch); scenic and we do not.
* Empty reference captions: scenic's default ``ignore_empty_string=True`` rewrites a
  matched pair whose references contain ``''`` to METEOR('EMPTY' vs ['EMPTY']), i.e.
  the caption condition is (for these thresholds) met. We count such a pair (any
  reference that is empty or blank) as caption-correct directly, without METEOR.
* METEOR is computed only for pairs that can be true positives (matched and
  ``IoU >= min(iou_thresholds)``); the others are false positives whatever their
  METEOR, so the APs are unchanged and fewer pairs go through the JVM.
* Captions are scored raw (no PTB tokenizer), as in scenic (``Meteor.compute_score`` on
  the raw strings) and Johnson (model vocabulary from lower-cased, punctuation-free VG
  phrases): METEOR's ``-norm`` lower-cases and normalises punctuation itself. Line
  breaks become spaces (scenic deletes ``'\\n'`` from ground truths) because they would
  break METEOR's line protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from pixelkit.eval.boxes import as_boxes, box_iou_matrix

__all__ = [
    "DENSECAP_IOU_THRESHOLDS",
    "DENSECAP_METEOR_THRESHOLDS",
    "MergedGroundTruths",
    "densecap_average_precision",
    "densecap_map",
    "merge_ground_truths",
]

#: IoU thresholds of the DenseCap protocol.
DENSECAP_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
#: METEOR thresholds of the DenseCap protocol (a TP needs METEOR strictly above one).
DENSECAP_METEOR_THRESHOLDS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)

#: ``meteor_fn(candidates, references) -> scores``: one score per (candidate, refs) pair.
MeteorFn = Callable[[list[str], list[list[str]]], Sequence[float]]


class MergedGroundTruths(NamedTuple):
    """Ground truths of one image after merging.

    Attributes:
        boxes: ``(M, 4)`` float64 xyxy, the mean box of each cluster.
        references: ``M`` lists of pooled reference captions.
        members: ``M`` lists of the original ground-truth indices in each cluster.
    """

    boxes: np.ndarray
    references: list[list[str]]
    members: list[list[int]]



def meteor_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """METEOR 1.5 of each (caption, references) pair: the default ``meteor_fn``.

    :func:`pixelkit.eval.caption.meteor_scores`, imported on first use: it needs
    pycocoevalcap (the ``metrics`` extra) and Java, which the detection-only part of the
    metric does not.
    """
    from pixelkit.eval.caption import meteor_scores as scores

    return scores(candidates, references)

def _as_caption_list(captions: Any, name: str) -> list[list[str]]:
    """Each entry a str (one reference) or a list of str (several references)."""
    if isinstance(captions, str):
        raise TypeError(f"{name}: expected a list of captions, got a single string")
    out: list[list[str]] = []
    for i, c in enumerate(captions):
        refs = [c] if isinstance(c, str) else list(c)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"{name}[{i}]: expected a string or a non-empty list of strings")
        out.append(refs)
    return out


def merge_ground_truths(
    boxes: Any, captions: Sequence[str | Sequence[str]], iou_threshold: float = 0.7
) -> MergedGroundTruths:
    """Greedy largest-cluster-first merge of overlapping ground truths of one image.

    Mirrors Johnson's ``box_utils.merge_boxes`` / scenic's ``DensecapEval.merge_gt_boxes``
    (see the module docstring for the one difference, the forced diagonal).

    Args:
        boxes: ``(N, 4)`` xyxy ground-truth boxes.
        captions: ``N`` captions (a list of strings per box is pooled as is).
        iou_threshold: boxes with IoU >= this are neighbours (0.7 in DenseCap).

    Returns:
        The merged boxes, pooled references and cluster members, in merge order.

    Raises:
        ValueError: if the counts differ or the threshold is not positive.
    """
    if not iou_threshold > 0:
        # With a threshold <= 0, already merged (zeroed) pairs would count as neighbours.
        raise ValueError(f"merge iou_threshold must be > 0, got {iou_threshold}")
    b = as_boxes(boxes, "ground-truth boxes")
    caps = _as_caption_list(captions, "ground-truth captions")
    if len(b) != len(caps):
        raise ValueError(f"{len(b)} ground-truth boxes but {len(caps)} captions")
    adj = box_iou_matrix(b, b) >= iou_threshold
    np.fill_diagonal(adj, True)
    alive = np.ones(len(b), bool)
    out_boxes: list[np.ndarray] = []
    out_refs: list[list[str]] = []
    out_members: list[list[int]] = []
    while alive.any():
        live_adj = adj & alive[None, :] & alive[:, None]
        counts = live_adj.sum(axis=1)
        ind = int(np.argmax(counts))  # first box with the largest cluster, as np.argmax
        members = np.flatnonzero(live_adj[ind])
        out_boxes.append(b[members].mean(axis=0))
        out_refs.append([r for m in members for r in caps[m]])
        out_members.append(members.tolist())
        alive[members] = False
    boxes_arr = np.stack(out_boxes) if out_boxes else np.zeros((0, 4), np.float64)
    return MergedGroundTruths(boxes_arr, out_refs, out_members)


def densecap_average_precision(is_tp: np.ndarray, num_positives: int) -> float:
    """DenseCap's 100-level max-interpolated AP of score-sorted TP flags.

    Args:
        is_tp: ``(K,)`` bool, true-positive flag of every prediction, already sorted by
            descending score (every non-TP is a false positive).
        num_positives: number of ground truths (recall denominator), > 0.

    Returns:
        ``mean_{t=0..99} max{precision_k : recall_k >= t/100}`` (0 for a level no recall
        reaches, and 0 for no predictions).
    """
    if num_positives <= 0:
        raise ValueError("densecap_average_precision: num_positives must be > 0")
    is_tp = np.asarray(is_tp, bool)
    if is_tp.size == 0:
        return 0.0
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp)
    recall = tp / num_positives
    precision = tp / (tp + fp)
    # Max precision over every k at or after position i; recall is non-decreasing, so
    # "recall_k >= t" selects a suffix of the list, starting at searchsorted(recall, t).
    suffix_max = np.maximum.accumulate(precision[::-1])[::-1]
    levels = np.arange(100) / 100.0
    start = np.searchsorted(recall, levels, side="left")
    best = np.where(start < len(recall), suffix_max[np.minimum(start, len(recall) - 1)], 0.0)
    return float(best.mean())


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r} (has {sorted(d)})")
    return d[key]


def densecap_map(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    iou_thresholds: Sequence[float] = DENSECAP_IOU_THRESHOLDS,
    meteor_thresholds: Sequence[float] = DENSECAP_METEOR_THRESHOLDS,
    merge_iou: float | None = 0.7,
    meteor_fn: MeteorFn | None = None,
) -> dict[str, Any]:
    """Dense-captioning mAP and detection mAP (see the module docstring for the protocol).

    Args:
        predictions: one dict per image with ``boxes`` (``(N, 4)`` xyxy pixels),
            ``captions`` (``N`` strings) and ``scores`` (``N`` floats, higher first).
        ground_truths: one dict per image, same order, with ``boxes`` (``(M, 4)``) and
            ``captions`` (``M`` strings, or lists of strings for several references).
        iou_thresholds: IoU thresholds (a TP needs ``IoU >= u``).
        meteor_thresholds: METEOR thresholds (a TP needs ``METEOR > m``); empty to
            compute only the detection AP (``mAP`` is then NaN and METEOR never runs).
        merge_iou: IoU for merging ground truths (0.7), or None to keep every box.
        meteor_fn: ``fn(candidates, references) -> scores`` for all pairs at once;
            defaults to :func:`pixelkit.eval.caption.meteor_scores` (pycocoevalcap's
            METEOR 1.5, one JVM, one batched call). Inject a cheap function in tests.

    Returns:
        ``{"mAP", "mAP_detection", "ap_by_threshold": {"iou{u:g}_meteor{m:g}": ap},
        "ap_detection_by_iou": {"iou{u:g}": ap}, "num_ground_truths" (after merging),
        "num_predictions", "num_meteor_pairs"}``.

    Raises:
        ValueError: on mismatched lengths, missing keys, non-finite scores, or no
            ground truth in any image.
        TypeError: on a caption that is not a string.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"{len(predictions)} prediction entries but {len(ground_truths)} ground-truth "
            "entries; pass one of each per image, in the same order"
        )
    if not iou_thresholds:
        raise ValueError("densecap_map: iou_thresholds is empty")
    min_iou = min(iou_thresholds)

    scores_all: list[np.ndarray] = []
    iou_all: list[np.ndarray] = []
    matched_all: list[np.ndarray] = []
    # Pairs that need a caption score: (record index, candidate, references).
    pending: list[tuple[int, str, list[str]]] = []
    caption_ok_free: list[int] = []  # records whose references contain an empty caption
    num_pos = 0
    offset = 0
    for img, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        pw, gw = f"predictions[{img}]", f"ground_truths[{img}]"
        p_boxes = as_boxes(_get(pred, "boxes", pw), f"{pw}['boxes']")
        p_caps = list(_get(pred, "captions", pw))
        raw_scores = _get(pred, "scores", pw)
        if isinstance(raw_scores, torch.Tensor):
            raw_scores = raw_scores.detach().cpu().numpy()
        p_scores = np.asarray(raw_scores, np.float64).reshape(-1)
        if not (len(p_boxes) == len(p_caps) == len(p_scores)):
            raise ValueError(
                f"{pw}: {len(p_boxes)} boxes, {len(p_caps)} captions and "
                f"{len(p_scores)} scores; they must match"
            )
        if not all(isinstance(c, str) for c in p_caps):
            raise TypeError(f"{pw}['captions']: every caption must be a string")
        if not np.isfinite(p_scores).all():
            raise ValueError(f"{pw}['scores']: scores must be finite")
        if merge_iou is None:
            caps = _as_caption_list(_get(gt, "captions", gw), f"{gw}['captions']")
            g_boxes = as_boxes(_get(gt, "boxes", gw), f"{gw}['boxes']")
            if len(g_boxes) != len(caps):
                raise ValueError(f"{gw}: {len(g_boxes)} boxes but {len(caps)} captions")
            refs = caps
        else:
            try:
                merged = merge_ground_truths(
                    _get(gt, "boxes", gw), _get(gt, "captions", gw), merge_iou
                )
            except (ValueError, TypeError) as err:
                raise type(err)(f"{gw}: {err}") from err
            g_boxes, refs = merged.boxes, merged.references
        num_pos += len(g_boxes)

        order = np.argsort(-p_scores, kind="stable")
        ious = box_iou_matrix(p_boxes[order], g_boxes)
        used = np.zeros(len(g_boxes), bool)
        best_iou = np.zeros(len(order), np.float64)
        matched = np.zeros(len(order), bool)
        for k in range(len(order)):
            if ious.shape[1] == 0:
                continue
            j = int(np.argmax(ious[k]))  # best-IoU ground truth, used or not: no fall-back
            best_iou[k] = ious[k, j]
            if best_iou[k] > 0 and not used[j]:
                used[j] = True
                matched[k] = True
                if best_iou[k] >= min_iou:
                    if any(not r.strip() for r in refs[j]):
                        caption_ok_free.append(offset + k)
                    else:
                        pending.append((offset + k, p_caps[order[k]], refs[j]))
        scores_all.append(p_scores[order])
        iou_all.append(best_iou)
        matched_all.append(matched)
        offset += len(order)

    if num_pos == 0:
        raise ValueError("densecap_map: no ground-truth box in any image; AP is undefined")

    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    best_iou = np.concatenate(iou_all) if iou_all else np.zeros(0)
    matched = np.concatenate(matched_all) if matched_all else np.zeros(0, bool)
    # -inf: a prediction with no caption score never passes a METEOR threshold.
    meteor = np.full(len(scores), -np.inf)
    meteor[caption_ok_free] = np.inf
    if meteor_thresholds and pending:
        fn = meteor_scores if meteor_fn is None else meteor_fn
        got = list(fn([c for _, c, _ in pending], [list(r) for _, _, r in pending]))
        if len(got) != len(pending):
            raise ValueError(f"meteor_fn returned {len(got)} scores for {len(pending)} pairs")
        values = np.asarray(got, np.float64)
        if not np.isfinite(values).all():
            raise ValueError("meteor_fn returned a non-finite score")
        meteor[[i for i, _, _ in pending]] = values

    # Global ranking over all images; stable so that ties keep (image, per-image) order
    # as scenic's Python `sorted` does.
    rank = np.argsort(-scores, kind="stable")
    matched, best_iou, meteor = matched[rank], best_iou[rank], meteor[rank]

    det: dict[str, float] = {}
    cap: dict[str, float] = {}
    for u in iou_thresholds:
        loc_ok = matched & (best_iou >= u)
        det[f"iou{u:g}"] = densecap_average_precision(loc_ok, num_pos)
        for m in meteor_thresholds:
            cap[f"iou{u:g}_meteor{m:g}"] = densecap_average_precision(
                loc_ok & (meteor > m), num_pos
            )
    return {
        "mAP": float(np.mean(list(cap.values()))) if cap else float("nan"),
        "mAP_detection": float(np.mean(list(det.values()))),
        "ap_by_threshold": cap,
        "ap_detection_by_iou": det,
        "num_ground_truths": num_pos,
        "num_predictions": len(scores),
        "num_meteor_pairs": len(pending) if meteor_thresholds else 0,
    }
