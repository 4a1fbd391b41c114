"""Checkpoints without their frozen pretrained weights: the sources and fingerprints stand for
them, loading rebuilds them from the source, and a changed source is a clear error.

A tiny model whose LM is a T5 loaded from a local directory (pretrained, base frozen, LoRA
on q and v) and whose backbone is a timm network loaded frozen from a weights file is the
small twin of the ``paper`` preset (SAM ViT-H and Flan-T5-XL frozen).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from _frozen_sources import frozen_config, make_sources

from pixelkit import PixelLLM, PixelLLMConfig, Predictor
from pixelkit.checkpoint import CheckpointError, load_model, save_model
from pixelkit.data.datamodule import PixelDataModule, shapes_sources
from pixelkit.data.synth import synthesize
from pixelkit.modeling.language_model import load_language_model
from pixelkit.modeling.pixel_llm import pretrained_frozen_parts
from pixelkit.modeling.tokenizer import shapes_tokenizer
from pixelkit.stages import TraceTraining


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny T5 saved as a local 'hub' directory and a tiny timm backbone's weights file."""
    return make_sources(tmp_path_factory.mktemp("sources"))


def test_frozen_parts_stay_out_and_come_back(sources, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = PixelLLM(PixelLLMConfig.from_name("tiny", frozen_config(sources))).eval()
    assert set(model.pretrained_frozen()) == {"image_encoder.backbones.0", "language_model"}
    frozen = {k for keys in model.frozen_keys().values() for k in keys}
    assert frozen and not any("lora_" in k for k in frozen)  # the adapters train: kept
    path = save_model(model, tmp_path / "slim.ckpt", stage="test")
    saved = torch.load(path, weights_only=True)
    assert not frozen & set(saved["state_dict"])
    assert set(saved["pixelkit"]["frozen"]) == set(model.pretrained_frozen())
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    kept = sum(v.numel() * v.element_size() for v in saved["state_dict"].values())
    assert kept < 0.6 * full  # the tiny twin: most of its weights are the frozen T5
    # Loading rebuilds the frozen parts from their sources: the same predictions.
    loaded, _ = load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    a = Predictor(model, device="cpu").set_image(image).refer("the red circle")
    b = Predictor(loaded, device="cpu").set_image(image).refer("the red circle")
    assert a.box == b.box and a.score == b.score


def test_a_changed_source_is_a_fingerprint_error(sources, tmp_path: Path) -> None:
    model = PixelLLM(PixelLLMConfig.from_name("tiny", frozen_config(sources)))
    path = save_model(model, tmp_path / "slim.ckpt")
    changed = tmp_path / "t5-changed"
    lm = load_language_model(model.config.language_model)
    with torch.no_grad():
        next(p for n, p in lm.named_parameters() if "wo.weight" in n).add_(1e-3)
    lm.save_pretrained(changed)
    shapes_tokenizer().save_pretrained(changed)
    ckpt = torch.load(path, weights_only=True)
    ckpt["pixelkit"]["config"]["language_model"]["name"] = str(changed)
    torch.save(ckpt, tmp_path / "moved.ckpt")
    with pytest.raises(CheckpointError, match="language_model loaded from .*t5-changed differ"):
        load_model(tmp_path / "moved.ckpt")


def test_stage_checkpoints_are_slim_and_resume(sources, tmp_path: Path) -> None:
    world = tmp_path / "world"
    synthesize(world, num_images=12, image_size=64, seed=0, val_fraction=0.25, progress=False)
    dm = PixelDataModule(train=shapes_sources(str(world), "train", ["trace"]), batch_size=2,
                         samples_per_epoch=8, val_limit=2)
    stage = TraceTraining(model=frozen_config(sources), lr=1e-3, warmup_steps=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(stage, dm)
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    ckpt = torch.load(tmp_path / "s.ckpt", weights_only=True)
    frozen = {f"model.{k}" for keys in stage.model.frozen_keys().values() for k in keys}
    assert not frozen & set(ckpt["state_dict"]) and ckpt["pixelkit"]["frozen"]
    # A Lightning resume puts the rebuilt frozen weights back for its strict load ...
    again = TraceTraining(model=frozen_config(sources), lr=1e-3, warmup_steps=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(again, dm, ckpt_path=tmp_path / "s.ckpt")
    assert trainer.global_step == 3
    # ... and the next stage starts from it; the Predictor reads it too.
    nxt = TraceTraining(model=frozen_config(sources), init_from=str(tmp_path / "s.ckpt"))
    trained = {k: v for k, v in stage.model.state_dict().items()}
    for k, v in nxt.model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert Predictor.from_checkpoint(tmp_path / "s.ckpt", device="cpu").model is not None


def test_paper_checkpoint_ratio_on_meta() -> None:
    from pixelkit.checkpoint import checkpoint_sizes

    paper = checkpoint_sizes("paper")
    assert paper["full_gb"] > 10  # Flan-T5-XL + SAM ViT-H + EVA02-L in fp32
    assert paper["ratio"] <= 0.15
    assert checkpoint_sizes("tiny")["ratio"] == 1.0  # nothing frozen from a source


def test_the_record_names_source_and_revision(sources) -> None:
    from pixelkit.checkpoint import frozen_record
    from pixelkit.config import BackboneConfig

    model = PixelLLM(PixelLLMConfig.from_name("tiny", frozen_config(sources)))
    lm = frozen_record(model)["language_model"]
    # a local directory: no hub revision to pin, no commit it was downloaded at
    assert lm["source"] == str(sources["lm"]) and lm["revision"] is None and lm["commit"] is None
    assert len(lm["fingerprint"]) == 64 and lm["num_keys"] > 0
    paper = PixelLLMConfig.from_name("paper", {"language_model": {"revision": "v1.0"}})
    assert pretrained_frozen_parts(paper)["language_model"]["revision"] == "v1.0"
    with pytest.raises(ValueError, match="revision applies to kind 'sam'"):
        BackboneConfig(name="resnet18", revision="main")
