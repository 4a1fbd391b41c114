"""PixelLLM in the browser: where each word of a caption lands on the image.

::

    pixelkit demo                                   # the quickstart checkpoint, 127.0.0.1:7860
    pixelkit demo --ckpt runs/x/pixelllm.ckpt --port 7861
    python demos/app.py --ckpt ...                  # the same, from a checkout

Four tabs, all on one :class:`pixelkit.Predictor` (the API the notebooks use):

1. **Caption + trace**: the narrative (or a short caption) with every word in its own
   colour, and the trace drawn in the same colours (joined in word order; the start has a
   ring, the end a square). Click a word to highlight its location and box; tick
   *animate* to watch the trace grow word by word. Tick *where the model looks* to see
   the language model's attention map of each word (:mod:`pixelkit.analysis`, VL-SAM's
   rollout with mean-max heads), and of the clicked word beside its point.
2. **Region caption**: drag across an object on the editor to draw a box (the box is the
   extent of the stroke), or switch to *points* and click: green dots are positive clicks,
   red dots negative. The caption of that region comes back with its trace.
3. **Refer**: type an expression, get its box (and its mask when the demo is started with
   ``--sam``).
4. **Dense captions**: every proposal with its caption and score; a threshold slider.

The handlers are plain methods of :class:`DemoHandlers` (unit-tested without a browser);
:func:`build_app` wires them to Gradio 6 components (built-ins only: ``gr.Image`` with
select events, ``gr.ImageEditor`` for drawing, ``gr.HighlightedText``,
``gr.AnnotatedImage``). The queue is on (each event is served in turn); the server binds
to 127.0.0.1 unless ``--host`` says otherwise, and ``--share`` is off by default.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' annotations at run
# time (gr.SelectData marks the event-data argument).
import argparse
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pixelkit.demo import MAX_IMAGE_PIXELS, add_arguments
from pixelkit.optional import require

gr = require("gradio", "the browser demo (pixelkit demo)")

#: Uploads larger than this never reach the handlers (Gradio's own limit).
MAX_FILE_SIZE = "25mb"
#: Longest referring expression accepted (the model reads at most max_prompt_tokens of it).
MAX_EXPRESSION_CHARS = 300
#: Brush colours of the region editor: a positive click / a box, and a negative click.
POSITIVE, NEGATIVE = "#22cc44", "#ee2222"
#: Frames per second of the word-by-word animation.
ANIMATION_FPS = 6.0

_MODE_BOX = "box (drag across the object)"
_MODE_POINTS = "points (click: green = include, red = exclude)"


class DemoError(ValueError):
    """Bad input the user can fix (shown as a message, never as a stack trace)."""


def checked_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose upload of a non-image is a message, not a processing error.

    Gradio opens an upload with PIL before any handler runs, so a text file named ``.png``
    would fail inside Gradio with a traceback-like "could not preprocess" error. The
    instance's ``preprocess`` is wrapped (not subclassed: Gradio writes a ``.pyi`` stub
    next to any module that subclasses a component).
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            name = Path(getattr(payload, "orig_name", None) or getattr(payload, "path", "?")).name
            raise gr.Error(f"{name} is not an image that can be opened "
                           f"(PNG, JPEG, WebP, ... expected): {type(err).__name__}") from None

    image.preprocess = checked
    return image


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def open_image(image: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An uploaded image as RGB, or a :class:`DemoError` saying what is wrong with it.

    Args:
        image: a file path (``gr.Image(type="filepath")``), a PIL image or an array.
        max_pixels: the largest ``W * H`` accepted.

    Raises:
        DemoError: no image, not an image, or too large.
    """
    if image is None:
        raise DemoError("no image: upload one or pick an example first")
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                # The header gives the size before any pixel is decoded: a huge image is
                # refused without being loaded.
                _check_size(im.size, max_pixels, path.name)
                return im.convert("RGB")
        except UnidentifiedImageError:
            raise DemoError(f"{path.name} is not an image (PNG, JPEG, WebP, ... expected)") from None
        except (OSError, Image.DecompressionBombError) as err:
            raise DemoError(f"{path.name} could not be read as an image: {err}") from None
    if isinstance(image, Image.Image):
        _check_size(image.size, max_pixels, "the image")
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DemoError(f"expected an image, got an array of shape {arr.shape}")
    _check_size((arr.shape[1], arr.shape[0]), max_pixels, "the image")
    from pixelkit.predictor import load_image

    return load_image(arr)


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DemoError(f"{name} is {w}x{h} px ({w * h / 1e6:.1f} MP); the demo accepts images "
                        f"up to {max_pixels / 1e6:.1f} MP: resize it first")
    if w < 2 or h < 2:
        raise DemoError(f"{name} is {w}x{h} px: too small to caption")


