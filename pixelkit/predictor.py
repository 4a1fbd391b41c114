"""The one inference API: notebooks, the demo and ``pixelkit eval`` all go through it.

::

    from pixelkit import Predictor

    p = Predictor.from_checkpoint("runs/quickstart/pixelllm.ckpt")
    p.set_image("photo.jpg")                       # any size and aspect ratio
    p.caption()                                    # narrative with one location per word
    p.caption(task="caption")                      # short COCO-style caption
    p.caption(box=(10, 20, 200, 180))              # describe a region (pixels)
    p.caption(points=[(50, 60)], labels=[1])       # ... or the object under a click
    p.refer("the red circle")                      # -> box (pixels) and score
    p.dense_caption()                              # -> boxes, captions, scores
    p.segment("the red circle")                    # -> mask (needs a SAM mask decoder)

**Coordinates.** Every box and point going in or out is ``xyxy`` / ``(x, y)`` in pixels
of the original image. Inside, the image is resized so its longest side is the model's
input size and padded bottom / right (:func:`pixelkit.data.transforms.resize_pad`), so
the model frame is ``pixel / max(W, H)``; :func:`~pixelkit.data.transforms.to_model_boxes`
and :func:`~pixelkit.data.transforms.from_model_boxes` convert (outputs are clipped to
the image).

**Tasks and prompts** come from :data:`pixelkit.data.encoding.TASK_PROMPTS`:
``caption()`` without a location is the pixel-aligned narrative (task ``trace``,
prompt "describe"), ``caption(task="caption")`` the short caption, ``caption(box=...)`` /
``caption(points=...)`` a location-conditioned caption (task ``loca_caption``, prompt
"region"). Rows are built with :func:`~pixelkit.data.encoding.make_row` and batched with
:func:`~pixelkit.data.encoding.collate`, exactly as in training.

**A word's location.** The point head gives every generated token two points
``(x0, y0, x1, y1)`` from the state whose input is that token. A word made of several
tokens takes the location of its *last* token that has a letter or digit: that state is
the first that has seen the whole word (the reason the point head reads the state whose
input is the token), and trailing punctuation glued to a word ("circle,") is skipped
because its own trace target is the travel to the next object. The word's box is the two
points ordered into ``(min x, min y, max x, max y)``; its point is the box centre.

**Location formats** (``model.config.location``, :class:`~pixelkit.modeling.location.LocationCodec`).
Rows are built with the model's codec, on the grid of the image's content. With
``text`` / ``tokens`` the locations are in the generated text: :meth:`Predictor.refer`
generates the box markup and parses it (``box=None`` and ``error`` when it does not
parse), and a caption's markup is stripped, each word of a phrase taking the phrase's box
(:func:`grounded_result`); ``location.prompt: text`` writes a box prompt into the text.
The result types are the same for every format.

**Batching.** An image is encoded once (:meth:`Predictor.set_image` /
:meth:`Predictor.encode_images`); all prompts of a call are one batched decode over those
shared features (``features[image_index]``): :meth:`caption_boxes` captions many boxes in
one call, :meth:`dense_caption` captions every proposal in one call, and the ``*_batch``
methods take prompts over many images (``pixelkit eval`` uses them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pixelkit.data.encoding import Example, Row, collate, encode_text, make_row, prompt_ids
from pixelkit.data.formats._common import load_rgb
from pixelkit.data.transforms import (
    ModelFrame,
    from_model_boxes,
    resize_pad,
    to_model_boxes,
    to_model_points,
)
from pixelkit.decoding import DecodeOptions, Generation, decode
from pixelkit.modeling.location import LocationCodec, image_extent
from pixelkit.modeling.pixel_llm import PixelLLM, PixelLLMOutput

__all__ = [
    "CaptionResult",
    "DenseCaptionResult",
    "EncodedImage",
    "Predictor",
    "ReferResult",
    "SegmentResult",
    "caption_result",
    "grounded_result",
    "group_words",
    "load_image",
    "mask_to_rle",
]

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor
Box = tuple[float, float, float, float]
Point = tuple[float, float]

#: Collated keys of :meth:`PixelLLM.input_prefix` (decoding); a teacher-forced pass adds
#: the labels (no point targets: no losses wanted).
_PREFIX_KEYS = ("image_index", "boxes", "points", "point_labels", "prompt_ids", "prompt_mask",
                "regions")
_FORWARD_KEYS = (*_PREFIX_KEYS, "labels")
# ImageNet statistics: SAM's image normalisation.
_SAM_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_SAM_STD = np.array([0.229, 0.224, 0.225], np.float32)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _floats(rows: Any) -> list:
    """Nested lists of plain floats (JSON), from arrays / tuples."""
    return np.asarray(rows, np.float64).tolist()


@dataclass
class CaptionResult:
    """A caption with one location per word.

    Attributes:
        text: the decoded caption.
        words: its words (whitespace-separated pieces of the decoded tokens).
        points: one ``(x, y)`` per word, pixels of the original image (the box centre).
        boxes: one ``(x0, y0, x1, y1)`` per word, pixels of the original image. Formats
            that write boxes (``location.format`` ``text`` / ``tokens``) give each word of a
            phrase the phrase's box; a word outside any phrase, or in one whose box did not
            parse, has NaN.
        num_tokens: generated tokens (EOS excluded).
        phrases: located phrases in the text (written formats; 0 for ``regression``).
        parse_failures: of those, the phrases whose box markup did not parse (each a miss).
    """

    text: str
    words: list[str]
    points: list[Point]
    boxes: list[Box]
    num_tokens: int = 0
    phrases: int = 0
    parse_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain lists and floats)."""
        return {"text": self.text, "words": list(self.words),
                "points": _floats(self.points) if self.points else [],
                "boxes": _floats(self.boxes) if self.boxes else [],
                "num_tokens": int(self.num_tokens), "phrases": int(self.phrases),
                "parse_failures": int(self.parse_failures)}


