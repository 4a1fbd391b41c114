"""Runs: one way to train a stage, a chain of stages and a study (the CLI, the quickstart, the
notebooks and the tests all come here).

::

    from pixelkit import runs

    cap = runs.run_stage("caption", out="outputs/x", data_root="data/shapes", steps=200)
    chain = runs.run_chain(["caption", "trace"], out="outputs/x", steps={"caption": 200,
                                                                          "trace": 500})
    study = runs.run_study("trace", "model.loss.point_weight", [0.5, 2, 8], seeds=[0, 1, 2],
                           out="outputs/study", init_from=cap.last, steps=300)
    study.summary()            # mean +- std over seeds per value; summary.{csv,md,png}

A run is the packaged stage config (``pixelkit/configs/base.yaml`` + ``<stage>.yaml``, or a
YAML of your own) with *settings*, each of which sets exactly one config key
(:data:`SETTINGS`; anything else goes in ``overrides`` as ``{"dotted.key": value}``, and
``model.<field>`` keys address the model config, ``model.<argument>`` the stage). Setting one
key twice is an error, never a silent win. The settings are applied by LightningCLI itself,
so the *resolved* config -- written to ``<out>/configs/<name>.yaml`` before anything trains --
is exactly what runs, and ``pixelkit fit --config <out>/configs/<name>.yaml`` runs it again.
The run's logs, checkpoints and resolved config are in ``<out>/runs/<name>``.

A study resolves every run first and checks that the configs differ exactly in the studied
parameter (and the seed): a parameter that another setting overrides, or values that come
out the same, stop the study before it trains, with an error naming the parameter.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import math
import shutil
import statistics
import time
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SETTINGS", "StageRun", "Study", "resolve_run", "run_chain", "run_stage",
           "run_study", "plan_study"]

#: The settings of :func:`run_stage` and the one config key each of them sets.
SETTINGS: dict[str, str] = {
    "data_root": "data.root",
    "steps": "trainer.max_steps",
    "batch_size": "data.batch_size",
    "val_limit": "data.val_limit",
    "val_every": "trainer.val_check_interval",
    "accelerator": "trainer.accelerator",
    "precision": "trainer.precision",
    "preset": "model.init_args.preset",
    "init_from": "model.init_args.init_from",
    "seed": "seed_everything",
}


# --------------------------------------------------------------------------- a run's record


@dataclass
class StageRun:
    """A finished (or resolved) run: its files, metrics and timing.

    Attributes:
        stage: ``caption``, ``trace``, ``refer``, ``densecap`` (or ``custom``).
        name: the run's name (its folder under ``<out>/runs``).
        dir: the run's folder (logs, checkpoints, resolved config).
        config: the resolved YAML that ran (``pixelkit fit --config`` it again).
        last: the last checkpoint (:meth:`Predictor.from_checkpoint` reads it).
        init_from: the checkpoint it started from (None: the preset's weights).
        csv: the CSV log ``metrics.csv``.
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
    val: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    snapshots: list[Path] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        """The resolved config as a dict."""
        return yaml.safe_load(self.config.read_text())

    def history(self) -> list[dict[str, float]]:
        """The CSV log, one dict per logged row (``step`` and the metrics logged then)."""
        if self.csv is None or not self.csv.is_file():
            return []
        with open(self.csv, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in rows]

    def val_history(self, keys: Sequence[str] | None = None) -> list[dict[str, float]]:
        """One dict per validation (``step`` + the ``val/...`` metrics), in step order."""
        rows: dict[int, dict[str, float]] = {}
        for r in self.history():
            vals = {k: v for k, v in r.items() if k.startswith("val/")
                    and (keys is None or k in keys)}
            if vals and "step" in r:
                rows.setdefault(int(r["step"]), {"step": int(r["step"])}).update(vals)
        return [rows[s] for s in sorted(rows)]

    def val_samples(self, task: str, limit: int | None = None) -> list[Any]:
        """The samples of the run's first validation source of ``task`` (reader order)."""
        from pixelkit.data.datamodule import resolve_sources
        from pixelkit.evaluate import load_samples

        cfg = self.resolved()["data"]
        for src in resolve_sources(cfg.get("val") or [], cfg.get("root") or "."):
            if src.task == task:
                return load_samples(task, src.ann, src.images, limit=limit)[0]
        raise ValueError(f"run {self.name} has no validation source of task {task!r}")

    def predictor(self, device: str | None = None) -> Any:
        """A :class:`~pixelkit.Predictor` on the run's last checkpoint."""
        from pixelkit.predictor import Predictor

        return Predictor.from_checkpoint(self.last, device=device)


# --------------------------------------------------------------------------- resolving


def config_key(key: str) -> str:
    """A settings key as LightningCLI spells it: ``model.loss.point_weight`` (a model-config
    field) -> ``model.init_args.model.loss.point_weight``; ``model.lr`` (a stage argument)
    -> ``model.init_args.lr``; ``trainer.*`` / ``data.*`` / others unchanged."""
    from pixelkit.training import _full_key

    return _full_key(key) if key.startswith("model.") else key


def _cli_value(value: Any) -> str:
    """A value as the command line gives it to jsonargparse (which parses it as YAML)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value)


def _nested_model(overrides: Mapping[str, Any], prefix: str = "model") -> dict[str, Any]:
    """``{"loss": {"point_weight": 2}}`` -> ``{"model.loss.point_weight": 2}`` (leaves only:
    a sub-config dict is split into its fields; free-form dict values stay whole)."""
    from pixelkit.config import PixelLLMConfig, _dataclass_fields

    flat: dict[str, Any] = {}

    def walk(tree: Mapping[str, Any], cls: type, path: str) -> None:
        fields = _dataclass_fields(cls)
        hints = typing.get_type_hints(cls)
        for key, value in tree.items():
            sub = fields.get(key)
            if sub is not None and isinstance(value, Mapping):
                walk(value, sub, f"{path}.{key}")
            elif isinstance(value, list) and key in hints:
                flat[f"{path}.{key}"] = [_without_default_nones(item, hints[key])
                                         for item in value]
            else:
                flat[f"{path}.{key}"] = value

    walk(overrides, PixelLLMConfig, prefix)
    return flat


def _without_default_nones(item: Any, hint: Any) -> Any:
    """A list item of sub-configs (``image_encoder.backbones``) without its None fields whose
    default is None: the same item (an absent field takes its default), but jsonargparse
    (4.4x) refuses ``null`` for an optional field inside a list given on its command line,
    which is how :func:`resolve_run` passes overrides (e.g. ``BackboneConfig.to_dict()``'s
    ``"image_size": null``)."""
    (element,) = typing.get_args(hint) or (None,)
    if not (isinstance(item, Mapping) and dataclasses.is_dataclass(element)):
        return item
    none_default = {f.name for f in dataclasses.fields(element) if f.default is None}
    return {k: v for k, v in item.items() if not (v is None and k in none_default)}


def run_keys(settings: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
             model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting as ``{config key: value}``, checking each key is set once.

    Args:
        settings: named settings (:data:`SETTINGS`); None values are left out.
        overrides: ``{dotted key: value}`` for anything else.
        model: nested model-config overrides (``{"loss": {"point_weight": 2}}``).

    Raises:
        ValueError: an unknown setting, or a key set by two of them.
    """
    keys: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def put(key: str, value: Any, where: str) -> None:
        full = config_key(key)
        if full in keys:
            raise ValueError(f"{full} is set twice: by {origin[full]} and by {where}; "
                             "give each value once")
        keys[full], origin[full] = value, where

    for name, value in settings.items():
        if name not in SETTINGS:
            raise ValueError(f"unknown run setting {name!r}; settings: {', '.join(SETTINGS)} "
                             "(anything else: overrides={'dotted.key': value})")
        if value is not None:
            put(SETTINGS[name], value, name)
    for key, value in _nested_model(model or {}).items():
        put(key, value, "model")
    for key, value in (overrides or {}).items():
        put(key, value, f"overrides[{key!r}]")
    return keys


@dataclass
class ResolvedRun:
    """A run's resolved config, written and checked, not yet trained.

    Attributes:
        name: the run's name.
        stage: its stage name.
        path: ``<out>/configs/<name>.yaml``.
        config: the resolved config (what LightningCLI parsed, paths filled in).
        dir: the run's folder ``<out>/runs/<name>``.
    """

    name: str
    stage: str
    path: Path
    config: dict[str, Any]
    dir: Path


def resolve_run(config: str | Path, *, out: str | Path, name: str | None = None,
                overrides: Mapping[str, Any] | None = None,
                model: Mapping[str, Any] | None = None, wandb: bool | None = None,
                wandb_group: str | None = None, prediction_images: bool | None = None,
                snapshot_every: int | None = None, quiet: bool = True,
                **settings: Any) -> ResolvedRun:
    """Resolve a stage config with settings through LightningCLI and write it out.

    Args:
        config: a packaged config (``trace``, ``real/trace``) or a YAML file.
        out: the output folder: the run goes to ``<out>/runs/<name>``, its resolved config
            to ``<out>/configs/<name>.yaml``, and ``init_from: previous`` looks under
            ``<out>/runs``.
        name: the run's name (default: the stage).
        overrides: ``{dotted key: value}`` (``trainer.gradient_clip_val``, ``model.lr``,
            ``model.loss.label_smoothing``, ...).
        model: nested model-config overrides.
        wandb: keep (True) or drop (False) the config's W&B logger; None: as configured.
        wandb_group: the W&B group (a study's runs share one).
        prediction_images: keep or drop the :class:`PredictionImages` callback; None: as
            configured.
        snapshot_every: also keep a checkpoint every this many steps (``snapshots/``).
        quiet: no progress bar or model summary (notebooks, studies).
        **settings: :data:`SETTINGS` (``steps``, ``batch_size``, ``data_root``, ...); one
            left at None keeps the config's value (to set a key to null, e.g. to train a
            stage from scratch: ``overrides={"model.init_from": None}``). With ``steps`` and
            no ``val_every``, the run validates once, at its end.

    Returns:
        The :class:`ResolvedRun`.
    """
    from jsonargparse import Namespace

    from pixelkit.files import atomic_write_text
    from pixelkit.training import _entries, _stage_name, cli_main

    out = Path(out).resolve()
    keys = run_keys(settings, overrides, model)
    if settings.get("steps") and not settings.get("val_every") \
            and "trainer.val_check_interval" not in keys:
        keys["trainer.val_check_interval"] = settings["steps"]
    if quiet:
        keys.setdefault("trainer.enable_progress_bar", False)
        keys.setdefault("trainer.enable_model_summary", False)
        if settings.get("steps"):  # a few points per curve, at most every 10 steps
            keys.setdefault("trainer.log_every_n_steps", max(1, min(10, settings["steps"] // 20)))
    argv = ["--config", str(config), "--runs", str(out / "runs")]
    if name:
        argv += ["--trainer.default_root_dir", str(out / "runs" / name)]
    argv += [f"--{k}={_cli_value(v)}" for k, v in keys.items()]
    with _quiet():
        cli = cli_main(argv, run=False, instantiate=False)
    ns = cli.config
    stage = _stage_name(ns)
    name = name or stage
    loggers = []
    for lg in _entries(ns.trainer.logger):
        if str(lg.class_path).endswith("WandbLogger"):
            if wandb is False:
                continue
            if wandb_group:
                lg.init_args.group = wandb_group
        loggers.append(lg)
    ns.trainer.logger = loggers
    callbacks = [cb for cb in _entries(ns.trainer.callbacks)
                 if not (prediction_images is False
                         and str(cb.class_path).endswith("PredictionImages"))]
    if snapshot_every:
        callbacks.append(Namespace(
            class_path="lightning.pytorch.callbacks.ModelCheckpoint",
            init_args=Namespace(dirpath=str(out / "runs" / name / "snapshots"),
                                filename="step{step:05d}", auto_insert_metric_name=False,
                                every_n_train_steps=snapshot_every, save_top_k=-1,
                                save_last=False)))
    ns.trainer.callbacks = callbacks
    resolved = _prune(yaml.safe_load(cli.parser.dump(ns, skip_none=False, format="yaml",
                                                     skip_validation=True)))
    path = atomic_write_text(out / "configs" / f"{name}.yaml",
                             f"# {config} + settings, resolved by pixelkit.runs\n"
                             + yaml.safe_dump(resolved, sort_keys=False))
    return ResolvedRun(name=name, stage=stage, path=path, config=resolved,
                       dir=Path(ns.trainer.default_root_dir))


def _prune(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without the model overrides' unset (None) fields."""
    from pixelkit.training import _set_fields

    init = (cfg.get("model") or {}).get("init_args") or {}
    if isinstance(init.get("model"), dict):
        init["model"] = _set_fields(init["model"])
    return cfg


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's info lines and its data-loader warnings off for one in-process run."""
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
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


# --------------------------------------------------------------------------- training


def train(resolved: ResolvedRun, quiet: bool = True) -> StageRun:
    """``pixelkit fit --config <resolved YAML>`` in this process; a run of the same name
    replaces the earlier one (its checkpoints and snapshots go; its log is moved aside)."""
    from pixelkit.training import cli_main

    for sub in ("checkpoints", "snapshots"):
        shutil.rmtree(resolved.dir / sub, ignore_errors=True)
    t0 = time.perf_counter()
    with _quiet() if quiet else contextlib.nullcontext():
        cli = cli_main(["fit", "--config", str(resolved.path)])
    seconds = time.perf_counter() - t0
    trainer = cli.trainer
    for lg in trainer.loggers:  # one W&B run per fit, not one for a whole notebook
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.finish()
    val = {k: float(v) for k, v in trainer.callback_metrics.items()
           if k.startswith("val/") and v.numel() == 1}
    csv_log = next((Path(lg.log_dir) / "metrics.csv" for lg in trainer.loggers
                    if type(lg).__name__ == "CSVLogger"), None)
    init = resolved.config["model"]["init_args"].get("init_from")
    return StageRun(stage=resolved.stage, name=resolved.name, dir=resolved.dir,
                    config=resolved.path, last=resolved.dir / "checkpoints" / "last.ckpt",
                    init_from=Path(init) if init else None,
                    csv=csv_log if csv_log and csv_log.is_file() else None, val=val,
                    steps=int(trainer.global_step), seconds=round(seconds, 1),
                    snapshots=sorted((resolved.dir / "snapshots").glob("step*.ckpt")))


def stage_config(config: str | Path, real: bool = False) -> str | Path:
    """A stage name as its packaged config: ``trace`` -> ``real/trace`` with ``real``
    (the real data sets on a GPU); files and other names unchanged."""
    from pixelkit.stages import STAGES

    return f"real/{config}" if real and str(config) in STAGES else config


def run_stage(config: str | Path, *, out: str | Path, name: str | None = None,
              real: bool = False, quiet: bool = True, **options: Any) -> StageRun:
    """Train one stage: :func:`resolve_run` then train it in this process.

    Args:
        config: a packaged config (``caption``, ``real/trace``) or a YAML file.
        out: the output folder (see :func:`resolve_run`).
        name: the run's name (default: the stage's).
        real: a stage name means its real-data config (``real/<stage>``).
        quiet: hide Lightning's info lines and progress bar.
        **options: :func:`resolve_run`'s (settings, ``overrides``, ``model``, ``wandb``, ...).

    Returns:
        The :class:`StageRun`.
    """
    resolved = resolve_run(stage_config(config, real), out=out, name=name, quiet=quiet,
                           **options)
    return train(resolved, quiet)


def run_chain(stages: Sequence[str], *, out: str | Path, steps: Mapping[str, int] | int | None,
              init_from: str | Path | None = None, real: bool = False,
              **options: Any) -> dict[str, StageRun]:
    """Train stages in turn, each from the one before's last checkpoint.

    Args:
        stages: e.g. ``("caption", "trace")`` (the order of :data:`pixelkit.stages.STAGES`).
        out: the output folder.
        steps: steps per stage (a dict by stage, one number for all, or None: the configs').
        init_from: the checkpoint the first stage starts from (None: its config's).
        real: the real-data configs (``real/<stage>``).
        **options: :func:`run_stage`'s, the same for every stage.

    Returns:
        ``{stage: StageRun}`` in order.
    """
    runs: dict[str, StageRun] = {}
    init = init_from
    for stage in stages:
        n = steps.get(stage) if isinstance(steps, Mapping) else steps
        extra = {"init_from": str(init)} if init is not None else {}
        runs[stage] = run_stage(stage, out=out, real=real, steps=n, **extra, **options)
        init = runs[stage].last
        print(f"[pixelkit] {stage}: {runs[stage].steps} steps in {runs[stage].seconds:.0f} s")
    return runs


# --------------------------------------------------------------------------- studies


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: leaf}`` (lists of class_path entries by index)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


#: Resolved-config keys that name a run rather than configure it (they differ per run).
_RUN_PATHS = ("trainer.default_root_dir", ".save_dir", ".dirpath", ".name", ".group")


def _effective(run: ResolvedRun) -> dict[str, Any]:
    """What a run trains with, flat: its config without run paths, and the model config
    its preset and overrides build (so an override that changes nothing shows)."""
    from pixelkit.config import PixelLLMConfig

    flat = {k: v for k, v in _flat(run.config).items()
            if not (k == "trainer.default_root_dir" or k.startswith("runs")
                    or any(k.endswith(p) for p in _RUN_PATHS[1:]))}
    init = run.config["model"]["init_args"]
    model = PixelLLMConfig.from_name(init.get("preset") or "tiny", overrides=init.get("model"))
    flat.update({f"model.init_args.model.{k}": v for k, v in _flat(model.to_dict()).items()
                 if not k.startswith("name")})
    return flat


def check_study(runs: Sequence[ResolvedRun], param_key: str, values: Sequence[Any],
                seeds: Sequence[int]) -> None:
    """The runs differ exactly in the studied parameter (and the seed), or an error.

    Raises:
        ValueError: the parameter comes out the same for different values (something
            overrides it, or the values are equal), or another setting differs.
    """
    flats = [_effective(r) for r in runs]
    per_seed = len(seeds)
    groups = [flats[i * per_seed:(i + 1) * per_seed] for i in range(len(values))]
    keys = set().union(*flats)
    differing = {k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str)
                                         for f in flats}) > 1}
    studied = {k for k in differing if k == param_key or k.startswith(param_key + ".")}
    # One value (a study run in parts, e.g. one format at a time) has nothing to differ in.
    if len(values) > 1 and (not studied or len({json.dumps(g[0].get(param_key), default=str)
                                                for g in groups}) < len(values)):
        seen = [g[0].get(param_key) for g in groups]
        raise ValueError(f"the study parameter {param_key} would not change: the runs for "
                         f"{list(values)} resolve to {seen} (another setting overrides it, "
                         "or values are equal)")
    others = differing - studied - {"seed_everything"}
    if others:
        raise ValueError(f"the study's runs differ in more than {param_key}: also "
                         f"{', '.join(sorted(others))}")


@dataclass
class Study:
    """A finished study: one run per (value, seed).

    Attributes:
        name: the study's name (its W&B group).
        param: the studied key (as given).
        values: its values.
        seeds: the seeds.
        runs: ``(value, seed, run)`` per run.
        out: the study's folder.
    """

    name: str
    param: str
    values: list[Any]
    seeds: list[int]
    runs: list[tuple[Any, int, StageRun]]
    out: Path

    def table(self, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per value: ``value``, and per metric ``<metric>`` (mean over seeds) and
        ``<metric> std``, from each run's last validation."""
        metrics = list(metrics or sorted({k for _, _, r in self.runs for k in r.val}))
        rows = []
        for value in self.values:
            row: dict[str, Any] = {"value": value}
            for m in metrics:
                got = [r.val[m] for v, _, r in self.runs if v == value and m in r.val]
                row[m] = statistics.fmean(got) if got else math.nan
                row[f"{m} std"] = statistics.stdev(got) if len(got) > 1 else 0.0
            rows.append(row)
        return rows

    def summary(self, metric: str | None = None, curve: str | None = None) -> dict[str, Path]:
        """Write ``summary.csv``, ``summary.md`` and (with matplotlib) ``summary.png``.

        Args:
            metric: the metric plotted against the value (default: the first ``val/``
                metric of the runs other than ``val/loss``).
            curve: the logged metric drawn per run (default ``val/loss``).
        """
        from pixelkit.files import atomic_write_text

        rows = self.table()
        keys = list(rows[0]) if rows else ["value"]
        lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
        paths = {"csv": atomic_write_text(self.out / "summary.csv", "\n".join(lines) + "\n")}
        metrics = [k for k in keys if k != "value" and not k.endswith(" std")]
        md = [f"# Study {self.name}: {self.param} over {self.values}, seeds {self.seeds}", "",
              "| " + " | ".join([self.param, *metrics]) + " |",
              "|" + "---|" * (len(metrics) + 1)]
        for r in rows:
            md.append("| " + " | ".join([str(r["value"])] + [
                f"{r[m]:.4f} ± {r[m + ' std']:.4f}" for m in metrics]) + " |")
        paths["md"] = atomic_write_text(self.out / "summary.md", "\n".join(md) + "\n")
        try:
            from pixelkit.viz import study_plot

            metric = metric or next((m for m in metrics if m != "val/loss"), "val/loss")
            paths["png"] = study_plot(
                {f"{v} (seed {s})": r.csv for v, s, r in self.runs if r.csv},
                rows, self.out / "summary.png", param=self.param, metric=metric,
                curve=curve or "val/loss")
        except ModuleNotFoundError as err:
            print(f"[pixelkit] no summary plot: {err}")
        return paths


def study_run_name(param: str, value: Any, seed: int) -> str:
    """``point_weight=2.0-seed0``: the last part of the key, the value and the seed."""
    return f"{param.rsplit('.', 1)[-1]}={value}-seed{seed}"


def plan_study(config: str | Path, param: str, values: Sequence[Any], *,
               seeds: Sequence[int] = (0,), out: str | Path, name: str | None = None,
               wandb: bool | None = None, real: bool = False,
               **options: Any) -> list[ResolvedRun]:
    """Resolve (and write) every run of a study and check them, training nothing.

    Raises:
        ValueError: see :func:`check_study`; or ``param`` set by ``options`` too.
    """
    group = name or f"{Path(str(config)).stem}-{param.rsplit('.', 1)[-1]}"
    config = stage_config(config, real)
    runs = []
    for value in values:
        for seed in seeds:
            overrides = {**(options.get("overrides") or {}), param: value}
            opts = {**options, "overrides": overrides, "seed": seed}
            runs.append(resolve_run(config, out=out, name=study_run_name(param, value, seed),
                                    wandb=wandb, wandb_group=group, **opts))
    check_study(runs, config_key(param), values, seeds)
    return runs


def run_study(config: str | Path, param: str, values: Sequence[Any], *,
              seeds: Sequence[int] = (0,), out: str | Path, name: str | None = None,
              quiet: bool = True, **options: Any) -> Study:
    """One run per value of ``param`` and seed, checked before any training, then a summary.

    Args:
        config: a packaged config or a YAML file (``trace``: from a caption checkpoint,
            given as ``init_from``).
        param: the studied key: ``model.loss.point_weight`` (a model-config field),
            ``model.lr`` (a stage argument), ``data.batch_size``, ``trainer.max_steps``...
        values: its values.
        seeds: ``seed_everything`` of the repeats; the summary gives mean and std over them.
        out: the study's folder: ``configs/`` (every resolved config), ``runs/`` (logs,
            checkpoints), ``summary.{csv,md,png}``.
        name: the study's name and W&B group (default ``<config>-<param>``).
        quiet: hide Lightning's info lines.
        **options: :func:`resolve_run`'s, the same for every run (``steps``, ``init_from``,
            ``data_root``, ``overrides``, ``wandb``...). They must not set ``param``.

    Returns:
        The :class:`Study` (its summary is written).
    """
    out = Path(out).resolve()
    planned = plan_study(config, param, values, seeds=seeds, out=out, name=name, **options)
    group = name or f"{Path(str(config)).stem}-{param.rsplit('.', 1)[-1]}"
    runs = []
    i = 0
    for value in values:
        for seed in seeds:
            run = train(planned[i], quiet)
            i += 1
            print(f"[pixelkit] {run.name}: {run.steps} steps in {run.seconds:.0f} s")
            runs.append((value, seed, run))
    study = Study(name=group, param=param, values=list(values), seeds=list(seeds), runs=runs,
                  out=out)
    study.summary()
    return study


# --------------------------------------------------------------------------- pixelkit study


def _value(text: str) -> Any:
    """A command-line value as YAML reads it (``0.5`` a float, ``true`` a bool...)."""
    return yaml.safe_load(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``pixelkit study`` arguments."""
    parser.add_argument("--config", required=True,
                        help="a packaged config (trace, real/trace) or a YAML file")
    parser.add_argument("--param", required=True,
                        help="the studied key: model.loss.point_weight, model.lr, "
                             "data.batch_size, ...")
    parser.add_argument("--values", required=True, help="comma-separated values: 0.5,2,8")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--out", default=None,
                        help="the study's folder (default outputs/studies/<name>)")
    parser.add_argument("--name", default=None, help="study name / W&B group")
    parser.add_argument("--data-root", default=None, help="the data root (data.root)")
    parser.add_argument("--init-from", default=None, help="checkpoint every run starts from")
    parser.add_argument("--steps", type=int, default=None, help="steps per run")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, for every run (repeatable)")
    parser.add_argument("--no-wandb", action="store_true", help="CSV logs only")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and check every run's config, train nothing")


def run(args: argparse.Namespace) -> int:
    """``pixelkit study``: plan, check, train, summarise."""
    values = [_value(v) for v in args.values.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(values) < 2:
        raise ValueError("--values needs at least two values to compare")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = _value(value)
    name = args.name or f"{Path(args.config).stem}-{args.param.rsplit('.', 1)[-1]}"
    out = Path(args.out or Path("outputs") / "studies" / name)
    options: dict[str, Any] = {"data_root": args.data_root, "init_from": args.init_from,
                               "steps": args.steps, "batch_size": args.batch_size,
                               "overrides": overrides}
    if args.no_wandb:
        options["wandb"] = False
    if args.dry_run:
        planned = plan_study(args.config, args.param, values, seeds=seeds, out=out, name=name,
                             **options)
        print(f"[pixelkit] {len(planned)} runs resolved and checked: {out / 'configs'}")
        return 0
    study = run_study(args.config, args.param, values, seeds=seeds, out=out, name=name,
                      **options)
    print((out / "summary.md").read_text())
    print(f"[pixelkit] study {study.name}: {out}")
    return 0