def strokes_to_prompt(editor: dict[str, Any] | None, mode: str
                      ) -> tuple[Image.Image, tuple[float, float, float, float] | None,
                                 list[tuple[float, float]] | None, list[int] | None]:
    """What the user drew on the ``gr.ImageEditor``: a box, or clicked points.

    The editor's value has the image as ``background`` and the strokes as RGBA ``layers``
    in the image's pixels. In *box* mode the box is the extent of all strokes (a drag from
    one corner to the other, or a scribble over the object), shrunk by half the brush
    width so a thick brush does not inflate it. In *points* mode every separate dot is a
    click at its centroid: green dots positive (1), red dots negative (0).

    Args:
        editor: the ``gr.ImageEditor`` value (``type="numpy"``).
        mode: ``"box"`` or ``"points"`` (a prefix of the radio's choices is enough).

    Returns:
        ``(image, box, points, labels)``; ``box`` is None in points mode and vice versa.

    Raises:
        DemoError: no image, or nothing drawn.
    """
    if not editor or editor.get("background") is None:
        raise DemoError("no image in the editor: pick an example or upload an image first")
    background = np.asarray(editor["background"])
    image = open_image(background[..., :3] if background.ndim == 3 else background)
    drawn = np.zeros(background.shape[:2], bool)
    rgb = np.zeros((*background.shape[:2], 3), np.float32)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4 or layer.shape[:2] != drawn.shape:
            continue
        alpha = layer[..., 3] > 0
        drawn |= alpha
        rgb[alpha] = layer[alpha, :3]
    if not drawn.any():
        what = "drag across an object" if mode.startswith("box") else "click on an object"
        raise DemoError(f"nothing drawn on the image: {what} first")
    if mode.startswith("box"):
        ys, xs = np.nonzero(drawn)
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        # Stroke width ~ area / length for a straight drag (length ~ the box diagonal).
        width = drawn.sum() / max(np.hypot(x1 - x0, y1 - y0), 1.0)
        r = min(width / 2.0, 0.15 * min(x1 - x0, y1 - y0))
        return image, (x0 + r, y0 + r, x1 - r, y1 - r), None, None
    points, labels = [], []
    for blob in _blobs(drawn):
        ys, xs = blob
        colour = rgb[ys, xs].mean(0)
        points.append((float(xs.mean()) + 0.5, float(ys.mean()) + 0.5))
        labels.append(0 if colour[0] > colour[1] else 1)
    return image, None, points, labels


