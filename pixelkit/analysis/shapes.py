"""The kit's own small grounding experiments on the shapes world (notebook 09).

* :func:`agreement`: for each colour or shape word of a caption, is the peak of its
  attention map inside the box of an object with that colour / shape, and is the point
  head's point? The point-head half is the quickstart's trace *pointing accuracy*
  (:func:`pixelkit.eval.pointing_hits`, the same rule); the attention half asks the same of
  where the LM looked. Chance levels come with it: the share of the image's grid cells (for
  a peak) and of its area (for a point) that a matching object covers.
* :func:`lens_share`: for the logit lens, layer by layer, the share of grid cells inside an
  object whose top word is that object's colour or shape (and, since the lens turned out
  to read position more than colour, its location word).

Objects (boxes, colour, shape, size) come from the world's instances file and texts from
its caption / narrative files, all through :mod:`pixelkit.data.catalog`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.eval.trace import COLOUR_WORDS, SHAPE_WORDS, normalize_word, pointing_hits

__all__ = ["DEFAULT_METHODS", "TEXTS", "Agreement", "LensShare", "ShapesSplit", "agreement",
           "lens_share", "location_words", "object_word_indices", "shapes_split"]

#: Where the words come from: the model's own narrative, or a ground-truth text
#: teacher-forced (the same words for every checkpoint).
TEXTS = ("generated", "narrative", "caption")
#: The attention aggregations :func:`agreement` compares: name -> (layers, heads).
DEFAULT_METHODS: dict[str, tuple[str | int, str]] = {
    "VL-SAM (rollout, mean-max heads)": ("rollout", "mean-max"),
    "plain (mean over layers and heads)": ("mean", "mean"),
}


@dataclass
class ShapesSplit:
    """One split of a shapes world: per image its file, objects and ground-truth texts.

    Attributes:
        image_ids: the images, in id order.
        paths: image id -> file.
        objects: image id -> ``[(xyxy box, {colour, shape, size})]``.
        captions: image id -> its short caption.
        narratives: image id -> its narrative.
    """

    image_ids: list[int]
    paths: dict[int, Path]
    objects: dict[int, list[tuple[list[float], set[str]]]]
    captions: dict[int, str] = field(default_factory=dict)
    narratives: dict[int, str] = field(default_factory=dict)


def shapes_split(data_root: str | Path, split: str = "val", limit: int | None = None
                 ) -> ShapesSplit:
    """Read a shapes-world split's objects and texts (first ``limit`` images by id)."""
    from pixelkit.data import catalog
    from pixelkit.data.formats import read_any
    from pixelkit.report import shapes_objects

    layout = catalog.get(f"shapes/{split}")
    root = Path(data_root)
    objects = shapes_objects(layout.annotation("detection", root))
    ids = sorted(objects)[:limit] if limit else sorted(objects)
    images = layout.image_dir(root)
    texts = {}
    for task in ("caption", "trace"):
        samples, _ = read_any(layout.annotation(task, root), images, task=task)
        texts[task] = {int(s.image_id): s.text for s in samples}
    return ShapesSplit(image_ids=ids, paths={i: layout.image_path(i, root) for i in ids},
                       objects={i: objects[i] for i in ids},
                       captions={i: texts["caption"][i] for i in ids if i in texts["caption"]},
                       narratives={i: texts["trace"][i] for i in ids if i in texts["trace"]})


def object_word_indices(words: Sequence[str]) -> list[int]:
    """Indices of the colour and shape words of a caption (the words that name an object)."""
    vocab = set(COLOUR_WORDS) | set(SHAPE_WORDS)
    return [i for i, w in enumerate(words) if normalize_word(w) in vocab]


def _matching(word: str, objects: Sequence[tuple[Any, set[str]]]) -> list[np.ndarray]:
    w = normalize_word(word)
    return [np.asarray(box, np.float64) for box, attrs in objects if w in attrs]


