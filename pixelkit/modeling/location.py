"""Location codec: boxes to and from the text an LM reads and writes (``location.*``).

PixelLLM regresses a location per token with its point head; other grounded LMs write the
locations into the text. :class:`LocationCodec` implements the written ones for one
:class:`~pixelkit.config.LocationConfig`, beside the model as a processor is, so the data
encoding (:mod:`pixelkit.data.encoding`), the Predictor and evaluation agree on one format:

* ``text`` (Shikra, MiniGPT-v2, Ferret, Qwen-VL): ``[12,40,33,61]``, four integers on a
  ``bins`` grid; a grounded caption is ``a red circle [12,40,33,61] and ...``, where a box
  belongs to the words written since the previous box (or the start).
* ``tokens`` (Kosmos-2, PaliGemma, Florence-2): added ``<loc_i>`` tokens. ``corner`` style
  (Kosmos-2): ``P x P`` cells, token ``i = row * P + col``, a box is its top-left and
  bottom-right cells, ``<box><loc_a><loc_b></box>``; ``axis`` style (Florence-2): ``P``
  values per axis, a box is four tokens x0 y0 x1 y1. A grounded caption is
  ``<p>a red circle</p><box><loc_a><loc_b></box>``; words outside ``<p>...</p>`` have no
  box.
* ``regions`` (Groma): the image's proposals (the proposal head's boxes; ground-truth
  boxes with jitter in training) enter the LM as region tokens ``<r1>`` ... ``<rK>``, and a
  box is written as the token of the region that holds it: a referring answer is ``<r3>``,
  a grounded caption ``<p>a red circle</p><r3>``. Writing and reading take the row's
  ``regions`` (``(K, 4)`` model-frame boxes, NaN rows for padding) where the other formats
  take the extent; a token past the proposals reads as ``out_of_range``.
* ``regression`` writes no boxes into targets; with ``location.prompt: text`` its region
  prompts are written in the ``text`` style.

**Coordinates.** Boxes are xyxy in the model frame (normalised to the padded square, see
:mod:`pixelkit.data.transforms`). The grid covers the image *content*, not the padding, as
those models normalise by the image's own width and height: each method takes the content's
``extent`` ``(ex, ey)`` in the model frame, ``(W / max(W, H), H / max(W, H))`` for a
``W x H`` image (:func:`image_extent`), or ``ModelFrame.visible[2:]`` after augmentation.
A coordinate ``v`` goes to bin ``floor(v / e * n)`` clipped to ``[0, n)`` and comes back
as the bin centre ``(bin + 0.5) / n * e``, so a round trip moves it by at most half a bin
(``e / 2n``). Two corners in one bin decode to the same value (a zero-width box): a box
narrower than a bin cannot be told from a line.

**Parsing never raises** on generated text: :meth:`LocationCodec.decode_box` returns a
:class:`BoxParse` holding a box or the reason there is none (:data:`PARSE_ERRORS`), and
:meth:`LocationCodec.parse_grounded` returns every phrase with its box or failure, and the
plain words (markup stripped) with per-word boxes and points (box centres).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelkit.config import LocationConfig

__all__ = [
    "MARKUP_TOKENS",
    "PARSE_ERRORS",
    "TASK_IDENTIFIERS",
    "BoxParse",
    "GroundedCaption",
    "GroundedPhrase",
    "LocationCodec",
    "group_phrases",
    "image_extent",
]

#: Why a parse gave no box: ``no_box`` (nothing box-like where one was expected, e.g. a
#: ``<p>phrase</p>`` with no ``<box>`` after it), ``truncated`` (the text ends inside a box),
#: ``unclosed`` (a box opened but another markup starts before it closes), ``count`` (not
#: four values: ``[12,40,33]``, ``[1,2,3,4,5]``), ``malformed`` (a value that is no
#: integer, or a word inside ``<box>``), ``out_of_range`` (a value outside the grid),
#: ``reversed`` (x1 < x0 or y1 < y0).
PARSE_ERRORS: tuple[str, ...] = ("no_box", "truncated", "unclosed", "count", "malformed",
                                 "out_of_range", "reversed")

#: MiniGPT-v2's task identifiers per pixelkit task (``location.task_tokens``).
TASK_IDENTIFIERS: dict[str, str] = {
    "caption": "[caption]",
    "trace": "[grounding]",
    "loca_caption": "[identify]",
    "refer": "[refer]",
}

#: Kosmos-2 style markup of the ``tokens`` format: phrase and box delimiters.
MARKUP_TOKENS: tuple[str, ...] = ("<p>", "</p>", "<box>", "</box>")

# Lexers. Whitespace is skipped everywhere: tokenizers decode added tokens and punctuation
# with or without spaces between them, and a parse must not depend on that.
_TOKENS_LEXER = re.compile(
    r"(?P<open_p><p>)|(?P<close_p></p>)|(?P<open_box><box>)|(?P<close_box></box>)"
    r"|<loc_(?P<loc>\d+)>|(?P<space>\s+)|(?P<word>[^<\s]+|<)"
)
# A text box: '[' then anything but brackets, then ']' (missing when truncated / unclosed).
# The regions format: a region token is a box; the Kosmos-2 phrase markup stays.
_REGIONS_LEXER = re.compile(
    r"(?P<open_p><p>)|(?P<close_p></p>)|<r(?P<region>\d+)>|(?P<space>\s+)|(?P<word>[^<\s]+|<)"
)
_TEXT_BOX = re.compile(r"\[(?P<body>[^\[\]]*)(?P<close>\])?")
#: Lexeme kinds that start a box in the tokens / regions formats.
_BOX_STARTS = ("open_box", "loc", "region")
_INT = re.compile(r"[+-]?\d+")
_NUMERIC = re.compile(r"[\d,\s+-]*")


def group_phrases(utterances: Sequence[str], boxes: np.ndarray, radius: float = 0.05
                  ) -> list[tuple[str, np.ndarray | None]]:
    """Utterances with trace boxes -> phrases with boxes, for written grounded captions.

    A Localized Narratives utterance is a chunk of speech, but the shapes world speaks one
    word per utterance, and a box per word would make a written narrative ten times longer
    than its words (measured on a shapes world: 22 tokens plain, 212 in ``text``). A phrase
    is a run of utterances the mouse spent in one place: an utterance joins the phrase
    before it when its box's centre lies within ``radius`` of that phrase's box and their
    union stays within ``6 * radius`` across (the union becomes the phrase's box). The cap
    keeps a mouse drifting from object to object from chaining them into one phrase; an
    utterance said while it travelled (a box wider than the cap) stays a phrase of its own,
    located where its trace went. Utterances without a box are plain words. On 240
    shapes-world narratives (radius 0.05): 22 words and 6.6 phrases per narrative, an
    object's mention ("a small red circle in the bottom right") one phrase.

    Args:
        utterances: the narrative's utterances, in order.
        boxes: ``(U, 4)`` their trace boxes (model frame), NaN rows for none.
        radius: how far (model-frame units) the mouse may move within one phrase.

    Returns:
        ``(phrase, box or None)`` segments for :meth:`LocationCodec.grounded_markup`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(utterances):
        raise ValueError(f"{len(utterances)} utterances but {len(boxes)} boxes")
    out: list[tuple[str, np.ndarray | None]] = []
    for text, box in zip(utterances, boxes):
        text = " ".join(str(text).split())
        if not text:
            continue
        box = box if np.isfinite(box).all() else None
        prev = out[-1][1] if out else None
        if box is not None and prev is not None:
            centre = (box[:2] + box[2:]) / 2
            gap = np.maximum(np.maximum(prev[:2] - centre, centre - prev[2:]), 0)
            union = np.concatenate([np.minimum(prev[:2], box[:2]), np.maximum(prev[2:], box[2:])])
            if np.hypot(*gap) <= radius and np.hypot(*(union[2:] - union[:2])) <= 6 * radius:
                out[-1] = (f"{out[-1][0]} {text}", union)
                continue
        if box is None and out and out[-1][1] is None:  # plain words run on
            out[-1] = (f"{out[-1][0]} {text}", None)
            continue
        out.append((text, box))
    return out


def image_extent(image_size: tuple[float, float]) -> tuple[float, float]:
    """The content extent ``(ex, ey)`` in the model frame of a ``(W, H)`` image.

    The model frame normalises by the longest side (resize-pad), so the content covers
    ``[0, W / max(W, H)] x [0, H / max(W, H)]``: ``(1.0, 0.75)`` for 640 x 480.
    """
    w, h = float(image_size[0]), float(image_size[1])
    if not (w > 0 and h > 0):
        raise ValueError(f"image size must be positive, got {image_size}")
    m = max(w, h)
    return w / m, h / m


@dataclass(frozen=True)
class BoxParse:
    """One box read from generated text, or why there is none.

    Attributes:
        box: ``(4,)`` float32 xyxy in the model frame, or None on failure.
        error: None for a box, else one of :data:`PARSE_ERRORS`.
        span: ``(start, end)`` character span of the box markup in the parsed text, None
            when nothing box-like was found.
    """

    box: np.ndarray | None
    error: str | None = None
    span: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        """Whether a box was read."""
        return self.box is not None


@dataclass(frozen=True)
class GroundedPhrase:
    """A phrase of a grounded caption and its box.

    Attributes:
        phrase: the phrase's words joined by single spaces.
        word_range: ``(first, end)`` indices into :attr:`GroundedCaption.words`.
        box: ``(4,)`` model-frame box or None.
        error: None when the phrase has its box, else one of :data:`PARSE_ERRORS`.
    """

    phrase: str
    word_range: tuple[int, int]
    box: np.ndarray | None
    error: str | None = None


@dataclass
class GroundedCaption:
    """A grounded caption with its markup stripped.

    Attributes:
        text: the plain words joined by single spaces.
        words: the plain words (whitespace-separated pieces of the text between markup).
        word_boxes: ``(W, 4)`` float32: the box of the word's phrase; NaN rows for words
            outside any phrase or in a phrase whose box failed to parse.
        phrases: the phrases in order, with their box or failure.
    """

    text: str
    words: list[str]
    word_boxes: np.ndarray
    phrases: list[GroundedPhrase] = field(default_factory=list)

    @property
    def word_points(self) -> np.ndarray:
        """``(W, 2)`` per-word points: the centre of the word's box (NaN where none)."""
        b = self.word_boxes
        return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1).astype(np.float32)

    @property
    def failures(self) -> int:
        """Phrases whose box markup did not parse (each counts as a miss)."""
        return sum(p.error is not None for p in self.phrases)

    @property
    def boxes(self) -> list[np.ndarray]:
        """The boxes read, in order."""
        return [p.box for p in self.phrases if p.box is not None]


