"""The "shapes world": pixelkit's built-in synthetic data set (DESIGN.md section 4).

Every image is a small grey canvas with one to a few flat-coloured circles, squares and
triangles. From one scene the generator writes the *same files the real data sets come
in*, so the shapes world goes through exactly the readers in :mod:`pixelkit.data.formats`:

======================  =====================================================
catalog task (file)     format
======================  =====================================================
``trace``               Localized Narratives jsonl (caption + trace)
``caption``             COCO captions
``detection``           COCO instances (three shape categories)
``refer``               MDETR RefCOCO (one entry per expression)
``densecap``            GRiT-style dense captions (VG regions)
======================  =====================================================

for a ``train`` and a ``val`` split, plus one PNG per image. The file and image names are
the catalog's ``shapes/train`` and ``shapes/val`` (:mod:`pixelkit.data.catalog`), which the
writer takes them from: the layout is written down there and nowhere else.

Conventions
-----------
* **Boxes.** All boxes here are in *pixel-edge* coordinates: pixel ``(row r, col c)``
  covers ``[c, c+1) x [r, r+1)``. A ground-truth box is the **tight box of the drawn
  shape's pixel mask**: ``x0 = min col``, ``y0 = min row``, ``x1 = max col + 1``,
  ``y1 = max row + 1`` (xyxy); in the COCO-style files it is written as
  ``bbox = [x0, y0, x1 - x0, y1 - y0]`` (integers, absolute pixels, 0-indexed).
  A square's tight box is its drawn box; a circle's is too (the disc touches all four
  sides); a triangle's may be one pixel shorter at the apex.
* **Drawing.** A shape is drawn with a binary numpy mask (pixel centres tested against
  the ideal shape), in one flat colour with no noise, so every pixel of an object has
  exactly its (jittered) palette colour. Objects never overlap, so nothing is occluded.
* **Background.** One grey level ``g ~ U[90, 160]`` plus per-pixel Gaussian noise
  (sigma 6) that is the same in the three channels, so the background stays grey
  (``R == G == B``) and can never be confused with an object colour.
* **Traces.** Localized Narratives coordinates: ``x = px / width``, ``y = py / height``
  of the pixel-edge position, ``t`` in seconds.

Rules chosen where DESIGN.md leaves room
----------------------------------------
* Number of objects: uniform in ``[1, max_objects]``; it is drawn once per image and kept
  when a layout is re-sampled (attributes, sizes and positions are re-drawn), so crowded
  images are possible whenever they fit at all (re-sampling favours small objects there).
* Boxes are "apart by at least 1 px": between any two drawn boxes there is at least one
  empty pixel row or column (``a.x1 < b.x0`` or ``b.x1 < a.x0`` or the same in y).
* Side lengths are integers, uniform in ``[ceil(0.16 S), floor(0.24 S)]`` (small) and
  ``[ceil(0.32 S), floor(0.44 S)]`` (large).
* Location words use the centre of the ground-truth (tight) box.
* Left to right means sorted by box-centre x (ties: centre y, then drawing order).
* Caption: objects left to right, each ``"a {colour} {shape}"``, with the size word added
  (``"a small {colour} {shape}"``) iff the object is small, joined with ``" and "``:
  ``"a red circle and a small blue square"`` (the DESIGN.md example).
* Narrative: ``"in this image there is "`` + items left to right, each
  ``"a {size} {colour} {shape} {location phrase}"`` (size always included), separated by
  ``" , "`` and by ``" and "`` before the last, ending ``" ."``. Every space-separated
  token (``","`` and ``"."`` included) is one utterance of 0.3-0.5 s (whole milliseconds),
  back to back from t = 0.
* Trace: sampled every 50 ms (20 Hz) from 0 to the end of the last utterance, plus one
  sample exactly at the start and end of each object's words, so the piecewise-linear
  trace stays inside the object's box for the whole time its words ("a" through the
  location phrase) are spoken. There it circles the shape's centroid within 35 % of the
  half side (inside the shape too). Otherwise it travels along a quadratic Bezier curve
  whose control point lies anywhere on the canvas (from a random start point to the first
  object, between objects, and from the last object to a random end point). The trace is
  cut into 1-3 segments of at least 5 points, only at travel samples.
* Referring expressions: the first template of :data:`REFER_TEMPLATES` that fits exactly
  one object. Because no two objects share (size, colour, shape), the fifth template always
  fits, so in practice every object gets an expression and the location template is never
  reached; it is kept so the rule stays the DESIGN.md rule if the world changes.
* Splits: scene ``i`` (0-based) gets ``image_id = i + 1``; the first ``N - num_val`` are
  train and the last ``num_val = round(N * val_fraction)`` are val (at least one of each
  when ``N >= 2`` and ``0 < val_fraction < 1``). Scene ``i`` is drawn from its own
  ``numpy.random.SeedSequence(seed, spawn_key=(i,))``, so it does not depend on ``N`` or
  on the split fraction, and the output is byte-for-byte reproducible.
* Ids: COCO image ids and instance annotation ids are unique across both splits (1-based);
  a VG region has the id of the instance it describes; MDETR entries are numbered from 0
  per file (as in MDETR's own files), their ``original_id`` is the COCO image id, and
  their annotation's ``original_id`` is the COCO instance id.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------
# The world's vocabulary
# --------------------------------------------------------------------------------------

#: Shape names, in COCO category order (category id = index + 1).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Palette colour of each colour name (RGB, before the per-object jitter).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
}

#: Side of an object's square box as a fraction of the canvas side: (min, max).
SIZES: dict[str, tuple[float, float]] = {"small": (0.16, 0.24), "large": (0.32, 0.44)}

#: Largest per-channel colour jitter (uniform integer in [-COLOUR_JITTER, COLOUR_JITTER]).
COLOUR_JITTER: int = 15
#: Background grey level range and noise standard deviation.
BACKGROUND_RANGE: tuple[float, float] = (90.0, 160.0)
NOISE_SIGMA: float = 6.0
#: Utterance length range in milliseconds (inclusive) and trace sampling period.
UTTERANCE_MS: tuple[int, int] = (300, 500)
TRACE_PERIOD_MS: int = 50
#: Fewest points in a trace segment.
MIN_SEGMENT_POINTS: int = 5
#: The most objects an image may hold.
MAX_OBJECTS_LIMIT: int = 6

#: Every location phrase, keyed by (horizontal word or None, vertical word or None).
LOCATION_PHRASES: dict[tuple[str | None, str | None], str] = {
    ("left", "top"): "in the top left",
    ("right", "top"): "in the top right",
    ("left", "bottom"): "in the bottom left",
    ("right", "bottom"): "in the bottom right",
    ("left", None): "on the left",
    ("right", None): "on the right",
    (None, "top"): "at the top",
    (None, "bottom"): "at the bottom",
    (None, None): "in the center",
}

#: Referring-expression templates in order of preference: (attributes matched, template).
#: An object gets the first template whose attribute values it alone has in its image.
REFER_TEMPLATES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("shape",), "the {shape}"),
    (("colour",), "the {colour} object"),
    (("colour", "shape"), "the {colour} {shape}"),
    (("size", "shape"), "the {size} {shape}"),
    (("size", "colour", "shape"), "the {size} {colour} {shape}"),
    (("colour", "shape", "location"), "the {colour} {shape} {location}"),
)

NARRATIVE_PREFIX: tuple[str, ...] = ("in", "this", "image", "there", "is")

#: COCO categories of the instances / refcoco files.
CATEGORIES: list[dict[str, Any]] = [
    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)
]
#: The single category of the GRiT-style dense-caption file.
VG_CATEGORIES: list[dict[str, Any]] = [{"id": 1, "name": "object"}]

SPLITS: tuple[str, ...] = ("train", "val")

Box = tuple[int, int, int, int]
"""An integer box ``(x0, y0, x1, y1)`` in pixel-edge coordinates."""


def shapes_vocabulary() -> list[str]:
    """Every word or punctuation token that any generated text can contain, sorted.

    Texts are lower case and space separated (``","`` and ``"."`` are tokens of their
    own), so ``text.split()`` never yields a token outside this list.

    Returns:
        The sorted, duplicate-free list of tokens.
    """
    words: set[str] = {"a", "the", "object", "and", ",", "."}
    words.update(NARRATIVE_PREFIX)
    words.update(SHAPES)
    words.update(COLOURS)
    words.update(SIZES)
    for phrase in LOCATION_PHRASES.values():
        words.update(phrase.split())
    return sorted(words)


def size_range(size: str, image_size: int) -> tuple[int, int]:
    """Inclusive integer range of box sides for a size word on a canvas of side ``image_size``.

    Raises:
        ValueError: if the size is unknown or the canvas is too small to hold that size.
    """
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {tuple(SIZES)}")
    lo_frac, hi_frac = SIZES[size]
    lo, hi = math.ceil(lo_frac * image_size), math.floor(hi_frac * image_size)
    if lo > hi or lo < 2:
        raise ValueError(
            f"image_size={image_size} is too small: no integer side >= 2 for {size!r} objects "
            f"({lo_frac}-{hi_frac} of the side)"
        )
    return lo, hi


# --------------------------------------------------------------------------------------
# Objects and drawing
# --------------------------------------------------------------------------------------


@functools.cache
def _local_mask(shape: str, side: int) -> np.ndarray:
    """Binary mask ``(side, side)`` of a shape drawn in a square box (cached: few sides exist).

    A pixel belongs to the shape when its centre lies in the ideal shape; this keeps
    shapes symmetric and makes the tight box predictable.
    """
    centres = np.arange(side, dtype=np.float64) + 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    half = side / 2.0
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        mask = (xx - half) ** 2 + (yy - half) ** 2 <= half**2
    elif shape == "triangle":
        # Apex at (half, 0), base from (0, side) to (side, side): the half-width at
        # height y below the apex is y / 2.
        mask = np.abs(xx - half) <= yy / 2.0
    else:
        raise ValueError(f"shape {shape!r} is not one of {SHAPES}")
    mask.setflags(write=False)  # shared through the cache
    return mask


@functools.cache
def _local_tight_box(shape: str, side: int) -> tuple[Box, int]:
    """Tight box of :func:`_local_mask` relative to the drawn box, and its pixel count."""
    mask = _local_mask(shape, side)
    return tight_box(mask), int(mask.sum())


def tight_box(mask: np.ndarray) -> Box:
    """Tight pixel-edge box of a binary mask.

    Args:
        mask: ``(H, W)`` bool array with at least one True pixel.

    Returns:
        ``(min col, min row, max col + 1, max row + 1)``.

    Raises:
        ValueError: if the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("tight_box of an empty mask")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS` (the name; ``rgb`` is the drawn colour).
        size: ``"small"`` or ``"large"``.
        box: the square the shape is drawn in, ``(x0, y0, x1, y1)`` pixel edges, with
            ``x1 - x0 == y1 - y0``. The ground-truth box is :attr:`gt_box`.
        rgb: the drawn colour, the palette colour with its per-channel jitter.
    """

    shape: str
    colour: str
    size: str
    box: Box
    rgb: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {tuple(COLOURS)}")
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} is not one of {tuple(SIZES)}")
        x0, y0, x1, y1 = self.box
        if x1 - x0 != y1 - y0 or x1 - x0 < 1:
            raise ValueError(f"box {self.box} is not a non-empty square")

    @property
    def side(self) -> int:
        """Side of the drawn square in pixels."""
        return self.box[2] - self.box[0]

    @property
    def gt_box(self) -> Box:
        """The ground-truth box: tight pixel-edge box of the drawn mask (xyxy)."""
        (lx0, ly0, lx1, ly1), _ = _local_tight_box(self.shape, self.side)
        x0, y0 = self.box[0], self.box[1]
        return x0 + lx0, y0 + ly0, x0 + lx1, y0 + ly1

    @property
    def area(self) -> int:
        """Number of pixels of the drawn shape."""
        return _local_tight_box(self.shape, self.side)[1]

    @property
    def local_mask(self) -> np.ndarray:
        """``(side, side)`` bool mask of the shape inside :attr:`box` (read-only)."""
        return _local_mask(self.shape, self.side)

    def mask(self, image_size: int) -> np.ndarray:
        """``(image_size, image_size)`` bool mask of the shape on the canvas."""
        out = np.zeros((image_size, image_size), dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.local_mask
        return out

    def polygon(self, num_points: int = 24) -> list[float]:
        """The ideal outline as a flat COCO polygon ``[x1, y1, x2, y2, ...]`` (pixel edges)."""
        x0, y0, x1, y1 = self.box
        if self.shape == "square":
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        elif self.shape == "triangle":
            pts = [((x0 + x1) / 2.0, y0), (x1, y1), (x0, y1)]
        else:
            cx, cy, r = (x0 + x1) / 2.0, (y0 + y1) / 2.0, (x1 - x0) / 2.0
            angles = np.linspace(0.0, 2.0 * np.pi, num_points, endpoint=False)
            pts = list(zip(cx + r * np.cos(angles), cy + r * np.sin(angles)))
        return [round(float(v), 2) for p in pts for v in p]


def render_image(
    objects: Sequence[ShapeObject],
    image_size: int = 64,
    grey: float = 125.0,
    rng: np.random.Generator | None = None,
    noise_sigma: float = NOISE_SIGMA,
) -> np.ndarray:
    """Draw objects on a noisy grey canvas.

    Args:
        objects: the objects; boxes must lie inside the canvas (they are drawn in order,
            so a later object would cover an earlier one, which scenes never need).
        image_size: canvas side S.
        grey: background grey level.
        rng: generator of the background noise; None draws a noise-free background.
        noise_sigma: standard deviation of the per-pixel noise (same in R, G and B).

    Returns:
        ``(S, S, 3)`` uint8 RGB image.

    Raises:
        ValueError: if a box does not fit in the canvas.
    """
    if rng is None or noise_sigma == 0:
        grey_plane = np.full((image_size, image_size), grey, dtype=np.float64)
    else:
        grey_plane = grey + rng.normal(0.0, noise_sigma, size=(image_size, image_size))
    plane = np.clip(np.rint(grey_plane), 0, 255).astype(np.uint8)
    image = np.repeat(plane[:, :, None], 3, axis=2)
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        if x0 < 0 or y0 < 0 or x1 > image_size or y1 > image_size:
            raise ValueError(f"box {obj.box} of {obj} is outside the {image_size}px canvas")
        window = image[y0:y1, x0:x1]
        window[obj.local_mask] = obj.rgb
    return image


# --------------------------------------------------------------------------------------
# Language: locations, expressions, captions, narratives
# --------------------------------------------------------------------------------------


def box_centre(box: Sequence[float]) -> tuple[float, float]:
    """Centre ``(cx, cy)`` of an xyxy box."""
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def location_phrase(box: Sequence[float], image_size: int) -> str:
    """Location phrase of a box from its centre (thirds of the canvas).

    Args:
        box: xyxy box in pixels (the ground-truth box).
        image_size: canvas side S.

    Returns:
        One of :data:`LOCATION_PHRASES` values, e.g. ``"in the top left"``.
    """
    cx, cy = box_centre(box)
    horizontal = "left" if cx < image_size / 3 else "right" if cx > 2 * image_size / 3 else None
    vertical = "top" if cy < image_size / 3 else "bottom" if cy > 2 * image_size / 3 else None
    return LOCATION_PHRASES[(horizontal, vertical)]


def left_to_right(objects: Sequence[ShapeObject]) -> list[int]:
    """Indices of objects sorted by ground-truth box centre x (ties: centre y, index)."""
    centres = [box_centre(o.gt_box) for o in objects]
    return sorted(range(len(objects)), key=lambda i: (centres[i][0], centres[i][1], i))


def _attributes(obj: ShapeObject, image_size: int) -> dict[str, str]:
    return {
        "shape": obj.shape,
        "colour": obj.colour,
        "size": obj.size,
        "location": location_phrase(obj.gt_box, image_size),
    }


def referring_expressions(objects: Sequence[ShapeObject], image_size: int) -> list[str | None]:
    """Referring expression of each object (None where no template singles it out).

    Args:
        objects: all objects of one image.
        image_size: canvas side S (for location phrases).

    Returns:
        One entry per object, in the order given.
    """
    attrs = [_attributes(o, image_size) for o in objects]
    out: list[str | None] = []
    for mine in attrs:
        expression = None
        for keys, template in REFER_TEMPLATES:
            matches = sum(all(other[k] == mine[k] for k in keys) for other in attrs)
            if matches == 1:  # only the object itself
                expression = template.format(**mine)
                break
        out.append(expression)
    return out


def region_phrase(obj: ShapeObject) -> str:
    """Dense-caption phrase of an object: ``"a {size} {colour} {shape}"``."""
    return f"a {obj.size} {obj.colour} {obj.shape}"


def caption_text(objects: Sequence[ShapeObject]) -> str:
    """Short caption: objects left to right, ``"a [small] {colour} {shape}"`` joined by and.

    The size word appears only for small objects (rule chosen to match the DESIGN.md
    example ``"a red circle and a small blue square"``).
    """
    parts = []
    for i in left_to_right(objects):
        o = objects[i]
        size = "small " if o.size == "small" else ""
        parts.append(f"a {size}{o.colour} {o.shape}")
    return " and ".join(parts)


@dataclass
class NarrativeText:
    """The words of a narrative and which words speak about which object.

    Attributes:
        words: the tokens, ``" ".join(words)`` is the caption.
        spans: per object (in the given object order), ``(first, last)`` word indices
            (inclusive) of its item ``"a {size} {colour} {shape} {location}"``.
    """

    words: list[str]
    spans: list[tuple[int, int]]

    @property
    def caption(self) -> str:
        return " ".join(self.words)


def narrative_text(objects: Sequence[ShapeObject], image_size: int) -> NarrativeText:
    """Narrative words, e.g. ``in this image there is a large red circle in the top left ,
    a small blue square at the bottom and a large green triangle on the right .``

    Args:
        objects: all objects of one image (at least one).
        image_size: canvas side S.

    Returns:
        The words and each object's word span.
    """
    order = left_to_right(objects)
    words = list(NARRATIVE_PREFIX)
    spans: list[tuple[int, int] | None] = [None] * len(objects)
    for rank, i in enumerate(order):
        if rank > 0:
            words.append("and" if rank == len(order) - 1 else ",")
        o = objects[i]
        item = ["a", o.size, o.colour, o.shape, *location_phrase(o.gt_box, image_size).split()]
        spans[i] = (len(words), len(words) + len(item) - 1)
        words.extend(item)
    words.append(".")
    return NarrativeText(words=words, spans=[s for s in spans if s is not None])


@dataclass
class Narrative:
    """A timed narrative with its mouse trace.

    Attributes:
        text: the words and object spans.
        times_ms: ``(U, 2)`` int start/end of each utterance (one per word), ms.
        xy: ``(P, 2)`` float trace points in pixels (pixel-edge coordinates), in time order.
        t_ms: ``(P,)`` int sample times in milliseconds, increasing.
        segment_starts: index of the first point of each trace segment (starts with 0).
    """

    text: NarrativeText
    times_ms: np.ndarray
    xy: np.ndarray
    t_ms: np.ndarray
    segment_starts: list[int] = field(default_factory=lambda: [0])

    @property
    def segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The trace segments as ``(xy (n, 2), t_ms (n,))`` array pairs."""
        bounds = [*self.segment_starts, len(self.t_ms)]
        return [(self.xy[a:b], self.t_ms[a:b]) for a, b in itertools.pairwise(bounds)]


def _inside_path(
    obj: ShapeObject, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parameters of the circling motion inside an object's box: centre, amplitude,
    frequency (Hz) and phase, each ``(2,)`` (x and y)."""
    x0, y0, x1, y1 = obj.gt_box
    # Circle around the shape's centroid (two thirds down a triangle) within 35 % of the
    # half side: that stays inside the box and inside the shape itself.
    cy = y0 + (2.0 / 3.0 if obj.shape == "triangle" else 0.5) * (y1 - y0)
    centre = np.array([(x0 + x1) / 2.0, cy])
    amplitude = 0.35 * np.array([(x1 - x0) / 2.0, (y1 - y0) / 2.0])
    freq = rng.uniform(0.3, 0.8, size=2)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
    return centre, amplitude, freq, phase


def make_narrative(
    objects: Sequence[ShapeObject], image_size: int, rng: np.random.Generator
) -> Narrative:
    """Timed utterances and a 20 Hz mouse trace for a scene.

    Args:
        objects: all objects of one image (at least one).
        image_size: canvas side S.
        rng: random generator (consumed deterministically).

    Returns:
        The narrative; see the module docstring for the timing and trace rules.
    """
    text = narrative_text(objects, image_size)
    n_words = len(text.words)
    durations = rng.integers(UTTERANCE_MS[0], UTTERANCE_MS[1] + 1, size=n_words)
    ends = np.cumsum(durations)
    starts = ends - durations
    times_ms = np.stack([starts, ends], axis=1)
    total = int(ends[-1])

    # Object windows in time order: (start ms, end ms, motion parameters).
    windows = [
        (int(starts[a]), int(ends[b]), _inside_path(objects[i], rng))
        for i, (a, b) in enumerate(text.spans)
    ]
    windows.sort(key=lambda w: w[0])
    t_grid = set(range(0, total + 1, TRACE_PERIOD_MS)) | {total}
    for s, e, _ in windows:
        t_grid.update((s, e))
    t_all = np.array(sorted(t_grid), dtype=np.int64)

    def inside(params: tuple[np.ndarray, ...], t_ms: np.ndarray, s_ms: int) -> np.ndarray:
        centre, amplitude, freq, phase = params
        tau = (t_ms[:, None] - s_ms) / 1000.0
        return centre + amplitude * np.sin(2.0 * np.pi * freq * tau + phase)

    canvas = float(image_size)
    xy = np.empty((len(t_all), 2), dtype=np.float64)
    in_window = np.zeros(len(t_all), dtype=bool)
    # Travel legs: from (t_a, p_a) to (t_b, p_b) through a random control point.
    prev_t, prev_p = 0, rng.uniform(0.0, canvas, size=2)
    legs: list[tuple[int, np.ndarray, int, np.ndarray]] = []
    for s, e, params in windows:
        sel = (t_all >= s) & (t_all <= e)
        xy[sel] = inside(params, t_all[sel], s)
        in_window |= sel
        start_p = inside(params, np.array([s]), s)[0]
        legs.append((prev_t, prev_p, s, start_p))
        prev_t, prev_p = e, inside(params, np.array([e]), s)[0]
    legs.append((prev_t, prev_p, total, rng.uniform(0.0, canvas, size=2)))
    for t_a, p_a, t_b, p_b in legs:
        control = rng.uniform(0.0, canvas, size=2)
        sel = (t_all >= t_a) & (t_all <= t_b) & ~in_window
        if t_b <= t_a or not sel.any():
            continue
        u = ((t_all[sel] - t_a) / (t_b - t_a))[:, None]
        u = u * u * (3.0 - 2.0 * u)  # ease in and out, like a hand
        xy[sel] = (1 - u) ** 2 * p_a + 2 * (1 - u) * u * control + u**2 * p_b

    # Cut the trace into 1-3 segments, only at travel samples so that every object's
    # window lies within one segment, and never leaving a segment shorter than
    # MIN_SEGMENT_POINTS (a lone point is no stroke).
    n = len(t_all)
    candidates = np.flatnonzero(~in_window)
    candidates = candidates[
        (candidates >= MIN_SEGMENT_POINTS) & (candidates <= n - MIN_SEGMENT_POINTS)
    ]
    n_cuts = min(int(rng.integers(0, 3)), len(candidates))
    chosen = sorted(rng.choice(candidates, size=n_cuts, replace=False).tolist()) if n_cuts else []
    cuts: list[int] = []
    for k in chosen:
        if k - (cuts[-1] if cuts else 0) >= MIN_SEGMENT_POINTS and n - k >= MIN_SEGMENT_POINTS:
            cuts.append(k)
    return Narrative(text=text, times_ms=times_ms, xy=xy, t_ms=t_all, segment_starts=[0, *cuts])


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


@dataclass
class Scene:
    """One generated image and its objects.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB.
        objects: the objects, in drawing (sampling) order.
        grey: the background grey level.
    """

    image: np.ndarray
    objects: list[ShapeObject]
    grey: float

    @property
    def image_size(self) -> int:
        return int(self.image.shape[0])

    @property
    def gt_boxes(self) -> list[Box]:
        """Ground-truth (tight) boxes, xyxy pixel edges, one per object."""
        return [o.gt_box for o in self.objects]

    def referring_expressions(self) -> list[str | None]:
        return referring_expressions(self.objects, self.image_size)

    def caption(self) -> str:
        return caption_text(self.objects)


def _boxes_apart(a: Box, b: Box) -> bool:
    """True when at least one empty pixel row or column separates the two boxes."""
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def sample_objects(
    rng: np.random.Generator,
    image_size: int = 64,
    num_objects: int = 1,
    max_layout_tries: int = 200,
    max_position_tries: int = 50,
) -> list[ShapeObject]:
    """Sample a valid layout of ``num_objects`` objects by rejection sampling.

    Each object draws a (size, colour, shape) triple not yet used in the image, a side
    and up to ``max_position_tries`` positions; when one cannot be placed, the whole
    layout is drawn again (at most ``max_layout_tries`` times).

    Raises:
        RuntimeError: if no layout was found (the canvas is too small for that many).
    """
    colour_names = tuple(COLOURS)
    sides = {s: size_range(s, image_size) for s in SIZES}
    size_names = tuple(SIZES)
    for _ in range(max_layout_tries):
        objects: list[ShapeObject] = []
        used: set[tuple[str, str, str]] = set()
        for _ in range(num_objects):
            while True:  # 36 triples and at most 6 objects: ends quickly
                triple = (
                    size_names[rng.integers(len(size_names))],
                    colour_names[rng.integers(len(colour_names))],
                    SHAPES[rng.integers(len(SHAPES))],
                )
                if triple not in used:
                    break
            size, colour, shape = triple
            lo, hi = sides[size]
            side = int(rng.integers(lo, hi + 1))
            box = None
            for _ in range(max_position_tries):
                x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
                candidate = (x0, y0, x0 + side, y0 + side)
                if all(_boxes_apart(candidate, o.box) for o in objects):
                    box = candidate
                    break
            if box is None:
                break
            jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
            rgb = np.clip(np.array(COLOURS[colour]) + jitter, 0, 255)
            objects.append(ShapeObject(shape, colour, size, box, tuple(int(v) for v in rgb)))
            used.add(triple)
        if len(objects) == num_objects:
            return objects
    raise RuntimeError(
        f"could not place {num_objects} objects on a {image_size}px canvas in "
        f"{max_layout_tries} tries; use fewer objects or a larger image_size"
    )


def sample_scene(rng: np.random.Generator, image_size: int = 64, max_objects: int = 3) -> Scene:
    """Sample one shapes-world scene: 1..max_objects objects on a noisy grey canvas.

    Args:
        rng: random generator (the scene is a deterministic function of its state).
        image_size: canvas side S.
        max_objects: the most objects in the image (1..6).

    Returns:
        The scene with its rendered image.
    """
    _check_world(image_size, max_objects)
    num = int(rng.integers(1, max_objects + 1))
    objects = sample_objects(rng, image_size, num)
    grey = float(rng.uniform(*BACKGROUND_RANGE))
    image = render_image(objects, image_size, grey, rng)
    return Scene(image=image, objects=objects, grey=grey)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` for a world seed (independent streams per scene)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def narrative_record(scene: Scene, image_id: int, split: str,
                     rng: np.random.Generator) -> dict[str, Any]:
    """The Localized Narratives record of a scene (one line of the jsonl file).

    Draws the narrative's timing and trace from ``rng`` (the scene's own generator, after the
    scene itself), so the record is the same whether written by :func:`synthesize` or made
    in memory by :func:`narrative_records`.
    """
    S = scene.image_size
    narrative = make_narrative(scene.objects, S, rng)
    annotator_id = int(rng.integers(0, 32))
    return {
        "dataset_id": f"shapes_world_{split}",
        "image_id": str(image_id),
        "annotator_id": annotator_id,
        "caption": narrative.text.caption,
        "timed_caption": [
            {"utterance": w, "start_time": int(s) / 1000.0, "end_time": int(e) / 1000.0}
            for w, (s, e) in zip(narrative.text.words, narrative.times_ms)
        ],
        "traces": [
            [
                {"x": x, "y": y, "t": t / 1000.0}
                # Rounded in numpy (fast); 4 decimals are 0.006 px at S = 64.
                for (x, y), t in zip(np.round(xy / S, 4).tolist(), t_ms.tolist())
            ]
            for xy, t_ms in narrative.segments
        ],
        "voice_recording": (
            f"shapes_world_{split}/shapes_world_{split}_{image_id}_{annotator_id}.ogg"
        ),
    }


