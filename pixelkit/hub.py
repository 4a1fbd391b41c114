"""The Hugging Face Hub: a model as a folder of ``model.safetensors``, ``config.json`` and a
generated model card (``README.md``), saved, loaded and pushed through huggingface_hub's
``PyTorchModelHubMixin`` (:class:`pixelkit.PixelLLM` inherits it)::

    model.save_pretrained("hub/pixelllm-tiny", metrics={"refer.p_at_0.5": 0.8},
                          training={"stage": "finetune", "steps": 2000})
    model.push_to_hub("user/pixelllm-tiny", metrics=...)       # needs network and a token
    PixelLLM.from_pretrained("user/pixelllm-tiny")              # or the folder
    Predictor.from_pretrained("user/pixelllm-tiny")             # the same, ready to predict

The folder follows the rule of :mod:`pixelkit.checkpoint`: the frozen pretrained parts (SAM
ViT-H, the base Flan-T5 of the paper preset) are not saved; ``config.json`` holds the model
config and, under ``"pixelkit"``, their sources and fingerprints
(:func:`~pixelkit.checkpoint.frozen_record`) with the training info and metrics;
:func:`load_pretrained` rebuilds them from their sources and checks the fingerprints.

``pixelkit export --ckpt CKPT --out DIR [--push REPO]`` turns a checkpoint into such a
folder, its stage, data and metrics going into the card.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelCard, ModelCardData, constants

from pixelkit.checkpoint import (
    META_KEY,
    CheckpointError,
    frozen_record,
    load_model,
    model_from_state,
    slim_state,
)
from pixelkit.files import atomic_save

if TYPE_CHECKING:
    from pixelkit.modeling.pixel_llm import PixelLLM

WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
CONFIG_NAME = constants.CONFIG_NAME  # config.json
PAPER_URL = "https://arxiv.org/abs/2312.09237"


def hub_config(model: PixelLLM, **info: Any) -> dict[str, Any]:
    """``config.json``: the model config's fields, and under ``"pixelkit"`` the frozen parts
    left out of the weights (:func:`~pixelkit.checkpoint.frozen_record`) and ``info``
    (stage, data, metrics: what a checkpoint's meta holds)."""
    # The record last: an info key cannot replace it.
    return {**model.config.to_dict(), META_KEY: {**info, "frozen": frozen_record(model)}}


def save_weights(model: PixelLLM, path: str | os.PathLike[str]) -> Path:
    """Write the model's weights without its frozen pretrained parts
    (:func:`~pixelkit.checkpoint.slim_state`) as safetensors, atomically."""
    from safetensors.torch import save

    state, _ = slim_state(model)
    # safetensors refuses tensors sharing memory (tied embeddings): store each on its own;
    # loading copies the same values into the tied parameter.
    seen: set[int] = set()
    for key, t in state.items():
        ptr = t.untyped_storage().data_ptr()
        state[key] = t.clone() if ptr in seen else t.contiguous()
        seen.add(ptr)
    # Serialised in memory (the trainable part only: the frozen parts are left out) so that
    # atomic_save writes it whole or not at all.
    return atomic_save(lambda f: f.write(save(state, metadata={"format": "pt"})), path)


def _resolve(repo_or_dir: str | os.PathLike[str], filename: str, **download: Any) -> Path:
    """A file of a local folder or of a Hub repo (downloaded into the Hub cache).

    Raises:
        FileNotFoundError: a folder without ``filename``, or a local path that is no folder.
    """
    where = str(repo_or_dir)
    if os.path.isdir(where):
        path = Path(where) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (not a folder written by "
                                    "save_pretrained?)")
        return path
    if os.path.exists(where) or where.startswith((".", "/", "~")) or where.count("/") > 1:
        raise FileNotFoundError(f"{where}: no such folder (from_pretrained takes a "
                                "save_pretrained folder or a Hub id user/name; a .ckpt file: "
                                "Predictor.from_checkpoint)")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(where, filename, **download))