def _blobs(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8-connected components of a sparse boolean mask (flood fill over drawn pixels only)."""
    todo = set(zip(*np.nonzero(mask)))
    blobs = []
    while todo:
        stack = [todo.pop()]
        members = []
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    n = (y + dy, x + dx)
                    if n in todo:
                        todo.remove(n)
                        stack.append(n)
        ys, xs = np.array(members).T
        blobs.append((ys, xs))
    # Reading order (top to bottom, left to right) so the clicks have a stable order.
    blobs.sort(key=lambda b: (b[0].mean(), b[1].mean()))
    return blobs


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def highlighted(words: Sequence[str]) -> dict[str, Any]:
    """A ``gr.HighlightedText`` update: each word coloured as its dot on the trace.

    Word ``i`` has category ``"i"`` (so selecting it tells which word it is) and the
    colour :func:`pixelkit.viz.word_colours` gives it on the trace image.
    """
    from pixelkit.viz import word_colours

    cols = word_colours(len(words))
    entities = []
    for i, w in enumerate(words):
        entities.append((w, str(i)))
        if i + 1 < len(words):
            entities.append((" ", None))
    # An update (a dict with "value" and "color_map"): the colours change with every caption.
    return gr.update(value=entities, color_map={str(i): _hex(c) for i, c in enumerate(cols)})


@dataclass
class TraceView:
    """What is needed to redraw a caption's trace (kept in a ``gr.State`` per session)."""

    image: Image.Image
    words: list[str]
    points: list[tuple[float, float]]
    boxes: list[tuple[float, float, float, float]]
    prompt_box: tuple[float, float, float, float] | None = None
    prompt_points: list[tuple[float, float]] | None = None
    prompt_labels: list[int] | None = None
    task: str | None = None

    def draw(self, highlight: int | None = None, upto: int | None = None) -> Image.Image:
        """The trace over the image (and the prompt box / clicks, when there is one).

        Everything is drawn on the image upscaled once (small images to 384 px a side, as
        in :mod:`pixelkit.viz`), so lines keep their width whatever the image size.
        """
        from pixelkit.viz import draw_boxes, draw_trace, word_colours

        scale = max(1.0, 384 / min(self.image.size))
        base = self.image.resize((round(self.image.width * scale),
                                  round(self.image.height * scale)), Image.NEAREST)

        def px(xy: Sequence[float]) -> tuple[float, ...]:
            return tuple(float(v) * scale for v in xy)

        if self.prompt_box is not None or self.prompt_points:
            base = draw_boxes(base, [px(self.prompt_box)] if self.prompt_box else [],
                              colours=[(255, 255, 255)], min_side=1,
                              points=[px(p) for p in self.prompt_points or []],
                              point_labels=self.prompt_labels)
        if highlight is not None and 0 <= highlight < len(self.boxes):
            # The selected word's box (the point head's two points) in the word's colour.
            colour = word_colours(len(self.words))[highlight]
            base = draw_boxes(base, [px(self.boxes[highlight])], colours=[colour], min_side=1)
        return draw_trace(base, self.words, [px(p) for p in self.points], highlight=highlight,
                          upto=upto, min_side=1)


@dataclass
class DemoHandlers:
    """The app's behaviour, one method per event, on a :class:`pixelkit.Predictor`.

    Stateless apart from a small cache of encoded images (so captioning, referring and
    dense captioning the same picture encode it once); safe to call from Gradio's worker
    threads.

    Args:
        predictor: the model.
        max_pixels: the largest image accepted (``W * H``).
    """

    predictor: Any
    max_pixels: int = MAX_IMAGE_PIXELS
    cache_size: int = 8
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ helpers
    def _cached(self, key: Any, make: Any) -> Any:
        """``make()``, kept in a small LRU cache under ``key``."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = make()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value

    @staticmethod
    def _image_key(image: Image.Image) -> str:
        return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()

    def encode(self, image: Image.Image) -> Any:
        """The predictor's :class:`~pixelkit.predictor.EncodedImage` of ``image`` (cached)."""
        return self._cached(("image", self._image_key(image)),
                            lambda: self.predictor.encode_images([image])[0])

    def _caption_view(self, image: Image.Image, task: str | None = None, **prompt: Any
                      ) -> tuple[TraceView, Any]:
        enc = self.encode(image)
        wrap = {k: None if v is None else [v] for k, v in prompt.items()}
        result = self.predictor.caption_batch([enc], task=task, **wrap)[0]
        view = TraceView(image, list(result.words), [tuple(p) for p in result.points],
                         [tuple(b) for b in result.boxes], prompt.get("boxes"),
                         prompt.get("points"), prompt.get("labels"), task=task)
        return view, result

    # ------------------------------------------------------------------ 1. caption + trace
    def caption(self, image: Any, task: str = "trace", animate: bool = False
                ) -> Iterator[tuple[dict, Image.Image, TraceView, dict]]:
        """Caption the image with a per-word trace.

        Args:
            image: the uploaded image (path / PIL / array).
            task: ``"trace"`` (the narrative) or ``"caption"`` (a short caption).
            animate: yield the trace word by word (then the full one).

        Yields:
            ``(highlighted text, trace image, TraceView, result dict)``; one tuple unless
            ``animate``.
        """
        view, result = self._caption_view(open_image(image, self.max_pixels), task=task)
        yield from self._views(view, result.to_dict(), animate)

    def _views(self, view: TraceView, result: dict, animate: bool
               ) -> Iterator[tuple[dict, Image.Image, TraceView, dict]]:
        text = highlighted(view.words)
        if animate:
            for k in range(1, len(view.words)):
                yield highlighted(view.words[:k]), view.draw(upto=k), view, result
                time.sleep(1.0 / ANIMATION_FPS)
        yield text, view.draw(), view, result

    def select_word(self, view: TraceView | None, index: int | None) -> Image.Image | None:
        """The trace with word ``index`` highlighted (its dot ringed, its box drawn)."""
        if view is None:
            return None
        return view.draw(highlight=index)

    def word_maps(self, view: TraceView) -> Any:
        """The attention maps of the view's caption (:func:`pixelkit.analysis.word_attention`:
        the same prompt decoded again, then one teacher-forced pass with attention), cached
        per image and prompt."""
        from pixelkit.analysis import word_attention

        key = ("maps", self._image_key(view.image), view.task, view.prompt_box,
               tuple(map(tuple, view.prompt_points or ())), tuple(view.prompt_labels or ()))
        return self._cached(key, lambda: word_attention(
            self.predictor, self.encode(view.image), task=view.task, box=view.prompt_box,
            points=view.prompt_points, labels=view.prompt_labels))

    def attention_picture(self, view: TraceView | None, show: bool = True,
                          index: int | None = None) -> Image.Image | None:
        """Where the model looked: every word's attention map (no word selected), or the
        selected word's map with its point (dot) and the map's peak (white ring).

        Returns:
            The picture, or None when the switch is off or there is no caption yet.
        """
        from pixelkit.viz import draw_word_map, draw_word_maps, word_colours

        if not show or view is None:
            return None
        maps = self.word_maps(view)
        heat, peaks = maps.image_maps(), maps.peaks()
        if index is None or not 0 <= index < len(maps.words):
            return draw_word_maps(view.image, maps.words, heat, maps.points, peaks, cols=6,
                                  size=128)
        return draw_word_map(view.image, heat[index], word_colours(len(maps.words))[index],
                             point=maps.points[index], peak=peaks[index], min_side=384,
                             title=f"{index}: {maps.words[index]} (attention, "
                                   f"{100 * maps.visual_share[index]:.0f}% on the image)")

    # ------------------------------------------------------------------ 2. region caption
    def region_caption(self, editor: dict[str, Any] | None, mode: str = _MODE_BOX,
                       animate: bool = False) -> Iterator[tuple[dict, Image.Image, TraceView, dict]]:
        """Caption the region the user drew (a box) or clicked (points) on the editor.

        Yields:
            As :meth:`caption`; the result dict also has the ``prompt`` (box or points and
            labels, pixels).
        """
        image, box, points, labels = strokes_to_prompt(editor, mode)
        view, result = self._caption_view(image, boxes=box, points=points, labels=labels)
        out = result.to_dict()
        out["prompt"] = ({"box": [float(v) for v in box]} if box is not None else
                         {"points": [list(p) for p in points], "labels": labels})
        yield from self._views(view, out, animate)

    # ------------------------------------------------------------------ 3. refer
    def refer(self, image: Any, expression: str) -> tuple[Image.Image, dict]:
        """The box (and the mask, with SAM) of a referring expression.

        Returns:
            ``(image with the box, result dict: box, score[, mask_area])``.
        """
        from pixelkit.viz import draw_boxes, overlay_mask

        expression = (expression or "").strip()
        if not expression:
            raise DemoError("type an expression first, e.g. 'the red circle'")
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise DemoError(f"the expression is {len(expression):,} characters long; at most "
                            f"{MAX_EXPRESSION_CHARS} are read")
        im = open_image(image, self.max_pixels)
        enc = self.encode(im)
        result = self.predictor.refer_batch([enc], [expression])[0]
        out = result.to_dict()
        if result.box is None:  # a written answer (location.format text / tokens) that did not parse
            return draw_boxes(im, []), out  # the result says why (``error``)
        shown = im
        if getattr(self.predictor, "sam", None) is not None:
            mask = self.predictor.mask_from_box(result.box, enc)
            shown = overlay_mask(im, mask)
            out["mask_area"] = int(mask.sum())
        # Cyan: it stands out on the shapes' red, green, blue and yellow alike.
        drawn = draw_boxes(shown, [result.box], [expression], [result.score],
                           colours=[(0, 230, 255)])
        return drawn, out

    # ------------------------------------------------------------------ 4. dense captions
    def dense_caption(self, image: Any, score_threshold: float = 0.3, max_regions: int = 10
                      ) -> tuple[tuple[Image.Image, list], list[list], dict]:
        """Every proposal above the threshold, captioned.

        Returns:
            ``(gr.AnnotatedImage value, table rows [caption, score, box], result dict)``; the
            annotated image is upscaled like the trace pictures, boxes scaled with it.
        """
        im = open_image(image, self.max_pixels)
        enc = self.encode(im)
        result = self.predictor.dense_caption_batch([enc], int(max_regions),
                                                    float(score_threshold))[0]
        scale = max(1.0, 384 / min(im.size))
        shown = im.resize((round(im.width * scale), round(im.height * scale)), Image.NEAREST)
        annotations = []
        for i, (box, cap, s) in enumerate(zip(result.boxes, result.captions, result.scores)):
            x0, y0, x1, y1 = (round(float(v) * scale) for v in box)
            annotations.append(((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)),
                                f"{i + 1}. {cap} ({s:.2f})"))
        rows = [[cap, round(float(s), 3), [round(float(v), 1) for v in box]]
                for box, cap, s in zip(result.boxes, result.captions, result.scores)]
        return (shown, annotations), rows, result.to_dict()


