"""What the tutorial notebooks (``notebooks/*.ipynb``) call beyond a few lines of glue.

The notebooks teach; they hold no model, training or metric logic of their own. Everything
they do that is more than calling :class:`~pixelkit.Predictor`, :mod:`pixelkit.viz` or
:mod:`pixelkit.evaluate` lives here, documented and tested (``tests/test_tutorial.py``):

* **where things are**: :func:`repo_root`, :func:`fixtures_dir` (``../shared/fixtures/real``
  beside the checkout), :func:`output_dir` (``outputs/notebooks/<name>``, or
  ``$PIXELKIT_NOTEBOOK_OUT/<name>``), :func:`quickstart_checkpoint`;
* **data**: :func:`shapes_world` writes (or reuses) a shapes world, :func:`aligned_words`
  and :func:`trace_segments` show how a mouse trace becomes per-token targets,
  :func:`abridged` prints a real record without its long lists;
* **training**: :func:`train_stage` runs one stage's YAML (``pixelkit/configs/<stage>.yaml`` for the
  shapes world, ``pixelkit/configs/real/<stage>.yaml`` for the real datasets) through LightningCLI
  in this process with the notebook's settings, :func:`train_chain` runs stages in turn,
  :func:`tour_checkpoint` gives the all-task checkpoint of notebook 01;
* **looking at a run**: :class:`StageRun` (checkpoints, CSV history, validation samples),
  :func:`trace_snapshots` (the same images' traces at successive checkpoints),
  :func:`refer_gallery` (successes and failures), :func:`proposal_steps` (heatmaps and
  proposals before / after NMS);
* **studies**: :func:`run_study` (one run per value, logged to W&B offline by default),
  :func:`study_table`, :func:`wandb_offline_runs`;
* **models**: :func:`describe_model` (component tree and parameter counts, on the meta
  device as ``pixelkit info``), :func:`memory_estimate` and :func:`gpu_fit_table`.

Paths of outputs are never inside the source tree: ``outputs/`` is git-ignored.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.optional import require

__all__ = [
    "GPUS",
    "AlignedWords",
    "ProposalSteps",
    "Scene",
    "StageRun",
    "abridged",
    "aligned_words",
    "describe_model",
    "fixtures_dir",
    "gpu_fit_table",
    "memory_estimate",
    "nms_example",
    "output_dir",
    "proposal_steps",
    "quickstart_checkpoint",
    "refer_gallery",
    "repo_root",
    "run_study",
    "shapes_scenes",
    "shapes_world",
    "split_refer_records",
    "stage_config",
    "study_table",
    "tour_checkpoint",
    "trace_segments",
    "trace_snapshots",
    "train_chain",
    "train_stage",
    "wandb_offline_runs",
]

STAGES = ("caption", "trace", "refer", "densecap")


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
class Scene:
    """One shapes-world image with its annotations from the world's files (pixels).

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


