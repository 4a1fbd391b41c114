"""``pixelkit fit | validate | test --config configs/<stage>.yaml``: LightningCLI for the stages.

The YAML names the stage class (``model.class_path: pixelkit.stages.TraceTraining``), its
arguments, the :class:`PixelDataModule` sources and the Trainer (loggers, checkpoints).
The model's ``image_size`` and tokenizer are linked into the data module so the two can
never disagree. Every run writes its resolved config next to its logs and sends it to every
logger (W&B included), so a run can be reproduced from what it logged.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class PixelCLI(LightningCLI):
    """LightningCLI with pixelkit's links between model and data."""

    #: False: parse and validate the config only (used to check the YAMLs cheaply).
    instantiate = True

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
        argv: arguments (default ``sys.argv``): ``fit --config configs/trace.yaml ...``.
        run: run the subcommand; False: build the objects only (argv without a subcommand).
        instantiate: with ``run=False``, also skip building them: parse and validate only.
    """
    cls = PixelCLI if instantiate else type("ParseOnlyCLI", (PixelCLI,), {"instantiate": False})
    return cls(
        PixelLLMStage,
        PixelDataModule,
        subclass_mode_model=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=list(argv) if argv is not None else None,
        run=run,
    )
