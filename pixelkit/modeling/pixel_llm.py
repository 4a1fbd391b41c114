"""PixelLLM: ties the image encoder, prompt encoder, extractor, LM and heads together.

::

    images (B_img, 3, S, S) --ImageEncoder--> f (B_img, C, h, w)
    f[image_index] + prompt tokens --extractor--> visual tokens (B, Q, D_lm)
    f + proposals --RoIAlign--> region tokens (B, K, D_lm)   (location.format 'regions')
    [visual ; regions ; embedded text prompt] --LM--> logits (B, L, V), hidden (B, L, D_lm)
    hidden --PointHead--> points (B, L, 4)
    f --ProposalHead--> heatmaps / boxes (dense captioning)

``image_index`` maps each of the B prompts to one of the B_img images, so many region
prompts of one image share one image encoding (dense captioning, batched prompts).

Position convention: ``points[:, p]`` comes from the hidden state that emits
``labels[:, p]``, i.e. whose input is ``labels[:, p-1]``. The data pipeline puts the trace
target of word ``labels[p-1]`` at position p, and a referring box at the position whose
label is EOS (see :mod:`pixelkit.modeling.language_model`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from pixelkit.config import PixelLLMConfig
from pixelkit.modeling.image_encoder import ImageEncoder
from pixelkit.modeling.language_model import LanguageModel
from pixelkit.modeling.location import LocationCodec
from pixelkit.modeling.losses import point_l1, text_loss
from pixelkit.modeling.point_head import PointHead
from pixelkit.modeling.prompt_encoder import PromptEncoder, pack_prompts
from pixelkit.modeling.prompt_feature_extractor import PromptFeatureExtractor
from pixelkit.modeling.proposal_head import ProposalHead
from pixelkit.modeling.region_encoder import RegionEncoder
from pixelkit.modeling.trainable import set_trainable


@dataclass
class PixelLLMOutput:
    """What :meth:`PixelLLM.forward` returns.

    Attributes:
        logits: (B, L, V) next-token logits, or None without labels.
        points: (B, L, 4) per-position points in [0, 1], or None without labels.
        losses: unweighted losses by name (``text``, ``point``, ``heatmap``, ``box_l1``,
            ``giou``): only those whose targets were given.
        loss: the weighted sum (None when no loss was computed).
        proposals: raw per-level proposal-head maps when the head ran.
    """

    logits: torch.Tensor | None = None
    points: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None
    proposals: list[dict[str, torch.Tensor]] | None = None


#: Module names that FSDP and activation checkpointing insert above a wrapped module.
WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def unwrapped_name(name: str) -> str:
    """A parameter name without the wrappers' module names (as the state dict spells it)."""
    for wrapper in WRAPPER_NAMES:
        name = name.replace(wrapper, "")
    return name


def pretrained_frozen_parts(config: PixelLLMConfig) -> dict[str, dict[str, Any]]:
    """The parts of a model whose weights come, frozen, from a pretrained source.

    A checkpoint need not carry them: they are rebuilt from the source (a hub id or a local
    path) and checked against a fingerprint (:mod:`pixelkit.checkpoint`). For the ``paper``
    preset these are SAM ViT-H and the base Flan-T5-XL (about 85 % of the weights); their
    LoRA adapters and everything trainable stay in the checkpoint.

    Returns:
        part name -> ``prefix`` (of its state-dict keys), ``source``, ``revision`` (the
        configured hub revision, or None) and ``kind``.
    """
    parts: dict[str, dict[str, Any]] = {}
    for i, b in enumerate(config.image_encoder.backbones):
        if b.frozen and (b.pretrained or b.weights):
            parts[f"image_encoder.backbones.{i}"] = {
                "prefix": f"image_encoder.backbones.{i}.", "source": b.weights or b.name,
                "revision": None if b.weights else b.revision, "kind": b.kind}
    lm = config.language_model
    if lm.pretrained and lm.freeze_base:
        parts["language_model"] = {"prefix": "language_model.model.", "source": lm.name,
                                   "revision": lm.revision, "kind": "transformers"}
    return parts


