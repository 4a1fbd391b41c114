"""Evaluation metrics of pixelkit.

Boxes at this boundary are ``xyxy`` in pixels of the original image.

* Referring: :func:`refer_accuracy` (P@0.5, IoU strictly > 0.5), :func:`box_iou_pairs`.
* Referring segmentation: :func:`mask_iou_scores` (cIoU, gIoU).
* Captioning: :func:`caption_scores` (CIDEr-D, METEOR, BLEU-4, ROUGE-L through
  pycocoevalcap after PTB tokenization), :func:`exact_match`.
* Dense captioning: :func:`densecap_map` (Johnson et al.'s protocol as in the official
  PixelLLM evaluator).
* Traces: :func:`trace_l1`, :func:`pointing_accuracy`.

The caption metrics and the real METEOR of :func:`densecap_map` need Java on PATH.
"""

from pixelkit.eval.boxes import as_boxes, box_iou_matrix, box_iou_pairs, refer_accuracy
from pixelkit.eval.caption import (
    CAPTION_METRICS,
    MeteorScorer,
    caption_scores,
    exact_match,
    meteor_scores,
    normalize_text,
    ptb_tokenize,
)
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
    "ptb_tokenize",
    "refer_accuracy",
    "trace_l1",
]
