"""Typed configs for every PixelLLM component and named presets.

A :class:`PixelLLMConfig` fully describes a model: which backbones, how wide the prompt
feature extractor is, which Hugging Face language model (and its LoRA), the heads and the
loss weights. Configs are plain dataclasses, validated in ``__post_init__`` so a bad
config fails at construction with a message that names the field and what is allowed.
They round-trip through ``to_dict`` / ``from_dict`` (and so through YAML, LightningCLI and
checkpoints).

Presets (``PixelLLMConfig.from_name``):

* ``tiny``  -- random weights, builds in well under a second on a CPU; used by the tests
  and the shapes world (64 px images, timm's smallest ResNet at output stride 8, a
  2+2-layer T5 with a word-level shapes-world tokenizer).
* ``base``  -- one GPU: timm ViT-B/16 at 384 px and ``google/flan-t5-base`` with LoRA.
* ``paper`` -- the paper's model: frozen SAM ViT-H (``facebook/sam-vit-huge`` through
  ``transformers.SamModel``) and a trainable EVA02-L side by side at 384 px, a prompt
  feature extractor with 32 queries, ``google/flan-t5-xl`` with LoRA rank 32 on q and v.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BackboneConfig",
    "ImageEncoderConfig",
    "PromptEncoderConfig",
    "ExtractorConfig",
    "LoraSettings",
    "LanguageModelConfig",
    "PointHeadConfig",
    "ProposalHeadConfig",
    "LossConfig",
    "LocationConfig",
    "PixelLLMConfig",
    "PRESETS",
]


def _check_choice(owner: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_positive(owner: str, **values: float | int) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


@dataclass
class BackboneConfig:
    """One image backbone.

    Attributes:
        kind: ``"timm"`` (any ``timm.create_model`` name) or ``"sam"`` (the vision encoder
            of a ``transformers.SamModel``).
        name: timm model name (e.g. ``vit_base_patch16_384.augreg_in21k_ft_in1k``) or, for
            ``sam``, a Hugging Face hub id (``facebook/sam-vit-huge``) or local directory.
        pretrained: load pretrained weights (timm ``pretrained=True`` /
            ``SamModel.from_pretrained``). Off: random weights from the architecture alone.
        weights: a local weights file (timm: ``.safetensors``/``.pth``) or directory (sam)
            to load instead of the hub; implies ``pretrained``.
        revision: for ``sam`` from the hub: the branch, tag or commit to load (pins the
            weights a checkpoint left out; timm names carry their own tag).
        image_size: the input side this backbone sees; the model's input is resized to it
            when different. ``None``: the model's ``image_size``.
        frozen: keep the weights fixed (and the module in eval mode).
        kwargs: extra architecture arguments: ``timm.create_model`` kwargs (``embed_dim``,
            ``depth``, ...) or ``SamVisionConfig`` fields for ``sam``.
    """

    kind: Literal["timm", "sam"] = "timm"
    name: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    weights: str | None = None
    revision: str | None = None
    image_size: int | None = None
    frozen: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("BackboneConfig", "kind", self.kind, ("timm", "sam"))
        if self.revision is not None and self.kind != "sam":
            raise ValueError("BackboneConfig.revision applies to kind 'sam' (a transformers "
                             "hub model); a timm name carries its own tag, or use weights=")
        if self.kind == "timm":
            import timm  # local import: keeps `import pixelkit.config` light

            if not timm.is_model(self.name):
                close = timm.list_models(f"*{self.name.split('.')[0].split('_')[0]}*")[:8]
                raise ValueError(
                    f"BackboneConfig.name={self.name!r} is not a timm model name; "
                    f"see timm.list_models() (similar: {close})"
                )
        if self.image_size is not None:
            _check_positive("BackboneConfig", image_size=self.image_size)


@dataclass
class ImageEncoderConfig:
    """One or more backbones whose feature maps are resized to one grid and concatenated.

    Attributes:
        backbones: the backbones, in channel-concatenation order.
        grid_size: side of the common feature grid; ``None``: the first backbone's grid.
    """

    backbones: list[BackboneConfig] = field(default_factory=lambda: [BackboneConfig()])
    grid_size: int | None = None

    def __post_init__(self) -> None:
        self.backbones = [
            b if isinstance(b, BackboneConfig) else BackboneConfig(**b) for b in self.backbones
        ]
        if not self.backbones:
            raise ValueError("ImageEncoderConfig.backbones must name at least one backbone")
        if self.grid_size is not None:
            _check_positive("ImageEncoderConfig", grid_size=self.grid_size)


@dataclass
class PromptEncoderConfig:
    """SAM-style prompt encoder (random Fourier features + learned type embeddings).

    Attributes:
        embed_dim: token width; ``None`` means the extractor's width (they must match).
        pe_scale: std of the random Gaussian projection of the Fourier features.
    """

    embed_dim: int | None = None
    pe_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("PromptEncoderConfig", pe_scale=self.pe_scale)


@dataclass
class ExtractorConfig:
    """Prompt feature extractor: a SAM-style two-way transformer with learnable queries.

    Attributes:
        width: transformer width D.
        depth: number of two-way blocks (paper: 2; official code: 6).
        num_heads: attention heads (must divide ``width``).
        mlp_dim: hidden size of the MLP in each block.
        num_queries: Q learnable tokens whose outputs become the visual tokens (paper 32).
        attention_downsample_rate: SAM's reduction of the cross-attention width.
        image_tokens: also pass the (updated) image grid tokens with their 2-D positional
            encoding to the LM after the Q query tokens. Not in the paper; an option for
            small models where Q queries alone are a location bottleneck.
    """

    width: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 1024
    num_queries: int = 32
    attention_downsample_rate: int = 2
    image_tokens: bool = False

    def __post_init__(self) -> None:
        _check_positive(
            "ExtractorConfig",
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            num_queries=self.num_queries,
            attention_downsample_rate=self.attention_downsample_rate,
        )
        if self.width % self.num_heads:
            raise ValueError(
                f"ExtractorConfig.num_heads={self.num_heads} must divide "
                f"ExtractorConfig.width={self.width}"
            )
        inner = self.width // self.attention_downsample_rate
        if self.width % self.attention_downsample_rate or inner % self.num_heads:
            raise ValueError(
                f"ExtractorConfig.width/attention_downsample_rate = {self.width}/"
                f"{self.attention_downsample_rate} must be an integer divisible by "
                f"num_heads={self.num_heads}"
            )


@dataclass
class LoraSettings:
    """LoRA through ``peft.LoraConfig``; ``r=0`` disables it.

    Attributes:
        r: rank (paper: 32).
        alpha: scaling numerator (``lora_alpha``).
        dropout: dropout on the LoRA input.
        target_modules: module-name suffixes to adapt (T5: ``q``, ``v``; Llama:
            ``q_proj``, ``v_proj``; GPT-2: ``c_attn``).
    """

    r: int = 0
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"LoraSettings.r must be >= 0 (0 disables LoRA), got {self.r}")
        if self.r and not self.target_modules:
            raise ValueError("LoraSettings.target_modules must be non-empty when r > 0")


@dataclass
class LanguageModelConfig:
    """A Hugging Face language model: encoder-decoder (T5 family) or decoder-only.

    Attributes:
        family: ``"seq2seq"`` (``AutoModelForSeq2SeqLM``: visual tokens + text prompt feed
            the encoder, the decoder generates) or ``"causal"`` (``AutoModelForCausalLM``:
            visual tokens + prompt are a prefix).
        name: hub id or local directory for ``from_pretrained``; also the key for the
            built-in architecture table used when ``pretrained`` is off and ``arch`` empty.
        pretrained: load the weights with ``from_pretrained(name)``.
        revision: the hub branch, tag or commit of ``name`` to load (``None``: the default
            branch); pins the weights a checkpoint leaves out when the base LM is frozen.
        arch: architecture kwargs for ``AutoConfig.for_model`` (must include ``model_type``)
            used when not pretrained; ``vocab_size`` defaults to the tokenizer's size.
        tokenizer: ``"shapes"`` (built-in word-level tokenizer of the shapes world), a hub
            id or a local directory; ``None`` means ``name``.
        freeze_base: freeze the base LM weights (LoRA weights, if any, stay trainable).
        lora: LoRA settings.
        max_text_length: longest target text in tokens (EOS included).
        max_prompt_tokens: longest text prompt in tokens; a longer user prompt (a
            referring expression) is cut to fit, and the result says so. Bounds the cost of
            one call whatever a user types.
    """

    family: Literal["seq2seq", "causal"] = "seq2seq"
    name: str = "google/flan-t5-base"
    pretrained: bool = False
    revision: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    freeze_base: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_text_length: int = 48
    max_prompt_tokens: int = 64

    def __post_init__(self) -> None:
        _check_choice("LanguageModelConfig", "family", self.family, ("seq2seq", "causal"))
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.arch and "model_type" not in self.arch:
            raise ValueError("LanguageModelConfig.arch must include 'model_type' (e.g. 't5')")
        _check_positive("LanguageModelConfig", max_text_length=self.max_text_length,
                        max_prompt_tokens=self.max_prompt_tokens)


@dataclass
class PointHeadConfig:
    """MLP from the LM's final hidden state to two points (x0, y0, x1, y1) in [0, 1].

    Attributes:
        hidden_dim: MLP width.
        num_layers: number of linear layers (>= 1).
    """

    hidden_dim: int = 256
    num_layers: int = 2

    def __post_init__(self) -> None:
        _check_positive("PointHeadConfig", hidden_dim=self.hidden_dim, num_layers=self.num_layers)


@dataclass
class ProposalHeadConfig:
    """ViTDet simple feature pyramid + class-agnostic CenterNet head.

    Attributes:
        enabled: build the head (dense captioning needs it).
        width: pyramid / head channels.
        scales: pyramid levels as upsampling factors of the encoder grid (ViTDet: 4, 2, 1,
            0.5); each must be a power of two.
        num_convs: 3x3 convs in the shared head tower.
        object_cells: a box is assigned to the level where its longer side spans about
            this many cells.
        topk: peaks kept per image before NMS.
        nms_iou: IoU threshold of the NMS (``torchvision.ops.batched_nms``).
        score_threshold: default minimum score of a proposal.
        max_detections: proposals kept per image after NMS.
    """

    enabled: bool = True
    width: int = 128
    scales: list[float] = field(default_factory=lambda: [2.0, 1.0, 0.5])
    num_convs: int = 2
    object_cells: float = 4.0
    topk: int = 100
    nms_iou: float = 0.5
    score_threshold: float = 0.05
    max_detections: int = 50

    def __post_init__(self) -> None:
        _check_positive(
            "ProposalHeadConfig", width=self.width, topk=self.topk, object_cells=self.object_cells
        )
        if not self.scales:
            raise ValueError("ProposalHeadConfig.scales must list at least one level")
        for s in self.scales:
            if s <= 0 or float(s) != 2.0 ** round(math.log2(s)):
                raise ValueError(f"ProposalHeadConfig.scales: {s} is not a power of two")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"ProposalHeadConfig.nms_iou must be in (0, 1], got {self.nms_iou}")


@dataclass
class LossConfig:
    """Loss weights.

    Attributes:
        label_smoothing: of the text cross-entropy (paper: 0.1).
        text_weight: weight of the text loss.
        point_weight: weight of the per-token point L1. The paper's lambda = 0.1 is for
            coordinates in a 0..1 box-normalised space with its own scaling; here points
            are normalised to [0, 1] of the padded square, so an L1 of 0.1 is already
            10% of the image: the default 1.0 keeps the point gradient comparable to the
            text loss (measured in the quickstart report).
        point_reduction: ``"token"`` (mean over all located positions of a batch) or
            ``"row"`` (mean per prompt first; a 3-position referring box then counts as
            much as a 25-word narrative), see :func:`pixelkit.modeling.losses.point_l1`.
        heatmap_weight, box_l1_weight, giou_weight: CenterNet proposal losses.
    """

    label_smoothing: float = 0.1
    text_weight: float = 1.0
    point_weight: float = 1.0
    point_reduction: Literal["token", "row"] = "token"
    heatmap_weight: float = 1.0
    box_l1_weight: float = 1.0
    giou_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"LossConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check_choice("LossConfig", "point_reduction", self.point_reduction, ("token", "row"))
        for name in ("text_weight", "point_weight", "heatmap_weight", "box_l1_weight", "giou_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")


#: ``location.format`` values: how a box enters and leaves the language model.
LOCATION_FORMATS: tuple[str, ...] = ("regression", "text", "tokens", "regions")


@dataclass
class LocationConfig:
    """How locations enter and leave the LM (DESIGN.md section 1, "Location interfaces").

    The encoders, extractor, LM, data files and metrics are shared by every format, so the
    interfaces can be compared on the same data; :class:`pixelkit.modeling.location.LocationCodec`
    implements them.

    Attributes:
        format: ``"regression"`` (PixelLLM: the point head gives every token a location and
            the box is read at the EOS-emitting state), ``"text"`` (Shikra, MiniGPT-v2,
            Ferret, Qwen-VL: ``[x0,y0,x1,y1]`` integers on a ``bins`` grid written into the
            text), ``"tokens"`` (Kosmos-2, PaliGemma, Florence-2: added ``<loc_i>``
            vocabulary tokens) or ``"regions"`` (Groma: the proposal head's boxes enter the
            LM as region tokens ``<r1>`` ... ``<rK>``, pooled from the image features with
            RoIAlign; a box is written as the token of its region).
        bins: the ``text`` grid: each coordinate is an integer in ``[0, bins)`` of the
            image's width or height (MiniGPT-v2: 100; Ferret, Qwen2-VL: 1000). Also used
            for a box prompt written into the text with ``format: regression`` and
            ``prompt: text``.
        token_grid: P of the ``tokens`` format: ``P * P`` cell tokens with ``token_style:
            corner`` (Kosmos-2: 32), or ``P`` value tokens per axis with ``axis``
            (Florence-2: 1000, PaliGemma: 1024).
        token_style: ``"corner"`` (a box is the tokens of its top-left and bottom-right
            cells, Kosmos-2) or ``"axis"`` (a box is four tokens, one per coordinate,
            x0 y0 x1 y1, Florence-2; PaliGemma writes y first).
        prompt: how a region prompt (``loca_caption``, dense captioning) enters:
            ``"encoder"`` (the prompt encoder, PixelLLM) or ``"text"`` (written into the
            text prompt in the format above, ``region [12,40,33,61]``; with ``regions``
            the box becomes one of the row's regions, ``region <r3>``, as Groma's user
            regions; clicks are then not accepted).
        task_tokens: start every text prompt with MiniGPT-v2's task identifier
            (``[caption]``, ``[grounding]``, ``[identify]``, ``[refer]``), added tokens.
        num_regions: K of the ``regions`` format: the proposals given to the LM as region
            tokens ``<r1>`` ... ``<rK>`` (added tokens).
    """

    format: Literal["regression", "text", "tokens", "regions"] = "regression"
    bins: int = 100
    token_grid: int = 32
    token_style: Literal["corner", "axis"] = "corner"
    prompt: Literal["encoder", "text"] = "encoder"
    task_tokens: bool = False
    num_regions: int = 8

    def __post_init__(self) -> None:
        _check_choice("LocationConfig", "format", self.format, LOCATION_FORMATS)
        _check_choice("LocationConfig", "token_style", self.token_style, ("corner", "axis"))
        _check_choice("LocationConfig", "prompt", self.prompt, ("encoder", "text"))
        _check_positive("LocationConfig", bins=self.bins, token_grid=self.token_grid,
                        num_regions=self.num_regions)
        # One bin cannot tell a corner from another; a P*P vocabulary past a million rows
        # is a typo (P = 32 is Kosmos-2's 1024 tokens).
        if self.bins < 2 or self.token_grid < 2:
            raise ValueError(f"LocationConfig.bins and token_grid must be >= 2, got "
                             f"{self.bins} and {self.token_grid}")
        if self.token_style == "corner" and self.token_grid > 1024:
            raise ValueError(f"LocationConfig.token_grid={self.token_grid} with token_style "
                             "'corner' adds token_grid**2 tokens; use <= 1024 (Kosmos-2: 32) "
                             "or token_style 'axis'")
        if not isinstance(self.task_tokens, bool):
            raise TypeError(f"LocationConfig.task_tokens must be true or false, got "
                            f"{self.task_tokens!r}")


_SUBCONFIGS: dict[str, type] = {
    "image_encoder": ImageEncoderConfig,
    "prompt_encoder": PromptEncoderConfig,
    "extractor": ExtractorConfig,
    "language_model": LanguageModelConfig,
    "point_head": PointHeadConfig,
    "proposal_head": ProposalHeadConfig,
    "loss": LossConfig,
    "location": LocationConfig,
}


@dataclass
class PixelLLMConfig:
    """The whole model.

    Attributes:
        image_size: side of the padded square input (images are resized so the longest
            side fits and padded bottom/right).
        image_encoder, prompt_encoder, extractor, language_model, point_head,
            proposal_head, loss: component configs.
        location: how locations enter and leave the LM (default ``regression``: PixelLLM).
        frozen: extra parameter-name patterns (``fnmatch``) to freeze, e.g.
            ``["image_encoder.*"]``; applied after each component's own defaults.
        name: the preset this config came from (informational).
    """

    image_size: int = 64
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    point_head: PointHeadConfig = field(default_factory=PointHeadConfig)
    proposal_head: ProposalHeadConfig = field(default_factory=ProposalHeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    frozen: list[str] = field(default_factory=list)
    name: str = "custom"

    def __post_init__(self) -> None:
        for key, cls in _SUBCONFIGS.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, cls(**value))
            elif not isinstance(value, cls):
                raise TypeError(f"PixelLLMConfig.{key} must be a {cls.__name__} or dict")
        _check_positive("PixelLLMConfig", image_size=self.image_size)
        pe = self.prompt_encoder.embed_dim
        if pe is not None and pe != self.extractor.width:
            raise ValueError(
                f"PromptEncoderConfig.embed_dim={pe} must equal ExtractorConfig.width="
                f"{self.extractor.width} (prompt tokens are the extractor's queries); "
                "leave embed_dim unset to follow the extractor"
            )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_name(cls, name: str, overrides: Mapping[str, Any] | None = None,
                  **dotted: Any) -> PixelLLMConfig:
        """A named preset with overrides, every key checked against the dataclasses.

        Args:
            name: one of :data:`PRESETS` (``tiny``, ``base``, ``paper``).
            overrides: nested changes, e.g. ``{"loss": {"point_weight": 4.0}}`` (what a
                stage's ``model:`` holds); see :func:`apply_overrides`.
            **dotted: the same as keyword arguments: ``image_size=96`` or
                ``**{"extractor.depth": 4}``.

        Raises:
            ValueError: an unknown preset, or an override naming no field (the message
                names it and the closest field).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        data = apply_overrides(PRESETS[name](), overrides or {})
        data = apply_overrides(data, nest_dotted(dotted))
        data["name"] = name
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelLLMConfig:
        """Build from a (possibly nested) dict, e.g. one read from YAML or a checkpoint."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"PixelLLMConfig: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**copy.deepcopy(data))

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain values (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    def without_pretrained(self, keep: Iterable[str] = ()) -> PixelLLMConfig:
        """A copy that builds the same architecture with random weights (no loading):
        used to count or inspect a model with no network, e.g. on the meta device, and to
        rebuild a model whose checkpoint holds all of its weights.

        Args:
            keep: parts that still load their pretrained weights
                (:meth:`PixelLLM.pretrained_frozen` names: ``image_encoder.backbones.0``,
                ``language_model``): the frozen parts a checkpoint left out.
        """
        keep = set(keep)
        data = self.to_dict()
        for i, b in enumerate(data["image_encoder"]["backbones"]):
            if f"image_encoder.backbones.{i}" not in keep:
                b["pretrained"], b["weights"] = False, None
        if "language_model" not in keep:
            data["language_model"]["pretrained"] = False
        return PixelLLMConfig.from_dict(data)


def nest_dotted(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss.point_weight": 4}`` -> ``{"loss": {"point_weight": 4}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {part!r} is given a value and a field")
        node[leaf] = value
    return out


def _dataclass_fields(cls: type) -> dict[str, type | None]:
    """Field name -> the field's dataclass type (None for plain values, lists, dicts)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None
            for f in dataclasses.fields(cls)}


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any],
                    cls: type = None, where: str = "model") -> dict[str, Any]:  # type: ignore[assignment]
    """``data`` (a config as a dict) with nested ``overrides`` merged in, typed.

    Every key must be a field of the config dataclass at its place: a nested dict goes
    into a sub-config field by field (``{"language_model": {"lora": {"r": 8}}}`` changes
    ``r`` only); any other value (a number, a list, a free-form dict such as ``arch``)
    replaces the field's value. The dataclasses themselves check the values when the
    config is built.

    Args:
        data: the config dict (e.g. a preset's); not modified.
        overrides: the changes.
        cls: the dataclass ``data`` describes (default :class:`PixelLLMConfig`).
        where: the name of ``data`` in messages (``model``: as in a stage's YAML).

    Raises:
        ValueError: a key that is no field; the message names it (``model.loss.pointweight``)
            and suggests the closest field.
    """
    cls = cls or PixelLLMConfig
    fields = _dataclass_fields(cls)
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = (f"; did you mean {where}.{close[0]}?" if close
                    else f" (its fields: {', '.join(fields)})")
            raise ValueError(f"{where}.{key}: {cls.__name__} has no field {key!r}{hint}")
        sub = fields[key]
        if sub is not None and isinstance(value, Mapping):
            out[key] = apply_overrides(out.get(key) or {}, value, sub, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------- presets
def _tiny() -> dict[str, Any]:
    return {
        "image_size": 64,
        "image_encoder": {
            "backbones": [
                {
                    "kind": "timm",
                    # timm's smallest ResNet (0.37 M) with output_stride 8: an 8x8 grid at
                    # 64 px. Measured on the shapes world, a conv grid learns per-word
                    # locations within ~200 steps where a 2-block ViT from scratch had not
                    # moved from chance after 300 (see pixelkit/RECIPE.md).
                    "name": "test_resnet",
                    "kwargs": {"output_stride": 8},
                }
            ]
        },
        # image_tokens: the 8x8 grid (with its positional encoding) reaches the LM beside
        # the 16 queries; the queries alone were a location bottleneck at this size.
        "extractor": {"width": 128, "depth": 2, "num_heads": 4, "mlp_dim": 256,
                      "num_queries": 16, "image_tokens": True},
        "language_model": {
            "family": "seq2seq",
            "name": "t5-tiny",
            "pretrained": False,
            "arch": {"model_type": "t5", "d_model": 128, "d_ff": 256, "d_kv": 32,
                     "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
                     "dropout_rate": 0.0, "feed_forward_proj": "gated-gelu",
                     "tie_word_embeddings": False},
            "tokenizer": "shapes",
            "freeze_base": False,  # random weights: nothing to preserve
            "lora": {"r": 0},
            "max_text_length": 48,
        },
        "point_head": {"hidden_dim": 128, "num_layers": 2},
        "proposal_head": {"width": 64, "scales": [2.0, 1.0, 0.5], "num_convs": 2},
    }


def _base() -> dict[str, Any]:
    return {
        "image_size": 384,
        "image_encoder": {
            "backbones": [
                {"kind": "timm", "name": "vit_base_patch16_384.augreg_in21k_ft_in1k",
                 "pretrained": True}
            ]
        },
        "extractor": {"width": 512, "depth": 2, "num_heads": 8, "mlp_dim": 2048,
                      "num_queries": 32},
        "language_model": {
            "family": "seq2seq",
            "name": "google/flan-t5-base",
            "pretrained": True,
            "freeze_base": True,
            "lora": {"r": 32, "alpha": 32, "dropout": 0.05, "target_modules": ["q", "v"]},
        },
        "point_head": {"hidden_dim": 512, "num_layers": 2},
        "proposal_head": {"width": 256, "scales": [4.0, 2.0, 1.0, 0.5]},
        "loss": {"point_weight": 1.0},
    }


def _paper() -> dict[str, Any]:
    return {
        "image_size": 384,
        "image_encoder": {
            "backbones": [
                # Frozen SAM ViT-H at the kit's 384 px input (positional tables resized
                # on load), then trainable EVA02-L; both resized to SAM's 24x24 grid.
                {"kind": "sam", "name": "facebook/sam-vit-huge", "pretrained": True,
                 "frozen": True, "image_size": 384},
                {"kind": "timm", "name": "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k",
                 "pretrained": True, "image_size": 384,
                 "kwargs": {"img_size": 384, "dynamic_img_pad": True}},
            ],
            "grid_size": 24,
        },
        "extractor": {"width": 512, "depth": 2, "num_heads": 8, "mlp_dim": 2048,
                      "num_queries": 32},
        "language_model": {
            "family": "seq2seq",
            "name": "google/flan-t5-xl",
            "pretrained": True,
            "freeze_base": True,
            "lora": {"r": 32, "alpha": 32, "dropout": 0.05, "target_modules": ["q", "v"]},
        },
        "point_head": {"hidden_dim": 1024, "num_layers": 2},
        "proposal_head": {"width": 256, "scales": [4.0, 2.0, 1.0, 0.5]},
    }


#: Named presets: name -> function returning a fresh nested dict.
PRESETS: dict[str, Any] = {"tiny": _tiny, "base": _base, "paper": _paper}


# --------------------------------------------------------------------------- typed overrides


def _overrides_type(cls: type, made: dict[type, type]) -> type:
    """The "overrides" twin of a config dataclass: every field optional, default None, and
    sub-configs nested (their twins, built with every field unset)."""
    if cls in made:
        return made[cls]
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            sub = _overrides_type(hint, made)
            fields.append((f.name, sub, field(default_factory=sub)))
        else:
            fields.append((f.name, typing.Optional[hint], field(default=None)))  # noqa: UP045
    twin = dataclasses.make_dataclass(
        f"{cls.__name__}Overrides", fields,
        namespace={"__doc__": f"Changes to a preset's :class:`{cls.__name__}`: every field "
                              "None (keep the preset's value) unless set."})
    twin.__module__ = __name__
    globals()[twin.__name__] = twin  # importable by name (pickling, jsonargparse dumps)
    made[cls] = twin
    return twin


#: A stage's ``model:`` argument: changes to its preset's :class:`PixelLLMConfig`, typed.
#: Its fields mirror the config's (every one None = keep the preset's value), so
#: LightningCLI parses ``model: {loss: {point_weight: 2.0}}`` field by field: the value is
#: type-checked, an unknown field is an error naming it, and a later config file or a
#: command-line ``--model.init_args.model.loss.point_weight 4`` changes that field alone
#: (a plain ``dict`` would be replaced whole, silently dropping what base.yaml set).
ModelOverrides: type = _overrides_type(PixelLLMConfig, {})


def overrides_dict(overrides: Any) -> dict[str, Any]:
    """Overrides as a nested dict of what is set: a :data:`ModelOverrides` loses its unset
    (None) fields and empty groups; a dict (or None) is taken as it is."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return copy.deepcopy(dict(overrides))
    if not (dataclasses.is_dataclass(overrides) and type(overrides).__name__.endswith("Overrides")):
        raise TypeError(f"model overrides must be a dict or ModelOverrides, got "
                        f"{type(overrides).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(overrides):
        value = getattr(overrides, f.name)
        if dataclasses.is_dataclass(value) and type(value).__name__.endswith("Overrides"):
            if nested := overrides_dict(value):
                out[f.name] = nested
        elif value is not None:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """Dataclass instances (e.g. a list of BackboneConfig) as plain dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