def load_pretrained(repo_or_dir: str | os.PathLike[str], device: str | torch.device = "cpu",
                    config: Mapping[str, Any] | None = None, **download: Any
                    ) -> tuple[PixelLLM, dict[str, Any]]:
    """Rebuild a model saved by ``save_pretrained`` (a folder or a Hub repo).

    Args:
        repo_or_dir: the folder, or a Hub id ``user/name`` (needs the network once; then the
            Hub cache).
        device: where the model goes.
        config: ``config.json`` when already read (the mixin's ``from_pretrained`` reads it).
        **download: ``hf_hub_download`` options (``revision``, ``token``, ``cache_dir``...).

    Returns:
        (model in eval mode on ``device``, its meta: ``config``, ``frozen`` and the saved
        info, as :func:`pixelkit.checkpoint.load_model` returns a checkpoint's).

    Raises:
        FileNotFoundError: ``config.json`` or ``model.safetensors`` missing.
        CheckpointError: unreadable files, or frozen sources that do not load or differ.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if config is None:
        path = _resolve(repo_or_dir, CONFIG_NAME, **download)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    data = dict(config)
    meta = data.pop(META_KEY, None) or {}
    weights = _resolve(repo_or_dir, WEIGHTS_NAME, **download)
    try:
        state = load_file(weights)
    except SafetensorError as err:
        raise CheckpointError(f"{weights} cannot be read: {err}") from None
    model = model_from_state(data, meta.get("frozen") or {}, state, str(repo_or_dir))
    return model.to(device).eval(), {**meta, "config": data}


# --------------------------------------------------------------------------- model card
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def model_card(model: PixelLLM, metrics: Mapping[str, Any] | None = None,
               training: Mapping[str, Any] | None = None, repo_id: str | None = None,
               **_: Any) -> ModelCard:
    """The ``README.md`` of a saved model: architecture, parameter counts, the frozen parts
    and their sources, and (when given) the training recipe and metrics.

    Args:
        model: the model.
        metrics: name -> value (validation metrics).
        training: the recipe: stage(s), steps, data... (a checkpoint's meta).
        repo_id: the Hub id, for the usage snippet (default: the folder).
        **_: other ``model_card_kwargs`` (ignored).
    """
    cfg = model.config
    lm = cfg.language_model
    card_data = ModelCardData(library_name="pixelkit", pipeline_tag="image-text-to-text",
                              tags=["pixelllm", "pixel-aligned-language-model",
                                    "model_hub_mixin", "pytorch_model_hub_mixin"])
    backbones = "; ".join(f"{b.kind} `{b.name}`" + (" (frozen)" if b.frozen else "")
                          for b in cfg.image_encoder.backbones)
    stored, frozen = slim_state(model)
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# PixelLLM ({cfg.name})", "",
        f"A Pixel-Aligned Language Model ([Xu et al., CVPR 2024]({PAPER_URL})) made with "
        "pixelkit: captions with a location per word, region captions, referring boxes "
        "and dense captions.", "",
        "```python", "from pixelkit import Predictor",
        f'p = Predictor.from_pretrained("{repo_id or "user/name"}")',
        'p.set_image("photo.jpg")', "p.caption()", 'p.refer("the red circle")', "```", "",
        "## Architecture", "",
        "| part | setting |", "|---|---|",
        f"| input | {cfg.image_size} px |",
        f"| image encoder | {backbones} |",
        f"| prompt feature extractor | width {cfg.extractor.width}, depth {cfg.extractor.depth}, "
        f"{cfg.extractor.num_queries} queries |",
        f"| language model | {lm.family} `{lm.name}`"
        + (f", LoRA r={lm.lora.r} on {', '.join(lm.lora.target_modules)}" if lm.lora.r else "")
        + f", tokenizer `{lm.tokenizer or lm.name}` |",
        f"| point head | {cfg.point_head.num_layers} layers, {cfg.point_head.hidden_dim} wide |",
        f"| proposal head | {'on' if cfg.proposal_head.enabled else 'off'} |",
        "",
        "## Parameters", "",
        f"- total: {model.num_params():,}",
        f"- trainable: {model.num_params(trainable_only=True):,}",
        f"- stored in `{WEIGHTS_NAME}`: {sum(t.numel() for t in stored.values()):,} values "
        "(trainable and other weights, buffers; not the frozen pretrained parts)",
    ]
    if frozen:
        lines += ["", "## Frozen pretrained parts", "",
                  "Not stored here: `from_pretrained` loads them from their sources and checks "
                  "their fingerprints (`config.json`, `pixelkit.frozen`).", "",
                  "| part | source | kind | fingerprint |", "|---|---|---|---|"]
        lines += [f"| {p} | `{r['source']}` | {r['kind']} | `{r['fingerprint'][:12]}` |"
                  for p, r in frozen.items()]
    if training:
        lines += ["", "## Training", ""] + [f"- {k}: {_fmt(v)}" for k, v in training.items()]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    return ModelCard("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- pixelkit export
def export(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], push: str | None = None,
           private: bool | None = None) -> Path:
    """A checkpoint as a Hub folder (and, with ``push``, a Hub repo): its meta's stage, data
    and metrics go into the card and ``config.json``.

    Returns:
        The folder.
    """
    model, meta = load_model(ckpt)
    info = {k: v for k, v in meta.items() if k not in ("config", "frozen")}
    metrics = info.pop("metrics", None)
    model.save_pretrained(out, metrics=metrics, training=info, repo_id=push,
                          push_to_hub=bool(push), **({"private": private} if push else {}))
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="a pixelkit checkpoint")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--push", metavar="REPO", help="also upload to the Hub as REPO "
                        "(user/name); needs the network and a token (hf auth login)")
    parser.add_argument("--private", action="store_true", help="a private Hub repo")


def run(args: argparse.Namespace) -> int:
    out = export(args.ckpt, args.out, push=args.push, private=args.private or None)
    print(f"wrote {out}" + (f" and pushed it to https://huggingface.co/{args.push}"
                            if args.push else ""))
    return 0
