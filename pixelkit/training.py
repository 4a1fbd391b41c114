"""``pixelkit fit | validate | test --config <stage>``: LightningCLI for the stages.

``--config`` takes a YAML file or the name of a config shipped inside the package
(``pixelkit/configs/``: ``caption``, ``trace``, ``refer``, ``densecap`` for the shapes world on
a CPU, ``real/<stage>`` for the real datasets on a GPU); see :func:`resolve_config`.
The YAML names the stage class (``model.class_path: pixelkit.stages.TraceTraining``), its
arguments, the :class:`PixelDataModule` sources and the Trainer (loggers, checkpoints).
The model's ``image_size`` and tokenizer are linked into the data module so the two can
never disagree. Every run writes its resolved config next to its logs and sends it to every
logger (W&B included), so a run can be reproduced from what it logged.

**Nothing lost on a kill.** Checkpoints are written atomically (:class:`pixelkit.checkpoint.AtomicCheckpointIO`,
the default ``trainer.plugins``); ``--ckpt_path last`` resumes from ``last.ckpt``, or, if
that one is unreadable, from the newest readable checkpoint beside it (and says so), or
starts from step 0 with one line when there is none yet. A resume continues the CSV log
(:mod:`pixelkit.loggers`), the W&B run id and the epoch's sampling where the checkpoint left
them. Before anything is built, ``init_from``, the annotation files and image folders and
``ckpt_path`` are checked, so a wrong path is one line naming it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from pixelkit.checkpoint import checkpoint_problem, load_checkpoint_file
from pixelkit.data.datamodule import PixelDataModule
from pixelkit.files import atomic_save, remove_partial_files
from pixelkit.loggers import RUN_STATE_KEY, resume_logger_args
from pixelkit.stages.base import PixelLLMStage


class LogConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the log dir (Lightning's default) and logs it to all loggers."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        import yaml

        resolved = yaml.safe_load(config)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})

#: The stage configs shipped with the package (package data, so a wheel has them too).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the packaged configs: ``caption``, ..., ``real/caption``, ..."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
                  for p in CONFIG_DIR.rglob("*.yaml"))


def config_files(value: str | Path) -> list[Path]:
    """The files one ``--config`` value stands for.

    A packaged stage (``trace``, ``real/trace``) is its shared base file and its deltas
    (``base.yaml`` then ``trace.yaml``), which LightningCLI composes in that order; a file
    of your own is used as it is (stack it on a packaged one: ``--config trace --config
    mine.yaml``).
    """
    path = resolve_config(value)
    base = path.parent / "base.yaml"
    if path.parent in (CONFIG_DIR, CONFIG_DIR / "real") and path != base and base.is_file() \
            and not Path(value).is_file():
        return [base, path]
    return [path]


def resolve_config(value: str | Path) -> Path:
    """A ``--config`` value as a file: an existing path, else a packaged config by name.

    ``trace``, ``trace.yaml``, ``real/trace`` and ``configs/trace.yaml`` (the repository
    path of earlier versions) all name ``pixelkit/configs/trace.yaml``.

    Raises:
        FileNotFoundError: neither a file nor a packaged config (the message lists those).
    """
    path = Path(value)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("configs/").removesuffix(".yaml")
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(f"config {value}: no such file, and not a packaged config "
                            f"(packaged: {', '.join(packaged_configs())})")


def _resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config`` / ``-c`` value turned into its file(s)
    (:func:`config_files`: a packaged stage brings its base file first)."""
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            files = config_files(arg.split("=", 1)[1])
            out += [x for f in files for x in ("--config", str(f))]
        elif i > 0 and args[i - 1] in ("--config", "-c"):
            files = config_files(arg)
            out += [str(files[0])] + [x for f in files[1:] for x in (args[i - 1], str(f))]
        else:
            out.append(arg)
    return out