@dataclass
class ReferResult:
    """Where a referring expression is.

    Attributes:
        box: ``(x0, y0, x1, y1)`` pixels of the original image; None when a written answer
            (``location.format`` ``text`` / ``tokens``) holds no box that parses.
        score: geometric-mean probability of the scored tokens, in (0, 1] (see
            :meth:`Predictor.refer`).
        truncated: the expression was longer than the model reads (the config's
            ``max_prompt_tokens`` / ``max_text_length``) and only its start was used.
        error: why there is no box (one of
            :data:`pixelkit.modeling.location.PARSE_ERRORS`), else None.
        num_tokens: generated tokens of the answer (EOS excluded); 0 for ``regression``,
            whose box is read from a teacher-forced pass.
    """

    box: Box | None
    score: float
    truncated: bool = False
    error: str | None = None
    num_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"box": None if self.box is None else _floats(self.box),
                "score": float(self.score), "truncated": bool(self.truncated),
                "error": self.error, "num_tokens": int(self.num_tokens)}


@dataclass
class DenseCaptionResult:
    """Every region the model proposes, with a caption.

    Attributes:
        boxes: ``(x0, y0, x1, y1)`` per region, pixels, best first.
        captions: one caption per region.
        scores: the proposal scores (CenterNet heatmap peaks, in [0, 1]).
    """

    boxes: list[Box]
    captions: list[str]
    scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"boxes": _floats(self.boxes) if self.boxes else [],
                "captions": list(self.captions), "scores": [float(s) for s in self.scores]}