def narrative_records(num: int, seed: int = 0, image_size: int = 64,
                      max_objects: int = 3) -> list[dict[str, Any]]:
    """The narratives of a world's first ``num`` scenes, in memory (no images, no files):
    the records :func:`synthesize` writes for them (benchmarks of the readers use these)."""
    _check_world(image_size, max_objects)
    records = []
    for index in range(num):
        rng = scene_rng(seed, index)
        scene = sample_scene(rng, image_size, max_objects)
        records.append(narrative_record(scene, index + 1, "train", rng))
    return records


def split_images(out_dir: str | Path, split: str = "val", n: int = 6, num_images: int = 3000,
                 seed: int = 0, image_size: int = 64, max_objects: int = 3,
                 val_fraction: float = 0.2) -> list[tuple[Path, Scene]]:
    """The first ``n`` images of a world's split, drawn on their own.

    Every scene has its own generator, so these are byte for byte the files
    :func:`synthesize` writes for the same world (with the quickstart's defaults: the first
    images of its val split, which its model never trained on), without drawing the others.

    Returns:
        ``[(image file under out_dir, scene)]``, named as the catalog names them.
    """
    from pixelkit.data import catalog

    _check_world(image_size, max_objects)
    num_train, num_val = split_sizes(num_images, val_fraction)
    first, count = (0, num_train) if split == "train" else (num_train, num_val)
    layout = catalog.get(f"shapes/{split}")
    out = []
    for index in range(first, first + min(n, count)):
        scene = sample_scene(scene_rng(seed, index), image_size, max_objects)
        path = layout.image_path(index + 1, out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(path, format="PNG", compress_level=1)
        out.append((path, scene))
    return out


def _check_world(image_size: int, max_objects: int) -> None:
    if not 1 <= max_objects <= MAX_OBJECTS_LIMIT:
        raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS_LIMIT}], got {max_objects}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    for size in SIZES:
        size_range(size, image_size)


