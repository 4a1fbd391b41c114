"""What the tutorial notebooks (``notebooks/*.ipynb``) call beyond a few lines of glue.

The notebooks teach; they hold no model, training or metric logic of their own. They train
with :mod:`pixelkit.runs` (``run_stage``, ``run_chain``, ``run_study``: the same code as
``pixelkit fit``, ``pixelkit study`` and the quickstart), predict with
:class:`~pixelkit.Predictor`, draw with :mod:`pixelkit.viz` and score with
:mod:`pixelkit.evaluate`. What else they need lives here, documented and tested
(``tests/test_tutorial.py``):

* **where things are**: :func:`repo_root`, :func:`fixtures_dir` (``../shared/fixtures/real``
  beside the checkout), :func:`output_dir` (``outputs/notebooks/<name>``, or
  ``$PIXELKIT_NOTEBOOK_OUT/<name>``), :func:`quickstart_checkpoint`;
* **data**: :func:`shapes_world` writes (or reuses) a shapes world, :func:`shapes_images`
  reads its annotations back per image, :func:`aligned_words` and :func:`trace_segments`
  show how a mouse trace becomes per-token targets, :func:`abridged` prints a real record
  without its long lists;
* **training**: :func:`tour_checkpoint` gives the all-task checkpoint of notebook 01;
* **looking at a run** (a :class:`pixelkit.runs.StageRun`): :func:`trace_snapshots` (the
  same images' traces at successive checkpoints), :func:`refer_gallery` (successes and
  failures), :func:`proposal_steps` (heatmaps and proposals before / after NMS);
* **studies**: :func:`study_table` (a :class:`pixelkit.runs.Study` as a DataFrame),
  :func:`wandb_offline_runs`;
* **models**: :func:`gpu_fit_table` (:func:`pixelkit.modeling.summary.memory_estimate`
  per GPU);
* **where the model looks** (notebook 09): :func:`grounding_checkpoints` (checkpoints that
  differ in location supervision only), :func:`agreement_table` and :func:`lens_table`
  (:mod:`pixelkit.analysis.shapes` over several checkpoints), :func:`random_tiny_sam` (a
  stand-in SAM where no real weights are at hand).

Paths of outputs are never inside the source tree: ``outputs/`` is git-ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.interfaces import REFER_WITHOUT_TRACE
from pixelkit.modeling.summary import memory_estimate
from pixelkit.optional import require

__all__ = [
    "GPUS",
    "REFER_WITHOUT_TRACE",
    "AlignedWords",
    "ProposalSteps",
    "ShapesImage",
    "abridged",
    "agreement_table",
    "aligned_words",
    "fixtures_dir",
    "gpu_fit_table",
    "grounding_checkpoints",
    "interface_answers",
    "lens_table",
    "nms_example",
    "output_dir",
    "proposal_steps",
    "quickstart_checkpoint",
    "random_tiny_sam",
    "refer_gallery",
    "repo_root",
    "shapes_images",
    "shapes_world",
    "split_refer_records",
    "study_table",
    "tour_checkpoint",
    "trace_segments",
    "trace_snapshots",
    "wandb_offline_runs",
]

# --------------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------------


def repo_root() -> Path:
    """The pixelkit checkout (the folder with ``notebooks/`` and ``pyproject.toml``).

    The tutorials run from a checkout with pixelkit installed editable (``make setup`` or
    ``pip install -e .``), so the package's parent is the checkout, wherever the notebook's
    working directory is.

    Raises:
        FileNotFoundError: pixelkit is not run from a checkout (no ``notebooks/`` beside it).
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "notebooks").is_dir() or not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{root} is not a pixelkit checkout: the tutorials need one, "
                                "installed with `make setup` (or `pip install -e .`)")
    return root


