"""Location interfaces side by side: one model, one data set, one evaluation (issue #15).

Each grounded LM gives its language model locations its own way (DESIGN.md section 1,
"Location interfaces"; :class:`~pixelkit.config.LocationConfig`): PixelLLM's point head
(``regression``), Shikra's and MiniGPT-v2's integers in the text (``text``), Kosmos-2's
location tokens (``tokens``), Groma's region tokens (``regions``: the proposal head's boxes,
pooled, and the LM names one). :func:`compare_interfaces` trains the referring stage once per
format and seed with :func:`~pixelkit.runs.run_study` (param ``model.location.format``), so
the runs differ in ``location.format`` alone: the same caption checkpoint, data, step
budget, seeds, and the same :class:`~pixelkit.predictor.Predictor` and metrics after.

The referring stage's mix replays narratives (as grounded captions for the written formats),
region captions and captions, so one stage trains every skill compared::

    from pixelkit.interfaces import compare_interfaces
    cmp = compare_interfaces("outputs/interfaces", init_from="runs/caption/checkpoints/last.ckpt",
                             data_root="data/shapes", seeds=[0, 1, 2], steps=1000)
    cmp.files["md"]   # the table; cmp.files["png"] the plot

What is measured per run (:data:`METRICS`): referring P@0.5 (generated and parsed for the
written formats, the point head at EOS for ``regression``), its parse-failure rate and
generated tokens per answer, ms per referring answer (timed in this process, every format
the same way), region-caption exact match and CIDEr, pointing accuracy of generated
narratives and their phrases' parse-failure rate, and the first validation step whose
teacher-forced P@0.5 reached 0.8.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.files import atomic_write_text
from pixelkit.runs import Study, run_study

__all__ = ["FORMATS", "METRICS", "REFER_WITHOUT_TRACE", "InterfaceComparison",
           "compare_interfaces", "interface_metrics", "steps_to_reach", "trace_ablation"]

#: The compared values of ``model.location.format`` (the other ``location.*`` keep their
#: defaults: ``text`` on a 100-bin grid as MiniGPT-v2, ``tokens`` 32 x 32 corner cells as
#: Kosmos-2, ``regions`` 8 proposals).
FORMATS: tuple[str, ...] = ("regression", "text", "tokens", "regions")

#: Table columns: metric key -> heading.
METRICS: dict[str, str] = {
    "refer.p_at_0.5": "refer P@0.5",
    "refer.parse_failure_rate": "refer parse failures",
    "refer.generated_tokens": "tokens / answer",
    "refer.ms_per_answer": "ms / answer",
    "loca_caption.exact_match": "region exact",
    "loca_caption.CIDEr": "region CIDEr",
    "trace.pointing_accuracy": "pointing",
    "trace.caption_parse_failure_rate": "caption parse failures",
    "steps_to_0.8": "steps to P@0.5 0.8",
}


def _refer_without_trace() -> list[dict[str, Any]]:
    """The packaged refer stage's training sources less its narrative (trace) replay."""
    import yaml

    from pixelkit.training import CONFIG_DIR

    train = yaml.safe_load((CONFIG_DIR / "refer.yaml").read_text())["data"]["train"]
    return [dict(src) for src in train if src["task"] != "trace"]


#: refer.yaml's training data without its replay of narratives, which would be trace
#: training in an arm that must have none (:func:`trace_ablation`, notebook 09).
REFER_WITHOUT_TRACE: list[dict[str, Any]] = _refer_without_trace()


