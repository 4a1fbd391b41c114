"""How a task becomes model inputs: text prompts, targets, per-position point targets, collation.

This is the one place that fixes the conventions shared by training (the datamodule), the
:class:`~pixelkit.predictor.Predictor` and evaluation:

* Each task has a text prompt (:data:`TASK_PROMPTS`) so one model can tell "caption the
  image" from "narrate it with a trace" from "where is X".
* A *row* is one (location prompt, text prompt) -> target text. An *example* is one image
  with one or more rows (dense captioning has one row per region), so an image is encoded
  once for all its prompts.
* Targets are ``labels = text ids + [EOS]`` (length L). The LM's state at position p emits
  ``labels[p]`` and has *input* ``labels[p-1]``, so the location of word ``labels[p-1]``
  is supervised at position p (DESIGN.md section 1): ``point_targets[p] = loc(labels[p-1])``
  for p >= 1, none at p = 0. The state that emits EOS (p = L-1) thus carries the location
  of the last word; for ``refer`` every word and that EOS-emitting state carry the box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Text prompt per task. ``{text}`` is the referring expression.
TASK_PROMPTS: dict[str, str] = {
    "caption": "caption",
    "trace": "describe",
    "loca_caption": "region",
    "refer": "where is {text}",
}
#: Integer id of each task in a batch's ``task`` tensor.
TASK_IDS: dict[str, int] = {"caption": 0, "trace": 1, "loca_caption": 2, "refer": 3}
IGNORE_INDEX = -100
NO_BOX = np.full(4, np.nan, np.float32)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def prompt_ids(tokenizer: Any, task: str, text: str = "") -> list[int]:
    """The text prompt of ``task`` as ids (no EOS)."""
    if task not in TASK_PROMPTS:
        raise ValueError(f"unknown task {task!r}; tasks: {sorted(TASK_PROMPTS)}")
    return encode_text(tokenizer, TASK_PROMPTS[task].format(text=text))


@dataclass
class Row:
    """One prompt -> one target text.

    Attributes:
        task: a key of :data:`TASK_PROMPTS`.
        prompt_ids: text prompt ids.
        labels: target ids ending with EOS, length L.
        point_targets: (L, 4) per-position targets (NaN rows: none), see module doc.
        box: (4,) box prompt in the model frame, NaN for none.
        points: (N, 2) point prompts in the model frame, or None.
        point_labels: (N,) 1 positive / 0 negative, or None.
    """

    task: str
    prompt_ids: list[int]
    labels: list[int]
    point_targets: np.ndarray
    box: np.ndarray = field(default_factory=lambda: NO_BOX.copy())
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None


@dataclass
class Example:
    """One image and its rows.

    Attributes:
        image: (3, S, S) in [0, 1].
        rows: the prompts and targets on this image.
        gt_boxes: (N, 4) model-frame boxes that train the proposal head, or None.
        meta: anything for logging / evaluation (image id, frame, ...), never collated.
    """

    image: torch.Tensor
    rows: list[Row]
    gt_boxes: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def make_row(tokenizer: Any, task: str, text: str, *, token_boxes: np.ndarray | None = None,
             target_ids: list[int] | None = None, box: np.ndarray | None = None,
             points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
             max_length: int = 48, locate_words: bool = True) -> Row:
    """Build one :class:`Row`.

    Args:
        tokenizer: the LM's tokenizer.
        task: the task.
        text: target text (for ``refer``: the expression, also put in the prompt).
        token_boxes: (T, 4) per-token location of ``target_ids`` (trace), NaN rows for none.
        target_ids: pre-tokenised target (must match ``token_boxes``); default: ``text``.
        box: the row's box: the prompt for ``loca_caption``; the target for ``refer``.
        points, point_labels: point prompts (``loca_caption``).
        max_length: longest ``labels`` (EOS included); longer texts are cut.
        locate_words: for ``refer`` / ``loca_caption``, supervise every word's location with
            the box (the words describe that region).
    """
    ids = encode_text(tokenizer, text) if target_ids is None else list(target_ids)
    ids = ids[: max_length - 1]
    labels = ids + [int(tokenizer.eos_token_id)]
    L = len(labels)
    targets = np.full((L, 4), np.nan, np.float32)
    if token_boxes is not None:
        targets[1:] = np.asarray(token_boxes, np.float32)[: L - 1]
    elif box is not None and task in ("refer", "loca_caption"):
        if locate_words:
            targets[1:] = box
        else:
            targets[L - 1] = box  # only the EOS-emitting state
    prompt_box = NO_BOX.copy()
    if task == "loca_caption" and box is not None and points is None:
        prompt_box = np.asarray(box, np.float32)
    return Row(task=task, prompt_ids=prompt_ids(tokenizer, task, text), labels=labels,
               point_targets=targets, box=prompt_box, points=points, point_labels=point_labels)


def collate(examples: list[Example], pad_id: int = 0) -> dict[str, Any]:
    """Pad and stack examples into one batch of images and rows.

    Returns:
        ``images`` (B_img, 3, S, S); ``image_index`` (R,); ``task`` (R,);
        ``boxes`` (R, 4) NaN rows for none; ``points`` (R, N, 2) and ``point_labels``
        (R, N) with -1 padding, or None when no row has points; ``prompt_ids`` /
        ``prompt_mask`` (R, Tp); ``labels`` (R, L) with -100 padding; ``point_targets``
        (R, L, 4) (0 where invalid) and ``point_mask`` (R, L); ``gt_boxes``: a list of
        (N_i, 4) tensors when any example has them, else None; ``meta``: list of dicts.
    """
    rows = [r for ex in examples for r in ex.rows]
    R = len(rows)
    image_index = torch.tensor([i for i, ex in enumerate(examples) for _ in ex.rows])
    Tp = max((len(r.prompt_ids) for r in rows), default=0)
    L = max(len(r.labels) for r in rows)
    prompt = torch.full((R, Tp), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(R, Tp, dtype=torch.long)
    labels = torch.full((R, L), IGNORE_INDEX, dtype=torch.long)
    targets = torch.zeros(R, L, 4)
    for i, r in enumerate(rows):
        prompt[i, : len(r.prompt_ids)] = torch.tensor(r.prompt_ids, dtype=torch.long)
        prompt_mask[i, : len(r.prompt_ids)] = 1
        labels[i, : len(r.labels)] = torch.tensor(r.labels, dtype=torch.long)
        targets[i, : len(r.labels)] = torch.from_numpy(r.point_targets)
    point_mask = torch.isfinite(targets).all(-1) & (labels != IGNORE_INDEX)
    batch: dict[str, Any] = {
        "images": torch.stack([ex.image for ex in examples]),
        "image_index": image_index,
        "task": torch.tensor([TASK_IDS[r.task] for r in rows]),
        "boxes": torch.from_numpy(np.stack([r.box for r in rows])),
        "points": None,
        "point_labels": None,
        "prompt_ids": prompt,
        "prompt_mask": prompt_mask,
        "labels": labels,
        "point_targets": torch.nan_to_num(targets),
        "point_mask": point_mask.long(),
        "gt_boxes": None,
        "meta": [ex.meta for ex in examples],
    }
    if any(r.points is not None for r in rows):
        N = max(len(r.points) for r in rows if r.points is not None)
        pts = torch.zeros(R, N, 2)
        plab = torch.full((R, N), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            if r.points is not None:
                pts[i, : len(r.points)] = torch.from_numpy(np.asarray(r.points, np.float32))
                plab[i, : len(r.points)] = torch.from_numpy(np.asarray(r.point_labels, np.int64))
        batch["points"], batch["point_labels"] = pts, plab
    if any(ex.gt_boxes is not None for ex in examples):
        batch["gt_boxes"] = [torch.from_numpy(np.asarray(
            ex.gt_boxes if ex.gt_boxes is not None else np.zeros((0, 4)), np.float32))
            for ex in examples]
    return batch


#: Keys of a collated batch that :meth:`PixelLLM.forward` takes as keyword arguments.
MODEL_KEYS = ("image_index", "boxes", "points", "point_labels", "prompt_ids", "prompt_mask",
              "labels", "point_targets", "point_mask", "gt_boxes")
