"""Image encoders: any timm backbone, SAM's ViT (``transformers.SamModel``), or several.

Every backbone maps the model input (B, 3, S, S) in [0, 1] to a feature grid
(B, C_k, h_k, w_k). :class:`ImageEncoder` resizes all grids to one (h, w) and concatenates
them on channels, as the paper does with a frozen SAM ViT-H beside a trainable EVA02-L:
f = (B, sum_k C_k, h, w).

Weights load through each library's own loader: ``timm.create_model(name,
pretrained=True)`` (or ``pretrained_cfg_overlay=dict(file=...)`` for a local file) and
``SamModel.from_pretrained(name_or_dir)``.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pixelkit.config import BackboneConfig, ImageEncoderConfig
from pixelkit.modeling.hub_configs import known_config

# SAM normalises 0..255 pixels with ImageNet statistics.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module, abc.ABC):
    """Base: normalise, resize to the backbone's input size, return an NCHW grid."""

    out_channels: int
    image_size: int
    frozen: bool

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, s, s) normalised -> (B, C, h, w)."""

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks (FSDP units, activation checkpointing); none for
        a ConvNet, whose stages stay in the enclosing unit."""
        return []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, S, S) in [0, 1]. Returns (B, C, h, w)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size),
                                   mode="bilinear", align_corners=False, antialias=True)
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        # A frozen backbone needs no activation memory for backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.features(x)

    def train(self, mode: bool = True) -> Backbone:
        # Frozen backbones stay in eval mode: dropout / drop-path off, and BatchNorm running
        # statistics fixed (in train mode they would drift with every batch although no
        # weight trains, and the pretrained weights would no longer be the source's). A new
        # module is in train mode and Lightning does not call .train() at fit start, so
        # each subclass calls it at the end of __init__.
        return super().train(mode and not self.frozen)


class TimmBackbone(Backbone):
    """Any timm model; features of its last stage/block as an NCHW grid.

    Uses timm's ``forward_intermediates`` so ViTs (tokens reshaped to the patch grid,
    prefix tokens dropped) and ConvNets are handled alike.
    """

    def __init__(self, cfg: BackboneConfig, image_size: int) -> None:
        kwargs = dict(cfg.kwargs)
        pretrained = cfg.pretrained or cfg.weights is not None
        if cfg.weights is not None:
            # timm's own loader, pointed at a local file instead of the hub.
            kwargs["pretrained_cfg_overlay"] = {"file": str(cfg.weights)}
        model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0, **kwargs)
        # Drop the classifier head and pooling norms that a feature grid never uses (unused
        # parameters would also break DDP); the final norm is kept and applied.
        model.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        data_cfg = model.pretrained_cfg or {}
        super().__init__(tuple(data_cfg.get("mean", _IMAGENET_MEAN)),
                         tuple(data_cfg.get("std", _IMAGENET_STD)))
        self.model = model
        self.frozen = cfg.frozen
        self.image_size = cfg.image_size or image_size
        self.out_channels = int(model.feature_info[-1]["num_chs"]) if hasattr(
            model, "feature_info") else int(model.num_features)
        self.train()  # a frozen one starts in eval mode (see Backbone.train)

    def transformer_blocks(self) -> list[nn.Module]:
        # timm's ViTs (EVA02 included) keep theirs in ``blocks``; ConvNets have none.
        return list(getattr(self.model, "blocks", None) or [])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        (feat,) = self.model.forward_intermediates(
            x, indices=1, norm=True, intermediates_only=True, output_fmt="NCHW"
        )
        return feat