@dataclass
class InterfaceComparison:
    """A finished comparison.

    Attributes:
        study: the training study (its own summary: validation curves per run).
        runs: per run ``{"format", "seed", <METRICS keys>...}``.
        files: ``md``, ``csv`` and ``png`` of the table.
    """

    study: Study | None
    runs: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    #: What tells the compared arms apart: ``format`` (:func:`compare_interfaces`) or
    #: ``init`` (:func:`trace_ablation`).
    label: str = "format"

    def table(self) -> list[dict[str, Any]]:
        """Per arm: each metric's mean and ``<metric> std`` over seeds (NaN-free runs)."""
        rows = []
        for arm in dict.fromkeys(r[self.label] for r in self.runs):
            row: dict[str, Any] = {self.label: arm}
            for key in METRICS:
                got = [r[key] for r in self.runs if r[self.label] == arm
                       and r.get(key) is not None and not math.isnan(r[key])]
                row[key] = float(np.mean(got)) if got else float("nan")
                row[key + " std"] = float(np.std(got)) if got else float("nan")
            rows.append(row)
        return rows


def steps_to_reach(csv_path: Path | None, key: str, threshold: float) -> float:
    """The first logged step at which ``key`` reached ``threshold`` (NaN: never)."""
    if csv_path is None or not Path(csv_path).exists():
        return float("nan")
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(key)
            if value not in (None, "") and float(value) >= threshold:
                return float(row["step"]) + 1  # the logged step is 0-based
    return float("nan")


def interface_metrics(checkpoint: str | Path, data: str | Path, limit: int | None = None
                      ) -> dict[str, float]:
    """A checkpoint's :data:`METRICS` on the shapes world's val split (all but steps).

    Args:
        checkpoint: a stage checkpoint (or slim one) of any ``location.format``.
        data: the world's root.
        limit: the first ``limit`` samples per task (None: the whole split).
    """
    from pixelkit.predictor import Predictor
    from pixelkit.report import val_metrics

    predictor = Predictor.from_checkpoint(checkpoint)
    start = time.perf_counter()
    metrics = val_metrics(predictor, Path(data), tasks=("refer",), limit=limit, pointing=False)
    n = metrics["refer.num_samples"]
    metrics["refer.ms_per_answer"] = 1000 * (time.perf_counter() - start) / n if n else float("nan")
    metrics.update(val_metrics(predictor, Path(data), tasks=("loca-caption",), limit=limit,
                               loca_caption={"metrics": ("CIDEr",)}))
    return metrics


def compare_interfaces(out: str | Path, *, init_from: str | Path, data_root: str | Path,
                       formats: Sequence[str] = FORMATS, seeds: Sequence[int] = (0,),
                       steps: int | None = None, val_every: int | None = None,
                       eval_limit: int | None = None, quiet: bool = True,
                       **options: Any) -> InterfaceComparison:
    """Train the referring stage per format and seed, evaluate each run, write the table.

    Args:
        out: the comparison's folder: the study's (``configs/``, ``runs/``, ``summary.*``)
            and ``interfaces.{md,csv,png}``.
        init_from: the caption checkpoint every run starts from.
        data_root: the shapes world.
        formats: values of ``model.location.format``.
        seeds: seeds of the repeats.
        steps: training steps per run (None: the refer config's).
        val_every: validate every this many steps (the P@0.5 curve; None: at the end).
        eval_limit: samples per evaluated task (None: the whole val split).
        quiet: hide Lightning's info lines.
        **options: :func:`~pixelkit.runs.resolve_run`'s, the same for every run.
    """
    out = Path(out)
    study = run_study("refer", "model.location.format", list(formats), seeds=seeds, out=out,
                      name="location-interfaces", quiet=quiet, init_from=init_from,
                      data_root=data_root, steps=steps, val_every=val_every, **options)
    runs = [{"format": fmt, "seed": seed, **_run_metrics(run, data_root, eval_limit)}
            for fmt, seed, run in study.runs]
    comparison = InterfaceComparison(study=study, runs=runs)
    comparison.files = write_comparison(
        comparison, out, f"Location interfaces: the referring stage per format, seeds {list(seeds)}")
    return comparison


def _run_metrics(run: Any, data_root: str | Path, eval_limit: int | None) -> dict[str, Any]:
    """:data:`METRICS` of a finished refer run (a :class:`~pixelkit.runs.StageRun`)."""
    metrics = interface_metrics(run.last, data_root, limit=eval_limit)
    metrics["steps_to_0.8"] = steps_to_reach(run.csv, "val/refer/p_at_0.5", 0.8)
    return {k: metrics.get(k) for k in METRICS}


