"""Trace metrics: per-token point/box L1 error and word pointing accuracy.

``trace_l1`` follows the official PixelLLM ``PointEvaluator`` (scenic
``projects/pixel_llm/evaluators.py``): coordinates normalised by the image size, the
error of a token is the mean over its coordinates of ``|pred - target|``, averaged over
valid tokens. Differences: the official evaluator averages per image first and then over
images, and for several ground-truth points per token keeps the closest; here the mean
is over all valid tokens of the input (token-weighted) and there is one target per token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from pixelkit.eval.boxes import as_boxes

__all__ = [
    "COLOUR_WORDS",
    "SHAPE_WORDS",
    "normalize_word",
    "pointing_accuracy",
    "pointing_counts",
    "pointing_hits",
    "trace_l1",
]

#: Colour words of the shapes world (DESIGN.md section 4).
COLOUR_WORDS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
#: Shape words of the shapes world.
SHAPE_WORDS: tuple[str, ...] = ("circle", "square", "triangle")

# Word-piece markers of common tokenizers (SentencePiece, GPT-2 byte-level, WordPiece),
# stripped so that "▁red" / "Ġred" / "##red" count as "red".
_PIECE_MARKERS = ("▁", "Ġ", "##")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def trace_l1(
    pred: Any,
    target: Any,
    mask: Any | None = None,
    size: tuple[float, float] | None = None,
) -> float:
    """Mean absolute error of per-token points (or boxes) over valid tokens.

    Args:
        pred: ``(..., D)`` predicted coordinates per token, ``D = 2`` (x, y) or ``D = 4``
            (x1, y1, x2, y2); normalised to [0, 1] unless ``size`` is given.
        target: ``(..., D)`` target coordinates, same shape.
        mask: ``(...)`` bool, True for tokens that count (e.g. non-padding tokens with a
            trace); None counts every token. Tokens whose target is not finite (the
            data loaders use NaN for "no trace") are excluded as well.
        size: ``(width, height)`` to divide pixel coordinates by, if they are not
            normalised yet.

    Returns:
        ``mean over valid tokens of mean_d |pred - target|``; NaN if no token is valid
        (so that an empty batch is visible rather than a perfect 0).

    Raises:
        ValueError: on mismatched shapes or a last dimension other than 2 or 4.
    """
    p = _to_numpy(pred).astype(np.float64)
    t = _to_numpy(target).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    if p.ndim < 1 or p.shape[-1] not in (2, 4):
        raise ValueError(f"expected (..., 2) points or (..., 4) boxes, got shape {p.shape}")
    valid = np.ones(p.shape[:-1], bool) if mask is None else _to_numpy(mask).astype(bool)
    if valid.shape != p.shape[:-1]:
        raise ValueError(f"mask shape {valid.shape} does not match tokens {p.shape[:-1]}")
    if size is not None:
        w, h = size
        scale = np.array([w, h] * (p.shape[-1] // 2), np.float64)
        p, t = p / scale, t / scale
    valid = valid & np.isfinite(t).all(axis=-1)
    if not valid.any():
        return float("nan")
    err = np.abs(p[valid] - t[valid]).mean(axis=-1)
    return float(err.mean())


def normalize_word(word: str) -> str:
    """A word or token as the shapes-world vocabularies spell it: lower case, word-piece
    markers ("▁", "Ġ", "##") and punctuation stripped ("▁Red," -> "red")."""
    w = word.strip()
    for marker in _PIECE_MARKERS:
        w = w.removeprefix(marker)
    return "".join(ch for ch in w.lower() if ch.isalnum())


def pointing_hits(
    words: Sequence[str],
    points: Any,
    objects: Sequence[tuple[Any, Collection[str]]],
    colour_words: Collection[str] = COLOUR_WORDS,
    shape_words: Collection[str] = SHAPE_WORDS,
) -> list[bool | None]:
    """Per word of :func:`pointing_accuracy`: whether its point lies on a matching object.

    Args: see :func:`pointing_accuracy`.

    Returns:
        One entry per word: None for a word that does not count (not a colour or shape
        word), else True when its point lies inside (borders included) the box of an
        object with that attribute.
    """
    pts = _to_numpy(points).astype(np.float64).reshape(-1, 2)
    if len(pts) != len(words):
        raise ValueError(f"{len(words)} words but {len(pts)} points")
    vocab = {w.lower() for w in colour_words} | {w.lower() for w in shape_words}
    obj_boxes = as_boxes([box for box, _ in objects], "object boxes") if objects else None
    obj_attrs = [{a.lower() for a in attrs} for _, attrs in objects]
    hits: list[bool | None] = []
    for word, (x, y) in zip(words, pts):
        w = normalize_word(word)
        if w not in vocab:
            hits.append(None)
            continue
        # Inclusive borders: a point on the tight box edge is on the object.
        hits.append(any(w in attrs and box[0] <= x <= box[2] and box[1] <= y <= box[3]
                        for box, attrs in zip(obj_boxes if obj_boxes is not None else [],
                                              obj_attrs)))
    return hits


def pointing_counts(
    words: Sequence[str],
    points: Any,
    objects: Sequence[tuple[Any, Collection[str]]],
    colour_words: Collection[str] = COLOUR_WORDS,
    shape_words: Collection[str] = SHAPE_WORDS,
) -> tuple[int, int]:
    """Hits and total of :func:`pointing_accuracy` (sum these over captions to pool).

    Args: see :func:`pointing_accuracy`.

    Returns:
        ``(hits, total)``: attribute words whose point falls in a box of an object with
        that attribute, and the number of attribute words.
    """
    counted = [h for h in pointing_hits(words, points, objects, colour_words, shape_words)
               if h is not None]
    return sum(counted), len(counted)


def pointing_accuracy(
    words: Sequence[str],
    points: Any,
    objects: Sequence[tuple[Any, Collection[str]]],
    colour_words: Collection[str] = COLOUR_WORDS,
    shape_words: Collection[str] = SHAPE_WORDS,
) -> float:
    """Share of colour / shape words whose predicted point lies on a matching object.

    A word counts if, after lower-casing and stripping punctuation and word-piece
    markers ("▁", "Ġ", "##"), it is in ``colour_words`` or ``shape_words``. It is a hit
    if its point ``(x, y)`` lies inside (borders included) the box of some object whose
    attribute set contains that word, e.g. "red" pointing at any red object.

    Args:
        words: the caption's words (or tokens), one per point.
        points: ``(len(words), 2)`` predicted ``(x, y)`` per word, in the same frame
            as the object boxes (pixels at the public boundary).
        objects: ``(box_xyxy, attributes)`` per object in the image, e.g.
            ``((4, 4, 20, 20), {"red", "circle", "small"})``.
        colour_words: colour vocabulary (shapes-world colours by default).
        shape_words: shape vocabulary (circle, square, triangle by default).

    Returns:
        Pointing accuracy in [0, 1]; NaN if the caption has no colour or shape word.
    """
    hits, total = pointing_counts(words, points, objects, colour_words, shape_words)
    return hits / total if total else float("nan")
