"""Attention as prompts (VL-SAM): a word's attention map -> point prompts -> SAM's mask.

VL-SAM (Lin et al., NeurIPS 2024) turns a multimodal LM's attention map for a generated
object word into point prompts for SAM: positive points at the map's peak, negative points
where the map is lowest, and SAM's mask decoder gives the object's mask. Here the map is a
:class:`~pixelkit.analysis.attention.WordMaps` map (one cell per image-encoder cell), the
points are cell centres in pixels, and the mask comes from
:meth:`Predictor.mask_from_points` (``transformers.SamModel``: real SAM weights with
``Predictor(sam="facebook/sam-vit-base")`` or a local directory; a random tiny SAM in the
tests). For comparison, :func:`word_masks` also prompts SAM with the point head's point
for the same word (one positive point: what PixelLLM itself says).

Simplifications against VL-SAM: one round of prompts (no iterative refinement with the
previous mask), and no multi-scale or question ensembles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PromptedMask", "attention_prompts", "word_masks"]


@dataclass
class PromptedMask:
    """A SAM mask with the point prompts that made it.

    Attributes:
        mask: ``(H, W)`` bool, the original image's size.
        points: ``(N, 2)`` prompt points, pixels.
        labels: ``(N,)`` 1 positive, 0 negative.
        source: what the prompts came from (``"attention"`` or ``"point head"``).
    """

    mask: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    source: str


def attention_prompts(maps: Any, index: int, n_positive: int = 1, n_negative: int = 2,
                      min_distance: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts from one word's attention map.

    Positives are the ``n_positive`` highest cells; negatives the lowest cells, taken in
    rising order and kept only at least ``min_distance`` cells (Chebyshev distance) from
    every point already chosen, so they spread over the background instead of clustering
    in one dark corner.

    Args:
        maps: a :class:`~pixelkit.analysis.attention.WordMaps`.
        index: the word.
        n_positive: positive points.
        n_negative: negative points (fewer when the grid has no room for them).
        min_distance: see above, in cells.

    Returns:
        ``(points (N, 2) pixels, labels (N,))``, positives first.
    """
    if not 0 <= index < len(maps.words):
        raise IndexError(f"word {index} of a {len(maps.words)}-word caption")
    if n_positive < 1 or n_negative < 0:
        raise ValueError("need n_positive >= 1 and n_negative >= 0")
    grid = maps.image_maps()[index]                                     # (h', w')
    centres = maps.cell_centres().reshape(-1, 2)
    cells = np.stack(np.unravel_index(np.arange(grid.size), grid.shape), 1)  # (n, 2) row, col
    order = np.argsort(-grid.reshape(-1), kind="stable")
    chosen = list(order[:n_positive])
    negatives: list[int] = []
    for c in order[::-1]:
        if len(negatives) == n_negative:
            break
        if c in chosen:
            continue
        if all(np.abs(cells[c] - cells[o]).max() >= min_distance for o in chosen):
            chosen.append(c)
            negatives.append(c)
    labels = np.array([1] * n_positive + [0] * len(negatives), np.int64)
    return centres[chosen], labels


def word_masks(predictor: Any, maps: Any, index: int, image: Any = None, n_positive: int = 1,
               n_negative: int = 2, min_distance: int = 2) -> dict[str, PromptedMask]:
    """SAM's mask for one word, from its attention (VL-SAM) and from its point-head point.

    Args:
        predictor: a :class:`~pixelkit.Predictor` with a SAM (``sam=...``).
        maps: the caption's :class:`~pixelkit.analysis.attention.WordMaps`.
        index: the word.
        image: the :class:`~pixelkit.predictor.EncodedImage` the maps are of (default: the
            predictor's current image).
        n_positive, n_negative, min_distance: see :func:`attention_prompts`.

    Returns:
        ``{"attention": PromptedMask, "point head": PromptedMask}``.
    """
    image = predictor.image if image is None else image
    if tuple(image.size) != tuple(maps.image_size):
        raise ValueError(f"the maps are of a {maps.image_size} image, not of this "
                         f"{image.size} one")
    points, labels = attention_prompts(maps, index, n_positive, n_negative, min_distance)
    head = maps.points[index:index + 1]
    one = np.ones(1, np.int64)
    return {
        "attention": PromptedMask(predictor.mask_from_points(points, labels, image), points,
                                  labels, "attention"),
        "point head": PromptedMask(predictor.mask_from_points(head, one, image), head, one,
                                   "point head"),
    }