class SamBackbone(Backbone):
    """The vision encoder (ViT + neck) of a ``transformers.SamModel``: (B, 256, s/16, s/16).

    SAM is trained at 1024 px; at another ``image_size`` the absolute position embedding
    and the global-attention relative-position tables are resized on load (the windowed
    blocks' tables depend only on the window and are kept).
    """

    def __init__(self, cfg: BackboneConfig, image_size: int) -> None:
        super().__init__(_IMAGENET_MEAN, _IMAGENET_STD)
        from transformers import SamModel, SamVisionConfig
        from transformers.models.sam.modeling_sam import SamVisionEncoder

        self.image_size = cfg.image_size or image_size
        source = cfg.weights or cfg.name
        if cfg.pretrained or cfg.weights is not None:
            sam = SamModel.from_pretrained(source, revision=cfg.revision)
            encoder = sam.vision_encoder
            if encoder.config.image_size != self.image_size:
                encoder = _resize_sam_encoder(encoder, self.image_size)
        else:
            arch = dict(known_config(cfg.name, "vision_config") or {})
            arch.update(cfg.kwargs)
            arch["image_size"] = self.image_size
            encoder = SamVisionEncoder(SamVisionConfig(**arch))
        self.encoder = encoder
        self.frozen = cfg.frozen
        self.out_channels = int(encoder.config.output_channels)
        self.train()  # a frozen one starts in eval mode (see Backbone.train)

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=x).last_hidden_state


def _resize_sam_encoder(encoder: nn.Module, image_size: int) -> nn.Module:
    """A copy of a SAM vision encoder for ``image_size``, with resized position tables."""
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionEncoder

    cfg = SamVisionConfig(**{**encoder.config.to_dict(), "image_size": image_size})
    new = SamVisionEncoder(cfg)
    grid = image_size // cfg.patch_size
    state = {}
    for key, value in encoder.state_dict().items():
        target = new.state_dict()[key]
        if value.shape == target.shape:
            state[key] = value
        elif key.endswith("pos_embed"):  # (1, H, W, C) -> (1, grid, grid, C)
            state[key] = F.interpolate(value.permute(0, 3, 1, 2), size=(grid, grid),
                                       mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
        elif "rel_pos" in key:  # (2L-1, C) -> (2L'-1, C), as SAM's own get_rel_pos does
            state[key] = F.interpolate(value.T[None], size=target.shape[0],
                                       mode="linear").squeeze(0).T
        else:
            raise ValueError(f"cannot resize SAM weight {key}: {tuple(value.shape)} -> "
                             f"{tuple(target.shape)}")
    new.load_state_dict(state)
    return new


def build_backbone(cfg: BackboneConfig, image_size: int) -> Backbone:
    """One backbone from its config (``kind`` picks timm or SAM)."""
    if cfg.kind == "timm":
        return TimmBackbone(cfg, image_size)
    return SamBackbone(cfg, image_size)


class ImageEncoder(nn.Module):
    """One or more backbones resized to one grid and concatenated on channels.

    Args:
        cfg: the encoder config.
        image_size: the model's input side S.
    """

    def __init__(self, cfg: ImageEncoderConfig, image_size: int) -> None:
        super().__init__()
        self.backbones = nn.ModuleList(build_backbone(b, image_size) for b in cfg.backbones)
        self.out_channels = sum(b.out_channels for b in self.backbones)
        self.grid_size = cfg.grid_size or self._native_grid(self.backbones[0], cfg.backbones[0])

    @staticmethod
    def _native_grid(backbone: Backbone, cfg: BackboneConfig) -> int:
        if isinstance(backbone, TimmBackbone):
            reduction = backbone.model.feature_info[-1]["reduction"]
        else:
            reduction = backbone.encoder.config.patch_size
        return math.ceil(backbone.image_size / reduction)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, S, S) in [0, 1]. Returns f (B, C, grid, grid)."""
        feats = []
        for backbone in self.backbones:
            f = backbone(images)
            if f.shape[-2:] != (self.grid_size, self.grid_size):
                f = F.interpolate(f, size=(self.grid_size, self.grid_size), mode="bilinear",
                                  align_corners=False)
            feats.append(f)
        return torch.cat(feats, dim=1) if len(feats) > 1 else feats[0]


def save_timm_weights(backbone: TimmBackbone, path: str | Path) -> Path:
    """Write a timm backbone's weights to a safetensors file loadable via ``weights=``."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(path))
    return path
