"""Evaluation metrics of pixelkit.

Boxes at this boundary are ``xyxy`` in pixels of the original image.

* Referring: :func:`refer_accuracy` (P@0.5, IoU strictly > 0.5), :func:`box_iou_pairs`.
* Referring segmentation: :func:`mask_iou_scores` (cIoU, gIoU).
* Captioning: :func:`caption_scores` (CIDEr-D, METEOR, BLEU-4, ROUGE-L through
  pycocoevalcap after PTB tokenization), :func:`exact_match`.
* Dense captioning: :func:`densecap_map` (Johnson et al.'s protocol as in the official
  PixelLLM evaluator).
* Traces: :func:`trace_l1`, :func:`pointing_accuracy`.

The caption metrics and the real METEOR of :func:`densecap_map` need pycocoevalcap (the
``metrics`` extra) and Java on PATH; :mod:`pixelkit.eval.caption` is imported on first use
of one of its names, so the box, mask and trace metrics work without them.
"""

from typing import Any

from pixelkit.eval.boxes import as_boxes, box_iou_matrix, box_iou_pairs, refer_accuracy
from pixelkit.eval.densecap import (
    DENSECAP_IOU_THRESHOLDS,
    DENSECAP_METEOR_THRESHOLDS,
    MergedGroundTruths,
    densecap_average_precision,
    densecap_map,
    merge_ground_truths,
)
from pixelkit.eval.masks import mask_iou_scores
from pixelkit.eval.trace import (
    COLOUR_WORDS,
    SHAPE_WORDS,
    pointing_accuracy,
    pointing_counts,
    pointing_hits,
    trace_l1,
)

__all__ = [
    "CAPTION_METRICS",
    "COLOUR_WORDS",
    "DENSECAP_IOU_THRESHOLDS",
    "DENSECAP_METEOR_THRESHOLDS",
    "SHAPE_WORDS",
    "MergedGroundTruths",
    "MeteorScorer",
    "as_boxes",
    "box_iou_matrix",
    "box_iou_pairs",
    "caption_scores",
    "densecap_average_precision",
    "densecap_map",
    "exact_match",
    "mask_iou_scores",
    "merge_ground_truths",
    "meteor_scores",
    "normalize_text",
    "pointing_accuracy",
    "pointing_counts",
    "pointing_hits",
    "ptb_tokenize",
    "refer_accuracy",
    "trace_l1",
]

#: Names of :mod:`pixelkit.eval.caption` (pycocoevalcap), imported when first asked for.
_CAPTION_NAMES = {"CAPTION_METRICS", "MeteorScorer", "caption_scores", "exact_match",
                  "meteor_scores", "normalize_text", "ptb_tokenize"}


def __getattr__(name: str) -> Any:
    if name in _CAPTION_NAMES:
        from pixelkit.eval import caption

        return getattr(caption, name)
    raise AttributeError(f"module 'pixelkit.eval' has no attribute {name!r}")