@dataclass
class SegmentResult:
    """A referring segmentation.

    Attributes:
        mask: ``(H, W)`` bool array, the original image's size.
        box: the referred box that prompted SAM, pixels.
        score: the referring score of the box (as :class:`ReferResult`).
    """

    mask: np.ndarray
    box: Box
    score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the mask as COCO's uncompressed RLE (:func:`mask_to_rle`)."""
        return {"mask": mask_to_rle(self.mask), "box": _floats(self.box), "score": float(self.score)}


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """A bool mask as COCO's uncompressed RLE: ``{"size": [H, W], "counts": [...]}``.

    Runs are counted in column-major order starting with a run of zeros, so
    ``pycocotools.mask.frPyObjects(rle, H, W)`` reads it back.
    """
    m = np.asarray(mask, bool)
    flat = m.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device`` that exists here (None: CUDA when available).

    Raises:
        ValueError: not a device name, or a device this machine does not have (asked for
            ``cuda`` without a GPU, say).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name ({err})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU is available here (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps")
                                   and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here (use cpu)")
    return dev


def load_image(image: ImageInput) -> Image.Image:
    """Any supported image input as an RGB PIL image.

    Args:
        image: a path (str / ``os.PathLike``), a PIL image, an ``(H, W)``, ``(H, W, 3)`` or
            ``(H, W, 4)`` numpy array (uint8, or float in [0, 1]), or a ``(C, H, W)`` tensor
            (uint8, or float in [0, 1]).

    Returns:
        The image in RGB (alpha dropped, grey expanded).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not an image, truncated or a decompression bomb (the
            readers' :class:`~pixelkit.data.formats.MissingImageError`), or an array of the
            wrong shape / values.
        TypeError: anything else.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        # Unreadable, truncated and decompression-bomb files: a ValueError naming the file.
        return load_rgb(path)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"an image tensor must be (C, H, W) with C in 1, 3, 4; got "
                             f"{tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"the image is empty: shape {arr.shape}")
        if arr.dtype != np.uint8:
            if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
                raise ValueError(f"an image array must be uint8 or float, got {arr.dtype}")
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise ValueError("the image array has NaN or infinite values")
            # Floats in [0, 1] are scaled; larger values are taken as 0..255.
            if arr.max(initial=0.0) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            return Image.fromarray(arr, "L").convert("RGB")
        return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")
    raise TypeError("expected an image: a path, a PIL image, an (H, W[, C]) numpy array or a "
                    f"(C, H, W) tensor; got {type(image).__name__}")


@dataclass
class EncodedImage:
    """An image as the model sees it, encoded once and shared by all its prompts.

    Attributes:
        image: the original RGB image (kept for SAM).
        frame: maps original pixels to the model frame and back.
        tensor: (3, S, S) the resized, padded input in [0, 1].
        features: (C, h, w) the image encoder's features.
        regions: ``(K, 4)`` model-frame proposals of the ``regions`` location format (the
            proposal head's, in score order), given to the LM as region tokens; None for
            the other formats.
    """

    image: Image.Image = field(repr=False)
    frame: ModelFrame
    tensor: torch.Tensor = field(repr=False)
    features: torch.Tensor = field(repr=False)
    regions: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)`` of the original image."""
        return self.frame.image_size


# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------


def group_words(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[str], list[int]]:
    """Group generated tokens into words, and pick the token that locates each word.

    Works for any tokenizer by decoding: the text a token adds is what it appends to the
    decoded string, given its left context (:func:`_token_texts`, linear in the length).
    A token whose new text starts with whitespace starts a word
    (SentencePiece "▁", byte-level "Ġ"), one without continues the word (WordPiece "##",
    subword pieces, punctuation glued on by the decoder); a token that adds only
    whitespace makes the next token start a word.

    Args:
        tokenizer: the LM's tokenizer.
        ids: generated ids, EOS excluded.

    Returns:
        ``(text, words, locating_token)``: the decoded text, its words, and per word the
        index into ``ids`` of the token whose location it takes (its last token with a
        letter or digit, else its last token; see the module docstring).
    """
    ids = [int(i) for i in ids]
    words: list[str] = []
    groups: list[list[tuple[int, str]]] = []
    new_word = True
    for k, delta in enumerate(_token_texts(tokenizer, ids)):
        if not delta.strip():
            new_word = new_word or bool(delta)  # a lone space piece: the next token starts a word
            continue
        if new_word or delta[:1].isspace() or not groups:
            groups.append([])
        groups[-1].append((k, delta.strip()))
        new_word = False
    locating = []
    for g in groups:
        words.append("".join(piece for _, piece in g))
        alnum = [k for k, piece in g if any(ch.isalnum() for ch in piece)]
        locating.append(alnum[-1] if alnum else g[-1][0])
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return text, words, locating


def _token_texts(tokenizer: Any, ids: list[int], window: int = 8) -> list[str]:
    """The text each token adds to the decoded string (special tokens skipped, no clean-up).

    A fast tokenizer streams the ids through ``tokenizers.decoders.DecodeStream``: its Rust
    decoder keeps the last token as left context, so a token's leading space survives
    (SentencePiece drops it from a sequence's first token), and a token that ends inside a
    UTF-8 character adds nothing until the token that completes it. A decoder that rewrites
    text it already produced makes the stream fail; then, and for slow tokenizers,
    :func:`_window_token_texts` does the same by decoding windows.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers.decoders import DecodeStream

        stream = DecodeStream(skip_special_tokens=True)
        try:
            return [stream.step(backend, i) or "" for i in ids]
        except Exception:  # tokenizers raises a plain Exception ("Invalid prefix encountered")
            pass
    return _window_token_texts(tokenizer, ids, window)


def _window_token_texts(tokenizer: Any, ids: list[int], window: int = 8) -> list[str]:
    """:func:`_token_texts` by decoding windows of ids.

    Token ``k`` adds ``decode(ids[s:k + 1])`` minus its common prefix with
    ``decode(ids[s:k])``, ``s = max(0, k - window)``: the token is never first in its window
    (where SentencePiece would drop its leading space), and all windows are decoded in one
    call into a fast tokenizer's Rust backend.
    """
    if not ids:
        return []
    starts = [max(0, k - window) for k in range(len(ids))]
    pieces = [ids[s:k] for k, s in enumerate(starts)] + [ids[s:k + 1] for k, s in enumerate(starts)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "decode_batch"):
        texts = backend.decode_batch(pieces, skip_special_tokens=True)
    else:
        texts = tokenizer.batch_decode(pieces, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
    n = len(ids)
    out = []
    for before, after in zip(texts[:n], texts[n:]):
        # Usually the new text extends the old; a decoder may also rewrite its tail.
        keep = len(before) if after.startswith(before) else len(os.path.commonprefix([before, after]))
        out.append(after[keep:])
    return out


def caption_result(tokenizer: Any, ids: Sequence[int], token_points: Any,
                   size: tuple[int, int]) -> CaptionResult:
    """Generated tokens and their point-head outputs as a :class:`CaptionResult`.

    Args:
        tokenizer: the LM's tokenizer.
        ids: the generated ids, EOS excluded (n of them).
        token_points: ``(n, 4)`` the location of each token (model frame): the output of
            the state whose input is that token (see :mod:`pixelkit.decoding`).
        size: ``(W, H)`` of the original image.
    """
    text, words, locating = group_words(tokenizer, ids)
    if not words:
        return CaptionResult(text=text, words=[], points=[], boxes=[], num_tokens=len(ids))
    boxes = point_head_boxes(token_points[locating], size)                   # (n_words, 4)
    return _word_result(text, words, boxes, num_tokens=len(ids))


def _word_result(text: str, words: list[str], boxes: np.ndarray, **counts: int
                 ) -> CaptionResult:
    """A :class:`CaptionResult` of per-word ``(n, 4)`` pixel boxes (points: their centres)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return CaptionResult(text=text, words=words, points=[tuple(p) for p in centres.tolist()],
                         boxes=[tuple(b) for b in boxes.tolist()], **counts)


def grounded_result(codec: LocationCodec, text: str, size: tuple[int, int],
                    num_tokens: int = 0, regions: np.ndarray | None = None) -> CaptionResult:
    """A generated caption of a format that writes boxes, as a :class:`CaptionResult`.

    The markup is stripped (:meth:`LocationCodec.parse_grounded`): each word of a phrase
    takes the phrase's box (pixels; NaN for words without one), its point the box centre.

    Args:
        codec: the model's location codec.
        text: the decoded generation.
        size: ``(W, H)`` of the original image (the grid covers its content).
        num_tokens: the generated tokens it came from.
        regions: the image's proposals (``regions`` format: a region token's box).
    """
    g = codec.parse_grounded(text, image_extent(size), regions)
    boxes = from_model_boxes(g.word_boxes, size)                             # NaN stays NaN
    return _word_result(g.text, g.words, boxes, num_tokens=num_tokens,
                        phrases=len(g.phrases), parse_failures=g.failures)


def _in_image(px: np.ndarray) -> np.ndarray:
    """``(N,)`` which ``(N, 4)`` pixel boxes (clipped to the image) have an area: a proposal
    lying in the padding has none, and is no region of the image."""
    return (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])


def _ordered(points4: np.ndarray) -> np.ndarray:
    """(N, 4) two points -> (N, 4) ``(min x, min y, max x, max y)`` boxes."""
    p = np.asarray(points4, np.float64).reshape(-1, 4)
    return np.stack([np.minimum(p[:, 0], p[:, 2]), np.minimum(p[:, 1], p[:, 3]),
                     np.maximum(p[:, 0], p[:, 2]), np.maximum(p[:, 1], p[:, 3])], axis=1)


def point_head_boxes(points4: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Point-head outputs (model frame) -> ordered xyxy boxes in pixels, clipped to the image.

    Args:
        points4: ``(N, 4)`` ``(x0, y0, x1, y1)`` normalised to the padded square.
        image_size: ``(W, H)`` of the original image.

    Returns:
        ``(N, 4)`` float64 pixel boxes.
    """
    if isinstance(points4, torch.Tensor):
        points4 = points4.detach().float().cpu().numpy()
    return from_model_boxes(_ordered(points4), image_size)


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------


class Predictor:
    """PixelLLM inference on images of any size, in pixels of the original image.

    Args:
        model: a :class:`PixelLLM` (put in eval mode and moved to ``device``).
        tokenizer: its tokenizer; default
            :func:`pixelkit.modeling.tokenizer.tokenizer_for` of its config.
        sam: optional SAM mask decoder for :meth:`segment`: a ``transformers.SamModel``, or
            a hub id / local directory loaded with ``SamModel.from_pretrained``.
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available.
        decode_options: how captions are decoded (default: greedy, up to the config's
            ``max_text_length - 1`` tokens).
        info: what the checkpoint says about the model (stage, data, metrics); shown by
            the demo as :attr:`info`.
    """

    def __init__(self, model: PixelLLM, tokenizer: Any = None, sam: Any = None, *,
                 device: str | torch.device | None = None,
                 decode_options: DecodeOptions | None = None,
                 info: dict[str, Any] | None = None) -> None:
        if not isinstance(model, PixelLLM):
            raise TypeError(f"Predictor needs a PixelLLM, got {type(model).__name__}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if tokenizer is None:
            from pixelkit.modeling.tokenizer import tokenizer_for

            tokenizer = tokenizer_for(model.config)
        self.tokenizer = tokenizer
        #: How boxes enter and leave the text (``model.config.location``).
        self.codec = LocationCodec(model.config.location)
        # Formats that write boxes need room for them (LocationCodec.target_length).
        self.max_text_length = self.codec.target_length(
            tokenizer, int(model.config.language_model.max_text_length))
        self.decode_options = decode_options or DecodeOptions(
            max_new_tokens=max(1, self.max_text_length - 1))
        self.info: dict[str, Any] = dict(info or {})
        self.sam = _load_sam(sam, self.device) if sam is not None else None
        self._image: EncodedImage | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device | None = None,
                        sam: Any = None, **kwargs: Any) -> Predictor:
        """Load a pixelkit checkpoint (:func:`pixelkit.checkpoint.load_model`).

        Args:
            path: a slim ``pixelllm.ckpt`` or a Lightning checkpoint of a stage.
            device: see :class:`Predictor`.
            sam: see :class:`Predictor`.
            **kwargs: other :class:`Predictor` options (``decode_options``, ``tokenizer``).

        Returns:
            The predictor; the checkpoint's meta (stage, trained_on, metrics, config) is
            :attr:`info`.
        """
        from pixelkit.checkpoint import load_model

        device = resolve_device(device)  # before the load: a bad device fails at once
        model, meta = load_model(path, device=device)
        return cls(model, sam=sam, device=device, info={**meta, "checkpoint": str(path)},
                   **kwargs)

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike[str],
                        device: str | torch.device | None = None, sam: Any = None, *,
                        revision: str | None = None, token: str | bool | None = None,
                        **kwargs: Any) -> Predictor:
        """Load a model saved by ``PixelLLM.save_pretrained`` / ``push_to_hub``
        (:func:`pixelkit.hub.load_pretrained`): the frozen pretrained parts load from their
        sources; the tokenizer, like the architecture, comes from the saved config.

        Args:
            repo_or_dir: the folder, or a Hub id ``user/name`` (network on first use).
            device: see :class:`Predictor`.
            sam: see :class:`Predictor`.
            revision: Hub branch, tag or commit.
            token: Hub token (private repos).
            **kwargs: other :class:`Predictor` options (``decode_options``, ``tokenizer``).

        Returns:
            The predictor; the saved info (stage, metrics, config, frozen sources) is
            :attr:`info`.
        """
        from pixelkit.hub import load_pretrained

        device = resolve_device(device)
        model, meta = load_pretrained(repo_or_dir, device, revision=revision, token=token)
        return cls(model, sam=sam, device=device,
                   info={**meta, "checkpoint": str(repo_or_dir)}, **kwargs)

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput]) -> list[EncodedImage]:
        """Resize-pad and encode images in one batch through the image encoder.

        Args:
            images: see :func:`load_image` for what each may be.

        Returns:
            One :class:`EncodedImage` per input.
        """
        pils = [load_image(im) for im in images]
        if not pils:
            return []
        size = self.model.config.image_size
        tensors = [resize_pad(im, size) for im in pils]
        feats = self.model.encode_image(torch.stack(tensors).to(self.device))  # (N, C, h, w)
        regions: list[np.ndarray | None] = [None] * len(pils)
        if self.codec.uses_regions:  # Groma: the proposals are what the LM can point at
            found = self.model.propose(feats, max_detections=self.codec.num_regions)
            for i, (im, prop) in enumerate(zip(pils, found)):
                norm = prop["boxes"].float().cpu().numpy()
                regions[i] = norm[_in_image(from_model_boxes(norm, im.size))]
        return [EncodedImage(im, ModelFrame(im.size, size), t, f, r)
                for im, t, f, r in zip(pils, tensors, feats, regions)]

    def set_image(self, image: ImageInput) -> Predictor:
        """Encode ``image`` once for the calls that follow (any size and aspect ratio).

        Returns:
            ``self``, so ``p.set_image(im).caption()`` works.
        """
        self._image = self.encode_images([image])[0]
        return self

    @property
    def image(self) -> EncodedImage:
        """The image of the last :meth:`set_image`."""
        if self._image is None:
            raise RuntimeError("no image: call predictor.set_image(image) first")
        return self._image

    # ------------------------------------------------------------------ single-image API
    def caption(self, box: Sequence[float] | None = None,
                points: Sequence[Sequence[float]] | None = None,
                labels: Sequence[int] | None = None, task: str | None = None) -> CaptionResult:
        """Caption the image, a box, or the object under some clicks, with per-word locations.

        Args:
            box: ``(x0, y0, x1, y1)`` in pixels of the image: caption this region.
            points: ``[(x, y), ...]`` clicks in pixels: caption the object they pick.
            labels: per point 1 (positive) or 0 (negative); default all positive.
            task: ``"trace"`` (default without a location: the narrative with a trace),
                ``"caption"`` (a short caption), or ``"loca_caption"`` (default with a box
                or points).

        Returns:
            :class:`CaptionResult` (text, words, a point and a box per word, pixels).
        """
        image = self.image
        return self.caption_batch([image], task=task,
                                  boxes=None if box is None else [box],
                                  points=None if points is None else [points],
                                  labels=None if labels is None else [labels])[0]

    def caption_boxes(self, boxes: Sequence[Sequence[float]]) -> list[CaptionResult]:
        """Caption many boxes of the image in one batched decode.

        Args:
            boxes: ``(N, 4)`` xyxy pixel boxes.

        Returns:
            One :class:`CaptionResult` per box.
        """
        image = self.image
        boxes = list(boxes)
        return self.caption_batch([image] * len(boxes), boxes=boxes)

    def refer(self, expression: str) -> ReferResult:
        """Locate a referring expression.

        ``regression`` (PixelLLM): teacher-forced, not generated: the prompt is "where is
        {expression}", the target is the expression + EOS, and the box is the point-head
        output at the position whose label is EOS (the state that has read the whole
        expression), as in training. ``text`` / ``tokens``: the answer is generated (at
        most one box markup long) and its box parsed
        (:meth:`~pixelkit.modeling.location.LocationCodec.decode_box`); an answer that does
        not parse gives ``box=None`` and the reason in ``error``, never an exception.

        Returns:
            :class:`ReferResult`: the box in pixels, and as score the geometric mean of the
            scored tokens' probabilities, ``exp(mean log p)``: for ``regression`` the target
            tokens (EOS included), how well the expression fits what the model sees,
            comparable across expressions of different lengths; for written formats the
            generated answer's tokens.
        """
        return self.refer_batch([self.image], [expression])[0]

    def dense_caption(self, max_regions: int | None = None,
                      score_threshold: float | None = None) -> DenseCaptionResult:
        """Propose regions and caption each: proposals -> box prompts -> one batched decode.

        Args:
            max_regions: the most regions (default: the config's ``max_detections``).
            score_threshold: minimum proposal score (default: the config's).

        Returns:
            :class:`DenseCaptionResult`, best proposal first.
        """
        return self.dense_caption_batch([self.image], max_regions, score_threshold)[0]

    @torch.no_grad()
    def segment(self, expression: str) -> SegmentResult:
        """Referring segmentation: :meth:`refer`, then SAM's mask decoder prompted with the box.

        The image goes to SAM the way ``SamProcessor`` prepares it (longest side resized to
        SAM's input size, ImageNet normalisation, zero padding bottom / right); the
        low-resolution mask logits are upsampled to the padded input, cropped to the image
        and resized to its original size, then thresholded at 0.

        Returns:
            :class:`SegmentResult` with an ``(H, W)`` bool mask.

        Raises:
            RuntimeError: the predictor has no SAM (pass ``sam=`` when creating it).
        """
        self._require_sam("segment()")  # before refer: fail fast
        ref = self.refer(expression)
        return SegmentResult(mask=self.mask_from_box(ref.box), box=ref.box, score=ref.score)

    @torch.no_grad()
    def mask_from_box(self, box: Sequence[float], image: EncodedImage | None = None) -> np.ndarray:
        """SAM's mask for a pixel box (the second half of :meth:`segment`).

        Args:
            box: ``(x0, y0, x1, y1)`` pixels of the image.
            image: an encoded image (default: the one of :meth:`set_image`).

        Returns:
            ``(H, W)`` bool mask of the original image's size.
        """
        self._require_sam("mask_from_box()")
        image = self.image if image is None else image
        return _sam_mask(self.sam, image.image, self.device, box_px=np.asarray(box, np.float64))

    @torch.no_grad()
    def mask_from_points(self, points: Sequence[Sequence[float]],
                         labels: Sequence[int] | None = None,
                         image: EncodedImage | None = None) -> np.ndarray:
        """SAM's mask for point prompts: positive points on the object, negative ones off it
        (attention as prompts: :func:`pixelkit.analysis.attention_prompts`).

        Args:
            points: ``[(x, y), ...]`` pixels of the image.
            labels: per point 1 (positive) or 0 (negative); default all positive.
            image: an encoded image (default: the one of :meth:`set_image`).

        Returns:
            ``(H, W)`` bool mask of the original image's size.
        """
        self._require_sam("mask_from_points()")
        image = self.image if image is None else image
        pts = _check_points(points, image.size)
        return _sam_mask(self.sam, image.image, self.device, points_px=pts,
                         labels=_check_labels(labels, len(pts)))

    def _require_sam(self, what: str) -> None:
        if self.sam is None:
            raise RuntimeError(
                f"{what} needs a SAM mask decoder: create the predictor with sam=... (a "
                "transformers.SamModel, a hub id such as 'facebook/sam-vit-huge', or a local "
                "directory saved with SamModel.save_pretrained)")

    # ------------------------------------------------------------------ batched API
    def caption_batch(self, images: Sequence[EncodedImage], *, task: str | None = None,
                      boxes: Sequence[Sequence[float] | None] | None = None,
                      points: Sequence[Sequence[Sequence[float]] | None] | None = None,
                      labels: Sequence[Sequence[int] | None] | None = None) -> list[CaptionResult]:
        """Caption N prompts (over one or many encoded images) in one batched decode.

        Args:
            images: N encoded images (repeat one object to put several prompts on it; its
                features are shared, not copied).
            task: as in :meth:`caption`; default ``trace`` for prompts without a location,
                ``loca_caption`` for the others.
            boxes: per prompt a pixel box or None.
            points: per prompt a list of ``(x, y)`` pixel clicks or None.
            labels: per prompt the clicks' labels or None (all positive).

        Returns:
            One :class:`CaptionResult` per prompt.
        """
        n = len(images)
        for name, seq in (("boxes", boxes), ("points", points), ("labels", labels)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} images")
        if n == 0:
            return []  # e.g. caption_boxes([]): nothing to caption
        rows = []
        for i, image in enumerate(images):
            box = boxes[i] if boxes is not None else None
            pts = points[i] if points is not None else None
            lab = labels[i] if labels is not None else None
            rows.append(self._prompt_row(image, task, box, pts, lab))
        # Written formats locate words by their markup, not the point head.
        gen = self.generate(images, rows, with_points=not self.codec.writes_targets)
        return [self._caption_result(gen, r, image) for r, image in enumerate(images)]

    @torch.no_grad()
    def refer_batch(self, images: Sequence[EncodedImage],
                    expressions: Sequence[str]) -> list[ReferResult]:
        """:meth:`refer` for N (image, expression) pairs in one teacher-forced pass."""
        if len(images) != len(expressions):
            raise ValueError(f"{len(expressions)} expressions for {len(images)} images")
        if not images:
            return []
        rows, cut = [], []
        for image, expr in zip(images, expressions):
            if not isinstance(expr, str) or not expr.strip():
                raise ValueError(f"a referring expression must be a non-empty string, got {expr!r}")
            expr, truncated = self._bounded_expression(expr.strip())
            cut.append(truncated)
            rows.append(self._row(image, "refer", expr))
        if self.codec.writes_targets:
            return self._refer_written(images, rows, cut)
        out, batch = self.forward_rows(images, rows)
        labels = batch["labels"]                                              # (R, L)
        valid = labels != -100
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        tok_logp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * valid
        score = torch.exp(tok_logp.sum(1) / valid.sum(1))                     # (R,)
        eos_pos = valid.sum(1) - 1                                            # label EOS
        box = out.points[torch.arange(len(rows), device=labels.device), eos_pos]  # (R, 4)
        results = []
        for r, image in enumerate(images):
            px = point_head_boxes(box[r:r + 1], image.size)[0]
            results.append(ReferResult(box=tuple(px.tolist()), score=float(score[r]),
                                       truncated=cut[r]))
        return results

    def _refer_written(self, images: Sequence[EncodedImage], rows: Sequence[Row],
                       cut: Sequence[bool]) -> list[ReferResult]:
        """Referring for formats that write the box: generate the answer (greedy, at most
        one box markup and EOS long) and parse it; an answer that does not parse has no
        box and says why. :attr:`decode_options`' ``min_new_tokens`` applies, capped at the
        box markup (EOS stays allowed after it): with it an untrained model answers as long
        as a trained one (``pixelkit bench --only location``). Score: ``exp(mean log p)`` of
        the generated tokens, EOS included when emitted."""
        n = self.codec.box_length(self.tokenizer) + 1
        least = min(self.decode_options.min_new_tokens, n - 1)
        gen = self.generate(images, rows, with_points=False, options=DecodeOptions(
            max_new_tokens=n, min_new_tokens=least, with_points=False))
        eos = (gen.lengths < n).long()  # rows cut at max_new_tokens emitted no EOS
        score = torch.exp(gen.scores / (gen.lengths + eos).clamp(min=1))
        results = []
        for r, image in enumerate(images):
            parse = self.codec.decode_box(self._text(gen, r), image_extent(image.size),
                                          image.regions)
            box = None if parse.box is None else \
                tuple(from_model_boxes(parse.box[None], image.size)[0].tolist())
            results.append(ReferResult(box=box, score=float(score[r]), truncated=cut[r],
                                       error=parse.error, num_tokens=int(gen.lengths[r])))
        return results

    def _bounded_expression(self, expression: str) -> tuple[str, bool]:
        """The expression cut to what the model reads: ``(text, was_cut)``.

        It is both the prompt ("where is ...", at most ``max_prompt_tokens``) and the
        teacher-forced target (at most ``max_text_length - 1`` tokens before EOS), so the
        smaller bound applies; the cost of a call stays bounded whatever the input length.
        """
        cfg = self.model.config.language_model
        room = min(cfg.max_prompt_tokens - len(prompt_ids(self.tokenizer, "refer", "")),
                   self.max_text_length - 1)
        # No token is 64 characters long: a megabyte of text is never tokenised whole.
        text = expression[: 64 * max(room, 1)]
        ids = encode_text(self.tokenizer, text)
        if len(ids) <= room and text == expression:
            return expression, False
        return self.tokenizer.decode(ids[:max(room, 1)], skip_special_tokens=True).strip(), True

    @torch.no_grad()
    def dense_caption_batch(self, images: Sequence[EncodedImage], max_regions: int | None = None,
                            score_threshold: float | None = None) -> list[DenseCaptionResult]:
        """:meth:`dense_caption` for several images: one proposal pass, one batched decode."""
        if not images:
            return []
        feats = torch.stack([im.features for im in images])
        proposals = self.model.propose(feats, score_threshold, max_regions)
        prompt_images: list[EncodedImage] = []
        rows: list[Row] = []
        kept: list[tuple[np.ndarray, np.ndarray]] = []
        for image, prop in zip(images, proposals):
            norm = prop["boxes"].float().cpu().numpy()
            scores = prop["scores"].float().cpu().numpy()
            px = from_model_boxes(norm, image.size)
            ok = _in_image(px)
            kept.append((px[ok], scores[ok]))
            for b in norm[ok]:
                prompt_images.append(image)
                rows.append(self._row(image, "loca_caption", "", box=b.astype(np.float32)))
        texts: list[str] = []
        if rows:
            gen = self.generate(prompt_images, rows, with_points=False)
            texts = [self._text(gen, r) for r in range(len(rows))]
        results, start = [], 0
        for px, scores in kept:
            n = len(px)
            results.append(DenseCaptionResult(
                boxes=[tuple(b) for b in px.tolist()], captions=texts[start:start + n],
                scores=[float(s) for s in scores]))
            start += n
        return results

    # ------------------------------------------------------------------ rows and batches
    def _prompt_row(self, image: EncodedImage, task: str | None, box: Any, points: Any,
                    labels: Any) -> Row:
        """Validate a pixel prompt and build its :class:`Row` (model frame, no target)."""
        has_loc = box is not None or points is not None
        task = task or ("loca_caption" if has_loc else "trace")
        if task not in ("trace", "caption", "loca_caption"):
            raise ValueError(f"caption task must be 'trace', 'caption' or 'loca_caption', got {task!r}")
        if has_loc and task != "loca_caption":
            raise ValueError(f"a box or points prompt goes with task='loca_caption', not {task!r}")
        if box is not None and points is not None:
            raise ValueError("give a box or points, not both")
        W, H = image.size
        if task == "loca_caption" and not has_loc:
            box = (0.0, 0.0, float(W), float(H))  # the whole image as the region
        model_box = model_pts = point_labels = None
        if box is not None:
            b = _check_box(box, (W, H))
            model_box = to_model_boxes(b[None], (W, H))[0].astype(np.float32)
        if points is not None:
            p = _check_points(points, (W, H))
            model_pts = to_model_points(p, (W, H)).astype(np.float32)
            point_labels = _check_labels(labels, len(p))
        elif labels is not None:
            raise ValueError("labels given without points")
        return self._row(image, task, "", box=model_box, points=model_pts,
                         point_labels=point_labels)

    def _row(self, image: EncodedImage, task: str, text: str, **kwargs: Any) -> Row:
        """:func:`~pixelkit.data.encoding.make_row` as in training: the model's location
        codec, on the grid of this image's content."""
        return make_row(self.tokenizer, task, text, max_length=self.max_text_length,
                        codec=self.codec, extent=image_extent(image.size),
                        regions=image.regions, **kwargs)

    def collate_rows(self, images: Sequence[EncodedImage], rows: Sequence[Row]
                     ) -> tuple[dict[str, Any], torch.Tensor, list[int]]:
        """Batch rows over their images with :func:`~pixelkit.data.encoding.collate`.

        Rows on the same :class:`EncodedImage` object share one features entry.

        Returns:
            ``(batch, features, order)``: the collated batch on the device, the unique
            images' features (B_img, C, h, w), and ``order`` where batch row ``r`` is input
            row ``order[r]``.
        """
        if len(images) != len(rows):
            raise ValueError(f"{len(rows)} rows for {len(images)} images")
        slot: dict[int, int] = {}
        unique: list[EncodedImage] = []
        groups: list[list[int]] = []
        for i, image in enumerate(images):
            j = slot.setdefault(id(image), len(unique))
            if j == len(unique):
                unique.append(image)
                groups.append([])
            groups[j].append(i)
        examples = [Example(image=u.tensor, rows=[rows[i] for i in g])
                    for u, g in zip(unique, groups)]
        batch = collate(examples, pad_id=self.model.language_model.pad_id)
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        features = torch.stack([u.features for u in unique])
        return batch, features, [i for g in groups for i in g]

    @torch.no_grad()
    def generate(self, images: Sequence[EncodedImage], rows: Sequence[Row],
                 with_points: bool = True, options: DecodeOptions | None = None) -> Generation:
        """Decode rows (prompts) over encoded images, in the input order.

        Args:
            images, rows: one encoded image per row.
            with_points: run the point head.
            options: decoding options (default: :attr:`decode_options`).

        Returns:
            :class:`~pixelkit.decoding.Generation` with one row per input row.
        """
        batch, features, order = self.collate_rows(images, rows)
        m = self.model
        prefix, mask = m.input_prefix(features, **{k: batch[k] for k in _PREFIX_KEYS})
        options = options or self.decode_options
        if options.with_points != with_points:
            options = DecodeOptions(**{**asdict(options), "with_points": with_points})
        gen = decode(m, prefix, mask, options)
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        back = back.to(gen.tokens.device)
        return Generation(*(None if x is None else x[back] for x in
                            (gen.tokens, gen.lengths, gen.points, gen.eos_points, gen.scores)))

    @torch.no_grad()
    def forward_rows(self, images: Sequence[EncodedImage], rows: Sequence[Row]
                     ) -> tuple[PixelLLMOutput, dict[str, Any]]:
        """Teacher-forced pass over rows with targets (refer, trace evaluation).

        Returns:
            ``(output, batch)`` in the input row order: ``output.logits`` (R, L, V),
            ``output.points`` (R, L, 4); ``batch`` the collated rows (``labels``,
            ``point_targets``, ``point_mask`` ...).
        """
        batch, features, order = self.collate_rows(images, rows)
        # Inputs and labels only: the losses are not needed here.
        kwargs = {k: batch[k] for k in _FORWARD_KEYS}
        out = self.model(features=features, return_points=True, **kwargs)
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        back = back.to(self.device)
        out.logits, out.points = out.logits[back], out.points[back]
        batch = {k: v[back] if isinstance(v, torch.Tensor) and k != "images" and v.ndim and
                 v.shape[0] == len(order) else v for k, v in batch.items()}
        return out, batch

    # ------------------------------------------------------------------ results
    def _text(self, gen: Generation, r: int) -> str:
        ids = gen.tokens[r, : int(gen.lengths[r])].tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _caption_result(self, gen: Generation, r: int, image: EncodedImage) -> CaptionResult:
        n = int(gen.lengths[r])
        if self.codec.writes_targets:  # the locations are in the text
            return grounded_result(self.codec, self._text(gen, r), image.size, num_tokens=n,
                                   regions=image.regions)
        return caption_result(self.tokenizer, gen.tokens[r, :n].tolist(), gen.points[r, :n],
                              image.size)


# --------------------------------------------------------------------------------------------
# Prompt checks
# --------------------------------------------------------------------------------------------


def _check_box(box: Any, size: tuple[int, int]) -> np.ndarray:
    W, H = size
    try:
        b = np.asarray(box, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"a box must be four numbers (x0, y0, x1, y1) in pixels, got {box!r}") from None
    if b.shape != (4,) or not np.isfinite(b).all():
        raise ValueError(f"a box must be four finite numbers (x0, y0, x1, y1) in pixels, got {box!r}")
    if not (b[2] > b[0] and b[3] > b[1]):
        raise ValueError(f"box {b.tolist()} is empty or not xyxy (needs x1 > x0 and y1 > y0)")
    if b[0] < 0 or b[1] < 0 or b[2] > W or b[3] > H:
        raise ValueError(f"box {b.tolist()} is outside the {W}x{H} image (x in [0, {W}], "
                         f"y in [0, {H}] pixels)")
    return b


def _check_points(points: Any, size: tuple[int, int]) -> np.ndarray:
    W, H = size
    try:
        p = np.asarray(points, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"points must be [(x, y), ...] in pixels, got {points!r}") from None
    if p.ndim == 1 and p.shape == (2,):
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0 or not np.isfinite(p).all():
        raise ValueError(f"points must be a non-empty list of finite (x, y) pixels, got {points!r}")
    bad = (p[:, 0] < 0) | (p[:, 0] > W) | (p[:, 1] < 0) | (p[:, 1] > H)
    if bad.any():
        raise ValueError(f"point {p[bad][0].tolist()} is outside the {W}x{H} image")
    return p


def _check_labels(labels: Any, n: int) -> np.ndarray:
    if labels is None:
        return np.ones(n, np.int64)
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != n or not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be {n} values, each 1 (positive) or 0 (negative); got {labels!r}")
    return lab.astype(np.int64)


# --------------------------------------------------------------------------------------------
# SAM
# --------------------------------------------------------------------------------------------


def _load_sam(sam: Any, device: torch.device) -> Any:
    """A ``transformers.SamModel`` from a model, a hub id or a local directory."""
    from transformers import SamModel

    if isinstance(sam, (str, os.PathLike)):
        try:
            sam = SamModel.from_pretrained(str(sam))
        except OSError as err:
            raise ValueError(f"cannot load a SamModel from {sam!r}: {err}") from None
    if not isinstance(sam, SamModel):
        raise TypeError(f"sam must be a transformers.SamModel, a hub id or a directory; got "
                        f"{type(sam).__name__}")
    return sam.to(device).eval()


@torch.no_grad()
def _sam_mask(sam: Any, image: Image.Image, device: torch.device, *,
              box_px: np.ndarray | None = None, points_px: np.ndarray | None = None,
              labels: np.ndarray | None = None) -> np.ndarray:
    """SAM's mask on ``image`` for one pixel box or for points ``(N, 2)`` with labels
    ``(N,)`` (1 positive, 0 negative): ``(H, W)`` bool."""
    W, H = image.size
    T = int(sam.config.vision_config.image_size)
    scale = T / max(W, H)
    nw, nh = max(1, int(W * scale + 0.5)), max(1, int(H * scale + 0.5))
    arr = np.asarray(image.resize((nw, nh), Image.Resampling.BILINEAR), np.float32) / 255.0
    arr = (arr - _SAM_MEAN) / _SAM_STD
    pixels = torch.zeros(1, 3, T, T)
    pixels[0, :, :nh, :nw] = torch.from_numpy(arr).permute(2, 0, 1)
    dtype = next(sam.parameters()).dtype
    prompt: dict[str, torch.Tensor] = {}
    if box_px is not None:  # prompts go in SAM's resized frame, as SamProcessor puts them
        box = torch.tensor(box_px * [nw / W, nh / H, nw / W, nh / H], dtype=torch.float32)
        prompt["input_boxes"] = box.view(1, 1, 4).to(device, dtype)
    if points_px is not None:
        pts = torch.tensor(np.asarray(points_px, np.float64) * [nw / W, nh / H], dtype=torch.float32)
        prompt["input_points"] = pts.view(1, 1, -1, 2).to(device, dtype)
        prompt["input_labels"] = torch.as_tensor(np.asarray(labels), dtype=torch.long,
                                                 device=device).view(1, 1, -1)
    out = sam(pixel_values=pixels.to(device, dtype), multimask_output=False, **prompt)
    low = out.pred_masks[0, :, :1].float()                                    # (1, 1, h, w)
    up = F.interpolate(low, size=(T, T), mode="bilinear", align_corners=False)[..., :nh, :nw]
    full = F.interpolate(up, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return (full > 0).cpu().numpy()