def shapes_scenes(world: Path, split: str = "val", n: int = 4, min_objects: int = 1) -> list[Scene]:
    """The first ``n`` images of a shapes-world split with at least ``min_objects`` objects.

    Read through the same readers as training (:func:`pixelkit.data.formats.read_any`).
    """
    from pixelkit.data.formats import read_any

    world = Path(world)
    ann, images = world / "annotations", world / "images" / split
    regions, _ = read_any(ann / f"vg_{split}.json", images, task="densecap")
    refs, _ = read_any(ann / f"finetune_refcoco_{split}.json", images)
    exprs: dict[Any, list[tuple[str, tuple[float, ...]]]] = {}
    for r in refs:
        exprs.setdefault(r.image_id, []).append((r.text, tuple(float(v) for v in r.boxes[0])))
    narratives = {}
    with open(ann / f"localized_narratives_{split}.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            narratives[str(rec["image_id"])] = rec
    scenes = []
    for s in sorted(regions, key=lambda s: int(s.image_id)):
        if len(s.boxes) < min_objects:
            continue
        order = np.argsort((s.boxes[:, 0] + s.boxes[:, 2]) / 2, kind="stable")
        scenes.append(Scene(image=Path(s.image_path), image_id=int(s.image_id),
                            boxes=[tuple(float(v) for v in s.boxes[i]) for i in order],
                            phrases=[s.box_texts[i] for i in order],
                            expressions=exprs.get(s.image_id, []),  # type: ignore[arg-type]
                            narrative=narratives.get(str(s.image_id), {})))
        if len(scenes) == n:
            break
    return scenes


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


@dataclass
class StageRun:
    """What :func:`train_stage` did: files, metrics and timing of one run.

    Attributes:
        stage: ``caption``, ``trace``, ``refer`` or ``densecap``.
        name: the run's name (its folder under ``out/runs``).
        dir: the run's folder (logs, checkpoints, resolved config).
        config: the resolved YAML that ran (re-run it with ``pixelkit fit --config``).
        last: the last checkpoint (Lightning; :meth:`Predictor.from_checkpoint` reads it).
        init_from: the checkpoint it started from (None: the preset's weights).
        csv: the CSVLogger's ``metrics.csv``.
        val: the last validation metrics (``val/...`` keys).
        steps: optimizer steps done.
        seconds: wall time of the fit.
        snapshots: checkpoints saved every ``snapshot_every`` steps, in step order.
    """

    stage: str
    name: str
    dir: Path
    config: Path
    last: Path
    init_from: Path | None
    csv: Path | None
    val: dict[str, float]
    steps: int
    seconds: float
    snapshots: list[Path] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        """The resolved config as a dict."""
        import yaml

        return yaml.safe_load(self.config.read_text())

    def history(self) -> list[dict[str, float]]:
        """The CSV log, one dict per logged row (``step`` and the metrics logged then)."""
        if self.csv is None or not self.csv.is_file():
            return []
        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in rows]

    def val_history(self, keys: Sequence[str] | None = None) -> list[dict[str, float]]:
        """One dict per validation (``step`` + the ``val/...`` metrics), in step order.

        Args:
            keys: the metrics to keep (default: every ``val/`` metric).
        """
        rows: dict[int, dict[str, float]] = {}
        for r in self.history():
            vals = {k: v for k, v in r.items() if k.startswith("val/")
                    and (keys is None or k in keys)}
            if vals and "step" in r:
                rows.setdefault(int(r["step"]), {"step": int(r["step"])}).update(vals)
        return [rows[s] for s in sorted(rows)]

    def val_samples(self, task: str, limit: int | None = None) -> list[Any]:
        """The samples of the run's first validation source of ``task`` (reader order).

        Works the same on the shapes world and the real datasets: the annotation file and
        images are those of the resolved config.
        """
        from pixelkit.evaluate import load_samples

        for src in self.resolved()["data"].get("val") or []:
            if src["task"] == task:
                return load_samples(task, src["ann"], src.get("images"), limit=limit)[0]
        raise ValueError(f"run {self.name} has no validation source of task {task!r}")

    def predictor(self, device: str | None = None) -> Any:
        """A :class:`~pixelkit.Predictor` on the run's last checkpoint."""
        from pixelkit.predictor import Predictor

        return Predictor.from_checkpoint(self.last, device=device)


def _rebase_data(path: str, data: Path) -> str:
    """A YAML's data path (``data/shapes/...`` or ``data/<dataset>/...``) under ``data``."""
    for prefix in ("data/shapes/", "data/"):
        if path.startswith(prefix):
            return str(data / path[len(prefix):])
    return path