class PixelLLM(nn.Module, PyTorchModelHubMixin):
    """The Pixel-Aligned Language Model.

    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` come from huggingface_hub's
    ``PyTorchModelHubMixin``, with pixelkit's folder format (:mod:`pixelkit.hub`).

    Args:
        config: the model config (``PixelLLMConfig.from_name("tiny")`` for a quick one).
        vocab_size: LM vocabulary size when the config's architecture leaves it open.
    """

    def __init__(self, config: PixelLLMConfig, vocab_size: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.image_encoder, config.image_size)
        new_ids: list[int] = []
        codec = LocationCodec(config.location)
        region_ids: list[int] = []
        if codec.changes_rows:
            # The location tokenizer's added ids get embedding rows (trained under LoRA).
            from pixelkit.modeling.tokenizer import load_tokenizer, new_token_ids, tokenizer_for

            lm = config.language_model
            tok = tokenizer_for(config)
            new_ids = new_token_ids(load_tokenizer(lm.tokenizer or lm.name), tok)
            vocab_size = max(vocab_size or 0, len(tok))
            region_ids = tok.convert_tokens_to_ids(codec.region_tokens())
        self.language_model = LanguageModel(config.language_model, vocab_size, new_ids)
        width = config.extractor.width
        self.prompt_encoder = PromptEncoder(width, config.prompt_encoder.pe_scale)
        self.extractor = PromptFeatureExtractor(config.extractor, self.image_encoder.out_channels,
                                                self.language_model.hidden_size)
        self.point_head = PointHead(self.language_model.hidden_size, config.point_head)
        self.proposal_head = (ProposalHead(self.image_encoder.out_channels, config.proposal_head)
                              if config.proposal_head.enabled else None)
        #: ``regions`` format: pools the proposals given as region tokens; the ids of
        #: ``<r1>`` ... ``<rK>`` (not saved: they follow from the config).
        self.region_encoder = (RegionEncoder(self.image_encoder.out_channels,
                                             self.language_model.hidden_size)
                               if codec.uses_regions else None)
        self.register_buffer("region_ids", torch.tensor(region_ids, dtype=torch.long),
                             persistent=False)
        if codec.uses_regions and self.proposal_head is None:
            raise ValueError("location.format 'regions' needs the proposal head "
                             "(proposal_head.enabled): its proposals are the regions")
        for backbone, bcfg in zip(self.image_encoder.backbones, config.image_encoder.backbones):
            if bcfg.frozen:
                backbone.requires_grad_(False)
        if config.frozen:
            set_trainable(self, frozen=config.frozen)

    # ----------------------------------------------------------------- size and sources
    def num_params(self, trainable_only: bool = False) -> int:
        """Parameters of the model (only those that train, with ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def estimate_flops(self, batch: Mapping[str, Any]) -> int:
        """FLOPs of one training forward + backward pass on ``batch``, as executed.

        Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
        attention), so frozen parts count their forward and the backward to their inputs
        only, as they run; element-wise ops are not counted. Run it without activation
        checkpointing: recomputed forwards would be counted too (hardware, not model,
        FLOPs). Gradients are cleared afterwards.

        Args:
            batch: keyword arguments of :meth:`forward` with targets, e.g. ``images``
                (B, 3, S, S), ``labels`` (B, L), ``point_targets`` (B, L, 4),
                ``point_mask`` (B, L).

        Returns:
            Total FLOPs (a multiply-add counts 2); about linear in the batch size.
        """
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            loss = self(**batch).loss
            if loss is None:
                raise ValueError("estimate_flops needs a batch with targets (labels)")
            loss.backward()
        self.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    def estimate_mfu(self, flops_per_step: float, step_s: float,
                     device: str | torch.device | None = None) -> float:
        """Model FLOPs utilisation, as nanoGPT's ``estimate_mfu``: achieved FLOP/s over
        the device's peak dense bf16 rate (:func:`pixelkit.modeling.summary.peak_bf16_flops`).

        Args:
            flops_per_step: from :meth:`estimate_flops` (at the timed batch size).
            step_s: seconds per training step.
            device: default the device of the model's parameters.

        Returns:
            A fraction in [0, 1]; NaN on a CPU or a GPU with no known peak rate.
        """
        from pixelkit.modeling.summary import peak_bf16_flops

        device = torch.device(device) if device is not None else next(self.parameters()).device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        return flops_per_step / step_s / peak_bf16_flops(name)[0]

    def pretrained_frozen(self) -> dict[str, dict[str, Any]]:
        """The parts whose weights come, frozen, from a pretrained source
        (:func:`pretrained_frozen_parts` of the model's config)."""
        return pretrained_frozen_parts(self.config)

    def frozen_keys(self, parts: dict[str, dict[str, Any]] | None = None) -> dict[str, list[str]]:
        """State-dict keys of each frozen pretrained part that do not train (its frozen
        parameters and buffers; LoRA adapters and other trainable weights left out).

        Args:
            parts: the parts (default :meth:`pretrained_frozen`).
        """
        # Parameter names as the state dict spells them: under FSDP and activation
        # checkpointing, named_parameters() carries the wrappers' module names.
        trains = {unwrapped_name(n) for n, p in self.named_parameters() if p.requires_grad}
        keys = self.state_keys()
        parts = self.pretrained_frozen() if parts is None else parts
        return {part: [k for k in keys if k.startswith(info["prefix"]) and k not in trains]
                for part, info in parts.items()}

    def state_keys(self) -> list[str]:
        """The state dict's keys, read once: a model's keys never change after it is built,
        and once FSDP has wrapped it, ``state_dict()`` would all-gather every weight (a
        collective) just to name them. :class:`pixelkit.stages.PixelLLMStage` reads them in
        ``setup``, before any strategy wraps the model."""
        if getattr(self, "_state_keys", None) is None:
            self._state_keys = list(self.state_dict().keys())
        return self._state_keys

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks of every part: the ViT / SAM blocks of the image
        encoder, the extractor's two-way blocks and the LM's layers (``T5Block``). FSDP
        shards and activation checkpointing recomputes module by module, these modules
        (:mod:`pixelkit.distributed`)."""
        blocks = [b for backbone in self.image_encoder.backbones
                  for b in backbone.transformer_blocks()]
        return blocks + self.extractor.transformer_blocks() \
            + self.language_model.transformer_blocks()

    # ----------------------------------------------------------------- Hugging Face Hub
    def save_pretrained(self, save_directory: str | os.PathLike[str], *,
                        metrics: dict[str, Any] | None = None,
                        training: dict[str, Any] | None = None, **kwargs: Any) -> str | None:
        """Write ``model.safetensors`` (without the frozen pretrained parts), ``config.json``
        (config, frozen sources and fingerprints, ``training`` and ``metrics``) and a model
        card ``README.md`` (:mod:`pixelkit.hub`); the mixin's options (``push_to_hub``,
        ``repo_id``...) as ``PyTorchModelHubMixin.save_pretrained``.

        Args:
            save_directory: the folder (created; its files replaced).
            metrics: validation metrics, name -> value.
            training: the recipe: stage(s), steps, data (a checkpoint's meta).
        """
        from pixelkit.hub import hub_config

        # metrics and training ride in model_card_kwargs: push_to_hub passes only those on.
        card = {**(kwargs.pop("model_card_kwargs", None) or {}),
                **{k: v for k, v in (("metrics", metrics), ("training", training)) if v}}
        # The card's usage snippet: the Hub id when there is one, else the folder.
        card["repo_id"] = card.get("repo_id") or kwargs.get("repo_id") or str(save_directory)
        info = {**(card.get("training") or {}),
                **({"metrics": card["metrics"]} if card.get("metrics") else {})}
        if kwargs.get("config") is None:
            kwargs["config"] = hub_config(self, **info)
        # The mixin keeps an existing README.md: the card must describe these weights.
        Path(save_directory, "README.md").unlink(missing_ok=True)
        return super().save_pretrained(save_directory, model_card_kwargs=card, **kwargs)

    def push_to_hub(self, repo_id: str, *, metrics: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Upload the :meth:`save_pretrained` folder to the Hub repo ``repo_id`` (created if
        needed; needs the network and a token); other options as the mixin's."""
        card = {**(kwargs.pop("model_card_kwargs", None) or {}), "repo_id": repo_id,
                **{k: v for k, v in (("metrics", metrics), ("training", training)) if v}}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card (:func:`pixelkit.hub.model_card`)."""
        from pixelkit.hub import model_card

        return model_card(self, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from pixelkit.hub import WEIGHTS_NAME, save_weights

        save_weights(self, save_directory / WEIGHTS_NAME)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str | torch.device = "cpu",
                         config: dict[str, Any] | None = None, **download: Any) -> PixelLLM:
        from pixelkit.hub import load_pretrained

        return load_pretrained(model_id, map_location, config, **download)[0]

    # ----------------------------------------------------------------- pieces
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B_img, 3, S, S) in [0, 1] -> f (B_img, C, h, w)."""
        return self.image_encoder(images)

    def visual_tokens(self, features: torch.Tensor, boxes: torch.Tensor | None = None,
                      points: torch.Tensor | None = None,
                      point_labels: torch.Tensor | None = None,
                      image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt-conditioned visual tokens.

        Args:
            features: (B, C, h, w), one row per prompt; or (B_img, C, h, w) with
                ``image_index``.
            boxes: (B, 4) xyxy in [0, 1] (NaN rows: no box), or None.
            points: (B, N, 2) in [0, 1], or None.
            point_labels: (B, N) 1 positive, 0 negative, -1 padding.
            image_index: (B,) image of each prompt row (the image's work is done once).

        Returns:
            (B, Q, D_lm) (``Q + h*w`` tokens with ``extractor.image_tokens``).
        """
        B = features.shape[0] if image_index is None else image_index.shape[0]
        coords, labels = pack_prompts(B, boxes, points, point_labels, device=features.device)
        tokens = self.prompt_encoder(coords, labels)
        pe = self.prompt_encoder.dense_pe(*features.shape[-2:])
        return self.extractor(features, tokens, pe, image_index)

    def region_tokens(self, features: torch.Tensor, regions: torch.Tensor,
                      image_index: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Region tokens of the ``regions`` format: the embedding of ``<ri>`` plus the
        RoIAlign-pooled features of proposal i (:class:`RegionEncoder`).

        Args:
            features: (B_img, C, h, w).
            regions: (B, K, 4) xyxy in [0, 1], NaN rows for padding (K <= num_regions).
            image_index: (B,) image of each row.

        Returns:
            ``(tokens, mask)``: (B, K, D) and (B, K).
        """
        if self.region_encoder is None:
            raise ValueError("regions given to a model whose location.format is "
                             f"{self.config.location.format!r}, not 'regions'")
        K = regions.shape[1]
        if K > len(self.region_ids):
            raise ValueError(f"{K} regions per row, but location.num_regions is "
                             f"{len(self.region_ids)}")
        pooled, mask = self.region_encoder(features, regions, image_index)
        names = self.language_model.embed(self.region_ids[None, :K])          # (1, K, D)
        return pooled + names.to(pooled.dtype), mask

    def prefix(self, visual: torch.Tensor, prompt_ids: torch.Tensor | None = None,
               prompt_mask: torch.Tensor | None = None,
               regions: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """[visual tokens ; region tokens ; embedded text prompt] and its mask: (B, P, D),
        (B, P). ``regions``: :meth:`region_tokens`' output, or None."""
        B, Q, _ = visual.shape
        parts = [visual]
        masks = [torch.ones(B, Q, dtype=torch.long, device=visual.device)]
        if regions is not None:
            parts.append(regions[0].to(visual.dtype))
            masks.append(regions[1].long())
        if prompt_ids is not None and prompt_ids.shape[1] > 0:
            if prompt_mask is None:
                prompt_mask = torch.ones_like(prompt_ids)
            parts.append(self.language_model.embed(prompt_ids).to(visual.dtype))
            masks.append(prompt_mask.long())
        if len(parts) == 1:
            return visual, masks[0]
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def input_prefix(self, features: torch.Tensor, *, image_index: torch.Tensor | None = None,
                     boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                     point_labels: torch.Tensor | None = None,
                     prompt_ids: torch.Tensor | None = None,
                     prompt_mask: torch.Tensor | None = None,
                     regions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the LM reads before its target, from a batch's prompts: visual tokens
        (:meth:`visual_tokens`), region tokens when ``regions`` is given
        (:meth:`region_tokens`) and the text prompt. Training and decoding both build it
        here. Returns (B, P, D) and its mask (B, P)."""
        visual = self.visual_tokens(features, boxes, points, point_labels, image_index)
        tokens = None if regions is None else self.region_tokens(features, regions, image_index)
        return self.prefix(visual, prompt_ids, prompt_mask, tokens)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        images: torch.Tensor | None = None,
        *,
        features: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        point_targets: torch.Tensor | None = None,
        point_mask: torch.Tensor | None = None,
        gt_boxes: list[torch.Tensor] | None = None,
        regions: torch.Tensor | None = None,
        return_points: bool = True,
    ) -> PixelLLMOutput:
        """Teacher-forced pass with losses for whatever targets are given.

        Args:
            images: (B_img, 3, S, S) in [0, 1]; or pass ``features`` (B_img, C, h, w).
            image_index: (B,) image of each prompt row; default ``arange(B_img)``.
            boxes, points, point_labels: location prompts (see :meth:`visual_tokens`).
            prompt_ids, prompt_mask: (B, T) text prompt (e.g. "where is the red circle").
            labels: (B, L) target ids, -100 at padding.
            point_targets: (B, L, 4) targets aligned with positions (see module doc).
            point_mask: (B, L) 1 where ``point_targets`` is valid.
            gt_boxes: per image (N_i, 4) normalised xyxy boxes: trains the proposal head.
            regions: (B, K, 4) proposals given as region tokens (``regions`` format).
            return_points: run the point head even without point targets (off: a plain
                captioning step pays nothing for it).

        Returns:
            :class:`PixelLLMOutput`.
        """
        if features is None:
            if images is None:
                raise ValueError("PixelLLM.forward needs `images` or `features`")
            features = self.encode_image(images)
        out = PixelLLMOutput()
        w = self.config.loss
        total: list[torch.Tensor] = []
        if labels is not None:
            prefix, mask = self.input_prefix(
                features, image_index=image_index, boxes=boxes, points=points,
                point_labels=point_labels, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                regions=regions)
            out.logits, hidden = self.language_model(prefix, mask, labels)
            has_targets = point_targets is not None and point_mask is not None
            if has_targets or return_points:
                out.points = self.point_head(hidden)
            out.losses["text"] = text_loss(out.logits, labels, w.label_smoothing)
            total.append(w.text_weight * out.losses["text"])
            if has_targets:
                out.losses["point"] = point_l1(out.points, point_targets, point_mask,
                                               w.point_reduction)
                total.append(w.point_weight * out.losses["point"])
        if gt_boxes is not None and self.proposal_head is not None:
            out.proposals = self.proposal_head(features)
            prop = self.proposal_head.loss(out.proposals, gt_boxes)
            out.losses.update(prop)
            total += [w.heatmap_weight * prop["heatmap"], w.box_l1_weight * prop["box_l1"],
                      w.giou_weight * prop["giou"]]
        if total:
            out.loss = torch.stack([t.float() for t in total]).sum()
        return out

    def propose(self, features: torch.Tensor, score_threshold: float | None = None,
                max_detections: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Region proposals per image: ``boxes`` (N, 4) normalised xyxy and ``scores``."""
        if self.proposal_head is None:
            raise RuntimeError("this model has no proposal head (ProposalHeadConfig.enabled)")
        return self.proposal_head.decode(self.proposal_head(features), score_threshold,
                                         max_detections)