def _inside_any(xy: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
    """``(..., 2)`` points -> ``(...)`` bool: inside (borders included) any of the boxes."""
    inside = np.zeros(xy.shape[:-1], bool)
    for b in boxes:
        inside |= ((xy[..., 0] >= b[0]) & (xy[..., 0] <= b[2]) & (xy[..., 1] >= b[1])
                   & (xy[..., 1] <= b[3]))
    return inside


@dataclass
class Agreement:
    """Per colour / shape word and attention method: did the attention peak and the point
    head land on a matching object?

    Attributes:
        records: one dict per (word, method): ``image_id``, ``word``, ``method``,
            ``attention_hit``, ``point_hit``, ``cell_chance``, ``area_chance``,
            ``visual_share``.
        images: images looked at.
        text: where the words came from (:data:`TEXTS`).
    """

    records: list[dict[str, Any]]
    images: int
    text: str

    def summary(self) -> list[dict[str, Any]]:
        """One row per method: ``words``, ``attention peak in box``, ``point head in box``,
        ``both``, ``chance (cells)``, ``chance (area)``, ``visual share`` (means over
        words; NaN when no word counted)."""
        rows = []
        for method in dict.fromkeys(r["method"] for r in self.records):
            rs = [r for r in self.records if r["method"] == method]

            def mean(key: str, rs=rs) -> float:
                return float(np.mean([float(r[key]) for r in rs])) if rs else float("nan")

            rows.append({"method": method, "words": len(rs),
                         "attention peak in box": mean("attention_hit"),
                         "point head in box": mean("point_hit"),
                         "both": float(np.mean([r["attention_hit"] and r["point_hit"]
                                                for r in rs])) if rs else float("nan"),
                         "chance (cells)": mean("cell_chance"),
                         "chance (area)": mean("area_chance"),
                         "visual share": mean("visual_share")})
        return rows


def agreement(predictor: Any, data_root: str | Path, *, split: str = "val", limit: int = 100,
              text: str = "generated",
              methods: Mapping[str, tuple[str | int, str]] | None = None,
              residual: float = 0.5, read: str = "input") -> Agreement:
    """Attention peak vs point-head point on the shapes world's colour and shape words.

    Args:
        predictor: a :class:`~pixelkit.Predictor` of a shapes-world checkpoint.
        data_root: the world (what ``pixelkit synth --out`` wrote).
        split: ``train`` or ``val``.
        limit: images (the first, by id).
        text: ``"generated"`` (the model's narrative, prompt "describe"), ``"narrative"``
            or ``"caption"`` (the ground-truth narrative / short caption, teacher-forced
            with its task's prompt: every checkpoint is scored on the same words).
        methods: name -> ``(layers, heads)`` (default :data:`DEFAULT_METHODS`).
        residual, read: as :func:`~pixelkit.analysis.word_attention`.

    Returns:
        :class:`Agreement`.
    """
    from pixelkit.analysis.attention import cell_centres, word_attention_methods

    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, got {text!r}")
    methods = dict(methods or DEFAULT_METHODS)
    world = shapes_split(data_root, split, limit)
    records: list[dict[str, Any]] = []
    task = "caption" if text == "caption" else "trace"
    for start in range(0, len(world.image_ids), 32):
        ids = world.image_ids[start:start + 32]
        encoded = predictor.encode_images([world.paths[i] for i in ids])
        for image_id, image in zip(ids, encoded):
            given = {"generated": None, "narrative": world.narratives.get(image_id),
                     "caption": world.captions.get(image_id)}[text]
            if text != "generated" and not given:
                continue
            objects = world.objects[image_id]
            all_maps = word_attention_methods(predictor, methods, image, text=given,
                                              task=task, residual=residual, read=read)
            first = next(iter(all_maps.values()))
            words = first.words
            point_hits = pointing_hits(words, first.points, objects)
            centres = cell_centres(first.grid, image.size)
            W, H = image.size
            for name, maps in all_maps.items():
                peak_hits = pointing_hits(words, maps.peaks(), objects)
                for i, (word, a, p) in enumerate(zip(words, peak_hits, point_hits)):
                    if a is None:
                        continue
                    boxes = _matching(word, objects)
                    area = sum(max(0.0, (min(b[2], W) - max(b[0], 0)))
                               * max(0.0, (min(b[3], H) - max(b[1], 0))) for b in boxes)
                    records.append({
                        "image_id": image_id, "word": normalize_word(word), "method": name,
                        "attention_hit": bool(a), "point_hit": bool(p),
                        "cell_chance": float(_inside_any(centres, boxes).mean()),
                        "area_chance": float(area / (W * H)),
                        "visual_share": float(maps.visual_share[i])})
    return Agreement(records=records, images=len(world.image_ids), text=text)


@dataclass
class LensShare:
    """The logit lens on a shapes-world split, layer by layer (layer 0: the LM's input).

    Attributes:
        match: share of in-object grid cells whose top word is the object's colour or
            shape.
        colour: ... whose top word is the object's colour.
        shape: ... whose top word is the object's shape.
        location: ... whose top word is one of the object's location words ("left",
            "right", "top", "bottom", "center" from its box centre, as the world's
            narratives say them).
        any_attribute: share of in-object cells whose top word is *some* colour or shape
            word (right or wrong object).
        background_attribute: the same share for cells outside every object.
        cells: in-object cells counted (over all images).
        background_cells: background cells counted.
        images: images looked at.
    """

    match: list[float]
    colour: list[float]
    shape: list[float]
    location: list[float]
    any_attribute: list[float]
    background_attribute: list[float]
    cells: int
    background_cells: int
    images: int

    def table(self) -> list[dict[str, float]]:
        """One row per layer (for a DataFrame)."""
        return [{"layer": layer, "object's colour or shape": m, "its colour": c,
                 "its shape": s, "its location word": loc,
                 "any colour/shape word (in objects)": a,
                 "any colour/shape word (background)": b}
                for layer, (m, c, s, loc, a, b) in enumerate(zip(
                    self.match, self.colour, self.shape, self.location, self.any_attribute,
                    self.background_attribute))]


def location_words(box: Sequence[float], image_size: tuple[int, int]) -> set[str]:
    """The location words of an object as the world's narratives say them ("left", "top",
    "center", ...): :func:`pixelkit.data.synth.location_phrase` of its box, less "in", "on",
    "at", "the"."""
    from pixelkit.data.synth import location_phrase

    phrase = location_phrase(box, max(image_size))
    return set(phrase.split()) & {"left", "right", "top", "bottom", "center"}


def lens_share(predictor: Any, data_root: str | Path, *, split: str = "val", limit: int = 50,
               task: str = "trace") -> LensShare:
    """The logit lens's grid cells against the shapes world's objects.

    A cell is inside an object when its centre is inside the object's box (the world's
    objects never overlap). Its word is the top-1 word of its grid token at each layer
    (:func:`~pixelkit.analysis.logit_lens` with the prompt of ``task``).

    Raises:
        ValueError: the model has no grid tokens (``ExtractorConfig.image_tokens`` off).
    """
    from pixelkit.analysis.attention import cell_centres, visible_cells
    from pixelkit.analysis.lens import logit_lens

    world = shapes_split(data_root, split, limit)
    attributes = set(COLOUR_WORDS) | set(SHAPE_WORDS)
    counts: dict[str, np.ndarray] = {}
    cells = background = 0
    for start in range(0, len(world.image_ids), 32):
        ids = world.image_ids[start:start + 32]
        encoded = predictor.encode_images([world.paths[i] for i in ids])
        for image_id, image in zip(ids, encoded):
            lens = logit_lens(predictor, image, task=task, top_k=1)
            if not lens.has_grid_tokens:
                raise ValueError("lens_share needs grid tokens (ExtractorConfig.image_tokens)")
            rows, cols = visible_cells(lens.grid, image.size)
            centres = cell_centres(lens.grid, image.size)                  # (rows, cols, 2)
            words = np.array([[[normalize_word(w) for w in row[:cols]]
                               for row in lens.grid_words(layer)[:rows]]
                              for layer in range(lens.num_layers + 1)])    # (L+1, rows, cols)
            if not counts:
                counts = {k: np.zeros(len(words)) for k in
                          ("match", "colour", "shape", "location", "any", "background")}
            owner = np.full((rows, cols), -1)
            objects = world.objects[image_id]
            for k, (box, _) in enumerate(objects):
                owner[_inside_any(centres, [np.asarray(box, np.float64)])] = k
            is_attr = np.isin(words, list(attributes))
            counts["background"] += is_attr[:, owner < 0].sum(1)
            background += int((owner < 0).sum())
            for k, (box, attrs) in enumerate(objects):
                mine = owner == k
                colour = next((a for a in attrs if a in COLOUR_WORDS), "")
                shape = next((a for a in attrs if a in SHAPE_WORDS), "")
                w = words[:, mine]                                          # (L+1, n)
                counts["colour"] += (w == colour).sum(1)
                counts["shape"] += (w == shape).sum(1)
                counts["match"] += ((w == colour) | (w == shape)).sum(1)
                counts["location"] += np.isin(w, list(location_words(box, image.size))).sum(1)
                counts["any"] += is_attr[:, mine].sum(1)
                cells += int(mine.sum())

    def share(key: str, n: int) -> list[float]:
        return [float(v / n) if n else float("nan") for v in counts.get(key, [])]

    return LensShare(match=share("match", cells), colour=share("colour", cells),
                     shape=share("shape", cells), location=share("location", cells),
                     any_attribute=share("any", cells),
                     background_attribute=share("background", background), cells=cells,
                     background_cells=background, images=len(world.image_ids))