# --------------------------------------------------------------------------------------
# Writing the data set
# --------------------------------------------------------------------------------------


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote.

    Attributes:
        out_dir: the data set root.
        num_images / num_objects / num_expressions: per split.
        files: every annotation file written.
    """

    out_dir: Path
    num_images: dict[str, int]
    num_objects: dict[str, int]
    num_expressions: dict[str, int]
    files: list[Path]


def split_sizes(num_images: int, val_fraction: float) -> tuple[int, int]:
    """Numbers of train and val images (see the module docstring)."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    num_val = round(num_images * val_fraction)
    if num_images >= 2 and 0.0 < val_fraction < 1.0:
        num_val = min(max(num_val, 1), num_images - 1)
    return num_images - num_val, num_val


def _dumps(obj: Any) -> str:
    # Compact and key-order preserving: same scene -> same bytes.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


class _SplitWriter:
    """Accumulates the COCO-style records of one split and streams its jsonl file."""

    def __init__(self, out_dir: Path, split: str, image_size: int) -> None:
        from pixelkit.data import catalog

        self.split = split
        self.image_size = image_size
        self.layout = catalog.get(f"shapes/{split}")  # every file name comes from there
        self.out_dir = out_dir
        self.image_dir = self.layout.image_dir(out_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.ln_path = self.layout.annotation("trace", out_dir)
        self.ln_path.parent.mkdir(parents=True, exist_ok=True)
        # Streamed (one line per image) so memory stays flat; closed by close().
        self.ln_file = open(self.ln_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self.images: list[dict[str, Any]] = []
        self.captions: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []
        self.ref_images: list[dict[str, Any]] = []
        self.ref_anns: list[dict[str, Any]] = []
        self.regions: list[dict[str, Any]] = []

    def add(self, image_id: int, scene: Scene, rng: np.random.Generator, next_ann_id: int) -> int:
        """Write the image and its LN line, record its annotations; returns the next ann id."""
        S = self.image_size
        file_name = self.layout.image_path(image_id, self.out_dir).name
        Image.fromarray(scene.image).save(
            self.image_dir / file_name, format="PNG", compress_level=1
        )
        image_entry = {"id": image_id, "file_name": file_name, "width": S, "height": S}
        self.images.append(image_entry)
        self.captions.append({"id": image_id, "image_id": image_id, "caption": scene.caption()})

        expressions = scene.referring_expressions()
        for obj, expression in zip(scene.objects, expressions):
            ann_id = next_ann_id
            next_ann_id += 1
            x0, y0, x1, y1 = obj.gt_box
            bbox = [x0, y0, x1 - x0, y1 - y0]
            category_id = SHAPES.index(obj.shape) + 1
            self.instances.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": float(obj.area),
                    "iscrowd": 0,
                    "segmentation": [obj.polygon()],
                    "colour": obj.colour,
                    "size": obj.size,
                }
            )
            self.regions.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "bbox": bbox,
                    "area": float(obj.area),
                    "caption": region_phrase(obj),
                    "category_id": 1,
                    "iscrowd": 0,
                }
            )
            if expression is None:
                continue
            ref_id = len(self.ref_images)
            # The head noun: the shape word, or "object" for the colour-only template.
            head = obj.shape if obj.shape in expression.split() else "object"
            start = expression.index(head)
            span = [start, start + len(head)]
            self.ref_images.append(
                {
                    "file_name": file_name,
                    "height": S,
                    "width": S,
                    "id": ref_id,
                    "original_id": image_id,
                    "caption": expression,
                    "dataset_name": "shapes",
                    "tokens_negative": [],
                    "tokens_positive_eval": [[span]],
                }
            )
            self.ref_anns.append(
                {
                    "area": float(obj.area),
                    "iscrowd": 0,
                    "image_id": ref_id,
                    "category_id": category_id,
                    "id": ref_id,
                    "bbox": bbox,
                    "original_id": ann_id,
                    "tokens_positive": [span],
                }
            )

        record = narrative_record(scene, image_id, self.split, rng)
        self.ln_file.write(_dumps(record) + "\n")
        return next_ann_id

    def close(self) -> list[Path]:
        """Write the four JSON files; returns every annotation path of the split."""
        self.ln_file.close()
        info = {
            "description": f"pixelkit shapes world ({self.split})",
            "version": "1.0",
            "contributor": "pixelkit.data.synth",
        }
        licenses: list[dict[str, Any]] = []
        files = {  # by the task the catalog files them under
            "caption": {
                "info": info,
                "licenses": licenses,
                "images": self.images,
                "annotations": self.captions,
            },
            "detection": {
                "info": info,
                "licenses": licenses,
                "images": self.images,
                "annotations": self.instances,
                "categories": CATEGORIES,
            },
            "refer": {
                "info": info,
                "licenses": licenses,
                "images": self.ref_images,
                "annotations": self.ref_anns,
                "categories": CATEGORIES,
            },
            "densecap": {
                "images": self.images,
                "annotations": self.regions,
                "categories": VG_CATEGORIES,
            },
        }
        paths = [self.ln_path]
        for task, content in files.items():
            path = self.layout.annotation(task, self.out_dir)
            path.write_text(_dumps(content), encoding="utf-8")
            paths.append(path)
        return paths


