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

**Location formats** (``location.*`` of the model config, a
:class:`~pixelkit.modeling.location.LocationCodec` passed as ``codec``): with the default
``regression`` codec (or none) every row is exactly as described above. Otherwise:

* ``text`` / ``tokens``: a ``refer`` target is the box as written by the codec
  (``[12,40,33,61]`` or ``<box><loc_a><loc_b></box>``); a ``trace`` target is a grounded
  caption (:func:`grounded_row`: utterances grouped into phrases, each with its box). These
  rows have **no point targets**: the point loss is off for them, so a comparison of
  formats compares the interfaces alone. Per-word locations for evaluation come from
  parsing the generated markup (``LocationCodec.parse_grounded``: the phrase's box goes to
  each of its words, the word's point is the box centre) against the trace's own targets.
* ``location.prompt: text``: a ``loca_caption`` region is written into the text prompt
  (``region [12,40,33,61]``; clicks as ``[12,40]``) and the prompt encoder gets no prompt
  (the whole image), whatever the format.
* ``location.task_tokens``: prompts start with the task identifier (``[refer] where is
  ...``).
* ``regions``: every row carries its image's proposals (``Row.regions``, ``(K, 4)``; the
  batch's ``regions``, ``(R, K, 4)`` NaN-padded), which the model reads as region tokens;
  a box in a target is written as the token of the proposal that holds it.

Boxes are written on a grid of the image content, so these rows need the content's
``extent`` in the model frame (``ModelFrame.visible[2:]``; default the whole square).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixelkit.modeling.location import group_phrases

if TYPE_CHECKING:
    from pixelkit.modeling.location import LocationCodec

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
        regions: (K, 4) model-frame proposals given as region tokens (``regions`` format),
            NaN rows for padding; None for the other formats.
    """

    task: str
    prompt_ids: list[int]
    labels: list[int]
    point_targets: np.ndarray
    box: np.ndarray = field(default_factory=lambda: NO_BOX.copy())
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    regions: np.ndarray | None = None


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
             max_length: int = 48, locate_words: bool = True,
             codec: LocationCodec | None = None,
             extent: Sequence[float] | None = None,
             regions: np.ndarray | None = None) -> Row:
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
        codec: the model's location codec; None or the default ``regression`` one: the rows
            described above. Other formats: see the module docstring (a ``trace`` target
            is then the grounded caption ``text``, from :func:`grounded_row`).
        extent: ``(ex, ey)`` extent of the image content in the model frame, the grid
            boxes are written on (default: the whole square); unused for regression.
        regions: ``(K, 4)`` the image's proposals (``regions`` format; required there).
    """
    if codec is not None and codec.changes_rows:
        return _location_row(tokenizer, task, text, codec, extent, token_boxes=token_boxes,
                             target_ids=target_ids, box=box, points=points,
                             point_labels=point_labels, max_length=max_length,
                             locate_words=locate_words, regions=regions)
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


def _location_row(tokenizer: Any, task: str, text: str, codec: LocationCodec,
                  extent: Sequence[float] | None, *, token_boxes: np.ndarray | None,
                  target_ids: list[int] | None, box: np.ndarray | None,
                  points: np.ndarray | None, point_labels: np.ndarray | None,
                  max_length: int, locate_words: bool, regions: np.ndarray | None) -> Row:
    """:func:`make_row` for a codec that changes rows (see the module docstring)."""
    if codec.uses_regions:
        if regions is None:
            raise ValueError("location.format 'regions' rows need the image's regions")
        regions = np.asarray(regions, np.float32).reshape(-1, 4)
    if task not in TASK_PROMPTS:
        raise ValueError(f"unknown task {task!r}; tasks: {sorted(TASK_PROMPTS)}")
    prompt = TASK_PROMPTS[task].format(text=text)
    prompt_box = NO_BOX.copy()
    if task == "loca_caption" and (box is not None or points is not None):
        if codec.writes_prompts:
            # The region goes into the text; the prompt encoder sees the whole image.
            if points is not None:  # positive clicks: a written point has no label
                keep = (np.ones(len(points), bool) if point_labels is None
                        else np.asarray(point_labels).reshape(-1) > 0)
                prompt += " " + " ".join(codec.point_markup(p, extent)
                                         for p, k in zip(points, keep) if k)
            elif codec.uses_regions:  # Groma: the user's box becomes a region of the row
                regions, j = codec.with_region(regions, box)
                prompt += f" <r{j + 1}>"
            else:
                prompt += " " + codec.box_markup(box, extent)
            points = point_labels = None
        elif points is None:
            prompt_box = np.asarray(box, np.float32)  # as make_row: points win over the box
    if codec.config.task_tokens:
        prompt = f"{codec.task_prefix(task)} {prompt}"
    if codec.writes_targets:
        if task == "refer" and box is not None:
            target = encode_text(tokenizer, codec.box_markup(box, extent, regions))
        elif target_ids is not None:
            target = list(target_ids)
        else:
            target = encode_text(tokenizer, text)
        labels = target[: max_length - 1] + [int(tokenizer.eos_token_id)]
        targets = np.full((len(labels), 4), np.nan, np.float32)
    else:  # regression targets, with a written prompt or task identifier
        ref = make_row(tokenizer, task, text, token_boxes=token_boxes, target_ids=target_ids,
                       box=box, max_length=max_length, locate_words=locate_words)
        labels, targets = ref.labels, ref.point_targets
    return Row(task=task, prompt_ids=encode_text(tokenizer, prompt), labels=labels,
               point_targets=targets, box=prompt_box, points=points, point_labels=point_labels,
               regions=regions if codec.uses_regions else None)


def grounded_row(tokenizer: Any, codec: LocationCodec, utterances: Sequence[str],
                 utterance_boxes: np.ndarray, *, extent: Sequence[float] | None = None,
                 max_length: int = 48, regions: np.ndarray | None = None) -> Row:
    """A ``trace`` row whose target is a grounded caption (``text`` / ``tokens`` formats).

    Utterances are grouped into phrases (:func:`~pixelkit.modeling.location.group_phrases`:
    runs the mouse spent in one place); a phrase is followed by its box, utterances
    without a location are plain words. A caption longer than
    ``max_length`` tokens keeps its first whole phrases only, so no target ends inside a
    box markup (a cut box would teach malformed boxes).

    Args:
        tokenizer: the tokenizer with the codec's tokens (:func:`add_location_tokens`).
        codec: a codec that writes targets.
        utterances: the narrative's utterances, in order.
        utterance_boxes: ``(U, 4)`` model-frame boxes, NaN rows for none.
        extent: content extent in the model frame (the grid's extent).
        max_length: longest ``labels`` (EOS included).
        regions: ``(K, 4)`` the image's proposals (``regions``: a phrase's box is written
            as the token of the proposal holding it, a phrase none holds as plain words).
    """
    if not codec.writes_targets:
        raise ValueError(f"location.format {codec.format!r} has no grounded captions; "
                         "regression trace rows come from make_row with token_boxes")
    segments = group_phrases(utterances, utterance_boxes)

    def ids_of(n: int) -> list[int]:
        return encode_text(tokenizer, codec.grounded_markup(segments[:n], extent, regions))

    n, ids = len(segments), ids_of(len(segments))
    if len(ids) > max_length - 1:  # the most whole phrases that fit (binary search)
        lo, hi = 0, len(segments)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(ids_of(mid)) <= max_length - 1:
                lo = mid
            else:
                hi = mid - 1
        n, ids = lo, ids_of(lo)
        if n == 0:  # not even the first phrase and its box fit: its words alone, cut
            text = " ".join(segments[0][0].split())
            return make_row(tokenizer, "trace", text, max_length=max_length, codec=codec,
                            extent=extent, regions=regions)
    return make_row(tokenizer, "trace", codec.grounded_markup(segments[:n], extent, regions),
                    target_ids=ids, max_length=max_length, codec=codec, extent=extent,
                    regions=regions)


def collate(examples: list[Example], pad_id: int = 0) -> dict[str, Any]:
    """Pad and stack examples into one batch of images and rows.

    Returns:
        ``images`` (B_img, 3, S, S); ``image_index`` (R,); ``task`` (R,);
        ``boxes`` (R, 4) NaN rows for none; ``points`` (R, N, 2) and ``point_labels``
        (R, N) with -1 padding, or None when no row has points; ``prompt_ids`` /
        ``prompt_mask`` (R, Tp); ``labels`` (R, L) with -100 padding; ``point_targets``
        (R, L, 4) (0 where invalid) and ``point_mask`` (R, L); ``gt_boxes``: a list of
        (N_i, 4) tensors when any example has them, else None; ``regions`` (R, K, 4) NaN
        padded when rows carry regions, else None; ``meta``: list of dicts.
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
        "regions": None,
        "meta": [ex.meta for ex in examples],
    }
    if any(r.regions is not None for r in rows):
        K = max(len(r.regions) for r in rows if r.regions is not None)
        regions = torch.full((R, K, 4), float("nan"))
        for i, r in enumerate(rows):
            if r.regions is not None:
                regions[i, : len(r.regions)] = torch.from_numpy(np.asarray(r.regions, np.float32))
        batch["regions"] = regions
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
              "labels", "point_targets", "point_mask", "gt_boxes", "regions")
