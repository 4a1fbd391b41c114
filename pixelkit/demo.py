"""``pixelkit demo``: serve the Gradio app of ``demos/app.py``.

The app lives in ``demos/`` beside the notebooks (DESIGN.md's layout); this module finds
it in the repository the package was installed from (``pip install -e .``) and imports it
by path, so ``pixelkit demo`` and ``python demos/app.py`` run the same code.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

APP = Path(__file__).resolve().parents[1] / "demos" / "app.py"


def app_module() -> ModuleType:
    """``demos/app.py`` as a module (imported once)."""
    name = "pixelkit_demo_app"
    if name in sys.modules:
        return sys.modules[name]
    if not APP.is_file():
        raise FileNotFoundError(
            f"the demo app is not at {APP}: `pixelkit demo` runs from a clone of the pixelkit "
            "repository installed with `pip install -e .` (or `make setup`)")
    spec = importlib.util.spec_from_file_location(name, APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    app_module().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return app_module().run(args)
