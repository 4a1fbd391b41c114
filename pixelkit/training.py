"""``pixelkit fit | validate | test --config <stage>``: LightningCLI for the stages.

``--config`` takes a YAML file or the name of a config shipped inside the package
(``pixelkit/configs/``: ``caption``, ``trace``, ``refer``, ``densecap`` for the shapes world on
a CPU, ``real/<stage>`` for the real datasets on a GPU); see :func:`resolve_config`.
The YAML names the stage class (``model.class_path: pixelkit.stages.TraceTraining``), its
arguments, the :class:`PixelDataModule` sources and the Trainer (loggers, checkpoints).
The model's ``image_size`` and tokenizer are linked into the data module so the two can
never disagree. Every run writes its resolved config next to its logs and sends it to every
logger (W&B included), so a run can be reproduced from what it logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from pixelkit.data.datamodule import PixelDataModule
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
    """``argv`` with every ``--config`` / ``-c`` value turned into a file path."""
    out, args = [], list(argv)
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            arg = f"--config={resolve_config(arg.split('=', 1)[1])}"
        elif i > 0 and args[i - 1] in ("--config", "-c"):
            arg = str(resolve_config(arg))
        out.append(arg)
    return out


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

    entries = loggers if isinstance(loggers, list) else [loggers]
    wandb = [lg for lg in entries if str(getattr(lg, "class_path", "")).endswith("WandbLogger")]
    if not wandb or available("wandb"):
        return loggers
    kept = [lg for lg in entries if lg not in wandb]
    print("[pixelkit] wandb is not installed: logging to CSV only "
          "(pip install 'pixelkit[wandb]' for Weights & Biases)")
    if not kept:
        save_dir = getattr(wandb[0].init_args, "save_dir", None) or "."
        from jsonargparse import Namespace

        kept = [Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                          init_args=Namespace(save_dir=save_dir, name="csv"))]
    return kept if isinstance(loggers, list) else kept[0]


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

    def instantiate_classes(self) -> None:
        if self.instantiate:
            super().instantiate_classes()

    def add_arguments_to_parser(self, parser: Any) -> None:
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
    cls = PixelCLI if instantiate else type("ParseOnlyCLI", (PixelCLI,), {"instantiate": False})
    if argv is None:
        import sys

        argv = sys.argv[1:]
    return cls(
        PixelLLMStage,
        PixelDataModule,
        subclass_mode_model=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=_resolve_config_args(argv),
        run=run,
    )