def stage_config(stage: str, out: Path, *, data: Path, name: str | None = None,
                 init_from: Path | str | None = None, steps: int | None = None,
                 batch_size: int | None = None, val_every: int | None = None,
                 val_limit: int | None = None, accelerator: str | None = None,
                 precision: str | None = None, preset: str | None = None,
                 model: Mapping[str, Any] | None = None,
                 stage_args: Mapping[str, Any] | None = None, real: bool = False,
                 wandb: bool = False, wandb_project: str = "pixelkit-tutorial",
                 wandb_group: str | None = None, prediction_images: bool = False,
                 snapshot_every: int | None = None, seed: int = 0) -> dict[str, Any]:
    """A stage's YAML resolved with a notebook's settings (what :func:`train_stage` runs).

    Args:
        stage: one of ``caption``, ``trace``, ``refer``, ``densecap``.
        out: the notebook's output folder; the run goes to ``out/runs/<name>``.
        data: the data root: a shapes world (replaces ``data/shapes``) or, with ``real``,
            the folder holding the datasets as ``configs/real/*.yaml`` lay them out
            (replaces ``data/``).
        name: the run's name (default: the stage).
        init_from: the checkpoint to start from (default: none, the preset's weights).
        steps: ``trainer.max_steps``.
        batch_size: ``data.batch_size``.
        val_every: validate every this many steps (default: once, at the end, when
            ``steps`` is given; else the YAML's interval).
        val_limit: samples per validation source.
        accelerator: ``cpu``, ``gpu``, ``auto``.
        precision: e.g. ``bf16-mixed`` (default: the YAML's).
        preset: ``tiny``, ``base``, ``paper`` (default: the YAML's).
        model: nested overrides of the model config, e.g. ``{"loss": {"point_weight": 1}}``
            (merged into the YAML's ``model.init_args.model``).
        stage_args: other stage arguments, e.g. ``{"point_weight": 4.0, "lr": 3e-4}``.
        real: use ``configs/real/<stage>.yaml`` (base preset, real datasets, GPU).
        wandb: keep the YAML's W&B logger (offline unless ``WANDB_MODE=online``).
        wandb_project: its project.
        wandb_group: its group (a study's runs share one).
        prediction_images: keep the :class:`PredictionImages` callback (pictures at each
            validation; costs a generation pass).
        snapshot_every: also keep a checkpoint every this many steps (``snapshots/``).
        seed: ``seed_everything``.

    Returns:
        The resolved config dict.
    """
    import yaml

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    from pixelkit.training import resolve_config

    src = resolve_config(f"real/{stage}" if real else stage)
    cfg = yaml.safe_load(src.read_text())
    name = name or stage
    run_dir = Path(out).resolve() / "runs" / name
    data = Path(data).resolve()

    init = cfg["model"]["init_args"]
    init["init_from"] = str(init_from) if init_from else None
    if preset:
        init["preset"] = preset
    if model:
        init["model"] = _merge(init.get("model") or {}, model)
    init.update(stage_args or {})
    cfg["seed_everything"] = seed

    d = cfg["data"]
    for key in ("train", "val"):
        for s in d.get(key) or []:
            s["ann"] = _rebase_data(s["ann"], data)
            if s.get("images"):
                s["images"] = _rebase_data(s["images"], data)
    if batch_size:
        d["batch_size"] = batch_size
    if val_limit:
        d["val_limit"] = val_limit

    t = cfg["trainer"]
    if steps:
        t["max_steps"] = steps
    if val_every or steps:  # else the YAML's own interval (a long real-data run)
        t["val_check_interval"] = min(val_every or t["max_steps"], t["max_steps"])
    t["check_val_every_n_epoch"] = None
    # a few points per validation interval on the loss curves, at most every 10 steps
    t["log_every_n_steps"] = max(1, min(10, t["max_steps"] // 20))
    t["enable_progress_bar"] = False
    t["enable_model_summary"] = False
    t["default_root_dir"] = str(run_dir)
    if accelerator:
        t["accelerator"] = accelerator
    if precision:
        t["precision"] = precision
    loggers = []
    for lg in t.get("logger") or []:
        if "CSVLogger" in lg["class_path"]:
            lg["init_args"].update(save_dir=str(run_dir), name="csv", version="")
            loggers.append(lg)
        elif "WandbLogger" in lg["class_path"] and wandb:
            lg["init_args"].update(save_dir=str(run_dir), project=wandb_project, name=name)
            if wandb_group:
                lg["init_args"]["group"] = wandb_group
            loggers.append(lg)
    t["logger"] = loggers
    callbacks = []
    for cb in t.get("callbacks") or []:
        if "ModelCheckpoint" in cb["class_path"]:
            cb["init_args"]["dirpath"] = str(run_dir / "checkpoints")
        if "PredictionImages" in cb["class_path"] and not prediction_images:
            continue
        callbacks.append(cb)
    if snapshot_every:
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"dirpath": str(run_dir / "snapshots"),
                                        "filename": "step{step:05d}",
                                        "auto_insert_metric_name": False,
                                        "every_n_train_steps": snapshot_every,
                                        "save_top_k": -1, "save_last": False}})
    t["callbacks"] = callbacks
    return cfg


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict merge (``extra`` wins)."""
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) \
            else copy.deepcopy(v)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's info lines and its data-loader warnings off for one in-process fit."""
    names = ["lightning.pytorch", "lightning.fabric", "lightning"]
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LitLogger.*")
            warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            yield
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