def fixtures_dir(root: Path | None = None) -> Path:
    """``../shared/fixtures/real`` beside the checkout: real records in the real formats.

    Raises:
        FileNotFoundError: the folder is missing (CI puts ``../shared`` beside the clone).
    """
    path = (root or repo_root()).parent / "shared" / "fixtures" / "real"
    if not path.is_dir():
        raise FileNotFoundError(f"real-data fixtures not found at {path}: the tutorials expect "
                                "the shared folder beside the checkout (../shared/fixtures/real)")
    return path


def output_dir(name: str) -> Path:
    """``outputs/notebooks/<name>`` in the checkout (git-ignored), created.

    ``$PIXELKIT_NOTEBOOK_OUT`` replaces ``outputs/notebooks`` (the notebook tests point it
    at a temporary folder, so they never reuse or overwrite a reader's runs).
    """
    base = os.environ.get("PIXELKIT_NOTEBOOK_OUT")
    path = Path(base) / name if base else repo_root() / "outputs" / "notebooks" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def quickstart_checkpoint(root: Path | None = None) -> Path | None:
    """``outputs/quickstart/checkpoints/pixelllm.ckpt`` if ``make quickstart`` wrote it."""
    path = (root or repo_root()) / "outputs" / "quickstart" / "checkpoints" / "pixelllm.ckpt"
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def shapes_world(num_images: int, image_size: int = 64, seed: int = 1,
                 val_fraction: float = 0.2, max_objects: int = 3,
                 root: Path | None = None) -> Path:
    """A shapes world (:func:`pixelkit.data.synth.synthesize`), written once and reused.

    Args:
        num_images: images over both splits.
        image_size: canvas side S.
        seed: world seed (the same arguments give byte-identical files). Default 1: the
            quickstart's world is seed 0, so its checkpoint has never seen these images.
        val_fraction: share of the images in the val split.
        max_objects: the most objects per image.
        root: parent folder (default :func:`output_dir` ``("worlds")``).

    Returns:
        The world's root (``annotations/``, ``images/{train,val}/``); the same folder for
        the same arguments, so notebooks share worlds.
    """
    from pixelkit.data.synth import synthesize

    settings = {"num_images": num_images, "image_size": image_size, "seed": seed,
                "val_fraction": val_fraction, "max_objects": max_objects}
    out = (root or output_dir("worlds")) / (
        f"shapes-n{num_images}-s{image_size}-seed{seed}-v{val_fraction:g}-o{max_objects}")
    stamp = out / "world.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return out
    synthesize(out, progress=False, **settings)
    stamp.write_text(json.dumps(settings))
    return out


