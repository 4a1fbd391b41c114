"""Optional dependencies: imported only where they are used, with one clear message if missing.

pixelkit's core (``import pixelkit``, training with ``pixelkit fit``, the ``Predictor``,
``pixelkit eval --task refer|trace``) needs only torch, torchvision, lightning, jsonargparse,
transformers, peft, timm, tokenizers, safetensors, pillow, numpy and PyYAML. Everything
else is an extra of the package, installed with ``pip install 'pixelkit[EXTRA]'``
(``make setup`` installs them all):

=============  ==========================  ==================================================
extra          packages                    what needs them
=============  ==========================  ==================================================
``demo``       gradio                      ``pixelkit demo`` (the browser demo)
``wandb``      wandb                       the stage YAMLs' ``WandbLogger`` (CSV only without)
``metrics``    pycocoevalcap (+ Java)      CIDEr / METEOR / BLEU-4 / ROUGE-L, DenseCap mAP
``plots``      matplotlib                  loss curves, heat maps, study plots, the report
``notebooks``  jupyter, pandas             the tutorial notebooks and their tables
=============  ==========================  ==================================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Top-level module -> (pip distribution, pixelkit extra that installs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "gradio": ("gradio", "demo"),
    "gradio_client": ("gradio_client", "demo"),
    "wandb": ("wandb", "wandb"),
    "pycocoevalcap": ("pycocoevalcap", "metrics"),
    "matplotlib": ("matplotlib", "plots"),
    "pandas": ("pandas", "notebooks"),
}


class MissingDependency(ModuleNotFoundError):
    """A part of pixelkit needs a package of one of its extras that is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or say in one line which extra provides it.

    Args:
        module: the module to import (``"matplotlib.pyplot"``, ``"gradio"``...).
        purpose: what needs it, for the message ("the browser demo").

    Raises:
        MissingDependency: the module's top-level package is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is None or err.name.split(".")[0] != top:
            raise  # the package is there but one of *its* imports is broken: show that
        dist, extra = EXTRAS.get(top, (top, "all"))
        raise MissingDependency(
            f"{purpose}: {dist} is not installed (pip install 'pixelkit[{extra}]')",
            name=top) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it: a broken install counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