def _entries(value: Any) -> list[Any]:
    """A config value that may be one ``class_path`` namespace, a list of them, or None."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def available_loggers(loggers: Any) -> Any:
    """The trainer's ``logger`` setting without the W&B logger when wandb is not installed.

    wandb is an extra (``pixelkit[wandb]``): without it the stage YAMLs still run, logging to
    their CSV logger, and say so in one line. If the W&B logger was the only one, a
    ``CSVLogger`` in its ``save_dir`` takes its place, so a run is never left without a log.

    Args:
        loggers: ``trainer.logger`` as parsed: a list of ``class_path`` / ``init_args``
            namespaces, a single one, a bool or None.
    """
    from pixelkit.optional import available

    entries = _entries(loggers)
    wandb = [lg for lg in entries if str(getattr(lg, "class_path", "")).endswith("WandbLogger")]
    if not wandb or available("wandb"):
        return loggers
    kept = [lg for lg in entries if lg not in wandb]
    print("[pixelkit] wandb is not installed: logging to CSV only "
          "(pip install 'pixelkit[wandb]' for Weights & Biases)")
    if not kept:
        save_dir = getattr(wandb[0].init_args, "save_dir", None) or "."
        from jsonargparse import Namespace

        kept = [Namespace(class_path="pixelkit.loggers.CSVLogger",
                          init_args=Namespace(save_dir=save_dir, name="csv"))]
    return kept if isinstance(loggers, list) else kept[0]


def _checkpoint_dirs(config: Any) -> list[Path]:
    """The ``dirpath`` of every ModelCheckpoint callback in the config."""
    return [Path(cb.init_args.dirpath) for cb in _entries(config.trainer.callbacks)
            if str(getattr(cb, "class_path", "")).endswith("ModelCheckpoint")
            and getattr(cb.init_args, "dirpath", None)]


def resolve_resume(ckpt_path: str | None, dirs: Sequence[Path]) -> str | None:
    """``--ckpt_path`` made concrete: the file to resume from, or None to start fresh.

    ``last`` is the newest checkpoint in the checkpoint folders that reads: normally
    ``last.ckpt``; if that is unreadable (or older than another), the newest one that is,
    with one line saying so. No checkpoint at all starts from step 0, as Lightning's
    ``last`` does, with one line saying so. An explicit file must read.

    Raises:
        FileNotFoundError, pixelkit.checkpoint.CheckpointError: an explicit file that does
            not exist or does not read.
    """
    if ckpt_path in (None, "best", "hpc", "registry") or "://" in str(ckpt_path):
        return ckpt_path
    if ckpt_path != "last":
        load_checkpoint_file(ckpt_path, mmap=True)  # raises with the reason
        return ckpt_path
    if not dirs:
        return ckpt_path  # no folder named in the config: Lightning's own "last"
    candidates = sorted((p for d in dirs for p in d.glob("*.ckpt")),
                        key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            last = path.parent / "last.ckpt"
            if path != last and last.exists():
                # last.ckpt is older (a kill came between the two writes of a validation)
                # or broken: it becomes the state resumed from, so that a run resumed at
                # its final step still leaves last.ckpt final.
                with open(path, "rb") as src:
                    atomic_save(lambda f: shutil.copyfileobj(src, f), last)
                print(f"[pixelkit] --ckpt_path last: {path} is the newest checkpoint that "
                      "reads; copied to last.ckpt")
                return str(last)
            if path != last:
                print(f"[pixelkit] --ckpt_path last: resuming from {path}, the newest "
                      "checkpoint that reads")
            return str(path)
        print(f"[pixelkit] --ckpt_path last: skipping {problem}")
    print(f"[pixelkit] --ckpt_path last: no checkpoint in {', '.join(map(str, dirs))} yet, "
          "starting from step 0")
    return None


def _stage_name(config: Any) -> str:
    """The stage name of the config's LightningModule class (``custom`` for others)."""
    import importlib

    module, _, name = str(config.model.class_path).rpartition(".")
    return getattr(getattr(importlib.import_module(module), name), "stage_name", "custom")


def fill_run_paths(config: Any) -> Path:
    """Put every output of a run in its folder, named once: ``<runs>/<stage>``.

    The folder is ``trainer.default_root_dir`` when given, else ``<runs>/<stage name>``
    (``--runs``: ``runs`` by default, ``runs/real`` in the real-data configs). Loggers
    without a ``save_dir`` and checkpoints without a ``dirpath`` go there, W&B runs are
    named after it, and ``init_from: previous`` becomes the last checkpoint of the stage
    trained before this one (:data:`pixelkit.stages.STAGES` order) under ``<runs>``.

    Returns:
        The run's folder.
    """
    from pixelkit.stages import previous_stage

    stage = _stage_name(config)
    runs = Path(config.get("runs") or "runs")
    run = Path(config.trainer.default_root_dir or runs / stage)
    config.trainer.default_root_dir = str(run)
    for logger in _entries(config.trainer.logger):
        args = logger.init_args
        if getattr(args, "save_dir", None) in (None, "."):
            args.save_dir = str(run)
        if str(logger.class_path).endswith("WandbLogger") and not getattr(args, "name", None):
            args.name = run.name
    for cb in _entries(config.trainer.callbacks):
        if str(cb.class_path).endswith("ModelCheckpoint") and not cb.init_args.dirpath:
            cb.init_args.dirpath = str(run / "checkpoints")
    init = config.model.init_args
    if getattr(init, "init_from", None) == "previous":
        before = previous_stage(stage) if stage != "custom" else None
        if before is None:
            raise ValueError(f"model.init_args.init_from: 'previous' names the stage before "
                             f"{stage!r}, and there is none")
        init.init_from = str(runs / before / "checkpoints" / "last.ckpt")
    return run