def abridged(obj: Any, max_items: int = 3, max_chars: int = 80) -> Any:
    """A copy of a JSON-like value with long lists and strings cut, for printing a record.

    Lists keep their first ``max_items`` entries and end with ``"... (N more)"``, except
    short lists of numbers (up to 8: a box, a point) which stay whole; strings longer than
    ``max_chars`` end with ``"..."``.
    """
    if isinstance(obj, Mapping):
        return {k: abridged(v, max_items, max_chars) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and len(obj) <= 8 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
        return list(obj)
    if isinstance(obj, (list, tuple)):
        head = [abridged(v, max_items, max_chars) for v in obj[:max_items]]
        return head + ([f"... ({len(obj) - max_items} more)"] if len(obj) > max_items else [])
    if isinstance(obj, str) and len(obj) > max_chars:
        return obj[:max_chars] + "..."
    return obj


@dataclass
class ShapesImage:
    """One shapes-world image with its annotations, read back from the world's files (pixels).

    Attributes:
        image: the image file.
        image_id: its id in the annotation files.
        boxes: ``(x0, y0, x1, y1)`` of every object, left to right.
        phrases: each object's region phrase ("a small blue circle"), same order.
        expressions: ``(referring expression, box)`` pairs (objects that have one).
        narrative: the Localized Narratives record (the jsonl line as a dict).
    """

    image: Path
    image_id: int
    boxes: list[tuple[float, float, float, float]]
    phrases: list[str]
    expressions: list[tuple[str, tuple[float, float, float, float]]]
    narrative: dict[str, Any]


def shapes_images(world: Path, split: str = "val", n: int = 4,
                  min_objects: int = 1) -> list[ShapesImage]:
    """The first ``n`` images of a shapes-world split with at least ``min_objects`` objects.

    Read through the same readers as training (:func:`pixelkit.data.formats.read_any`), from
    the files the catalog names (``shapes/<split>``).
    """
    from pixelkit.data import catalog
    from pixelkit.data.formats import read_any

    layout = catalog.get(f"shapes/{split}")
    world = Path(world)
    images = layout.image_dir(world)
    regions, _ = read_any(layout.annotation("densecap", world), images, task="densecap")
    refs, _ = read_any(layout.annotation("refer", world), images)
    exprs: dict[Any, list[tuple[str, tuple[float, ...]]]] = {}
    for r in refs:
        exprs.setdefault(r.image_id, []).append((r.text, tuple(float(v) for v in r.boxes[0])))
    narratives = {}
    with open(layout.annotation("trace", world)) as f:
        for line in f:
            rec = json.loads(line)
            narratives[str(rec["image_id"])] = rec
    found = []
    for s in sorted(regions, key=lambda s: int(s.image_id)):
        if len(s.boxes) < min_objects:
            continue
        order = np.argsort((s.boxes[:, 0] + s.boxes[:, 2]) / 2, kind="stable")
        found.append(ShapesImage(image=Path(s.image_path), image_id=int(s.image_id),
                                 boxes=[tuple(float(v) for v in s.boxes[i]) for i in order],
                                 phrases=[s.box_texts[i] for i in order],
                                 expressions=exprs.get(s.image_id, []),  # type: ignore[arg-type]
                                 narrative=narratives.get(str(s.image_id), {})))
        if len(found) == n:
            break
    return found


@dataclass
class AlignedWords:
    """One Localized Narratives record's tokens with their location targets, in pixels.

    Attributes:
        tokens: the caption's tokens (as the tokenizer writes them).
        utterances: per token, the text of the utterance whose location it takes ("" if none).
        utterance_index: per token, that utterance's index (-1: no target).
        boxes: ``(T, 4)`` target box per token, pixels (NaN where none).
        points: ``(T, 2)`` target point per token (the utterance's mean trace point), pixels.
        method: the token -> utterance mapping used.
    """

    tokens: list[str]
    utterances: list[str]
    utterance_index: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    method: str


def aligned_words(record: Mapping[str, Any], tokenizer: Any, image_size: tuple[int, int],
                  method: str = "text") -> AlignedWords:
    """Per-token targets of an LN record (:func:`pixelkit.data.alignment.align_record`).

    Args:
        record: one Localized Narratives record (a jsonl line as a dict).
        tokenizer: the model's tokenizer.
        image_size: ``(W, H)``: the trace is normalised, the result is in pixels.
        method: ``"official"``, ``"relative"`` or ``"text"`` (see the alignment module).
    """
    from pixelkit.data.alignment import align_record

    aligned = align_record(record, tokenizer, method=method)  # type: ignore[arg-type]
    w, h = image_size
    utts = [str(u["utterance"]).strip() for u in record.get("timed_caption") or []]
    idx = aligned.utterance_index
    return AlignedWords(
        tokens=[str(t) for t in tokenizer.convert_ids_to_tokens(aligned.input_ids)],
        utterances=[utts[i] if i >= 0 else "" for i in idx.tolist()],
        utterance_index=idx,
        boxes=aligned.boxes.astype(np.float64) * np.array([w, h, w, h]),
        points=aligned.points.astype(np.float64) * np.array([w, h]),
        method=aligned.method,
    )


def trace_segments(record: Mapping[str, Any], image_size: tuple[int, int]
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record's mouse trace in pixels, and the part of it spoken with each utterance.

    Returns:
        ``(trace (P, 2) sorted by time, [segment (k, 2) per utterance])``; a segment holds
        the trace points with ``start_time <= t <= end_time`` (maybe none).
    """
    w, h = image_size
    pts = [(p["x"] * w, p["y"] * h, p["t"]) for seg in record.get("traces") or [] for p in seg]
    arr = np.array(sorted(pts, key=lambda p: p[2]), np.float64).reshape(-1, 3)
    segments = []
    for u in record.get("timed_caption") or []:
        inside = (arr[:, 2] >= u["start_time"]) & (arr[:, 2] <= u["end_time"])
        segments.append(arr[inside, :2])
    return arr[:, :2], segments


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def tour_checkpoint(out: Path, *, data_root: Path, steps: Mapping[str, int] | int,
                    prefer_quickstart: bool = True, **settings: Any) -> Path:
    """The all-task checkpoint of the tour: the quickstart's, else a small one trained here.

    Args:
        out: the notebook's output folder (the small checkpoint is ``out/pixelllm.ckpt``).
        data_root: the shapes world to train on when there is no quickstart checkpoint.
        steps: steps per stage of the small chain.
        prefer_quickstart: use ``outputs/quickstart/checkpoints/pixelllm.ckpt`` if present.
        **settings: passed to :func:`pixelkit.runs.run_chain`.

    Returns:
        A checkpoint :meth:`Predictor.from_checkpoint` reads.
    """
    ckpt = quickstart_checkpoint() if prefer_quickstart else None
    if ckpt is not None:
        return ckpt
    from pixelkit.checkpoint import load_model, save_model
    from pixelkit.runs import run_chain
    from pixelkit.stages import STAGES

    runs = run_chain(list(STAGES), out=out, data_root=data_root, steps=steps, **settings)
    last = runs[list(STAGES)[-1]]
    model, meta = load_model(last.last)
    return save_model(model, Path(out) / "pixelllm.ckpt", stage="all (tutorial chain)",
                      stages=list(STAGES), trained_on=meta.get("trained_on", []),
                      world=f"pixelkit shapes world ({model.config.image_size} px)",
                      steps={s: r.steps for s, r in runs.items()},
                      metrics=dict(last.val))


# --------------------------------------------------------------------------------------------
# Looking at runs
# --------------------------------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return int(digits) if path.stem.startswith("step") and digits else None


def trace_snapshots(checkpoints: Any, images: Sequence[Any],
                    labels: Sequence[str] | None = None, min_side: int = 160) -> Any:
    """The same images' generated narratives with their traces, one row per checkpoint.

    Args:
        checkpoints: checkpoints in training order, or a :class:`StageRun` trained with
            ``snapshot_every``: its starting checkpoint ("start") then its snapshots.
        images: image paths (or arrays / PIL images).
        labels: one row title per checkpoint (default ``step N`` from ``stepNNNNN.ckpt``).
        min_side: panel size.

    Returns:
        A PIL image: rows = checkpoints, columns = images.
    """
    from pixelkit.predictor import Predictor
    from pixelkit.runs import StageRun
    from pixelkit.viz import draw_trace, image_grid

    if isinstance(checkpoints, StageRun):
        run = checkpoints
        checkpoints = ([run.init_from] if run.init_from else []) + list(run.snapshots)
        if labels is None and run.init_from:
            labels = ["start"] + [f"step {_step_of(p)}" for p in run.snapshots]
    rows, titles = [], []
    for i, ckpt in enumerate(checkpoints):
        p = Predictor.from_checkpoint(ckpt)  # CUDA when there is one
        encoded = p.encode_images(list(images))
        results = p.caption_batch(encoded, task="trace")
        rows.append([draw_trace(e.image, r.words, r.points, min_side=min_side)
                     for e, r in zip(encoded, results)])
        step = _step_of(Path(ckpt))
        titles.append(labels[i] if labels else (f"step {step}" if step is not None else
                                                Path(ckpt).stem))
    return image_grid(rows, row_titles=titles)


def split_refer_records(records: Sequence[Mapping[str, Any]], threshold: float = 0.5
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Referring predictions (:func:`pixelkit.evaluate.predict_refer`) split by IoU.

    Returns:
        ``(successes, failures)``: each record with its ``iou`` added; successes (IoU >
        ``threshold``, the P@0.5 rule) best first, failures worst first.
    """
    from pixelkit.eval import box_iou_pairs

    if not records:
        return [], []
    # a written answer without a box that parses (``box`` null) is a miss at IoU 0
    ious = box_iou_pairs([r["box"] if r["box"] is not None else [0.0] * 4 for r in records],
                         [r["gt_box"] for r in records])
    rows = [{**r, "iou": float(i)} for r, i in zip(records, ious)]
    good = sorted([r for r in rows if r["iou"] > threshold], key=lambda r: -r["iou"])
    bad = sorted([r for r in rows if r["iou"] <= threshold], key=lambda r: r["iou"])
    return good, bad


def refer_gallery(records: Sequence[Mapping[str, Any]], n: int = 4, min_side: int = 192) -> Any:
    """Referring predictions drawn side by side: predicted box red, ground truth green.

    Args:
        records: refer prediction records (with ``image``, ``expression``, ``box``,
            ``gt_box``; ``iou`` when present goes in the title).
        n: how many.
        min_side: panel size.

    Returns:
        A PIL image (a white placeholder with a note when there are no records).
    """
    from PIL import Image

    from pixelkit.predictor import load_image
    from pixelkit.viz import draw_refer, side_by_side

    panels, titles = [], []
    for r in list(records)[:n]:
        panels.append(draw_refer(load_image(r["image"]), r["box"], r["gt_box"],
                                 min_side=min_side))
        iou = f" IoU {r['iou']:.2f}" if "iou" in r else ""
        titles.append(f"{r['expression']}{iou}")
    if not panels:
        return side_by_side([Image.new("RGB", (min_side * 2, 40), (255, 255, 255))],
                            ["(none)"])
    return side_by_side(panels, titles)


@dataclass
class ProposalSteps:
    """The proposal head's steps on one image (pixels of the original image).

    Attributes:
        heatmaps: per pyramid level, the CenterNet centre heatmap (sigmoid), ``(h, w)``
            over the image (the padding of non-square inputs cropped away).
        level_shapes: the ``(h, w)`` cell grid of each level.
        before_nms: ``(boxes (N, 4), scores (N,))``: every heatmap peak above the score
            threshold among the top-k.
        after_nms: the same after NMS and ``max_detections``: the proposals dense
            captioning captions.
    """

    heatmaps: list[np.ndarray]
    level_shapes: list[tuple[int, int]]
    before_nms: tuple[np.ndarray, np.ndarray]
    after_nms: tuple[np.ndarray, np.ndarray]

    def level_titles(self) -> list[str]:
        """``"level i: h x w cells, peak p"`` per level (titles for the heatmap pictures)."""
        return [f"level {i}: {h}x{w} cells, peak {float(m.max()):.2f}"
                for i, ((h, w), m) in enumerate(zip(self.level_shapes, self.heatmaps))]


def proposal_steps(predictor: Any, score_threshold: float | None = None,
                   max_regions: int | None = None) -> ProposalSteps:
    """Heatmaps and proposals before / after NMS of the predictor's current image.

    "Before NMS" is :meth:`ProposalHead.decode` with its NMS IoU threshold at 1.0 (nothing
    suppressed) and no cap on the count; "after" is the head's own decode, the one
    :meth:`Predictor.dense_caption` uses.

    Args:
        predictor: a :class:`~pixelkit.Predictor` after ``set_image``.
        score_threshold: minimum peak score (default: the config's).
        max_regions: proposals kept after NMS (default: the config's).
    """
    import torch

    from pixelkit.data.transforms import from_model_boxes

    head = predictor.model.proposal_head
    if head is None:
        raise RuntimeError("this model has no proposal head (ProposalHeadConfig.enabled)")
    image = predictor.image
    with torch.no_grad():
        outs = head(image.features[None])
        heat = [torch.sigmoid(o["heatmap"].float())[0, 0].cpu().numpy() for o in outs]
        nms_iou = head.cfg.nms_iou
        try:
            head.cfg.nms_iou = 1.0
            before = head.decode(outs, score_threshold, head.cfg.topk)[0]
        finally:
            head.cfg.nms_iou = nms_iou
        after = head.decode(outs, score_threshold, max_regions)[0]
    W, H = image.size
    vis = (W / max(W, H), H / max(W, H))  # the image's share of the padded square

    def crop(m: np.ndarray) -> np.ndarray:
        h, w = m.shape
        return m[: max(1, round(h * vis[1])), : max(1, round(w * vis[0]))]

    def px(p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        b = from_model_boxes(p["boxes"].float().cpu().numpy(), (W, H))
        s = p["scores"].float().cpu().numpy()
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        return b[ok], s[ok]

    return ProposalSteps(heatmaps=[crop(h) for h in heat],
                         level_shapes=[tuple(h.shape) for h in heat],
                         before_nms=px(before), after_nms=px(after))


def nms_example(predictor: Any, images: Sequence[Any], score_threshold: float | None = None,
                max_regions: int | None = None) -> tuple[Any, ProposalSteps]:
    """Of some images, the one where NMS removes the most proposals (the first on ties).

    A trained proposal head is clean on most shapes-world images (the 3x3 peak test keeps
    one cell per object and level), so a picture of NMS at work needs an image where it
    has something to do.

    Args:
        predictor: a :class:`~pixelkit.Predictor` with a proposal head.
        images: samples (anything with ``image_path``) or images / paths.
        score_threshold: as :func:`proposal_steps`.
        max_regions: as :func:`proposal_steps`.

    Returns:
        ``(the picked item as given, its ProposalSteps)``; the predictor is left on it.
    """
    if not images:
        raise ValueError("nms_example needs at least one image")
    best: tuple[int, Any, ProposalSteps] | None = None
    for item in images:
        predictor.set_image(getattr(item, "image_path", item))
        steps = proposal_steps(predictor, score_threshold, max_regions)
        removed = len(steps.before_nms[1]) - len(steps.after_nms[1])
        if best is None or removed > best[0]:
            best = (removed, item, steps)
    assert best is not None
    predictor.set_image(getattr(best[1], "image_path", best[1]))
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------


def study_table(study: Any, keys: Sequence[str]) -> Any:
    """A :class:`pixelkit.runs.Study` as a pandas DataFrame: one row per value, the mean and
    standard deviation over seeds of each of ``keys``."""
    pd = require("pandas", "tutorial tables")

    return pd.DataFrame(study.table(keys)).set_index("value").rename_axis(study.param)


def wandb_offline_runs(out: Path) -> list[Path]:
    """The offline W&B run folders under ``out`` (``wandb sync <folder>`` uploads one)."""
    return sorted(Path(out).glob("runs/*/wandb/offline-run-*"))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


#: GPUs by memory (GiB), for :func:`gpu_fit_table`.
GPUS: dict[str, float] = {"T4 / RTX 4080 (16 GB)": 16, "RTX 3090 / 4090, A10 (24 GB)": 24,
                          "A100 40 GB": 40, "L40S (48 GB)": 48, "A100 / H100 80 GB": 80,
                          "H200 (141 GB)": 141}


def gpu_fit_table(configs: Mapping[str, Any], precision: str = "bf16-mixed",
                  gpus: Mapping[str, float] | None = None) -> Any:
    """Which GPU holds which model: a DataFrame of :func:`memory_estimate` per config.

    Per GPU, the GiB left for activations once the weights, gradients and AdamW states
    are in memory (:func:`memory_estimate`); negative: the model does not fit at all.
    Activations need a good part of what is left (they grow with batch size, image size
    and text length), so a small positive number means "only at a tiny batch".

    Args:
        configs: name -> config or preset name.
        precision: the trainer precision.
        gpus: name -> GiB (default :data:`GPUS`).
    """
    pd = require("pandas", "tutorial tables")

    gpus = gpus or GPUS
    rows = []
    for name, cfg in configs.items():
        m = memory_estimate(cfg, precision)
        row: dict[str, Any] = {"model": name, "trainable (M)": round(m["trainable"] / 1e6, 1),
                               "frozen (M)": round(m["frozen"] / 1e6, 1),
                               "weights+grads+AdamW (GiB)": round(m["total_gib"], 2)}
        for g, mem in gpus.items():
            row[g] = round(mem - m["total_gib"], 1)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


# --------------------------------------------------------------------------------------------
# Where the model looks (notebook 09)
# --------------------------------------------------------------------------------------------


def grounding_checkpoints(out: Path, *, data_root: Path, steps: Mapping[str, int],
                          **settings: Any) -> dict[str, Path]:
    """Three checkpoints that differ in their location supervision only.

    * **caption only**: the caption stage (no location target at all: the point head is
      untrained);
    * **caption → refer**: then the refer stage (a box at EOS: sentence-level location);
    * **caption → trace → refer**: the same caption checkpoint, the trace stage (a point per
      word: dense location), then the same refer stage.

    Both refer stages train on :data:`~pixelkit.interfaces.REFER_WITHOUT_TRACE` for ``steps["refer"]`` steps from
    the same seed, so the two last checkpoints differ by the trace stage alone. Trained with
    :func:`pixelkit.runs.run_chain` / :func:`~pixelkit.runs.run_stage` into ``out/with_trace``
    and ``out/without_trace``.

    Args:
        out: the notebook's output folder.
        data_root: the shapes world.
        steps: ``{"caption": n, "trace": n, "refer": n}``.
        **settings: :func:`~pixelkit.runs.run_stage` settings for every stage
            (``batch_size``, ``val_limit``, ...).

    Returns:
        ``{name: checkpoint}`` in the order above.
    """
    from pixelkit.runs import run_chain, run_stage

    chain = run_chain(["caption", "trace"], out=Path(out) / "with_trace", steps=steps,
                      data_root=data_root, **settings)
    refer = {"overrides": {"data.train": REFER_WITHOUT_TRACE}, "steps": steps["refer"],
             "data_root": data_root, **settings}
    without = run_stage("refer", out=Path(out) / "without_trace",
                        init_from=chain["caption"].last, **refer)
    with_trace = run_stage("refer", out=Path(out) / "with_trace",
                           init_from=chain["trace"].last, **refer)
    return {"caption only": chain["caption"].last, "caption → refer": without.last,
            "caption → trace → refer": with_trace.last}


def agreement_table(checkpoints: Mapping[str, Any], data_root: Path,
                    texts: Sequence[str] = ("narrative", "caption", "generated"),
                    limit: int = 100, methods: Mapping[str, tuple[Any, str]] | None = None
                    ) -> Any:
    """:func:`pixelkit.analysis.agreement` for several checkpoints and texts, as a DataFrame.

    Args:
        checkpoints: name -> checkpoint (or a :class:`~pixelkit.Predictor`).
        data_root: the shapes world (its val split is used).
        texts: :data:`pixelkit.analysis.TEXTS` to score.
        limit: val images.
        methods: the attention aggregations (default
            :data:`pixelkit.analysis.DEFAULT_METHODS`).

    Returns:
        One row per (checkpoint, text): the words counted, for each method the share whose
        attention peak is in a matching object's box, the point head's share, and the
        chance levels (cells for a peak, area for a point).
    """
    pd = require("pandas", "tutorial tables")
    from pixelkit.analysis import agreement
    from pixelkit.predictor import Predictor

    rows = []
    for name, ckpt in checkpoints.items():
        p = ckpt if isinstance(ckpt, Predictor) else Predictor.from_checkpoint(ckpt)
        for text in texts:
            result = agreement(p, data_root, limit=limit, text=text, methods=methods)
            summary = result.summary()
            row: dict[str, Any] = {"checkpoint": name, "text": text,
                                   "words": summary[0]["words"] if summary else 0}
            for r in summary:
                row[f"attention: {r['method']}"] = r["attention peak in box"]
            first = summary[0] if summary else {}
            row["point head"] = first.get("point head in box", float("nan"))
            row["chance (cells)"] = first.get("chance (cells)", float("nan"))
            row["chance (area)"] = first.get("chance (area)", float("nan"))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["checkpoint", "text"])


def lens_table(checkpoints: Mapping[str, Any], data_root: Path, limit: int = 50) -> Any:
    """:func:`pixelkit.analysis.lens_share` per checkpoint, as a DataFrame: one row per layer
    (0: the LM's input), columns ``(checkpoint, measure)`` with the measures

    * ``colour or shape``: in-object cells whose top word is the object's colour or shape;
    * ``location``: in-object cells whose top word is one of the object's location words;
    * ``background colour/shape``: background cells whose top word is a colour or shape
      word (how often the lens says one where there is nothing).
    """
    pd = require("pandas", "tutorial tables")
    from pixelkit.analysis import lens_share
    from pixelkit.predictor import Predictor

    columns: dict[tuple[str, str], list[float]] = {}
    for name, ckpt in checkpoints.items():
        p = ckpt if isinstance(ckpt, Predictor) else Predictor.from_checkpoint(ckpt)
        share = lens_share(p, data_root, limit=limit)
        columns[(name, "colour or shape")] = share.match
        columns[(name, "location")] = share.location
        columns[(name, "background colour/shape")] = share.background_attribute
    table = pd.DataFrame(columns)
    table.index.name = "layer"
    return table


def random_tiny_sam(seed: int = 0) -> Any:
    """A random ``transformers.SamModel`` with a 64 px input (two ViT blocks): the same
    pipeline as a real SAM, in a second, with masks that mean nothing. For running the
    attention-as-prompts code where no SAM weights are at hand (the tests use it too)."""
    import torch
    from transformers import SamConfig, SamModel

    torch.manual_seed(seed)
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 64,
              "output_channels": 16, "image_size": 64, "patch_size": 16, "window_size": 2,
              "global_attn_indexes": [1], "num_pos_feats": 8}
    cfg = SamConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 16, "image_size": 64, "patch_size": 16,
                               "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "mlp_dim": 32, "iou_head_hidden_dim": 16})
    return SamModel(cfg).eval()


def interface_answers(checkpoints: Mapping[str, Any], world: Path, n: int = 3,
                      min_side: int = 160) -> Any:
    """Each location format's answers on the same val images, a row per format: per image
    the referring box of its first expression (red; ground truth green; nothing drawn for
    an answer that did not parse) and the generated narrative's words at their points.

    Args:
        checkpoints: format -> checkpoint (e.g. the runs of
            :func:`pixelkit.interfaces.compare_interfaces`).
        world: the shapes world.
        n: images.
        min_side: panel size.
    """
    from pixelkit.predictor import Predictor
    from pixelkit.viz import draw_refer, draw_trace, image_grid

    shown = [s for s in shapes_images(world, "val", n * 3) if s.expressions][:n]
    rows, cols = [], []
    for ckpt in checkpoints.values():
        predictor = Predictor.from_checkpoint(ckpt)
        panels = []
        for s in shown:
            predictor.set_image(s.image)
            expression, truth = s.expressions[0]
            answer = predictor.refer(expression)
            caption = predictor.caption()
            panels.append(draw_refer(predictor.image.image, answer.box, truth, min_side=min_side))
            panels.append(draw_trace(predictor.image.image, caption.words, caption.points,
                                     min_side=min_side))
        rows.append(panels)
    for s in shown:
        cols += [s.expressions[0][0][:24], "narrative"]
    return image_grid(rows, row_titles=list(checkpoints), col_titles=cols)