# --------------------------------------------------------------------------------------------
# Examples and the header
# --------------------------------------------------------------------------------------------


def shapes_examples(out_dir: str | Path, n: int = 6, num_images: int = 3000, seed: int = 0,
                    image_size: int = 64, max_objects: int = 3, val_fraction: float = 0.2
                    ) -> list[tuple[Path, str]]:
    """The first ``n`` images of the shapes world's val split, with a referring expression each.

    :func:`pixelkit.data.synth.split_images` draws them alone (byte for byte the files
    ``pixelkit synth`` writes), so with the quickstart's defaults these are exactly the first
    images of ``outputs/quickstart/data/images/val``, which the model did not train on.

    Returns:
        ``[(png path, expression), ...]``.
    """
    from pixelkit.data.synth import split_images

    return [(path, next((e for e in scene.referring_expressions() if e), "the shape"))
            for path, scene in split_images(out_dir, "val", n, num_images, seed, image_size,
                                            max_objects, val_fraction)]


def header(info: dict[str, Any]) -> str:
    """Markdown: the checkpoint's name, what it was trained on and its headline metrics."""
    ckpt = Path(str(info.get("checkpoint", "?")))
    lines = [f"**Checkpoint** `{ckpt.name}` ({ckpt.parent})"]
    stage = info.get("stage")
    if stage:
        lines.append(f"**Stage** {stage}")
    trained = info.get("trained_on") or info.get("world")
    if trained:
        if isinstance(trained, (list, tuple)):
            # "task:/long/path/file.json" -> "task: file.json"
            trained = ", ".join(f"{t.partition(':')[0]}: {Path(t.partition(':')[2]).name}"
                                if ":" in str(t) else str(t) for t in trained)
        lines.append(f"**Trained on** {trained}")
    if info.get("world") and info.get("trained_on"):
        lines.append(f"**World** {info['world']}")
    metrics = info.get("metrics") or {}
    keep = [k for k in ("refer.p_at_0.5", "loca_caption.exact_match", "trace.pointing_accuracy",
                        "densecap.mAP") if k in metrics]
    if keep:
        lines.append("**Val metrics** " + ", ".join(f"{k} {metrics[k]:.3f}" for k in keep))
    return " · ".join(lines)


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _user_errors(fn):
    """Turn :class:`DemoError` (a ``ValueError``) and the predictor's bad-value errors into
    ``gr.Error`` messages."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except ValueError as err:  # DemoError is one
                raise gr.Error(str(err)) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:  # DemoError is one
            raise gr.Error(str(err)) from None
    return call


def build_app(predictor: Any, examples: Sequence[tuple[Path, str]] = (),
              max_pixels: int = MAX_IMAGE_PIXELS):
    """The Gradio Blocks app (not launched).

    Args:
        predictor: a :class:`pixelkit.Predictor`.
        examples: ``(image path, expression)`` pairs shown under the image.
        max_pixels: the largest image accepted.

    Returns:
        ``(gr.Blocks, DemoHandlers)``.
    """
    h = DemoHandlers(predictor, max_pixels=max_pixels)
    has_sam = getattr(predictor, "sam", None) is not None

    def selected(evt: gr.SelectData) -> int | None:
        value = evt.value
        label = value[1] if isinstance(value, (list, tuple)) and len(value) > 1 else None
        if label is not None and str(label).isdigit():
            return int(label)
        # entities alternate word, space: word i is entity 2 i
        return int(evt.index) // 2 if isinstance(evt.index, int) else None

    def on_select(view: TraceView | None, evt: gr.SelectData):
        return h.select_word(view, selected(evt))

    def attention_update(view: TraceView | None, show: bool, index: int | None = None):
        return gr.update(value=h.attention_picture(view, bool(show), index), visible=bool(show))

    def on_select_attention(view: TraceView | None, show: bool, evt: gr.SelectData):
        return attention_update(view, show, selected(evt))

    def trace_panel(name: str, title: str, open_json: bool):
        """The caption (coloured words), its trace, the result as JSON, the TraceView state."""
        text = gr.HighlightedText(label=f"{title} (click a word)", show_inline_category=False,
                                  elem_id=f"{name}-text")
        img = gr.Image(label="Trace", type="pil", interactive=False, elem_id=f"{name}-img",
                       format="png")
        result = gr.JSON(label="Result (pixels)", elem_id=f"{name}-json", open=open_json)
        return text, img, result, gr.State()

    def to_editor(image):
        if image is None:
            return None
        try:
            return {"background": open_image(image, max_pixels), "layers": [], "composite": None}
        except DemoError:
            return None  # the tab that uses it will say what is wrong

    with gr.Blocks(title="pixelkit: PixelLLM demo") as demo:
        gr.Markdown("## PixelLLM: where each word lands on the image\n" + header(predictor.info))
        with gr.Row():
            with gr.Column(scale=1):
                image = checked_image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="image", height=320)
                examples_slot = gr.Column()
            with gr.Column(scale=2), gr.Tabs():
                with gr.Tab("Caption + trace", id="caption"):
                    with gr.Row():
                        task = gr.Radio([("narrative with trace", "trace"),
                                         ("short caption", "caption")], value="trace",
                                        label="What to say", elem_id="task")
                        animate = gr.Checkbox(False, label="animate the trace word by word",
                                              elem_id="animate")
                        attention = gr.Checkbox(False, label="where the model looks "
                                                "(attention map per word)", elem_id="attention")
                    caption_btn = gr.Button("Caption", variant="primary", elem_id="caption-btn")
                    caption_text, caption_img, caption_json, caption_state = trace_panel(
                        "caption", "Caption", open_json=False)
                    caption_attn = gr.Image(label="Where the model looks: the LM's attention "
                                            "(colour) and the point head's point (dot)",
                                            type="pil", interactive=False, visible=False,
                                            elem_id="caption-attn", format="png")
                with gr.Tab("Region caption", id="region"):
                    gr.Markdown("Drag across an object to draw a box, or choose *points* "
                                "and click on it (green = include, red = exclude).")
                    editor = gr.ImageEditor(type="numpy", label="Draw here", elem_id="editor",
                                            sources=["upload", "clipboard"], transforms=(),
                                            layers=False, height=360,
                                            brush=gr.Brush(colors=[POSITIVE, NEGATIVE],
                                                           default_color=POSITIVE,
                                                           color_mode="fixed",
                                                           default_size=3))
                    with gr.Row():
                        mode = gr.Radio([_MODE_BOX, _MODE_POINTS], value=_MODE_BOX,
                                        label="Prompt", elem_id="mode")
                        region_btn = gr.Button("Caption region", variant="primary",
                                               elem_id="region-btn")
                    region_text, region_img, region_json, region_state = trace_panel(
                        "region", "Region caption", open_json=True)
                with gr.Tab("Refer", id="refer"):
                    expression = gr.Textbox(label="Referring expression",
                                            placeholder="the red circle", elem_id="expression")
                    refer_btn = gr.Button("Find it" + (" (box + SAM mask)" if has_sam else ""),
                                          variant="primary", elem_id="refer-btn")
                    refer_img = gr.Image(label="Box" + (" and mask" if has_sam else ""),
                                         type="pil", interactive=False, elem_id="refer-img",
                                         format="png")
                    refer_json = gr.JSON(label="Result (pixels)", elem_id="refer-json", open=True)
                with gr.Tab("Dense captions", id="dense"):
                    with gr.Row():
                        threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.05,
                                              label="Score threshold", elem_id="threshold")
                        max_regions = gr.Slider(1, 30, value=10, step=1, label="Max regions",
                                                elem_id="max-regions")
                    dense_btn = gr.Button("Dense caption", variant="primary",
                                          elem_id="dense-btn")
                    dense_img = gr.AnnotatedImage(label="Regions", elem_id="dense-img")
                    dense_table = gr.Dataframe(headers=["caption", "score", "box (xyxy px)"],
                                               label="Regions", elem_id="dense-table",
                                               column_widths=["60%", "12%", "28%"], wrap=True,
                                               interactive=False)
                    dense_json = gr.JSON(label="Result (pixels)", elem_id="dense-json", open=False)

        if examples:
            with examples_slot:  # filled now: the expression box (Refer tab) exists
                gr.Examples([[str(p), e] for p, e in examples], inputs=[image, expression],
                            label="Shapes world (val split): click one", examples_per_page=8,
                            elem_id="examples")
        # The picked image also goes to the region editor.
        image.change(to_editor, image, editor, show_progress="hidden")

        caption_btn.click(_user_errors(h.caption), [image, task, animate],
                          [caption_text, caption_img, caption_state, caption_json],
                          api_name="caption").then(
            attention_update, [caption_state, attention], caption_attn, api_name=False)
        caption_text.select(on_select, caption_state, caption_img, show_progress="hidden")
        caption_text.select(on_select_attention, [caption_state, attention], caption_attn,
                            show_progress="hidden")
        attention.change(attention_update, [caption_state, attention], caption_attn,
                         api_name=False)
        region_btn.click(_user_errors(h.region_caption), [editor, mode, animate],
                         [region_text, region_img, region_state, region_json],
                         api_name="region_caption")
        region_text.select(on_select, region_state, region_img, show_progress="hidden")
        refer_btn.click(_user_errors(h.refer), [image, expression], [refer_img, refer_json],
                        api_name="refer")
        expression.submit(_user_errors(h.refer), [image, expression], [refer_img, refer_json],
                          api_name=False)
        dense_inputs = [image, threshold, max_regions]
        dense_outputs = [dense_img, dense_table, dense_json]
        dense_btn.click(_user_errors(h.dense_caption), dense_inputs, dense_outputs,
                        api_name="dense_caption")
        threshold.release(_user_errors(h.dense_caption), dense_inputs, dense_outputs,
                          api_name=False)
    # Several users at once are served in turn (one call of each event at a time).
    demo.queue(max_size=64)
    return demo, h


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve the app until interrupted."""
    if not Path(args.ckpt).is_file():
        print(f"pixelkit demo: no checkpoint at {args.ckpt}.\n"
              "  Make one with `make quickstart` (the shapes world, about 15 min on a CPU),\n"
              "  or pass --ckpt PATH to a pixelkit checkpoint.", file=sys.stderr)
        return 1
    from pixelkit.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device, sam=args.sam)
    remove_stale_example_dirs()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the server as Ctrl-C does, so the example folder below is removed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix=f"{EXAMPLE_DIR_PREFIX}{os.getpid()}-") as tmp:
        example_dir = Path(tmp)
        examples = shapes_examples(example_dir, n=args.examples) if args.examples > 0 else []
        demo, _ = build_app(predictor, examples, max_pixels=int(args.max_megapixels * 1e6))
        print(f"pixelkit demo: {args.ckpt} on http://{args.host}:{args.port}"
              f"{' (+ public share link)' if args.share else ''}", flush=True)
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    max_file_size=MAX_FILE_SIZE, allowed_paths=[str(example_dir)],
                    show_error=True, footer_links=["api", "gradio"])
    return 0


#: Example folders are ``<tmp>/pixelkit-demo-<pid>-<random>``.
EXAMPLE_DIR_PREFIX = "pixelkit-demo-"


def remove_stale_example_dirs() -> list[Path]:
    """Remove the example folders of demos that were killed (their process is gone).

    A demo ended normally (Ctrl-C, SIGTERM) removes its own folder; one killed with SIGKILL
    cannot, so the next start does it. Folders of running demos are left alone.
    """
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{EXAMPLE_DIR_PREFIX}*"):
        pid = folder.name[len(EXAMPLE_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python demos/app.py [args]`` / ``python -m pixelkit.demo.app``: as ``pixelkit demo``."""
    from pixelkit.runtime import retain_freed_memory

    retain_freed_memory()  # as the pixelkit command does (pixelkit/runtime.py)
    parser = argparse.ArgumentParser(prog="pixelkit demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
