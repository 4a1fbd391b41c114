"""The quickstart's final evaluation (``metrics.json``) and ``report.md`` with pictures.

Metrics are computed on the shapes world's val split with the same functions as
``pixelkit eval`` (:mod:`pixelkit.evaluate`), plus trace *pointing accuracy*: in generated
whole-image narratives, the share of colour and shape words whose predicted point falls
inside the box of an object with that colour / shape (:func:`pixelkit.eval.pointing_counts`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixelkit.files import atomic_write_text
from pixelkit.viz import draw_boxes, draw_trace, loss_curves, side_by_side

#: The quality bar of the quickstart (issue 4): key -> (target, higher is better).
TARGETS: dict[str, tuple[float, bool]] = {
    "refer.p_at_0.5": (0.85, True),
    "loca_caption.exact_match": (0.85, True),
    "trace.pointing_accuracy": (0.80, True),
    "densecap.mAP": (0.30, True),
    "wall_seconds": (600.0, False),
}
#: The tasks the quickstart's final evaluation scores (:func:`val_metrics`).
QUICKSTART_TASKS: tuple[str, ...] = ("refer", "loca-caption", "caption", "trace", "densecap")


def shapes_objects(instances_json: Path) -> dict[int, list[tuple[list[float], set[str]]]]:
    """image id -> [(xyxy box, {colour, shape, size})] from the shapes world's instances file."""
    data = json.loads(Path(instances_json).read_text())
    shapes = {c["id"]: c["name"] for c in data["categories"]}
    objects: dict[int, list[tuple[list[float], set[str]]]] = {}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        attrs = {shapes[a["category_id"]], a.get("colour", ""), a.get("size", "")} - {""}
        objects.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], attrs))
    return objects


def pointing_accuracy_on(predictor: Any, data: Path, split: str = "val",
                         limit: int | None = None) -> tuple[dict[str, float], list[Any]]:
    """Pointing accuracy of generated whole-image narratives on a shapes-world split.

    Returns:
        (metrics, per-image ``(image path, CaptionResult, objects)`` for the pictures).
    """
    from pixelkit.data import catalog
    from pixelkit.eval import pointing_counts

    layout = catalog.get(f"shapes/{split}")
    objects = shapes_objects(layout.annotation("detection", data))
    ids = sorted(objects)[:limit] if limit else sorted(objects)
    paths = [layout.image_path(i, data) for i in ids]
    hits = total = 0
    shown = []
    for start in range(0, len(paths), 32):
        encoded = predictor.encode_images(paths[start:start + 32])
        results = predictor.caption_batch(encoded, task="trace")
        for path, image_id, res in zip(paths[start:start + 32], ids[start:start + 32], results):
            h, t = pointing_counts(res.words, res.points, objects[image_id])
            hits, total = hits + h, total + t
            shown.append((path, res, objects[image_id]))
    return {"pointing_accuracy": hits / total if total else float("nan"),
            "pointing_words": total}, shown


def val_metrics(predictor: Any, data: Path, tasks: Sequence[str] = QUICKSTART_TASKS,
                limit: int | None = None, pointing: bool = True, **scorers: Any
                ) -> dict[str, Any]:
    """A model's metrics on a shapes world's val split, with pointing accuracy.

    Args:
        predictor: the :class:`~pixelkit.predictor.Predictor`.
        data: the world's root (``pixelkit synth --out``).
        tasks: :data:`pixelkit.evaluate.EVAL_TASKS` keys, evaluated in order.
        limit: the first ``limit`` samples of each task (None: all).
        pointing: also generate whole-image narratives for the pointing accuracy.
        **scorers: per task key (``loca_caption``...), options for
            :func:`pixelkit.evaluate.evaluate` (a shared METEOR scorer, ``metrics``).

    Returns:
        A flat dict, keys like ``refer.p_at_0.5``; with ``pointing``,
        ``trace.pointing_accuracy`` and the
        generated narratives' ``trace.caption_parse_failure_rate`` (phrases whose box did
        not parse; 0 for ``regression``, which writes none).
    """
    from pixelkit.data import catalog
    from pixelkit.evaluate import evaluate, load_samples

    val = catalog.get("shapes/val")
    metrics: dict[str, Any] = {}
    for task in tasks:
        key = task.replace("-", "_")
        samples = load_samples(task, val.annotation(key, data), val.image_dir(data))[0]
        samples = samples[:limit] if limit else samples
        result, _ = evaluate(task, predictor, samples, batch_size=32, progress=True,
                             **scorers.get(key, {}))
        metrics.update({f"{key}.{name}": value for name, value in result.items()})
    if not pointing:
        return metrics
    points, shown = pointing_accuracy_on(predictor, data, limit=limit)
    metrics.update({f"trace.{k}": v for k, v in points.items()})
    phrases = sum(res.phrases for _, res, _ in shown)
    metrics["trace.caption_parse_failure_rate"] = (
        sum(res.parse_failures for _, res, _ in shown) / phrases if phrases else 0.0)
    return metrics