class LocationCodec:
    """Boxes to text or location tokens and back, for one :class:`LocationConfig`.

    Args:
        config: the model config's ``location`` (a dict is accepted).
    """

    def __init__(self, config: LocationConfig | dict | None = None) -> None:
        if config is None:
            config = LocationConfig()
        elif isinstance(config, dict):
            config = LocationConfig(**config)
        self.config = config
        self.format = config.format
        #: How boxes are written: 'tokens', 'regions', else 'text' (also the region prompts
        #: of regression).
        self.style = config.format if config.format in ("tokens", "regions") else "text"
        self.num_regions = int(config.num_regions)
        self.bins = int(config.bins)
        self.grid = int(config.token_grid)
        self.corner = config.token_style == "corner"

    def __repr__(self) -> str:
        c = self.config
        return (f"LocationCodec(format={c.format!r}, bins={c.bins}, token_grid={c.token_grid},"
                f" token_style={c.token_style!r}, prompt={c.prompt!r}, "
                f"task_tokens={c.task_tokens})")

    # ------------------------------------------------------------------ properties
    @property
    def writes_targets(self) -> bool:
        """Whether boxes are written into target text (``text`` / ``tokens``) instead of
        regressed by the point head."""
        return self.format in ("text", "tokens", "regions")

    @property
    def uses_regions(self) -> bool:
        """Whether rows carry proposals as region tokens (``regions``)."""
        return self.format == "regions"

    @property
    def writes_prompts(self) -> bool:
        """Whether region prompts are written into the text prompt (``location.prompt``)."""
        return self.config.prompt == "text"

    @property
    def changes_rows(self) -> bool:
        """Whether any row differs from the ``regression`` default's."""
        return self.writes_targets or self.writes_prompts or self.config.task_tokens

    @property
    def uses_numbers(self) -> bool:
        """Whether boxes are written as numbers (a word-level tokenizer needs them)."""
        return self.style == "text" and (self.writes_targets or self.writes_prompts)

    @property
    def num_loc_tokens(self) -> int:
        """How many ``<loc_i>`` tokens the ``tokens`` format adds (0 otherwise)."""
        if self.format != "tokens":
            return 0
        return self.grid * self.grid if self.corner else self.grid

    def loc_tokens(self) -> list[str]:
        """``<loc_0>`` ... ``<loc_{N-1}>``: the added location vocabulary."""
        return [f"<loc_{i}>" for i in range(self.num_loc_tokens)]

    def region_tokens(self) -> list[str]:
        """``<r1>`` ... ``<rK>``: the region tokens of ``regions`` (empty otherwise)."""
        return [f"<r{i}>" for i in range(1, self.num_regions + 1)] if self.uses_regions else []

    def added_tokens(self) -> list[str]:
        """Tokens to add to the vocabulary as ordinary (not special) tokens, so that
        decoding with ``skip_special_tokens`` keeps them: the ``<loc_i>`` tokens and the
        markup of ``tokens``, the region tokens and phrase markup of ``regions``; none for
        ``text`` (numbers and brackets are text)."""
        if self.uses_regions:
            return [*self.region_tokens(), "<p>", "</p>"]
        if self.format != "tokens":
            return []
        return [*self.loc_tokens(), *MARKUP_TOKENS]

    def special_tokens(self) -> list[str]:
        """Tokens to add as special tokens: the task identifiers with ``task_tokens``
        (they only ever start prompts, never a generated text)."""
        return list(TASK_IDENTIFIERS.values()) if self.config.task_tokens else []

    def number_words(self) -> list[str]:
        """The words a word-level tokenizer needs to write ``text`` boxes: the integers of
        the grid and the brackets and comma (an empty list when nothing is written as text)."""
        if not self.uses_numbers:
            return []
        return ["[", "]", ",", *(str(i) for i in range(self.bins))]

    # ------------------------------------------------------------------ quantisation
    @staticmethod
    def _extent(extent: Sequence[float] | None) -> tuple[float, float]:
        if extent is None:
            return 1.0, 1.0
        ex, ey = float(extent[0]), float(extent[1])
        if not (ex > 0 and ey > 0):
            raise ValueError(f"extent must be positive, got {extent}")
        return ex, ey

    @staticmethod
    def _to_bin(value: float, extent: float, n: int) -> int:
        v = float(value) / extent
        if not math.isfinite(v):
            raise ValueError(f"cannot write a non-finite coordinate ({value})")
        # + 1e-6 of a bin: a float32 0.12 (0.11999999...) is bin 12 of 100, as written.
        return min(max(math.floor(v * n + 1e-6), 0), n - 1)

    @staticmethod
    def _from_bin(index: int, extent: float, n: int) -> float:
        return (index + 0.5) / n * extent

    def quantize(self, box: Sequence[float], extent: Sequence[float] | None = None,
                 n: int | None = None) -> list[int]:
        """xyxy model-frame box -> four bin indices on an ``n``-grid of the content.

        Args:
            box: ``(4,)`` xyxy in the model frame.
            extent: ``(ex, ey)`` content extent in the model frame (default: the square).
            n: bins per axis (default: ``bins`` for text, ``token_grid`` for tokens).
        """
        ex, ey = self._extent(extent)
        n = n or (self.bins if self.style == "text" else self.grid)
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
        return [self._to_bin(x0, ex, n), self._to_bin(y0, ey, n),
                self._to_bin(x1, ex, n), self._to_bin(y1, ey, n)]

    def dequantize(self, bins: Sequence[int], extent: Sequence[float] | None = None,
                   n: int | None = None) -> np.ndarray:
        """Four bin indices -> ``(4,)`` float32 model-frame box of the bin centres."""
        ex, ey = self._extent(extent)
        n = n or (self.bins if self.style == "text" else self.grid)
        b = list(bins)
        return np.array([self._from_bin(b[0], ex, n), self._from_bin(b[1], ey, n),
                         self._from_bin(b[2], ex, n), self._from_bin(b[3], ey, n)], np.float32)

    # ------------------------------------------------------------------ writing
    def box_tokens(self, box: Sequence[float], extent: Sequence[float] | None = None) -> list[str]:
        """The ``<loc_i>`` tokens of a box (``tokens`` format): two cells (corner) or four
        values (axis)."""
        if self.format != "tokens":
            raise ValueError(f"location.format {self.format!r} writes no location tokens")
        x0, y0, x1, y1 = self.quantize(box, extent, self.grid)
        if self.corner:
            return [f"<loc_{y0 * self.grid + x0}>", f"<loc_{y1 * self.grid + x1}>"]
        return [f"<loc_{v}>" for v in (x0, y0, x1, y1)]

    @staticmethod
    def region_index(box: Sequence[float], regions: np.ndarray | None) -> int | None:
        """The region (0-based) that stands for ``box``: of the valid regions holding the
        box's centre, the one of highest IoU; None when no region holds it.

        Args:
            box: ``(4,)`` xyxy model-frame box (a referred object's, a phrase's trace box).
            regions: ``(K, 4)`` the row's proposals, NaN rows for padding.
        """
        if regions is None or len(regions) == 0:
            return None
        b = np.asarray(box, np.float64).reshape(4)
        r = np.asarray(regions, np.float64).reshape(-1, 4)
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        with np.errstate(invalid="ignore"):
            holds = (r[:, 0] <= cx) & (cx <= r[:, 2]) & (r[:, 1] <= cy) & (cy <= r[:, 3])
        if not holds.any():
            return None
        lo, hi = np.maximum(r[:, :2], b[:2]), np.minimum(r[:, 2:], b[2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        union = np.prod(r[:, 2:] - r[:, :2], axis=1) + np.prod(b[2:] - b[:2]) - inter
        iou = np.where(holds, inter / np.maximum(union, 1e-12), -1.0)
        return int(np.argmax(iou))

    def with_region(self, regions: np.ndarray | None, box: Sequence[float]
                    ) -> tuple[np.ndarray, int]:
        """``regions`` with ``box`` among them, and its index: a region prompt of the
        ``regions`` format (Groma adds a user's box as a region). A region that is the box
        already (IoU >= 0.9) is used; otherwise the box fills the first padding row, or is
        appended while fewer than ``num_regions``, or replaces the last region.

        Args:
            regions: ``(K, 4)`` the row's proposals (NaN rows for padding), or None.
            box: ``(4,)`` the prompt box, model frame.

        Returns:
            ``(regions (K', 4) float32, index)`` (0-based).
        """
        b = np.asarray(box, np.float32).reshape(4)
        r = (np.zeros((0, 4), np.float32) if regions is None
             else np.array(regions, np.float32).reshape(-1, 4))
        j = self.region_index(b, r)
        if j is not None:
            lo, hi = np.maximum(r[j, :2], b[:2]), np.minimum(r[j, 2:], b[2:])
            inter = float(np.prod(np.clip(hi - lo, 0, None)))
            union = float(np.prod(r[j, 2:] - r[j, :2]) + np.prod(b[2:] - b[:2])) - inter
            if inter >= 0.9 * union:
                return r, j
        free = np.flatnonzero(~np.isfinite(r).all(1))
        if len(free):
            j = int(free[0])
        elif len(r) < self.num_regions:
            r, j = np.concatenate([r, b[None]]), len(r)
        else:
            j = len(r) - 1
        r[j] = b
        return r, j

    def box_markup(self, box: Sequence[float], extent: Sequence[float] | None = None,
                   regions: np.ndarray | None = None) -> str:
        """How a box is written: ``[12,40,33,61]`` (text style),
        ``<box><loc_a><loc_b></box>`` (tokens) or ``<r3>`` (regions: the token of
        :meth:`region_index` in ``regions``).

        Raises:
            ValueError: ``regions`` and no region holds the box.
        """
        if self.style == "regions":
            j = self.region_index(box, regions)
            if j is None:
                raise ValueError(f"no region holds the box {np.asarray(box).round(3).tolist()}")
            return f"<r{j + 1}>"
        if self.style == "tokens":
            return "<box>" + "".join(self.box_tokens(box, extent)) + "</box>"
        return "[" + ",".join(str(v) for v in self.quantize(box, extent, self.bins)) + "]"

    def point_markup(self, point: Sequence[float], extent: Sequence[float] | None = None) -> str:
        """How a point prompt is written: ``[12,40]`` (text style), or
        ``<box><loc_a></box>`` (one cell, corner) / ``<box><loc_x><loc_y></box>`` (axis)."""
        if self.style == "regions":
            raise ValueError("the regions format writes box prompts only (a box becomes a "
                             "region); give a box, or use prompt: encoder for clicks")
        x, y = (float(v) for v in np.asarray(point, np.float64).reshape(2))
        qx, qy = self.quantize([x, y, x, y], extent)[:2]
        if self.style == "text":
            return f"[{qx},{qy}]"
        if self.corner:
            return f"<box><loc_{qy * self.grid + qx}></box>"
        return f"<box><loc_{qx}><loc_{qy}></box>"

    def grounded_markup(self, segments: Sequence[tuple[str, Sequence[float] | None]],
                        extent: Sequence[float] | None = None,
                        regions: np.ndarray | None = None) -> str:
        """A grounded caption from ``(phrase, box or None)`` segments, in order.

        ``text``: ``phrase [x0,y0,x1,y1]``; ``tokens``: ``<p>phrase</p><box>...</box>``;
        ``regions``: ``<p>phrase</p><r3>``. A segment without a box (None or any NaN), or
        with ``regions`` one that no region holds, is written as plain words. Empty phrases
        are dropped.
        """
        if not self.writes_targets:
            raise ValueError(f"location.format {self.format!r} writes no grounded captions "
                             "(regression locates words with the point head)")
        parts: list[str] = []
        for phrase, box in segments:
            phrase = " ".join(str(phrase).split())
            if not phrase:
                continue
            located = box is not None and bool(np.isfinite(np.asarray(box, np.float64)).all())
            if located and self.style == "regions":
                located = self.region_index(box, regions) is not None  # type: ignore[arg-type]
            if not located:
                parts.append(phrase)
            elif self.style == "text":
                parts.append(f"{phrase} {self.box_markup(box, extent)}")  # type: ignore[arg-type]
            else:
                parts.append(f"<p>{phrase}</p>"
                             f"{self.box_markup(box, extent, regions)}")  # type: ignore[arg-type]
        return " ".join(parts)

    def task_prefix(self, task: str) -> str:
        """The task identifier that starts ``task``'s prompts (empty without task_tokens)."""
        if not self.config.task_tokens:
            return ""
        if task not in TASK_IDENTIFIERS:
            raise ValueError(f"no task identifier for task {task!r}; tasks: "
                             f"{sorted(TASK_IDENTIFIERS)}")
        return TASK_IDENTIFIERS[task]

    # ------------------------------------------------------------------ lengths
    def _longest_box(self) -> np.ndarray:
        """A box whose markup is the longest: every coordinate in the grid's last bin
        (the most digits: ``[99,99,99,99]``)."""
        n = self.bins if self.style == "text" else self.grid
        return self.dequantize([n - 1] * 4, None, n)

    def _longest_regions(self) -> np.ndarray | None:
        """Regions for the length bounds: the longest box as the last region (``<rK>``)."""
        if not self.uses_regions:
            return None
        regions = np.full((self.num_regions, 4), np.nan)
        regions[-1] = self._longest_box()
        return regions

    def box_length(self, tokenizer: Any) -> int:
        """Tokens of the longest box markup under ``tokenizer``: the budget of a generated
        referring answer (9 for ``text`` with the shapes tokenizer, 4 for ``corner``
        tokens, 6 for ``axis``, 1 for ``regions``)."""
        markup = self.box_markup(self._longest_box(), regions=self._longest_regions())
        return len(tokenizer(markup, add_special_tokens=False).input_ids)

    def target_length(self, tokenizer: Any, max_text_length: int) -> int:
        """The longest target (EOS included) of a format, for ``max_text_length`` words' worth
        of plain text: that length itself for ``regression``; for ``text`` / ``tokens``, room
        besides for a box after every fourth token (:func:`group_phrases` writes one per
        phrase). A longer grounded caption keeps its first whole phrases
        (:func:`~pixelkit.data.encoding.grounded_row`), never a cut box.

        Measured on a 300-image shapes world (``pixelkit synth``, seed 0, 240 train
        narratives, shapes tokenizer, bins 100, P 32): 6.6 phrases per narrative; targets
        (mean / max tokens) plain 22.5 / 33, ``text`` 81.4 / 130, ``tokens`` corner 61.8 / 97,
        ``tokens`` axis 74.9 / 119. The bound for the default 48 is 147 (``text``), 114
        (corner) and 136 (axis). Padding is to the longest row of a batch, so the bound
        costs nothing until a target is that long; decoding stops at EOS.
        """
        if not self.writes_targets:
            return max_text_length
        plain = len(tokenizer("a", add_special_tokens=False).input_ids)
        marked = len(tokenizer(self.grounded_markup([("a", self._longest_box())],
                                                    regions=self._longest_regions()),
                               add_special_tokens=False).input_ids)
        return max_text_length + (max_text_length - 1) // 4 * (marked - plain)

    def value_positions(self, tokens: Sequence[str]) -> list[bool]:
        """Which of a target's tokens (``convert_ids_to_tokens``) carry a box's values: the
        ``<loc_i>`` tokens, or for text boxes the digit pieces. A teacher-forced evaluation
        puts the model's predictions there and keeps the rest of the target, so each box is
        predicted given the true words before it (as the point head is)."""
        if self.style == "tokens":
            return [re.fullmatch(r"<loc_\d+>", t) is not None for t in tokens]
        if self.style == "regions":
            return [re.fullmatch(r"<r\d+>", t) is not None for t in tokens]
        return [t.lstrip("▁Ġ#").isdigit() for t in tokens]

    # ------------------------------------------------------------------ reading
    def _values_box(self, values: list[int], n: int, extent: tuple[float, float],
                    span: tuple[int, int]) -> BoxParse:
        """Four grid values (x0 y0 x1 y1) -> a checked box."""
        if len(values) != 4:
            return BoxParse(None, "count", span)
        if any(v < 0 or v >= n for v in values):
            return BoxParse(None, "out_of_range", span)
        if values[2] < values[0] or values[3] < values[1]:
            return BoxParse(None, "reversed", span)
        return BoxParse(self.dequantize(values, extent, n), None, span)

    def _text_box(self, match: re.Match[str], text: str,
                  extent: tuple[float, float]) -> BoxParse:
        span = (match.start(), match.end())
        if match.group("close") is None:
            # No ']': the box is its leading numbers only (the words after them stay words).
            # The text ending there is a truncated box, anything else an unclosed one.
            body = match.group("body")
            numeric = _NUMERIC.match(body).group(0)  # type: ignore[union-attr]
            end = match.start() + 1 + len(numeric)
            truncated = numeric == body and match.end() == len(text)
            return BoxParse(None, "truncated" if truncated else "unclosed", (match.start(), end))
        pieces = [p.strip() for p in match.group("body").split(",")]
        if pieces == [""]:
            return BoxParse(None, "count", span)
        if not all(_INT.fullmatch(p) for p in pieces):
            return BoxParse(None, "malformed", span)
        return self._values_box([int(p) for p in pieces], self.bins, extent, span)

    def _token_box(self, locs: list[int], extent: tuple[float, float],
                   span: tuple[int, int]) -> BoxParse:
        """Location-token indices of one box -> a checked box."""
        P = self.grid
        if self.corner:
            if len(locs) != 2:
                return BoxParse(None, "count", span)
            if any(i < 0 or i >= P * P for i in locs):
                return BoxParse(None, "out_of_range", span)
            (r0, c0), (r1, c1) = divmod(locs[0], P), divmod(locs[1], P)
            return self._values_box([c0, r0, c1, r1], P, extent, span)
        return self._values_box(locs, P, extent, span)

    def _lex_tokens(self, text: str) -> list[tuple[str, str, int, int]]:
        """``(kind, value, start, end)`` lexemes of a ``tokens``- or ``regions``-format
        text, no spaces."""
        out = []
        lexer = _REGIONS_LEXER if self.style == "regions" else _TOKENS_LEXER
        for m in lexer.finditer(text):
            kind = m.lastgroup
            if kind == "space":
                continue
            value = m.group(kind) if kind in ("loc", "region") else m.group(0)
            out.append((str(kind), value, m.start(), m.end()))
        return out

    @staticmethod
    def _region_box(index: int, regions: np.ndarray | None, span: tuple[int, int]) -> BoxParse:
        """Region token ``<r{index}>`` -> its proposal (``out_of_range`` past them)."""
        r = None if regions is None else np.asarray(regions, np.float32).reshape(-1, 4)
        if r is None or not 1 <= index <= len(r) or not np.isfinite(r[index - 1]).all():
            return BoxParse(None, "out_of_range", span)
        return BoxParse(r[index - 1].copy(), None, span)

    def _read_token_box(self, lex: list[tuple[str, str, int, int]], i: int,
                        extent: tuple[float, float], regions: np.ndarray | None = None
                        ) -> tuple[BoxParse, int]:
        """Read a box starting at lexeme ``i`` (``<box>``, a bare run of ``<loc_i>``, or a
        region token); returns the parse and the index after it."""
        start = lex[i][2]
        if lex[i][0] == "region":
            return self._region_box(int(lex[i][1]), regions, (start, lex[i][3])), i + 1
        if lex[i][0] == "loc":  # a bare run of location tokens (the wrapper left out)
            j = i
            while j < len(lex) and lex[j][0] == "loc":
                j += 1
            return self._token_box([int(v) for _, v, _, _ in lex[i:j]], extent,
                                   (start, lex[j - 1][3])), j
        locs: list[int] = []
        j = i + 1
        while j < len(lex):
            kind, value, _, end = lex[j]
            if kind == "close_box":
                return self._token_box(locs, extent, (start, end)), j + 1
            if kind == "loc":
                locs.append(int(value))
                j += 1
                continue
            if kind == "word":  # words inside a box: not a box; keep them as words
                return BoxParse(None, "malformed", (start, lex[j - 1][3])), j
            return BoxParse(None, "unclosed", (start, lex[j - 1][3])), j  # other markup
        return BoxParse(None, "truncated", (start, lex[-1][3])), j

    def decode_box(self, text: str, extent: Sequence[float] | None = None,
                   regions: np.ndarray | None = None) -> BoxParse:
        """The first box written in generated ``text`` (a referring answer).

        Never raises: the first box-like markup decides (a malformed first box is a
        failure, not skipped for a later one); no box markup at all is ``no_box``.

        Args:
            text: the decoded generation (special tokens removed or not).
            extent: the content extent ``(ex, ey)`` in the model frame.
            regions: ``(K, 4)`` the row's proposals (``regions`` format).
        """
        try:
            ext = self._extent(extent)
        except ValueError:
            return BoxParse(None, "no_box")
        if not isinstance(text, str):
            return BoxParse(None, "no_box")
        if self.style == "text":
            for m in _TEXT_BOX.finditer(text):
                if self._is_task_identifier(m.group(0)):
                    continue
                return self._text_box(m, text, ext)
            return BoxParse(None, "no_box")
        lex = self._lex_tokens(text)
        for i, (kind, _, _, _) in enumerate(lex):
            if kind in _BOX_STARTS:
                return self._read_token_box(lex, i, ext, regions)[0]
        return BoxParse(None, "no_box")

    @staticmethod
    def _is_task_identifier(piece: str) -> bool:
        return piece in TASK_IDENTIFIERS.values()

    def parse_grounded(self, text: str, extent: Sequence[float] | None = None,
                       regions: np.ndarray | None = None) -> GroundedCaption:
        """Every phrase with its box, and the plain words, of a grounded caption.

        ``text``: a box belongs to the words since the previous box (or the start);
        ``tokens`` / ``regions``: to the words of the ``<p>...</p>`` just before it (a bare
        box, to none); ``regions`` reads a region token as its proposal in ``regions``.
        A phrase whose box is malformed or missing keeps its words (no box) and records the
        failure. Markup and task identifiers are stripped from the words. Never raises.
        """
        words: list[str] = []
        boxes: list[np.ndarray | None] = []
        phrases: list[GroundedPhrase] = []
        try:
            ext = self._extent(extent)
        except ValueError:
            ext = (1.0, 1.0)
        if not isinstance(text, str):
            text = ""

        def add_words(piece: str) -> None:
            for w in piece.split():
                if not self._is_task_identifier(w):
                    words.append(w)
                    boxes.append(None)

        def close_phrase(first: int, parse: BoxParse) -> None:
            for k in range(first, len(words)):
                boxes[k] = parse.box
            phrases.append(GroundedPhrase(" ".join(words[first:]), (first, len(words)),
                                          parse.box, parse.error))

        if self.style == "text":
            pos, first = 0, 0
            while (m := _TEXT_BOX.search(text, pos)) is not None:
                if self._is_task_identifier(m.group(0)):
                    add_words(text[pos:m.end()])
                    pos = m.end()
                    continue
                add_words(text[pos:m.start()])
                parse = self._text_box(m, text, ext)
                pos = parse.span[1] if parse.span else m.end()  # type: ignore[index]
                close_phrase(first, parse)
                first = len(words)
            add_words(text[pos:])
        else:
            lex = self._lex_tokens(text)
            i = 0
            while i < len(lex):
                kind, value, _, _ = lex[i]
                if kind == "word":
                    add_words(value)
                    i += 1
                elif kind == "open_p":
                    first = len(words)
                    i += 1
                    while i < len(lex) and lex[i][0] == "word":
                        add_words(lex[i][1])
                        i += 1
                    if i < len(lex) and lex[i][0] == "close_p":
                        i += 1
                        if i < len(lex) and lex[i][0] in _BOX_STARTS:
                            parse, i = self._read_token_box(lex, i, ext, regions)
                        else:
                            parse = BoxParse(None, "no_box")
                    else:  # '<p>' never closed: the words stay, no box
                        parse = BoxParse(None, "truncated" if i >= len(lex) else "unclosed")
                    close_phrase(first, parse)
                elif kind in _BOX_STARTS:  # a box with no phrase: nothing to ground
                    parse, i = self._read_token_box(lex, i, ext, regions)
                    phrases.append(GroundedPhrase("", (len(words), len(words)), parse.box,
                                                  parse.error))
                else:  # stray '</p>' / '</box>': markup, stripped
                    i += 1
        word_boxes = np.full((len(words), 4), np.nan, np.float32)
        for k, b in enumerate(boxes):
            if b is not None:
                word_boxes[k] = b
        return GroundedCaption(" ".join(words), words, word_boxes, phrases)

    def strip(self, text: str) -> str:
        """The plain words of ``text``: box markup, location tokens and task identifiers
        removed, whitespace collapsed."""
        return self.parse_grounded(text).text