def train_stage(stage: str, out: Path, *, data: Path, name: str | None = None,
                quiet: bool = True, **settings: Any) -> StageRun:
    """Train one stage in this process: ``pixelkit fit --config <resolved YAML>``.

    The stage's YAML (``configs/<stage>.yaml``, or ``configs/real/<stage>.yaml`` with
    ``real=True``) is resolved with the settings (:func:`stage_config`), written to
    ``out/configs/<name>.yaml`` and run through :func:`pixelkit.training.cli_main`, exactly
    as ``pixelkit fit`` runs it.

    Args:
        stage: ``caption``, ``trace``, ``refer`` or ``densecap``.
        out: the notebook's output folder.
        data: the data root (see :func:`stage_config`).
        name: the run's name (default: the stage); a second run of the same name replaces
            the first.
        quiet: hide Lightning's info lines (the stage still prints its parameter table).
        **settings: the other arguments of :func:`stage_config` (``steps``, ``init_from``,
            ``batch_size``, ``val_every``, ``accelerator``, ``model``, ``stage_args``, ...).

    Returns:
        The :class:`StageRun`.
    """
    import shutil

    import yaml

    from pixelkit.training import cli_main

    name = name or stage
    cfg = stage_config(stage, out, data=data, name=name, **settings)
    path = Path(out).resolve() / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# resolved from pixelkit/configs/{'real/' if settings.get('real') else ''}"
                    f"{stage}.yaml by pixelkit.tutorial.train_stage\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    run_dir = Path(cfg["trainer"]["default_root_dir"])
    for sub in ("checkpoints", "snapshots", "csv"):  # a rerun must not mix with the last one
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    t0 = time.perf_counter()
    with _quiet() if quiet else contextlib.nullcontext():
        cli = cli_main(["fit", "--config", str(path)])
    seconds = time.perf_counter() - t0
    trainer = cli.trainer
    for lg in trainer.loggers:  # one W&B run per fit, not one run for the whole notebook
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.finish()
    val = {k: float(v) for k, v in trainer.callback_metrics.items()
           if k.startswith("val/") and v.numel() == 1}
    csv_path = run_dir / "csv" / "metrics.csv"
    snaps = sorted((run_dir / "snapshots").glob("step*.ckpt"))
    init = cfg["model"]["init_args"]["init_from"]
    return StageRun(stage=stage, name=name, dir=run_dir, config=path,
                    last=run_dir / "checkpoints" / "last.ckpt",
                    init_from=Path(init) if init else None,
                    csv=csv_path if csv_path.is_file() else None, val=val,
                    steps=int(trainer.global_step), seconds=round(seconds, 1), snapshots=snaps)


def train_chain(stages: Sequence[str], out: Path, *, data: Path,
                steps: Mapping[str, int] | int, init_from: Path | str | None = None,
                **settings: Any) -> dict[str, StageRun]:
    """Train stages in turn, each starting from the previous one's last checkpoint.

    Args:
        stages: e.g. ``("caption", "trace")``.
        out: the notebook's output folder.
        data: the data root.
        steps: steps per stage (a dict by stage, or one number for all).
        init_from: the checkpoint the first stage starts from.
        **settings: passed to every :func:`train_stage` call.

    Returns:
        ``{stage: StageRun}`` in order.
    """
    runs: dict[str, StageRun] = {}
    init = init_from
    for stage in stages:
        n = steps[stage] if isinstance(steps, Mapping) else steps
        runs[stage] = train_stage(stage, out, data=data, init_from=init, steps=n, **settings)
        init = runs[stage].last
        print(f"[pixelkit] {stage}: {runs[stage].steps} steps in {runs[stage].seconds:.0f} s")
    return runs