def evaluate_final(out: Path, last_ckpt: Path, stages: dict[str, Any],
                   limit: int | None = None) -> tuple[dict[str, Any], Path]:
    """Write the slim all-task checkpoint and evaluate it on the val split.

    Returns:
        (flat metrics dict with keys like ``refer.p_at_0.5``, the checkpoint path).
    """
    from pixelkit.checkpoint import load_model, save_model
    from pixelkit.eval.caption import MeteorScorer
    from pixelkit.predictor import Predictor

    model, meta = load_model(last_ckpt)
    predictor = Predictor(model)
    # One METEOR JVM for the three captioning tasks: its first call loads the paraphrase
    # tables (~5 s idle), later calls take well under a second each.
    with MeteorScorer() as meteor:
        metrics = val_metrics(predictor, out / "data", limit=limit,
                              loca_caption={"meteor": meteor}, caption={"meteor": meteor},
                              densecap={"meteor_fn": lambda c, r: meteor.score(c, r)[1]})
    ckpt = save_model(model, out / "checkpoints" / "pixelllm.ckpt", stage="all (quickstart chain)",
                      stages=list(stages), trained_on=meta.get("trained_on", []),
                      world="pixelkit shapes world (64 px)",
                      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics, ckpt


def _pictures(out: Path, ckpt: Path, n: int = 4) -> dict[str, Path]:
    """PNGs of traces, referring boxes, region captions and dense captions on val images."""
    from pixelkit.data import catalog
    from pixelkit.predictor import Predictor

    data = out / "data"
    val = catalog.get("shapes/val")
    predictor = Predictor.from_checkpoint(ckpt)
    pics = out / "report"
    pics.mkdir(parents=True, exist_ok=True)
    refer = json.loads(val.annotation("refer", data).read_text())
    exprs: dict[int, list[str]] = {}
    for im in refer["images"]:
        exprs.setdefault(im["original_id"], []).append(im["caption"])
    objects = shapes_objects(val.annotation("detection", data))
    ids = sorted(objects)[:n]
    rows = {"traces": [], "refer": [], "regions": [], "densecap": []}
    for image_id in ids:
        path = val.image_path(image_id, data)
        predictor.set_image(path)
        image = predictor.image.image
        cap = predictor.caption()
        rows["traces"].append(draw_trace(image, cap.words, cap.points))
        boxes, labels = [], []
        for e in exprs.get(image_id, []):
            box = predictor.refer(e).box
            if box is not None:  # a written answer that did not parse: nothing to draw
                boxes.append(box)
                labels.append(e)
        rows["refer"].append(draw_boxes(image, boxes, labels))
        gt = [b for b, _ in objects[image_id]]
        regions = predictor.caption_boxes(gt)
        rows["regions"].append(draw_boxes(image, gt, [r.text for r in regions]))
        dense = predictor.dense_caption(max_regions=6, score_threshold=0.2)
        rows["densecap"].append(draw_boxes(image, dense.boxes, dense.captions, dense.scores))
    files = {}
    for name, ims in rows.items():
        files[name] = pics / f"{name}.png"
        side_by_side(ims).save(files[name])
    return files


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(out: Path, metrics: dict[str, Any], stages: dict[str, Any], ckpt: Path) -> Path:
    """``out/report.md``: quality bar, per-stage validation metrics, pictures, loss curves."""
    files = _pictures(out, ckpt)
    csvs = {s: info["csv"] for s, info in stages.items() if info.get("csv") and Path(info["csv"]).exists()}
    curves = loss_curves(csvs, out / "report" / "loss_curves.png") if csvs else None
    lines = ["# pixelkit quickstart report", "",
             "The tiny PixelLLM trained on the shapes world (CPU), evaluated on its val split.", "",
             "## Quality bar", "", "| metric | value | target | met |", "|---|---|---|---|"]
    for key, (target, higher) in TARGETS.items():
        v = metrics.get(key)
        ok = v is not None and (v >= target if higher else v <= target)
        lines.append(f"| `{key}` | {_fmt(v)} | {'≥' if higher else '≤'} {target:g} | "
                     f"{'yes' if ok else '**no**'} |")
    lines += ["", "## All final metrics (val split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Per stage (teacher-forced validation metrics at the end of each stage)", ""]
    keys = sorted({k for s in stages.values() for k in s["val"]
                   if any(t in k for t in ("p_at_0.5", "/l1", "token_acc", "val/loss"))})
    lines += ["| stage | steps | seconds | " + " | ".join(f"`{k[4:]}`" for k in keys) + " |",
              "|---" * (len(keys) + 3) + "|"]
    for s, info in stages.items():
        lines.append(f"| {s} | {info['steps']} | {info.get('seconds', '')} | "
                     + " | ".join(_fmt(info["val"].get(k, "")) for k in keys) + " |")
    lines += ["", "## Pictures (val images)", "",
              "Word-coloured traces of generated narratives (ring: first word, square: last):", "",
              f"![traces]({files['traces'].relative_to(out)})", "",
              "Referring expressions -> predicted boxes:", "",
              f"![refer]({files['refer'].relative_to(out)})", "",
              "Captions of the ground-truth boxes (location-conditioned captioning):", "",
              f"![regions]({files['regions'].relative_to(out)})", "",
              "Dense captioning (proposals, captions, scores):", "",
              f"![densecap]({files['densecap'].relative_to(out)})", ""]
    if curves:
        lines += ["## Loss curves", "", f"![loss]({curves.relative_to(out)})", ""]
    recipe = Path(__file__).with_name("RECIPE.md")
    if recipe.exists():
        lines += [recipe.read_text()]
    lines += ["", f"Checkpoint: `{ckpt.relative_to(out)}` (`pixelkit demo --ckpt {ckpt}`)."]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
