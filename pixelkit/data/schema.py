"""The one sample schema every reader returns, and the counters that make skipping visible.

Every reader in :mod:`pixelkit.data.formats` turns its format into :class:`Sample` objects,
so the datamodule, the evaluator and the notebooks never see format-specific dicts.

Coordinates in a :class:`Sample` are **xyxy in pixels of the original image** (floats),
the convention of every public boundary in pixelkit. :mod:`pixelkit.data.transforms`
maps them into the model's frame (xyxy normalised to [0, 1] of the padded square input).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: The tasks a sample can train or evaluate.
#:  - ``caption``: whole-image caption, no location targets.
#:  - ``trace``: whole-image caption with per-utterance locations (Localized Narratives).
#:  - ``refer``: referring expression -> one box (RefCOCO family).
#:  - ``loca_caption``: caption of a given box (Visual Genome regions, GRiT).
#:  - ``densecap``: all region boxes and phrases of an image (Visual Genome, GRiT).
#:  - ``detection``: boxes with category names only (COCO instances).
Task = Literal["caption", "trace", "refer", "loca_caption", "densecap", "detection"]
TASKS: tuple[str, ...] = ("caption", "trace", "refer", "loca_caption", "densecap", "detection")


@dataclass
class Sample:
    """One training / evaluation record in a format-independent form.

    Attributes:
        image_path: path of the image file (opened lazily, only when needed).
        image_size: ``(width, height)`` of the original image in pixels.
        task: one of :data:`TASKS`.
        text: the caption / expression / phrase; for ``densecap`` and ``detection``
            it is empty and the per-box texts are in ``box_texts``.
        boxes: ``(N, 4)`` float32, xyxy in original-image pixels. ``refer`` and
            ``loca_caption`` have exactly one box (the referred / described region);
            ``densecap`` and ``detection`` have one per region; ``caption`` and
            ``trace`` have none (``(0, 4)``).
        box_texts: one string per box (region phrase, category name), or empty.
        utterances: for ``trace``: the caption split into timed utterances, in order;
            ``" ".join(utterances)`` need not equal ``text`` exactly (LN captions have
            extra spacing) but covers the same words.
        utterance_boxes: ``(U, 4)`` float32, xyxy pixels, the min/max box of the mouse
            trace during each utterance; rows of NaN where an utterance has no trace.
        utterance_points: ``(U, 2)`` float32, pixels, mean trace point per utterance
            (NaN where none).
        image_id: the dataset's image id (int or str), for joining predictions.
        ann_id: the dataset's annotation id (or None).
        source: ``"file:line"`` or ``"file#index"`` of the record, for error messages.
        extra: anything else a format carries (split, dataset id, ...), never required.
    """

    image_path: str
    image_size: tuple[int, int]
    task: str
    text: str = ""
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_texts: list[str] = field(default_factory=list)
    utterances: list[str] = field(default_factory=list)
    utterance_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    utterance_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    image_id: int | str | None = None
    ann_id: int | str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"{self.source}: task {self.task!r} is not one of {TASKS}")
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.utterance_boxes = np.asarray(self.utterance_boxes, np.float32).reshape(-1, 4)
        self.utterance_points = np.asarray(self.utterance_points, np.float32).reshape(-1, 2)

    @property
    def has_trace(self) -> bool:
        """True when at least one utterance has a location."""
        return bool(len(self.utterance_boxes)) and bool(
            np.isfinite(self.utterance_boxes).all(axis=1).any()
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (arrays become nested lists, NaN becomes None)."""
        out = dataclasses.asdict(self)
        for key in ("boxes", "utterance_boxes", "utterance_points"):
            arr = getattr(self, key)
            out[key] = [[None if not np.isfinite(v) else float(v) for v in row] for row in arr]
        return out


@dataclass
class ReadReport:
    """What a reader did with a file: how many records it read, skipped and why.

    ``errors`` keeps the first few messages (each names file, line or index, and field),
    ``bad_images`` the image files that were missing, unreadable or refused;
    ``counts`` counts non-fatal fix-ups (e.g. ``"clipped_boxes"``,
    ``"narratives_without_trace"``) so nothing is changed or dropped silently.
    """

    path: str
    format: str
    records: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    max_errors: int = 20
    #: Image files that could not be used, with the first message of each (the data
    #: module counts bad images across its sources and its loaders from these).
    bad_images: dict[str, str] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "records": self.records,
            "skipped": self.skipped,
            "errors": list(self.errors),
            "counts": dict(self.counts),
        }


class DataFormatError(ValueError):
    """A record that cannot be read; the message names the file, line/index and field."""