def synthesize(
    out_dir: str | Path,
    num_images: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    max_objects: int = 3,
    val_fraction: float = 0.2,
    progress: bool = True,
) -> SynthSummary:
    """Write a shapes-world data set: images and the five annotation files per split.

    Args:
        out_dir: the data set root ``DIR`` (created; existing files of the same names are
            overwritten).
        num_images: total number of images over both splits (>= 1).
        image_size: canvas side S in pixels (>= 16).
        seed: world seed; the same arguments always give byte-identical files.
        max_objects: the most objects per image (1..6); the count is uniform in
            ``[1, max_objects]``.
        val_fraction: fraction of the images in the val split.
        progress: show a tqdm progress bar.

    Returns:
        Counts per split and the annotation files written.

    Raises:
        ValueError: on out-of-range arguments, or an ``out_dir`` that is (inside) a file.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    _check_world(image_size, max_objects)
    num_train, _ = split_sizes(num_images, val_fraction)
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {out}: {path} is a file, not a folder")
    writers = {split: _SplitWriter(out, split, image_size) for split in SPLITS}

    from tqdm.auto import tqdm  # imported here: the module is imported by light code too

    next_ann_id = 1
    try:
        for index in tqdm(range(num_images), desc="shapes world", unit="img", disable=not progress):
            split = "train" if index < num_train else "val"
            rng = scene_rng(seed, index)
            scene = sample_scene(rng, image_size, max_objects)
            next_ann_id = writers[split].add(index + 1, scene, rng, next_ann_id)
    except BaseException:
        # Leave no complete-looking JSON files behind for an interrupted world.
        for writer in writers.values():
            writer.ln_file.close()
        raise
    files = [path for writer in writers.values() for path in writer.close()]
    return SynthSummary(
        out_dir=out,
        num_images={split: len(w.images) for split, w in writers.items()},
        num_objects={split: len(w.instances) for split, w in writers.items()},
        num_expressions={split: len(w.ref_images) for split, w in writers.items()},
        files=files,
    )


# --------------------------------------------------------------------------------------
# CLI glue (registered by pixelkit.cli as `pixelkit synth`)
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pixelkit synth`` options to a parser."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    parser.add_argument(
        "--num-images", type=int, default=1000, metavar="N", help="images in all (default 1000)"
    )
    parser.add_argument(
        "--image-size", type=int, default=64, metavar="S", help="canvas side (default 64)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="world seed (default 0)")
    parser.add_argument(
        "--max-objects",
        type=int,
        default=3,
        metavar="M",
        help=f"most objects per image, 1..{MAX_OBJECTS_LIMIT} (default 3)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of the images in the val split (default 0.2)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``pixelkit synth`` with parsed arguments; prints what was written.

    Returns:
        The process exit code (0).
    """
    summary = synthesize(
        args.out,
        num_images=args.num_images,
        image_size=args.image_size,
        seed=args.seed,
        max_objects=args.max_objects,
        val_fraction=args.val_fraction,
        progress=not getattr(args, "no_progress", False),
    )
    root = summary.out_dir
    for split in SPLITS:
        print(
            f"{split}: {summary.num_images[split]} images in {root / 'images' / split}, "
            f"{summary.num_objects[split]} objects, "
            f"{summary.num_expressions[split]} referring expressions"
        )
    for path in summary.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # `python -m pixelkit.data.synth --out DIR ...`
    _parser = argparse.ArgumentParser(
        prog="python -m pixelkit.data.synth", description=__doc__.split("\n")[0]
    )
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
