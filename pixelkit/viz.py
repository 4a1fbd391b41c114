"""Pictures: per-word traces, boxes, dense captions and loss curves.

Shared by the quickstart report, the W&B image logging, the demo and the notebooks, so a
trace looks the same everywhere. Inputs are in pixels of the original image (the public
convention); small images are upscaled first so words stay legible.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = Sequence[float]


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
        A new RGB image (the start is marked with a ring, the end with a square).
    """
    img, s = _canvas(image, min_side)
    draw = ImageDraw.Draw(img)
    n = len(words) if upto is None else min(upto, len(words))
    cols = word_colours(len(words))
    pts = [(float(x) * s, float(y) * s) for x, y in points[:n]]
    r = max(3, img.width // 90)
    font = _font(max(10, img.width // 32))
    for i in range(1, len(pts)):
        draw.line([pts[i - 1], pts[i]], fill=cols[i], width=max(1, r // 2))
    for i, (x, y) in enumerate(pts):
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
    if highlight is not None and highlight < n:
        x, y = pts[highlight]
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

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
