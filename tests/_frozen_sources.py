"""Local stand-ins for pretrained sources: a tiny T5 saved as a 'hub' directory and a tiny
timm backbone's weights file, and a tiny config that loads both frozen (the small twin of
the ``paper`` preset: SAM ViT-H and Flan-T5-XL frozen). Shared by the checkpoint and Hub
tests."""

from __future__ import annotations

from pathlib import Path

import torch

from pixelkit import PixelLLMConfig
from pixelkit.modeling.image_encoder import build_backbone, save_timm_weights
from pixelkit.modeling.language_model import load_language_model
from pixelkit.modeling.tokenizer import shapes_tokenizer


def make_sources(root: Path) -> dict[str, Path]:
    """Write the sources under ``root``: ``{"lm": folder, "backbone": weights file}``."""
    torch.manual_seed(0)
    tiny = PixelLLMConfig.from_name("tiny")
    lm = load_language_model(tiny.language_model)
    lm.save_pretrained(root / "t5")
    shapes_tokenizer().save_pretrained(root / "t5")
    backbone = build_backbone(tiny.image_encoder.backbones[0], 64)
    return {"lm": root / "t5", "backbone": save_timm_weights(backbone, root / "bb.safetensors")}


def frozen_config(sources: dict[str, Path]) -> dict:
    """Overrides of the tiny preset: backbone and base LM frozen from ``sources``, LoRA."""
    tiny = PixelLLMConfig.from_name("tiny")
    backbone = {**tiny.to_dict()["image_encoder"]["backbones"][0],
                "weights": str(sources["backbone"]), "frozen": True}
    return {"image_encoder": {"backbones": [backbone]},
            "language_model": {"name": str(sources["lm"]), "pretrained": True,
                               "tokenizer": "shapes", "freeze_base": True,
                               "lora": {"r": 4, "target_modules": ["q", "v"]}}}
