"""Pictures: per-word traces, boxes, dense captions and loss curves.

Shared by the quickstart report, the W&B image logging, the demo and the notebooks, so a
trace looks the same everywhere. Inputs are in pixels of the original image (the public
convention); small images are upscaled first so words stay legible.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pixelkit.optional import require

Box = Sequence[float]


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no window): the ``plots`` extra."""
    matplotlib = require("matplotlib", "plots (loss curves, study plots, the report)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path | str) -> Path:
    """Lay out, write to ``out`` (PNG, 110 dpi) and close a figure."""
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def word_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (hue wheel, golden-ratio steps)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _canvas(image: Image.Image | np.ndarray, min_side: int) -> tuple[Image.Image, float]:
    img = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")
    scale = max(1.0, min_side / min(img.size))
    if scale > 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
    return img, scale


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_trace(image: Image.Image | np.ndarray, words: Sequence[str],
               points: Sequence[Sequence[float]], *, highlight: int | None = None,
               upto: int | None = None, min_side: int = 384, label: bool = True) -> Image.Image:
    """The caption's trace: one dot per word in its colour, joined in word order.

    Args:
        image: the original image.
        words: the caption's words.
        points: one (x, y) per word, pixels of the original image.
        highlight: index of a word to emphasise (bigger dot and ring).
        upto: draw only the first ``upto`` words (for animations).
        min_side: upscale small images to at least this side.
        label: write each word next to its dot.

    Returns:
        A new RGB image (the start is marked with a ring, the end with a square). A word
        without a point (NaN: a written-format word outside any located phrase) is not
        drawn.
    """
    img, s = _canvas(image, min_side)
    draw = ImageDraw.Draw(img)
    n = len(words) if upto is None else min(upto, len(words))
    cols = word_colours(len(words))
    at = {i: (float(x) * s, float(y) * s) for i, (x, y) in enumerate(points[:n])
          if math.isfinite(float(x)) and math.isfinite(float(y))}
    order = list(at)
    pts = list(at.values())
    r = max(3, img.width // 90)
    font = _font(max(10, img.width // 32))
    for k in range(1, len(pts)):
        draw.line([pts[k - 1], pts[k]], fill=cols[order[k]], width=max(1, r // 2))
    for i, (x, y) in at.items():
        rr = r * 2 if i == highlight else r
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=cols[i], outline=(0, 0, 0))
        if label:
            draw.text((x + rr + 1, y - rr - 1), words[i], fill=cols[i], font=font,
                      stroke_width=2, stroke_fill=(0, 0, 0))
    if pts:
        x, y = pts[0]
        draw.ellipse([x - 2.5 * r, y - 2.5 * r, x + 2.5 * r, y + 2.5 * r], outline=(255, 255, 255),
                     width=2)
        x, y = pts[-1]
        draw.rectangle([x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r], outline=(255, 255, 255), width=2)
    if highlight is not None and highlight in at:
        x, y = at[highlight]
        draw.ellipse([x - 4 * r, y - 4 * r, x + 4 * r, y + 4 * r], outline=(255, 255, 255), width=3)
    return img


def draw_boxes(image: Image.Image | np.ndarray, boxes: Sequence[Box],
               labels: Sequence[str] | None = None, scores: Sequence[float] | None = None, *,
               colours: Sequence[tuple[int, int, int]] | None = None, min_side: int = 384,
               points: Sequence[Sequence[float]] | None = None,
               point_labels: Sequence[int] | None = None) -> Image.Image:
    """Boxes (xyxy pixels) with optional captions / scores, and optional clicked points.

    Returns:
        A new RGB image.
    """
    img, s = _canvas(image, min_side)
    draw = ImageDraw.Draw(img)
    cols = list(colours) if colours is not None else word_colours(max(len(boxes), 1))
    font = _font(max(10, img.width // 32))
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) * s for v in box)
        c = cols[i % len(cols)]
        draw.rectangle([x0, y0, x1, y1], outline=c, width=max(2, img.width // 160))
        text = labels[i] if labels is not None and i < len(labels) else ""
        if scores is not None and i < len(scores):
            text = f"{text} {float(scores[i]):.2f}".strip()
        if text:
            draw.text((x0 + 2, max(0.0, y0 - img.width // 28)), text, fill=c, font=font,
                      stroke_width=2, stroke_fill=(0, 0, 0))
    for j, (x, y) in enumerate(points or []):
        positive = point_labels is None or int(point_labels[j]) == 1
        c = (40, 220, 40) if positive else (230, 40, 40)
        r = max(4, img.width // 70)
        draw.ellipse([x * s - r, y * s - r, x * s + r, y * s + r], fill=c, outline=(255, 255, 255),
                     width=2)
    return img


def side_by_side(images: Sequence[Image.Image], titles: Sequence[str] | None = None,
                 pad: int = 6) -> Image.Image:
    """Images in one row (same height), with optional titles above."""
    h = max(im.height for im in images)
    ims = [im if im.height == h else im.resize((round(im.width * h / im.height), h))
           for im in images]
    title_h = 22 if titles else 0
    out = Image.new("RGB", (sum(im.width for im in ims) + pad * (len(ims) + 1), h + title_h + 2 * pad),
                    (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = pad
    for i, im in enumerate(ims):
        out.paste(im, (x, pad + title_h))
        if titles:
            draw.text((x, pad), titles[i][: im.width // 6], fill=(0, 0, 0), font=_font(13))
        x += im.width + pad
    return out


def loss_curves(csv_files: dict[str, Path | str], out: Path | str,
                keys: Sequence[str] = ("train/loss", "train/text", "train/point")) -> Path:
    """Plot training curves of several runs (Lightning CSVLogger ``metrics.csv``) to a PNG.

    Args:
        csv_files: run name -> its ``metrics.csv``; the runs are drawn one after another
            on a shared step axis (stages of one chain).
        out: PNG path.
        keys: the logged metrics to draw (those present).
    """
    import csv

    plt = _pyplot()

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    offset = 0
    for run, path in csv_files.items():
        with open(path) as f:
            rows = list(csv.DictReader(f))
        last = offset
        for ax, key in zip(axes[0], keys):
            pts = [(int(r["step"]) + offset, float(r[key])) for r in rows
                   if r.get(key) not in (None, "")]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=run)
                last = max(last, xs[-1])
        offset = last
    for ax, key in zip(axes[0], keys):
        ax.set_title(key)
        ax.set_xlabel("step (stages in sequence)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    return _save(plt, fig, out)


# --------------------------------------------------------------------------------------------
# Pictures of the tutorial notebooks (pixelkit.tutorial)
# --------------------------------------------------------------------------------------------


def draw_caption(image: Image.Image | np.ndarray, words: Sequence[str],
                 points: Sequence[Sequence[float]], *, box: Box | None = None,
                 clicks: Sequence[Sequence[float]] | None = None,
                 click_labels: Sequence[int] | None = None, min_side: int = 384,
                 label: bool = True) -> Image.Image:
    """A caption's per-word trace with the prompt it answered (a box or clicks), in pixels.

    Args:
        image: the original image.
        words: the caption's words.
        points: one (x, y) per word, pixels of the original image.
        box: the prompt box (drawn white), if the caption describes a region.
        clicks: prompt points (green: positive, red: negative).
        click_labels: per click 1 / 0 (default all positive).
        min_side: upscale small images to at least this side.
        label: write each word next to its dot.

    Returns:
        A new RGB image.
    """
    img, s = _canvas(image, min_side)
    if box is not None or clicks:
        img = draw_boxes(img, [[v * s for v in box]] if box is not None else [],
                         colours=[(255, 255, 255)], min_side=0,
                         points=[(x * s, y * s) for x, y in clicks or []],
                         point_labels=click_labels)
    return draw_trace(img, words, [(x * s, y * s) for x, y in points], min_side=0, label=label)


def image_grid(rows: Sequence[Sequence[Image.Image]], row_titles: Sequence[str] | None = None,
               col_titles: Sequence[str] | None = None, pad: int = 6) -> Image.Image:
    """Images in a grid (rows of equal-height panels), with optional row and column titles."""
    title_w = 90 if row_titles else 0
    strips = [side_by_side(list(r), list(col_titles) if (col_titles and i == 0) else None, pad)
              for i, r in enumerate(rows)]
    width = title_w + max(s.width for s in strips)
    out = Image.new("RGB", (width, sum(s.height for s in strips)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = 0
    for i, s in enumerate(strips):
        out.paste(s, (title_w, y))
        if row_titles:
            draw.text((pad, y + s.height // 2 - 7), row_titles[i][:14], fill=(0, 0, 0),
                      font=_font(13))
        y += s.height
    return out


def draw_refer(image: Image.Image | np.ndarray, pred_box: Box | None, gt_box: Box | None = None,
               *, min_side: int = 384) -> Image.Image:
    """A referring prediction: the predicted box in red (None: a written answer that did not
    parse, nothing drawn), the ground truth in green."""
    boxes, labels, cols = ([pred_box], ["pred"], [(255, 50, 50)]) if pred_box is not None \
        else ([], [], [])
    if gt_box is not None:
        boxes.append(gt_box)
        labels.append("truth")
        cols.append((60, 230, 60))
    return draw_boxes(image, boxes, labels, colours=cols, min_side=min_side)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """``(h, w)`` values in [0, 1] -> ``(h, w, 3)`` uint8 (matplotlib's "inferno")."""
    matplotlib = require("matplotlib", "heat maps (pixelkit.viz.heat_colours)")
    cmap = matplotlib.colormaps["inferno"]
    return (cmap(np.clip(np.asarray(values, np.float64), 0, 1))[..., :3] * 255).astype(np.uint8)


def draw_heatmaps(image: Image.Image | np.ndarray, heatmaps: Sequence[np.ndarray],
                  titles: Sequence[str] | None = None, *, size: int = 192,
                  alpha: float = 0.65, normalize: bool = False,
                  floor: float = 0.05) -> Image.Image:
    """The image, then each heatmap (values in [0, 1]) blended over it, side by side.

    Args:
        image: the original image.
        heatmaps: ``(h, w)`` maps covering the image (any resolution; upsampled with
            nearest neighbours so the cells stay visible).
        titles: one per heatmap (the image's title is "image").
        size: panel height.
        alpha: weight of the heatmap over the image.
        normalize: scale each map by its own maximum (shows where a weak map peaks; say
            so in the title, e.g. with the maximum), but by at least ``floor``, so that a
            map with no peak stays dark instead of showing its noise at full brightness.
        floor: see ``normalize``.
    """
    img, _ = _canvas(image, 1)
    w = round(img.width * size / img.height)
    base = img.resize((w, size), Image.BILINEAR)
    panels = [base]
    for h in heatmaps:
        h = np.asarray(h, np.float64)
        if normalize and h.size:
            h = h / max(float(h.max()), floor)
        heat = Image.fromarray(heat_colours(h)).resize((w, size), Image.NEAREST)
        panels.append(Image.blend(base, heat, alpha))
    names = ["image"] + list(titles or [f"level {i}" for i in range(len(heatmaps))])
    return side_by_side(panels, names)


def draw_word_targets(image: Image.Image | np.ndarray, tokens: Sequence[str],
                      boxes: Sequence[Box], points: Sequence[Sequence[float]], *,
                      trace: Sequence[Sequence[float]] | None = None,
                      segments: Sequence[Sequence[Sequence[float]]] | None = None,
                      utterance_index: Sequence[int] | None = None, cols: int = 6,
                      size: int = 160) -> Image.Image:
    """How a trace becomes per-token targets: one panel per token, in caption order.

    Each panel shows the whole trace (thin grey), the part spoken with the token's
    utterance (bold, the token's colour), and the token's target: the box of that part
    (min / max of the interpolated samples) and its mean point.

    Args:
        image: the original image.
        tokens: the caption's tokens.
        boxes: ``(T, 4)`` target box per token, pixels (NaN rows: no target).
        points: ``(T, 2)`` target point per token, pixels.
        trace: ``(P, 2)`` the whole trace, pixels.
        segments: per utterance, its ``(k, 2)`` trace points.
        utterance_index: per token, its utterance (indexes ``segments``).
        cols: panels per row.
        size: panel side.
    """
    img, s = _canvas(image, size)
    colours = word_colours(len(tokens))
    panels = []
    for t, tok in enumerate(tokens):
        p = img.copy()
        d = ImageDraw.Draw(p)
        if trace is not None and len(trace) > 1:
            d.line([(x * s, y * s) for x, y in trace], fill=(170, 170, 170), width=1)
        c = colours[t]
        u = int(utterance_index[t]) if utterance_index is not None else -1
        if segments is not None and 0 <= u < len(segments) and len(segments[u]) > 1:
            d.line([(x * s, y * s) for x, y in segments[u]], fill=c, width=3)
        b = np.asarray(boxes[t], np.float64)
        if np.isfinite(b).all():
            x0, y0, x1, y1 = (b * s).tolist()
            d.rectangle([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], outline=(255, 255, 255),
                        width=2)
            x, y = (np.asarray(points[t], np.float64) * s).tolist()
            r = max(3, p.width // 40)
            d.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=(0, 0, 0))
        d.text((4, 2), f"{t}: {tok}", fill=c, font=_font(max(11, p.width // 14)),
               stroke_width=2, stroke_fill=(0, 0, 0))
        panels.append(p)
    rows = [panels[i:i + cols] for i in range(0, len(panels), cols)]
    blank = Image.new("RGB", panels[0].size, (255, 255, 255)) if panels else None
    if rows and len(rows[-1]) < cols and len(rows) > 1:
        rows[-1] = rows[-1] + [blank] * (cols - len(rows[-1]))
    return image_grid(rows) if rows else Image.new("RGB", (size, size), (255, 255, 255))


def study_plot(curves: dict[str, Path | str], rows: Sequence[dict], out: Path | str, *,
               param: str, metric: str, curve: str = "val/loss") -> Path:
    """A study in one figure: each run's curve, and the final metric per value (mean and
    standard deviation over seeds, as error bars).

    Args:
        curves: run label -> its CSV log ``metrics.csv``.
        rows: :meth:`pixelkit.runs.Study.table` rows (``value``, ``<metric>``,
            ``<metric> std``).
        out: PNG path.
        param: the studied parameter (x axis of the right panel).
        metric: the compared metric (y axis of the right panel).
        curve: the logged metric drawn on the left (pick one comparable across the runs:
            ``train/loss`` is not, when the study changes a loss weight).
    """
    import csv

    plt = _pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, path in curves.items():
        with open(path) as f:
            pts = [(int(r["step"]), float(r[curve])) for r in csv.DictReader(f)
                   if r.get(curve) not in (None, "")]
        if pts:
            ax1.plot(*zip(*pts), label=label, marker="." if len(pts) < 4 else None)
    ax1.set_title(curve)
    ax1.set_xlabel("step")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    x = range(len(rows))
    ax2.errorbar(x, [r.get(metric, float("nan")) for r in rows],
                 yerr=[r.get(f"{metric} std", 0.0) for r in rows], fmt="o-", capsize=4)
    ax2.set_xticks(list(x), [str(r["value"]) for r in rows])  # the values, evenly spaced
    ax2.set_xlabel(param)
    ax2.set_title(f"final {metric} (mean ± std over seeds)")
    ax2.grid(alpha=0.3)
    return _save(plt, fig, out)




# --------------------------------------------------------------------------------------------
# Where the model looks (pixelkit.analysis)
# --------------------------------------------------------------------------------------------


def overlay_mask(image: Image.Image, mask: np.ndarray, colour: Sequence[int] = (30, 144, 255),
                 alpha: float = 0.45) -> Image.Image:
    """``image`` with a boolean ``(H, W)`` mask blended in ``colour``."""
    arr = np.asarray(image.convert("RGB"), np.float32).copy()
    m = np.asarray(mask, bool)
    arr[m] = (1 - alpha) * arr[m] + alpha * np.asarray(colour, np.float32)
    return Image.fromarray(arr.astype(np.uint8))


def _mark(draw: ImageDraw.ImageDraw, xy: Sequence[float], r: float, fill: Sequence[int] | None,
          outline: Sequence[int], width: int = 2) -> None:
    x, y = xy
    draw.ellipse([x - r, y - r, x + r, y + r], fill=None if fill is None else tuple(fill),
                 outline=tuple(outline), width=width)


def draw_word_map(image: Image.Image | np.ndarray, heat: np.ndarray,
                  colour: Sequence[int] = (255, 200, 0), *,
                  point: Sequence[float] | None = None, peak: Sequence[float] | None = None,
                  min_side: int = 256, alpha: float = 0.8, title: str | None = None
                  ) -> Image.Image:
    """One word's attention map over the image, in the word's colour.

    The image is shown in grey so the colour is the map's alone; each cell of the map is
    tinted with ``colour`` in proportion to its value over the map's maximum (cells stay
    square: the map's real resolution). The point head's point is a filled dot in the
    word's colour, the attention peak a white ring.

    Args:
        image: the original image.
        heat: ``(h', w')`` map over the image (:meth:`WordMaps.image_maps`).
        colour: the word's colour (:func:`word_colours`).
        point: the point head's ``(x, y)`` for the word, pixels.
        peak: the map's peak ``(x, y)``, pixels.
        min_side: upscale small images to at least this side.
        alpha: tint of the map's maximum.
        title: written top-left (the word).
    """
    img, s = _canvas(image, min_side)
    grey = np.asarray(img.convert("L").convert("RGB"), np.float32) * 0.8
    h = np.asarray(heat, np.float64)
    h = h / h.max() if h.size and h.max() > 0 else np.zeros_like(h)
    # Square cells of the padded square; the image's long side holds whole cells, the last
    # row / column on the short side may be cut by the image edge.
    cell = max(img.width / h.shape[1], img.height / h.shape[0])
    cells = Image.fromarray((h * 255).astype(np.uint8)).resize(
        (round(h.shape[1] * cell), round(h.shape[0] * cell)), Image.NEAREST)
    weight = np.zeros(grey.shape[:2], np.float32)
    c = np.asarray(cells, np.float32)[: img.height, : img.width] / 255.0
    weight[: c.shape[0], : c.shape[1]] = c * alpha
    out = grey * (1 - weight[..., None]) + np.asarray(colour, np.float32) * weight[..., None]
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = max(4, img.width // 40)
    if peak is not None:
        _mark(draw, [v * s for v in peak], 1.6 * r, None, (255, 255, 255), width=3)
    if point is not None:
        _mark(draw, [v * s for v in point], r, colour, (0, 0, 0))
    if title:
        draw.text((4, 2), title, fill=tuple(colour), font=_font(max(11, img.width // 24)),
                  stroke_width=2, stroke_fill=(0, 0, 0))
    return img


def draw_word_maps(image: Image.Image | np.ndarray, words: Sequence[str],
                   maps: Sequence[np.ndarray], points: Sequence[Sequence[float]] | None = None,
                   peaks: Sequence[Sequence[float]] | None = None, *,
                   indices: Sequence[int] | None = None, cols: int = 6, size: int = 160,
                   titles: Sequence[str] | None = None) -> Image.Image:
    """Every word's attention map in its colour (as the trace draws it), in caption order.

    Args:
        image: the original image.
        words: the caption's words.
        maps: per word an ``(h', w')`` map over the image.
        points: per word the point head's point (pixels), drawn as a dot.
        peaks: per word the map's peak (pixels), drawn as a white ring.
        indices: the words to show (default all).
        cols: panels per row.
        size: panel side.
        titles: per shown panel (default the word).
    """
    colours = word_colours(len(words))
    indices = list(range(len(words))) if indices is None else list(indices)
    panels = []
    for j, i in enumerate(indices):
        panels.append(draw_word_map(
            image, maps[i], colours[i], point=None if points is None else points[i],
            peak=None if peaks is None else peaks[i], min_side=size,
            title=titles[j] if titles is not None else f"{i}: {words[i]}"))
    if not panels:
        return side_by_side([Image.new("RGB", (size, size), (255, 255, 255))], ["(no words)"])
    rows = [panels[k:k + cols] for k in range(0, len(panels), cols)]
    if len(rows) > 1 and len(rows[-1]) < cols:
        rows[-1] = rows[-1] + [Image.new("RGB", panels[0].size, (255, 255, 255))] * (
            cols - len(rows[-1]))
    return image_grid(rows)


#: Colours of the shapes world's colour words (DESIGN.md section 4), for the lens grid.
SHAPES_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 200), "orange": (240, 140, 30)}


def draw_lens_grid(image: Image.Image | np.ndarray, words: Sequence[Sequence[str]], *,
                   min_side: int = 448, title: str | None = None) -> Image.Image:
    """The logit lens's top word in each grid cell, written over the image.

    Args:
        image: the original image.
        words: ``h'`` rows of ``w'`` words over the image (:meth:`LogitLens.grid_words`,
            cropped to the visible cells); the grid is assumed to cover the padded square
            of the image's longest side.
        min_side: upscale small images to at least this side.
        title: written at the top.

    Colour words are written in their colour, shape words in white, other words in grey.
    """
    img, _ = _canvas(image, min_side)
    img = Image.blend(img, Image.new("RGB", img.size, (0, 0, 0)), 0.35)
    draw = ImageDraw.Draw(img)
    rows = len(words)
    cols = max((len(r) for r in words), default=0)
    # Square cells of the padded square (the grid's own geometry), cut at the image edge.
    cell = max(img.width / max(cols, 1), img.height / max(rows, 1))
    font = _font(max(8, int(cell / 4.2)))
    for r in range(rows + 1):
        draw.line([(0, r * cell), (img.width, r * cell)], fill=(90, 90, 90))
    for c in range(cols + 1):
        draw.line([(c * cell, 0), (c * cell, img.height)], fill=(90, 90, 90))
    for r, row in enumerate(words):
        for c, word in enumerate(row):
            key = word.strip().lower()
            fill = SHAPES_RGB.get(key, (255, 255, 255) if key in ("circle", "square", "triangle")
                                  else (150, 150, 150))
            draw.text((c * cell + cell / 2, r * cell + cell / 2), word[:9], fill=fill, font=font,
                      anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    if title:
        draw.text((4, 2), title, fill=(255, 255, 255), font=_font(max(11, img.width // 30)),
                  stroke_width=2, stroke_fill=(0, 0, 0))
    return img


def draw_prompted_mask(image: Image.Image | np.ndarray, mask: np.ndarray,
                       points: Sequence[Sequence[float]], labels: Sequence[int], *,
                       min_side: int = 256, colour: Sequence[int] = (30, 144, 255)) -> Image.Image:
    """A SAM mask with the point prompts that made it (green positive, red negative)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    shown = overlay_mask(img, mask, colour)
    return draw_boxes(shown, [], points=[tuple(p) for p in points],
                      point_labels=[int(v) for v in labels], min_side=min_side)


def line_plot(series: dict[str, Sequence[float]], out: Path | str, *, xlabel: str, ylabel: str,
              title: str | None = None, x: Sequence[float] | None = None,
              hlines: dict[str, float] | None = None) -> Path:
    """Lines of values over a shared x (e.g. the logit lens's share per layer) to a PNG.

    Args:
        series: name -> values.
        out: PNG path.
        xlabel, ylabel, title: the axes' and figure's labels.
        x: the x values (default 0, 1, ...); integers are shown as integer ticks.
        hlines: name -> a level drawn as a dashed line (a chance level).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in series.items():
        xs = list(x) if x is not None else list(range(len(values)))
        ax.plot(xs, list(values), marker="o", label=name)
    for name, level in (hlines or {}).items():
        ax.axhline(level, ls="--", lw=1, color="grey")
        ax.text(ax.get_xlim()[0], level, f" {name}", va="bottom", fontsize=8, color="grey")
    if x is None or all(float(v).is_integer() for v in x):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def bar_charts(panels: dict[str, dict[str, tuple[float, float]]], out: Path | str, *,
               ncols: int = 3) -> Path:
    """One small bar chart per panel (e.g. per metric: a bar per compared setting, with its
    spread as an error bar) to a PNG. NaN bars are left empty and marked "n/a".

    Args:
        panels: title -> {bar label -> (value, std)}.
        out: PNG path.
        ncols: panels per row.
    """
    plt = _pyplot()
    n = max(len(panels), 1)
    rows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(rows, ncols, figsize=(3.2 * ncols, 2.6 * rows), squeeze=False)
    for ax, (title, bars) in zip(axes.flat, panels.items()):
        labels = list(bars)
        values = [bars[k][0] for k in labels]
        errs = [0.0 if not np.isfinite(bars[k][1]) else bars[k][1] for k in labels]
        ax.bar(range(len(labels)), np.nan_to_num(values), yerr=errs, capsize=3,
               color=[tuple(c / 255 for c in col) for col in word_colours(len(labels))])
        for i, v in enumerate(values):
            ax.text(i, 0 if not np.isfinite(v) else v, "n/a" if not np.isfinite(v) else f"{v:.3g}",
                    ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(plt, fig, out)
