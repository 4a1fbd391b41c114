"""pixelkit: PixelLLM (Pixel Aligned Language Models, Xu et al. CVPR 2024) for PyTorch Lightning.

``from pixelkit import PixelLLM, PixelLLMConfig, Predictor``. Heavy submodules import lazily
so ``import pixelkit`` and ``pixelkit --help`` stay quick.
"""

from __future__ import annotations

import os
from typing import Any

# Nothing reaches the network unless the user asks for it (DESIGN.md section 7).
os.environ.setdefault("WANDB_MODE", "offline")

__version__ = "0.1.0"

_LAZY = {
    "PixelLLM": "pixelkit.modeling.pixel_llm",
    "PixelLLMOutput": "pixelkit.modeling.pixel_llm",
    "PixelLLMConfig": "pixelkit.config",
    "Predictor": "pixelkit.predictor",
}

__all__ = ["PixelLLM", "PixelLLMConfig", "PixelLLMOutput", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixelkit' has no attribute {name!r}")
