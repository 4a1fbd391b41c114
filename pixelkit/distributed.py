"""Many GPUs: Lightning's FSDP with pixelkit's settings (:class:`PixelFSDPStrategy`).

The ``paper`` preset (frozen SAM ViT-H, trainable EVA02-L, Flan-T5-XL with LoRA) does not fit
a plain DDP replica per GPU with its optimizer state and activations at batch 32; FSDP
shards it. What pixelkit decides, so that no config has to:

* **units**: every transformer block is one FSDP unit (:meth:`PixelLLM.transformer_blocks`:
  the ViT / SAM blocks, the extractor's two-way blocks, the LM's ``T5Block``), found from the
  model, so another backbone or LM needs no list of class names; the rest (embeddings,
  necks, heads) is the root unit;
* ``use_orig_params=True``: a T5 block holds frozen base weights *and* trainable LoRA
  adapters (an EVA02 block beside a frozen SAM one, too); FSDP1 flattens a unit into one
  parameter, which only keeps per-parameter ``requires_grad`` with the original parameters;
* **checkpoints** hold the full (consolidated) state dict, written by rank 0
  (``state_dict_type="full"``): the stage leaves the frozen pretrained weights out by key
  name (:func:`pixelkit.checkpoint.slim_state`) and :func:`pixelkit.checkpoint.load_model`
  reads it on one process;
* ``activation_checkpointing``: the one switch: recompute those same blocks in backward;
* mixed precision is Lightning's ``trainer.precision`` (``bf16-mixed``), not set here.

Every other FSDP setting (``sharding_strategy``, ``cpu_offload``, ``limit_all_gathers``...)
passes through to :class:`lightning.pytorch.strategies.FSDPStrategy`. In YAML::

    trainer:
      strategy:
        class_path: pixelkit.distributed.PixelFSDPStrategy
        init_args: {activation_checkpointing: true, sharding_strategy: HYBRID_SHARD}
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.strategies.fsdp import _activation_checkpointing_kwargs
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from pixelkit.modeling.pixel_llm import PixelLLM

__all__ = ["PixelFSDPStrategy", "block_classes"]


def block_classes(module: nn.Module) -> set[type[nn.Module]]:
    """The classes of the transformer blocks of the :class:`PixelLLM` inside ``module``
    (a stage, or the model itself): what FSDP wraps and activation checkpointing recomputes.

    Raises:
        ValueError: ``module`` holds no PixelLLM, or one without transformer blocks.
    """
    model = next((m for m in module.modules() if isinstance(m, PixelLLM)), None)
    if model is None:
        raise ValueError(f"{type(module).__name__} holds no PixelLLM: PixelFSDPStrategy "
                         "wraps a PixelLLM's transformer blocks")
    classes = {type(b) for b in model.transformer_blocks()}
    if not classes:
        raise ValueError("the model has no transformer blocks to shard")
    return classes


class PixelFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP (``torch.distributed.fsdp.FullyShardedDataParallel``) for a stage.

    Args:
        activation_checkpointing: recompute each transformer block's activations in
            backward instead of keeping them (less memory, about a third more compute).
        **kwargs: :class:`~lightning.pytorch.strategies.FSDPStrategy`'s other arguments
            (``sharding_strategy``, ``cpu_offload``, ``process_group_backend``...).

    Raises:
        ValueError: an argument pixelkit sets itself (the wrapping and checkpointing
            policies, ``use_orig_params``, ``state_dict_type``) given another value.
    """

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        fixed = {  # argument: (the value pixelkit uses, why)
            "auto_wrap_policy": (None, "the units are the model's transformer blocks"),
            "activation_checkpointing_policy": (None, "use activation_checkpointing: true"),
            "use_orig_params": (True, "frozen weights and LoRA adapters share FSDP units"),
            "state_dict_type": ("full", "checkpoints load on one process"),
        }
        for key, (value, why) in fixed.items():
            given = kwargs.pop(key, value)
            if given != value:
                raise ValueError(f"PixelFSDPStrategy sets {key}={value!r} itself ({why}); "
                                 f"got {given!r}")
        super().__init__(use_orig_params=True, state_dict_type="full", **kwargs)
        self.checkpoint_blocks = activation_checkpointing

    def _setup_model(self, model: nn.Module) -> nn.Module:
        # The policies need the model's block classes, known only now. The wrapping is
        # Lightning's own call but for ``device_id``: Lightning passes the device's index,
        # None on a CPU, where FSDP then refuses to run ("needs a non-CPU accelerator");
        # given the CPU device itself it runs (over gloo: the two-process test).
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = block_classes(model)
        if self.checkpoint_blocks:  # applied by Lightning after the wrapping
            self._activation_checkpointing_kwargs = _activation_checkpointing_kwargs(
                None, ModuleWrapPolicy(classes))
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            device = self.root_device
            model = FullyShardedDataParallel(
                module=model, cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=device if device.type == "cpu" else device.index,
                auto_wrap_policy=ModuleWrapPolicy(classes), **self.kwargs)
        return super()._setup_model(model)