def tour_checkpoint(out: Path, *, data: Path, steps: Mapping[str, int] | int,
                    prefer_quickstart: bool = True, **settings: Any) -> Path:
    """The all-task checkpoint of the tour: the quickstart's, else a small one trained here.

    Args:
        out: the notebook's output folder (the small checkpoint is ``out/pixelllm.ckpt``).
        data: the shapes world to train on when there is no quickstart checkpoint.
        steps: steps per stage of the small chain.
        prefer_quickstart: use ``outputs/quickstart/checkpoints/pixelllm.ckpt`` if present.
        **settings: passed to :func:`train_chain`.

    Returns:
        A checkpoint :meth:`Predictor.from_checkpoint` reads.
    """
    ckpt = quickstart_checkpoint() if prefer_quickstart else None
    if ckpt is not None:
        return ckpt
    from pixelkit.checkpoint import load_model, save_model

    runs = train_chain(STAGES, out, data=data, steps=steps, **settings)
    model, meta = load_model(runs["densecap"].last)
    return save_model(model, Path(out) / "pixelllm.ckpt", stage="all (tutorial chain)",
                      stages=list(STAGES), trained_on=meta.get("trained_on", []),
                      world=f"pixelkit shapes world ({model.config.image_size} px)",
                      steps={s: r.steps for s, r in runs.items()},
                      metrics={k: v for k, v in runs["densecap"].val.items()})


# --------------------------------------------------------------------------------------------
# Looking at runs
# --------------------------------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return int(digits) if path.stem.startswith("step") and digits else None


def trace_snapshots(checkpoints: StageRun | Sequence[Path], images: Sequence[Any],
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
    ious = box_iou_pairs([r["box"] for r in records], [r["gt_box"] for r in records])
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


def run_study(param: str, values: Sequence[Any], *, stage: str, out: Path, data: Path,
              study: str | None = None, wandb: bool = True, **settings: Any) -> list[StageRun]:
    """One run of ``stage`` per value of one parameter, logged to W&B and CSV.

    Args:
        param: a stage argument (``point_weight``, ``lr``, ``head_lr``, ...) or a dotted
            model-config field (``language_model.lora.r``, ``loss.label_smoothing``).
        values: the values to try.
        stage: the stage to run (e.g. ``trace`` from a caption checkpoint).
        out: the notebook's output folder.
        data: the data root.
        study: the W&B group (default ``<stage>-<param>``).
        wandb: log to W&B (offline unless ``WANDB_MODE=online``).
        **settings: the rest of :func:`train_stage`'s settings, the same for every run
            (``init_from``, ``steps``, ``model``, ...).

    Returns:
        One :class:`StageRun` per value, named ``<param>=<value>``.
    """
    import inspect

    from pixelkit.stages.base import PixelLLMStage

    stage_params = set(inspect.signature(PixelLLMStage.__init__).parameters) - {"self", "model"}
    group = study or f"{stage}-{param}"
    runs = []
    for v in values:
        s = dict(settings)
        if param in stage_params:
            s["stage_args"] = {**(s.get("stage_args") or {}), param: v}
        else:
            nested: dict[str, Any] = {}
            node = nested
            *parents, leaf = param.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
            s["model"] = _merge(s.get("model") or {}, nested)
        run = train_stage(stage, out, data=data, name=f"{param}={v}", wandb=wandb,
                          wandb_group=group, **s)
        print(f"[pixelkit] {param}={v}: {run.steps} steps in {run.seconds:.0f} s")
        runs.append(run)
    return runs


def study_table(runs: Sequence[StageRun], keys: Sequence[str]) -> Any:
    """A pandas DataFrame: one row per run, its name, steps, seconds and final ``keys``."""
    pd = require("pandas", "tutorial tables")

    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.name, "steps": r.steps, "seconds": r.seconds}
        last_train = {k: v for k, v in (r.history() or [{}])[-1].items()}
        for k in keys:
            row[k] = r.val.get(k, last_train.get(k, math.nan))
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def wandb_offline_runs(out: Path) -> list[Path]:
    """The offline W&B run folders under ``out`` (``wandb sync <folder>`` uploads one)."""
    return sorted(Path(out).glob("runs/*/wandb/offline-run-*"))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def describe_model(config: Any, depth: int = 2, device: str = "meta", tree: bool = True) -> str:
    """Component tree and parameter counts of a config, built without weights.

    As ``pixelkit info``: on the ``meta`` device only shapes exist, so the paper model
    (~3.8 B parameters) is described without memory or downloads.

    Args:
        config: a :class:`~pixelkit.PixelLLMConfig` or a preset name.
        depth: levels of the tree.
        device: ``meta`` (shapes only) or ``cpu`` (random weights).
        tree: include the component tree (else the header and the count table only).

    Returns:
        The printable description.
    """
    import torch

    from pixelkit.config import PixelLLMConfig
    from pixelkit.modeling.pixel_llm import PixelLLM
    from pixelkit.modeling.trainable import component_tree, format_summary, parameter_summary

    if isinstance(config, str):
        config = PixelLLMConfig.from_name(config)
    config = config.without_pretrained()
    with torch.device(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PixelLLM(config)
    lines = [f"PixelLLM {config.name!r} at {config.image_size}px (built on {device})"]
    for i, b in enumerate(config.image_encoder.backbones):
        lines.append(f"  backbone {i}: {b.kind} {b.name} @ {b.image_size or config.image_size}px"
                     f"{' (frozen)' if b.frozen else ''}")
    lm = config.language_model
    lines.append(f"  language model: {lm.family} {lm.name}; LoRA r={lm.lora.r}"
                 f"{' on ' + str(lm.lora.target_modules) if lm.lora.r else ''}; "
                 f"base frozen={lm.freeze_base}")
    if tree:
        lines += ["", component_tree(model, depth=depth)]
    return "\n".join(lines + ["", format_summary(parameter_summary(model))])


#: GPUs by memory (GiB), for :func:`gpu_fit_table`.
GPUS: dict[str, float] = {"T4 / RTX 4080 (16 GB)": 16, "RTX 3090 / 4090, A10 (24 GB)": 24,
                          "A100 40 GB": 40, "L40S (48 GB)": 48, "A100 / H100 80 GB": 80,
                          "H200 (141 GB)": 141}


def memory_estimate(config: Any, precision: str = "bf16-mixed") -> dict[str, float]:
    """A lower bound of training memory: weights, gradients and AdamW states (GiB).

    Counted on the meta device. Frozen weights take 2 bytes in ``bf16``/``16`` precisions
    (cast for the forward pass), 4 otherwise; trainable weights are kept in fp32 (4 bytes)
    with an fp32 gradient (4) and AdamW's two moments (8). Activations come on top and
    grow with batch size and sequence length: measure them with
    ``torch.cuda.max_memory_allocated()`` on the real run.

    Returns:
        ``trainable`` and ``frozen`` parameter counts, and ``weights_gib``,
        ``grads_optimizer_gib`` and ``total_gib``.
    """
    import torch

    from pixelkit.config import PixelLLMConfig
    from pixelkit.modeling.pixel_llm import PixelLLM

    if isinstance(config, str):
        config = PixelLLMConfig.from_name(config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PixelLLM(config.without_pretrained())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    half = precision.startswith(("bf16", "16"))
    gib = 1024 ** 3
    weights = (frozen * (2 if half else 4) + train * 4) / gib
    states = train * (4 + 8) / gib
    return {"trainable": float(train), "frozen": float(frozen), "weights_gib": weights,
            "grads_optimizer_gib": states, "total_gib": weights + states}


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