def trace_ablation(out: str | Path, *, checkpoints: dict[str, str | Path],
                   data_root: str | Path, seeds: Sequence[int] = (0,), steps: int | None = None,
                   val_every: int | None = None, eval_limit: int | None = None,
                   format: str = "regression", quiet: bool = True,
                   **options: Any) -> InterfaceComparison:
    """The paper's ablation: does per-word location supervision (the trace stage) help the
    box? The referring stage from each checkpoint, on :data:`REFER_WITHOUT_TRACE` (its
    narrative replay would be trace training in the arm that must have none), with the
    same seeds and steps, so the arms differ only in where they start.

    Args:
        out: the ablation's folder: ``<arm>/runs/seed<s>`` and ``ablation.{md,csv,png}``.
        checkpoints: arm name -> the checkpoint it starts from, e.g. ``{"caption":
            caption.last, "caption + trace": trace.last}`` (the trace stage trained from
            that same caption checkpoint).
        data_root: the shapes world.
        seeds, steps, val_every, eval_limit, quiet: as :func:`compare_interfaces`.
        format: ``model.location.format`` of every arm.
        **options: :func:`~pixelkit.runs.resolve_run`'s, the same for every run.
    """
    from pixelkit.runs import run_stage

    out = Path(out)
    overrides = {**(options.pop("overrides", None) or {}), "data.train": REFER_WITHOUT_TRACE,
                 "model.location.format": format}
    runs = []
    for arm, checkpoint in checkpoints.items():
        for seed in seeds:
            run = run_stage("refer", out=out / arm.replace(" ", "_"), name=f"seed{seed}",
                            init_from=checkpoint, seed=seed, steps=steps, val_every=val_every,
                            data_root=data_root, overrides=overrides, quiet=quiet, **options)
            print(f"[pixelkit] {arm} seed {seed}: {run.steps} steps in {run.seconds:.0f} s")
            runs.append({"init": arm, "seed": seed, **_run_metrics(run, data_root, eval_limit)})
    ablation = InterfaceComparison(study=None, runs=runs, label="init")
    ablation.files = write_comparison(
        ablation, out, f"Trace pretraining: the {format} referring stage from each checkpoint, "
                       f"seeds {list(seeds)}", stem="ablation")
    return ablation


def write_comparison(comparison: InterfaceComparison, out: Path, title: str,
                     stem: str = "interfaces") -> dict[str, Path]:
    """``<stem>.md`` (mean ± std per arm), ``<stem>.csv`` (one row per run) and
    ``<stem>.png`` (a bar chart per metric), written atomically."""
    from pixelkit.viz import bar_charts

    rows, label = comparison.table(), comparison.label
    seeds = sorted({r["seed"] for r in comparison.runs})
    md = [f"# {title}", "", f"| {label} | " + " | ".join(METRICS.values()) + " |",
          "|---|" + "---|" * len(METRICS)]
    for row in rows:
        md.append(f"| {row[label]} | " + " | ".join(
            _cell(row[k], row[k + " std"], len(seeds)) for k in METRICS) + " |")
    files = {"md": atomic_write_text(out / f"{stem}.md", "\n".join(md) + "\n")}
    lines = [",".join([label, "seed", *METRICS])]
    lines += [",".join([str(r[label]), str(r["seed"]), *(_csv(r.get(k)) for k in METRICS)])
              for r in comparison.runs]
    files["csv"] = atomic_write_text(out / f"{stem}.csv", "\n".join(lines) + "\n")
    files["png"] = bar_charts({METRICS[k]: {r[label]: (r[k], r[k + " std"]) for r in rows}
                               for k in METRICS}, out / f"{stem}.png")
    return files


def _cell(mean: float, std: float, n: int) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.3g} ± {std:.2g}" if n > 1 else f"{mean:.3g}"


def _csv(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"
