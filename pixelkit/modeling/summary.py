"""What a model is, before building it for real: its component tree, parameter counts and a
lower bound of its training memory, all from a config on the ``meta`` device (no weights,
no download): ``pixelkit info``, the notebooks and the README's tables use these.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from pixelkit.config import PixelLLMConfig
from pixelkit.modeling.trainable import component_tree, format_summary, parameter_summary

__all__ = ["PEAK_BF16_FLOPS", "describe_model", "memory_estimate", "peak_bf16_flops"]


def _build(config: Any, device: str) -> tuple[PixelLLMConfig, Any]:
    """The config (a preset name is looked up) and its model built on ``device``."""
    from pixelkit.modeling.pixel_llm import PixelLLM

    if isinstance(config, str):
        config = PixelLLMConfig.from_name(config)
    config = config.without_pretrained()
    with torch.device(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return config, PixelLLM(config)


def describe_model(config: Any, depth: int = 2, device: str = "meta", tree: bool = True) -> str:
    """Component tree and parameter counts of a config, built without weights.

    As ``pixelkit info``: on the ``meta`` device only shapes exist, so the paper model
    (~3.8 B parameters) is described without memory or downloads.

    Args:
        config: a :class:`~pixelkit.PixelLLMConfig` or a preset name.
        depth: levels of the tree.
        device: ``meta`` (shapes only) or ``cpu`` (random weights).
        tree: include the component tree (else the header and the count table only).

    Returns:
        The printable description.
    """
    config, model = _build(config, device)
    lines = [f"PixelLLM {config.name!r} at {config.image_size}px (built on {device})"]
    for i, b in enumerate(config.image_encoder.backbones):
        lines.append(f"  backbone {i}: {b.kind} {b.name} @ {b.image_size or config.image_size}px"
                     f"{' (frozen)' if b.frozen else ''}")
    lm = config.language_model
    lines.append(f"  language model: {lm.family} {lm.name}; LoRA r={lm.lora.r}"
                 f"{' on ' + str(lm.lora.target_modules) if lm.lora.r else ''}; "
                 f"base frozen={lm.freeze_base}")
    if tree:
        lines += ["", component_tree(model, depth=depth)]
    return "\n".join(lines + ["", format_summary(parameter_summary(model))])


def memory_estimate(config: Any, precision: str = "bf16-mixed") -> dict[str, float]:
    """A lower bound of training memory: weights, gradients and AdamW states (GiB).

    Counted on the meta device. Frozen weights take 2 bytes in ``bf16``/``16`` precisions
    (cast for the forward pass), 4 otherwise; trainable weights are kept in fp32 (4 bytes)
    with an fp32 gradient (4) and AdamW's two moments (8). Activations come on top and
    grow with batch size and sequence length: measure them with
    ``torch.cuda.max_memory_allocated()`` on the real run.

    Returns:
        ``trainable`` and ``frozen`` parameter counts, and ``weights_gib``,
        ``grads_optimizer_gib`` and ``total_gib``.
    """
    _, model = _build(config, "meta")
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    half = precision.startswith(("bf16", "16"))
    gib = 1024 ** 3
    weights = (frozen * (2 if half else 4) + train * 4) / gib
    states = train * (4 + 8) / gib
    return {"trainable": float(train), "frozen": float(frozen), "weights_gib": weights,
            "grads_optimizer_gib": states, "total_gib": weights + states}


#: Peak dense bf16 tensor-core FLOP/s (no sparsity) by a piece of the device name
#: (``torch.cuda.get_device_name``), from the vendors' data sheets. The first piece found in
#: the name wins, so the more specific names come first (an "H100 PCIe" is not an SXM).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),   # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),   # also GH200
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
)


def peak_bf16_flops(device_name: str) -> tuple[float, str]:
    """Peak dense bf16 FLOP/s of a device, for MFU (model FLOPs utilisation).

    Args:
        device_name: e.g. ``torch.cuda.get_device_name()`` or ``"cpu"``.

    Returns:
        ``(flops_per_s, why)``: the peak and the table entry it came from, or ``(nan,
        reason)`` for a device not in :data:`PEAK_BF16_FLOPS` (an MFU would then be NaN).
    """
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops, f"{key}: {flops / 1e12:.0f} TFLOP/s dense bf16"
    return math.nan, f"no peak bf16 rate known for {device_name!r} (pixelkit PEAK_BF16_FLOPS)"