def check_model_overrides(config: Any) -> None:
    """``model.init_args.model`` checked against the model config's dataclasses now, so an
    unknown field is one line naming it (and the closest one) before anything is built."""
    from pixelkit.config import PRESETS, apply_overrides

    init = config.model.init_args
    preset, overrides = getattr(init, "preset", None), getattr(init, "model", None)
    if preset in PRESETS and overrides is not None:
        raw = overrides.as_dict() if hasattr(overrides, "as_dict") else overrides
        apply_overrides(PRESETS[preset](), _set_fields(raw))


def _set_fields(tree: Any) -> Any:
    """A parsed overrides tree without its unset (None) fields and empty groups."""
    if not isinstance(tree, dict):
        return tree
    out = {k: _set_fields(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in out.items() if v != {}}


def check_paths(config: Any) -> None:
    """Fail early, in one line, on a path of the config that cannot work.

    Raises:
        FileNotFoundError: an annotation file or image folder of a data source, or
            ``model.init_args.init_from``, does not exist.
        pixelkit.checkpoint.CheckpointError: ``init_from`` does not read.
    """
    init_from = getattr(config.model.init_args, "init_from", None)
    if init_from:
        problem = checkpoint_problem(init_from)
        if problem is not None:
            raise FileNotFoundError(f"model.init_args.init_from: {problem} (train the stage "
                                    "before it first, or set init_from to null)")
    from pixelkit.data.datamodule import SourceConfig

    root = getattr(config.data, "root", None) or "."
    for split in ("train", "val"):
        for i, src in enumerate(getattr(config.data, split, None) or []):
            fields = dict(vars(src)) if hasattr(src, "__dict__") else dict(src)
            try:
                src = SourceConfig(**fields).resolved(root)
            except ValueError as err:
                raise ValueError(f"data.{split}[{i}]: {err}") from None
            if not Path(src.ann).is_file():
                raise FileNotFoundError(f"data.{split}[{i}]: {src.ann} does not exist "
                                        f"(data.root is {root})")
            if src.images and not Path(src.images).is_dir():
                raise FileNotFoundError(f"data.{split}[{i}]: {src.images} is not a folder "
                                        f"(data.root is {root})")


class PixelCLI(LightningCLI):
    """LightningCLI with pixelkit's links between model and data."""

    #: False: parse and validate the config only (used to check the YAMLs cheaply).
    instantiate = True

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # Always a list here (cli_main resolves the config names first); Lightning's own
        # method warns whenever ``args`` is given while ``sys.argv`` has arguments too,
        # which is every ``pixelkit fit`` run.
        self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.logger = available_loggers(config.trainer.logger)
        fill_run_paths(config)
        check_model_overrides(config)
        if not self.instantiate:
            return
        check_paths(config)
        dirs = _checkpoint_dirs(config)
        for folder in dirs:
            for orphan in remove_partial_files(folder):
                print(f"[pixelkit] removed {orphan}, a checkpoint write a kill interrupted")
        if "ckpt_path" in config:
            config.ckpt_path = resolve_resume(config.ckpt_path, dirs)
            if self.subcommand == "fit" and config.ckpt_path and "://" not in config.ckpt_path \
                    and Path(config.ckpt_path).is_file():
                self._continue_logs(config, config.ckpt_path)

    def _continue_logs(self, config: Any, ckpt_path: str) -> None:
        """Point the loggers at the resumed run's: CSV rows to keep, W&B run id."""
        state = load_checkpoint_file(ckpt_path, mmap=True).get(RUN_STATE_KEY) or {}
        for logger in _entries(config.trainer.logger):
            for key, value in resume_logger_args(str(logger.class_path), state).items():
                setattr(logger.init_args, key, value)

    def instantiate_classes(self) -> None:
        if self.instantiate:
            super().instantiate_classes()

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--runs", default="runs",
                            help="folder of the runs: each stage writes to <runs>/<stage> "
                                 "unless trainer.default_root_dir says otherwise")
        # The model's input size decides the data's; a mismatch would be a silent bug.
        parser.link_arguments("model.image_size", "data.image_size", apply_on="instantiate")
        parser.link_arguments("model.tokenizer_name", "data.tokenizer", apply_on="instantiate")


def cli_main(argv: Sequence[str] | None = None, run: bool = True,
             instantiate: bool = True) -> PixelCLI:
    """Run LightningCLI over the stage classes and :class:`PixelDataModule`.

    Args:
        argv: arguments (default ``sys.argv``): ``fit --config trace ...``.
        run: run the subcommand; False: build the objects only (argv without a subcommand).
        instantiate: with ``run=False``, also skip building them: parse and validate only.
    """
    from jsonargparse import ArgumentError

    cls = PixelCLI if instantiate else type("ParseOnlyCLI", (PixelCLI,), {"instantiate": False})
    if argv is None:
        import sys

        argv = sys.argv[1:]
    try:
        return _build(cls, argv, run)
    except ArgumentError as err:
        raise ValueError(argument_error_message(str(err))) from None


def argument_error_message(text: str) -> str:
    """The one line that matters in a jsonargparse error; an unknown model-config field is
    named in full (``model.init_args.model.loss.pointweight``) with the closest field.

    jsonargparse reports a wrong key of the stage inside a union error of several lines;
    the cause is its ``Group 'model' does not accept option 'K'`` line (or, on the command
    line, ``unrecognized arguments: --model.K``).
    """
    import re

    key = None
    found = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text)
    if found:
        key = f"{found.group(1)}.{found.group(2)}"
    else:
        found = re.search(r"unrecognized arguments: --([\w.]+)", text, re.IGNORECASE)
        if found:
            key = found.group(1)
    if key is None:
        lines = [ln.strip(" -:") for ln in text.splitlines() if ln.strip(" -:")]
        cause = [ln for ln in lines if not ln.startswith((
            "Does not validate", "Subtypes", "Errors", "Problem with", "Given value",
            "Expected a <class 'NoneType'>"))]
        return " ".join((cause or lines)[-2:])
    return f"{_full_key(key)}: no such setting{_closest_field(_full_key(key))}"


def _full_key(key: str) -> str:
    """``model.loss.x`` / ``model.init_args.loss.x`` -> ``model.init_args.model.loss.x``."""
    from pixelkit.config import PixelLLMConfig

    sections = {f.name for f in dataclasses.fields(PixelLLMConfig)}
    parts = key.split(".")
    if parts[0] == "model":
        rest = parts[2:] if parts[1:2] == ["init_args"] else parts[1:]
        if rest[:1] == ["model"]:
            rest = rest[1:]
        if rest and rest[0] in sections:
            return ".".join(["model", "init_args", "model", *rest])
        return ".".join(["model", "init_args", *rest])
    return key


def _closest_field(key: str) -> str:
    """``"; did you mean ...?"`` for a model-config key, from the config's own fields."""
    import difflib

    from pixelkit.config import ModelOverrides

    if not key.startswith("model.init_args.model."):
        return ""
    *path, leaf = key.split(".")[3:]
    cls: Any = ModelOverrides
    for part in path:
        field = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        if field is None or not dataclasses.is_dataclass(field.default_factory):
            return ""
        cls = field.default_factory
    close = difflib.get_close_matches(leaf, [f.name for f in dataclasses.fields(cls)], n=1,
                                      cutoff=0.5)
    return f"; did you mean {key.rsplit('.', 1)[0]}.{close[0]}?" if close else ""


def _build(cls: type, argv: Sequence[str], run: bool) -> PixelCLI:
    return cls(
        PixelLLMStage,
        PixelDataModule,
        subclass_mode_model=True,
        # Atomic checkpoint writes for every config (a YAML's own plugins replace it).
        trainer_defaults={"plugins": [{"class_path": "pixelkit.checkpoint.AtomicCheckpointIO"}]},
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        # Errors raise (cli_main makes them one line) instead of printing the usage.
        parser_kwargs={"exit_on_error": False,
                       **{cmd: {"exit_on_error": False} for cmd in ("fit", "validate", "test")}},
        args=_resolve_config_args(argv),
        run=run,
    )
