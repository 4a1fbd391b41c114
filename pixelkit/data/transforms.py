"""Images and coordinates into the model's frame, and training augmentation.

**The model frame.** The model sees a square ``S x S`` input: the image resized so that its
longest side is ``S`` (bilinear), padded with zeros on the bottom / right (SAM style).
Coordinates inside pixelkit are xyxy normalised to ``[0, 1]`` of that padded square, so

    normalised = pixel * (S / max(W, H)) / S = pixel / max(W, H),

independent of ``S``; the image content occupies ``[0, W / max(W, H)] x [0, H / max(W, H)]``.
Public boundaries use pixels of the original image (:mod:`pixelkit.data.schema`), so
:func:`to_model_boxes` / :func:`from_model_boxes` (and the point versions) convert both ways.
The resized image is ``round(W * S / max(W, H))`` pixels wide, so the content edge in the
tensor may differ from the exact normalised edge by up to half a pixel (as in SAM).

**Augmentation** (:class:`TrainTransform`), described by a :class:`ModelFrame`:

- horizontal flip (in original-image pixels, before resizing): the image, boxes
  (``x0' = W - x1``, ``x1' = W - x0``), points and traces (``x' = W - x``), and the words
  "left" / "right" (also "leftmost", "rightward(s)", ...) in the caption, the utterances and
  the box texts, word-boundary aware and case-preserving (:func:`swap_left_right`). The
  official code (``io/transforms.py``, ``hflip``) flips image, boxes and points but not the
  text, so a flipped "the dog on the left" would point at the dog on the right; its LN
  trace pipeline does not flip at all. Note that the swap is purely lexical: "all right" or
  "he left" are swapped too.
- scale jitter: the content's longest side becomes ``ratio * S`` with ``ratio ~ U[lo, hi]``.
  For ``ratio <= 1`` the smaller content sits in the top-left corner (padding bottom / right,
  as always); for ``ratio > 1`` a random ``S x S`` window of the larger image is cut out, as
  the official ``random_ratio_resize`` + ``fixed_size_crop`` (used there with 0.75-1.25 for
  COCO captions and 1.0-1.0 for Localized Narratives). Boxes are mapped with the same
  scale and offset, then clipped to the visible image; a box left with no area is flagged
  in ``box_valid`` (the official crop drops such boxes). The default range of
  :class:`TrainTransform` is ``(0.75, 1.0)``: it never crops, so no caption word or referred
  box loses its object.

Utterance boxes and points (trace targets) are clipped to the visible image, as the official
code clips them to ``[0, 1]`` of the image before use; a trace box entirely outside the
visible image becomes a NaN row (no target).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from pixelkit.data.formats._common import load_rgb
from pixelkit.data.schema import Sample

ImageLike = Any  # PIL.Image.Image | np.ndarray (H, W[, C]) | torch.Tensor (C, H, W)


# --------------------------------------------------------------------------------------------
# Frame and coordinate mapping
# --------------------------------------------------------------------------------------------


def resize_pad_scale(image_size: tuple[int, int], size: int, ratio: float = 1.0) -> float:
    """Resized pixels per original pixel: ``ratio * size / max(W, H)``.

    Args:
        image_size: ``(W, H)`` of the original image.
        size: ``S``, side of the square model input.
        ratio: scale-jitter ratio (1: the longest side becomes ``S``).
    """
    w, h = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    return ratio * size / max(w, h)


def resized_shape(image_size: tuple[int, int], size: int, ratio: float = 1.0) -> tuple[int, int]:
    """``(width, height)`` of the resized content, rounded to whole pixels (at least 1)."""
    scale = resize_pad_scale(image_size, size, ratio)
    return max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale))


@dataclass(frozen=True)
class ModelFrame:
    """How original-image pixels map into the model's normalised square, and back.

    ``model = ((W - x if flipped else x) * scale - offset) / S`` with
    ``scale = ratio * S / max(W, H)``; without augmentation (``ratio=1``, no offset, no flip)
    this is ``x / max(W, H)``.

    Attributes:
        image_size: ``(W, H)`` of the original image in pixels.
        size: ``S``, side of the square model input.
        ratio: scale-jitter ratio: the content's longest side is ``ratio * S`` pixels.
        offset: ``(ox, oy)``, top-left of the ``S x S`` window in resized pixels (non-zero
            only when ``ratio > 1`` crops).
        flipped: whether the image was flipped horizontally (before resizing).
    """

    image_size: tuple[int, int]
    size: int
    ratio: float = 1.0
    offset: tuple[int, int] = (0, 0)
    flipped: bool = False

    @property
    def scale(self) -> float:
        """Resized pixels per original pixel."""
        return resize_pad_scale(self.image_size, self.size, self.ratio)

    @property
    def resized_shape(self) -> tuple[int, int]:
        """``(width, height)`` of the resized (uncropped) image in pixels."""
        return resized_shape(self.image_size, self.size, self.ratio)

    @property
    def visible(self) -> tuple[float, float, float, float]:
        """xyxy extent of the image content inside the model square (normalised)."""
        w, h = self.image_size
        s = self.scale
        ox, oy = self.offset
        x1 = min(1.0, (w * s - ox) / self.size)
        y1 = min(1.0, (h * s - oy) / self.size)
        return 0.0, 0.0, x1, y1

    def points_to_model(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` original pixels -> ``(N, 2)`` model frame (not clipped)."""
        p = np.asarray(points, np.float64).reshape(-1, 2).copy()
        if self.flipped:
            p[:, 0] = self.image_size[0] - p[:, 0]
        p *= self.scale
        p -= np.asarray(self.offset, np.float64)
        return p / self.size

    def points_from_model(self, points: np.ndarray, clip: bool = True) -> np.ndarray:
        """``(N, 2)`` model frame -> ``(N, 2)`` original pixels, clipped to the image."""
        p = np.asarray(points, np.float64).reshape(-1, 2) * self.size
        p += np.asarray(self.offset, np.float64)
        p /= self.scale
        if self.flipped:
            p[:, 0] = self.image_size[0] - p[:, 0]
        if clip:
            w, h = self.image_size
            p = np.clip(p, 0.0, [w, h])
        return p

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` xyxy original pixels -> ``(N, 4)`` xyxy model frame (not clipped)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        if self.flipped:
            b = hflip_boxes(b, self.image_size[0])
        p = ModelFrame(self.image_size, self.size, self.ratio, self.offset, False)
        return p.points_to_model(b.reshape(-1, 2)).reshape(-1, 4)

    def boxes_from_model(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """``(N, 4)`` xyxy model frame -> ``(N, 4)`` xyxy original pixels, clipped."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        p = ModelFrame(self.image_size, self.size, self.ratio, self.offset, False)
        out = p.points_from_model(b.reshape(-1, 2), clip=clip).reshape(-1, 4)
        if self.flipped:
            out = hflip_boxes(out, self.image_size[0])
        return out


def to_model_boxes(boxes_px: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Original-image pixel boxes -> model frame (no augmentation): ``boxes / max(W, H)``.

    Args:
        boxes_px: ``(N, 4)`` xyxy in pixels of the original image (NaN rows stay NaN).
        image_size: ``(W, H)``.

    Returns:
        ``(N, 4)`` float64 xyxy normalised to the padded square; not clipped.
    """
    return np.asarray(boxes_px, np.float64).reshape(-1, 4) / float(max(image_size))


def from_model_boxes(
    boxes: np.ndarray, image_size: tuple[int, int], clip: bool = True
) -> np.ndarray:
    """Model-frame boxes -> original-image pixels: ``boxes * max(W, H)``, clipped to the image.

    Args:
        boxes: ``(N, 4)`` xyxy normalised to the padded square.
        image_size: ``(W, H)``.
        clip: clip x to ``[0, W]`` and y to ``[0, H]`` (a prediction in the padding maps
            onto the image edge).

    Returns:
        ``(N, 4)`` float64 xyxy pixels.
    """
    out = np.asarray(boxes, np.float64).reshape(-1, 4) * float(max(image_size))
    if clip:
        w, h = image_size
        out = np.clip(out, 0.0, [w, h, w, h])
    return out


def to_model_points(points_px: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N, 2)`` original pixels -> ``(N, 2)`` model frame (``/ max(W, H)``), not clipped."""
    return np.asarray(points_px, np.float64).reshape(-1, 2) / float(max(image_size))


def from_model_points(
    points: np.ndarray, image_size: tuple[int, int], clip: bool = True
) -> np.ndarray:
    """``(N, 2)`` model frame -> ``(N, 2)`` original pixels, clipped to the image."""
    out = np.asarray(points, np.float64).reshape(-1, 2) * float(max(image_size))
    if clip:
        w, h = image_size
        out = np.clip(out, 0.0, [w, h])
    return out


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _image_size(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    arr = np.asarray(image)
    return int(arr.shape[1]), int(arr.shape[0])


def _to_pil(image: ImageLike) -> Image.Image | None:
    """An RGB PIL image, or None when the input is a float array / tensor (torch path)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        arr = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    return None


def _to_float_tensor(image: ImageLike) -> torch.Tensor:
    """``(3, H, W)`` float32 in [0, 1] from a float ndarray ``(H, W[, C])`` or a tensor."""
    if isinstance(image, torch.Tensor):
        t = image.float()
        if image.dtype == torch.uint8 or (t.numel() and t.max() > 1.0):
            t = t / 255.0
        t = t if t.ndim == 3 else t[None]
    else:
        arr = np.asarray(image, np.float32)
        arr = arr if arr.ndim == 3 else arr[:, :, None]
        t = torch.from_numpy(arr).permute(2, 0, 1)
        if arr.max(initial=0.0) > 1.0:
            t = t / 255.0
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t[:3].contiguous()


def _place(image: ImageLike, frame: ModelFrame) -> torch.Tensor:
    """Resize ``image`` by ``frame`` and cut the ``S x S`` window; zero padding outside."""
    s = frame.size
    nw, nh = frame.resized_shape
    ox, oy = frame.offset
    pil = _to_pil(image)
    if pil is not None:
        if frame.flipped:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        resized = pil.resize((nw, nh), Image.Resampling.BILINEAR)
        # PIL fills the part of a crop box outside the image with zeros: that is the padding.
        window = resized.crop((ox, oy, ox + s, oy + s))
        arr = np.asarray(window, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    t = _to_float_tensor(image)
    if frame.flipped:
        t = t.flip(-1)
    t = torch.nn.functional.interpolate(
        t[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_(0.0, 1.0)
    out = torch.zeros(3, s, s, dtype=torch.float32)
    crop = t[:, oy : oy + s, ox : ox + s]
    out[:, : crop.shape[1], : crop.shape[2]] = crop
    return out


def resize_pad(image: ImageLike, size: int) -> torch.Tensor:
    """Resize the longest side to ``size`` (bilinear) and zero-pad bottom / right.

    Args:
        image: PIL image, ``(H, W[, C])`` uint8 or float ([0, 1] or [0, 255]) array, or a
            ``(C, H, W)`` tensor.
        size: ``S``.

    Returns:
        ``(3, S, S)`` float32 tensor in [0, 1]; the content is the top-left
        ``resized_shape(image_size, S)`` block, the rest is 0.
    """
    return _place(image, ModelFrame(_image_size(image), size))


# --------------------------------------------------------------------------------------------
# Horizontal flip
# --------------------------------------------------------------------------------------------

_LEFT_RIGHT = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)


def _match_case(src: str, word: str) -> str:
    if src.isupper() and len(src) > 1:
        return word.upper()
    if src[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _swap(match: re.Match[str]) -> str:
    base = match.group(1)
    other = "right" if base.lower() == "left" else "left"
    return _match_case(base, other) + (match.group(2) or "")


def swap_left_right(text: str) -> str:
    """Swap the words "left" and "right" (and their -most / -ward(s) forms).

    Word-boundary aware ("leftover", "bright", "copyright" are left alone; "left-hand"
    becomes "right-hand") and case-preserving ("Left" -> "Right", "LEFT" -> "RIGHT").
    """
    return _LEFT_RIGHT.sub(_swap, text)


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror ``(N, 4)`` xyxy boxes in an image of width ``width``: ``[W - x1, y0, W - x0, y1]``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def hflip_points(points: np.ndarray, width: float) -> np.ndarray:
    """Mirror ``(N, C)`` points with x in column 0 (``(N, 2)`` points, ``(N, 3)`` x-y-t traces)."""
    p = np.array(points, np.float64, copy=True)
    if p.size:
        p[..., 0] = width - p[..., 0]
    return p


def hflip_image(image: ImageLike) -> ImageLike:
    """Mirror an image left-right, keeping its type (PIL, ``(H, W[, C])`` array, ``(C, H, W)`` tensor)."""
    if isinstance(image, Image.Image):
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if isinstance(image, torch.Tensor):
        return image.flip(-1)
    return np.ascontiguousarray(np.asarray(image)[:, ::-1])


class Flipped(NamedTuple):
    """What :func:`hflip` returns: every input mirrored (``None`` where not given)."""

    image: ImageLike | None
    boxes: np.ndarray | None
    points: np.ndarray | None
    traces: list[np.ndarray] | None
    text: str | None
    utterances: list[str] | None


def hflip(
    image: ImageLike | None = None,
    *,
    width: float | None = None,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    traces: np.ndarray | list[np.ndarray] | None = None,
    text: str | None = None,
    utterances: list[str] | None = None,
) -> Flipped:
    """Flip an image and everything located in it, including "left" / "right" in the text.

    Args:
        image: the image (optional); gives ``width`` when that is not passed.
        width: width of the coordinate frame: pixels of the image, or 1.0 for LN-normalised
            traces.
        boxes: ``(N, 4)`` xyxy -> ``[W - x1, y0, W - x0, y1]``.
        points: ``(N, 2)`` -> ``x' = W - x``.
        traces: one ``(P, C)`` array (x in column 0) or a list of them (trace segments).
        text: caption / expression: "left" and "right" swapped (:func:`swap_left_right`).
        utterances: the same for each utterance.

    Returns:
        A :class:`Flipped` with the mirrored inputs. Flipping twice gives the inputs back.
    """
    if width is None:
        if image is None:
            raise ValueError("hflip needs `width` when no image is given")
        width = float(_image_size(image)[0])
    if isinstance(traces, np.ndarray):
        traces = [traces]
    return Flipped(
        image=None if image is None else hflip_image(image),
        boxes=None if boxes is None else hflip_boxes(boxes, width),
        points=None if points is None else hflip_points(points, width),
        traces=None if traces is None else [hflip_points(t, width) for t in traces],
        text=None if text is None else swap_left_right(text),
        utterances=None if utterances is None else [swap_left_right(u) for u in utterances],
    )


# --------------------------------------------------------------------------------------------
# Sample transform
# --------------------------------------------------------------------------------------------


@dataclass
class TransformedSample:
    """A :class:`~pixelkit.data.schema.Sample` in the model frame, ready for collation.

    Attributes:
        image: ``(3, S, S)`` float32 in [0, 1].
        text: caption / expression ("left" / "right" swapped when flipped).
        utterances: the utterances (swapped likewise).
        box_texts: one text per box (swapped likewise).
        boxes: ``(N, 4)`` float32 xyxy model frame, clipped to the visible image.
        box_valid: ``(N,)`` bool, False where a box has no area left inside the visible
            image (only possible when scale jitter crops).
        utterance_boxes: ``(U, 4)`` float32 model frame, clipped; NaN where no target.
        utterance_points: ``(U, 2)`` float32 model frame, clipped; NaN where no target.
        frame: the :class:`ModelFrame` used (maps predictions back to original pixels).
        sample: the untouched input sample.
    """

    image: torch.Tensor
    text: str
    utterances: list[str]
    box_texts: list[str]
    boxes: np.ndarray
    box_valid: np.ndarray
    utterance_boxes: np.ndarray
    utterance_points: np.ndarray
    frame: ModelFrame
    sample: Sample = field(repr=False)

    @property
    def flipped(self) -> bool:
        return self.frame.flipped


def sample_frame(
    image_size: tuple[int, int],
    size: int,
    rng: np.random.Generator,
    hflip_prob: float = 0.0,
    scale_jitter: tuple[float, float] | None = None,
) -> ModelFrame:
    """Draw a random :class:`ModelFrame`: flip with ``hflip_prob``, ratio ``~ U[lo, hi]``.

    For ``ratio > 1`` the crop window's offset is uniform over the positions that keep the
    window inside the resized image (along an axis that is smaller than ``S``, 0).
    """
    flipped = bool(hflip_prob > 0 and rng.random() < hflip_prob)
    ratio = 1.0
    if scale_jitter is not None:
        lo, hi = scale_jitter
        ratio = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    nw, nh = resized_shape(image_size, size, ratio)
    ox = int(rng.integers(0, nw - size + 1)) if nw > size else 0
    oy = int(rng.integers(0, nh - size + 1)) if nh > size else 0
    return ModelFrame(tuple(image_size), size, ratio, (ox, oy), flipped)  # type: ignore[arg-type]


class SampleTransform:
    """Sample + image -> :class:`TransformedSample` in the model frame, with optional augmentation.

    ``SampleTransform(size)`` is the evaluation transform (resize-pad only);
    :class:`TrainTransform` turns on flip and scale jitter. Token alignment is *not* done
    here: flipping changes words ("left" <-> "right" may tokenise to different lengths), so
    the datamodule aligns the transformed ``text`` / ``utterances`` with
    :func:`pixelkit.data.alignment.align_caption` afterwards, with the transformed
    utterance boxes as locations.

    Randomness: a numpy ``Generator`` per process, seeded from ``(seed, torch.initial_seed())``
    and re-seeded when either changes, so DataLoader workers (whose torch seeds differ per
    worker and per epoch) draw different augmentations and runs are reproducible when torch
    is seeded (e.g. Lightning's ``seed_everything``). Pass ``rng`` to a call to control it
    fully.

    Args:
        size: ``S``, side of the square model input.
        hflip_prob: probability of a horizontal flip.
        scale_jitter: ``(lo, hi)`` range of the content scale ratio, or None for none.
        seed: extra seed mixed into the per-process generator.
    """

    def __init__(
        self,
        size: int,
        hflip_prob: float = 0.0,
        scale_jitter: tuple[float, float] | None = None,
        seed: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        if scale_jitter is not None:
            lo, hi = scale_jitter
            if not 0 < lo <= hi:
                raise ValueError(
                    f"scale_jitter must be (lo, hi) with 0 < lo <= hi, got {scale_jitter}"
                )
            scale_jitter = (float(lo), float(hi))
        self.size = int(size)
        self.hflip_prob = float(hflip_prob)
        self.scale_jitter = scale_jitter
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, hflip_prob={self.hflip_prob}, "
            f"scale_jitter={self.scale_jitter}, seed={self.seed})"
        )

    def _generator(self) -> np.random.Generator:
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            entropy = [torch.initial_seed() % 2**63] + ([] if self.seed is None else [self.seed])
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._rng_key = key
        return self._rng

    @property
    def augments(self) -> bool:
        return self.hflip_prob > 0 or (
            self.scale_jitter is not None and self.scale_jitter != (1.0, 1.0)
        )

    def frame_for(
        self, image_size: tuple[int, int], rng: np.random.Generator | None = None
    ) -> ModelFrame:
        """The frame for one image: fixed without augmentation, else drawn from ``rng``."""
        if not self.augments:
            return ModelFrame(tuple(image_size), self.size)  # type: ignore[arg-type]
        return sample_frame(
            image_size, self.size, rng or self._generator(), self.hflip_prob, self.scale_jitter
        )

    def __call__(
        self,
        sample: Sample,
        image: ImageLike | None = None,
        rng: np.random.Generator | None = None,
    ) -> TransformedSample:
        """Transform one sample.

        Args:
            sample: a :class:`~pixelkit.data.schema.Sample` (coordinates in original pixels).
            image: its image; opened from ``sample.image_path`` when None. Its size must be
                ``sample.image_size``.
            rng: generator for this call's augmentation (default: the per-process one).

        Returns:
            The :class:`TransformedSample`.

        Raises:
            ValueError: the image's size is not ``sample.image_size``.
            pixelkit.data.formats.MissingImageError: the image file is missing, unreadable,
                truncated or a decompression bomb (a ``ValueError`` naming the file).
        """
        if image is None:
            # Missing, truncated or bomb images raise the readers' errors (naming the file),
            # which the data module skips and counts.
            image = load_rgb(sample.image_path, sample.source or None)
        size_wh = _image_size(image)
        if tuple(size_wh) != tuple(sample.image_size):
            raise ValueError(
                f"{sample.source or sample.image_path}: image is {size_wh[0]}x{size_wh[1]} but the "
                f"sample says image_size={tuple(sample.image_size)}"
            )
        frame = self.frame_for(size_wh, rng)
        tensor = _place(image, frame)
        vx0, vy0, vx1, vy1 = frame.visible
        lo = np.array([vx0, vy0, vx0, vy0])
        hi = np.array([vx1, vy1, vx1, vy1])

        boxes = np.clip(frame.boxes_to_model(sample.boxes), lo, hi)
        box_valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])

        ub = frame.boxes_to_model(sample.utterance_boxes)
        up = frame.points_to_model(sample.utterance_points)
        # A trace box that does not touch the visible image has no target; the others are
        # clipped (closed intervals, so a zero-size box of a zero-length utterance survives).
        with np.errstate(invalid="ignore"):
            outside = (ub[:, 2] < vx0) | (ub[:, 0] > vx1) | (ub[:, 3] < vy0) | (ub[:, 1] > vy1)
        ub = np.clip(ub, lo, hi)
        if len(up) == len(ub):
            up = np.clip(up, lo[:2], hi[:2])
            up[outside | np.isnan(ub).any(axis=1)] = np.nan
        else:
            up = np.clip(up, lo[:2], hi[:2])
        ub[outside] = np.nan

        swap = swap_left_right if frame.flipped else (lambda s: s)
        return TransformedSample(
            image=tensor,
            text=swap(sample.text),
            utterances=[swap(u) for u in sample.utterances],
            box_texts=[swap(t) for t in sample.box_texts],
            boxes=boxes.astype(np.float32),
            box_valid=box_valid,
            utterance_boxes=ub.astype(np.float32),
            utterance_points=up.astype(np.float32),
            frame=frame,
            sample=sample,
        )


class TrainTransform(SampleTransform):
    """:class:`SampleTransform` with training defaults: flip with p = 0.5, scale 0.75-1.0.

    Args:
        size: ``S``.
        hflip_prob: probability of a horizontal flip (with "left" / "right" swapped).
        scale_jitter: ``(lo, hi)`` content scale range; ``(0.75, 1.25)`` reproduces the
            official COCO-caption augmentation (random crop above 1), ``(1.0, 1.0)`` the
            official LN pipeline (none).
        seed: extra seed (see :class:`SampleTransform`).
    """

    def __init__(
        self,
        size: int,
        hflip_prob: float = 0.5,
        scale_jitter: tuple[float, float] | None = (0.75, 1.0),
        seed: int | None = None,
    ) -> None:
        super().__init__(size, hflip_prob=hflip_prob, scale_jitter=scale_jitter, seed=seed)
