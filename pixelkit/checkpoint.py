"""Checkpoints: what a pixelkit checkpoint holds and how to read one safely.

A checkpoint is a dict with ``state_dict`` (the :class:`PixelLLM` weights, optionally under
a ``model.`` prefix, as in a Lightning checkpoint of a stage) and ``pixelkit``: the resolved
model config and a description (stage, data it was trained on, metrics). Both Lightning's
own checkpoints of a stage and the slim final ``pixelllm.ckpt`` of the quickstart have this
shape, so :func:`load_model` reads either. Loading uses ``torch.load(weights_only=True)``:
a checkpoint can hold tensors and plain containers only, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixelkit.config import PixelLLMConfig
from pixelkit.modeling.pixel_llm import PixelLLM

META_KEY = "pixelkit"


def model_state(model: PixelLLM) -> dict[str, torch.Tensor]:
    """The model's weights as a flat state dict (non-persistent buffers excluded)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def checkpoint_meta(model: PixelLLM, **info: Any) -> dict[str, Any]:
    """The ``pixelkit`` entry: the resolved config plus plain-valued ``info``."""
    return {"config": model.config.to_dict(), **info}


def save_model(model: PixelLLM, path: str | Path, **info: Any) -> Path:
    """Write a slim checkpoint (weights + config + ``info``: stage, data, metrics...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model_state(model), META_KEY: checkpoint_meta(model, **info)}, path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for missing / foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (make one with `make quickstart`)")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or META_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a pixelkit checkpoint (no '{META_KEY}' / 'state_dict' entry)")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[PixelLLM, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights.

    The architecture comes from the stored config with every ``pretrained`` flag off: the
    checkpoint has all weights, so nothing is downloaded.

    Returns:
        (model in eval mode on ``device``, the ``pixelkit`` meta dict).
    """
    ckpt = read_checkpoint(path)
    meta = ckpt[META_KEY]
    config = PixelLLMConfig.from_dict(meta["config"]).without_pretrained()
    model = PixelLLM(config)
    state = ckpt["state_dict"]
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint of a stage
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta
