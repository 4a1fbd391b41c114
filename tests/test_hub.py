"""The Hugging Face Hub format (pixelkit.hub): save_pretrained -> from_pretrained on a local
folder gives the same model and predictions; frozen pretrained parts stay out and come back
from their sources; the card carries the recipe and metrics. Offline: no test reaches the
Hub (push_to_hub runs against a stand-in for its upload)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _frozen_sources import frozen_config, make_sources
from safetensors.torch import load_file

from pixelkit import PixelLLM, PixelLLMConfig, Predictor
from pixelkit.checkpoint import CheckpointError, save_model
from pixelkit.cli import main

IMAGE = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)


def predictions(p: Predictor) -> tuple:
    """Caption words and points, and a referring box and score, on a random image."""
    p.set_image(IMAGE)
    cap, ref = p.caption(), p.refer("the red circle")
    return cap.words, cap.points, ref.box, ref.score


def assert_same_model(a: PixelLLM, b: PixelLLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert torch.equal(v, sb[k]), k


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_sources(tmp_path_factory.mktemp("sources"))


def test_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = PixelLLM(PixelLLMConfig.from_name("tiny")).eval()
    metrics = {"refer.p_at_0.5": 0.8125, "trace.pointing_accuracy": 0.5}
    model.save_pretrained(tmp_path, metrics=metrics, training={"stage": "finetune", "steps": 7})
    assert {"model.safetensors", "config.json", "README.md"} <= {f.name for f in tmp_path.iterdir()}
    # Nothing is frozen from a source: every weight is in the file.
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pixelkit"] == {"frozen": {}, "metrics": metrics, "stage": "finetune",
                                  "steps": 7}
    card = (tmp_path / "README.md").read_text()
    assert "library_name: pixelkit" in card and "| refer.p_at_0.5 | 0.8125 |" in card
    assert "- stage: finetune" in card and f"{model.num_params():,}" in card

    loaded = PixelLLM.from_pretrained(tmp_path)
    assert_same_model(model, loaded)
    assert loaded.config == model.config  # the nested dataclass config round-trips
    p = Predictor.from_pretrained(tmp_path, device="cpu")
    assert predictions(p) == predictions(Predictor(model, device="cpu"))
    assert p.info["metrics"] == metrics and p.info["stage"] == "finetune"
    # Saving again replaces the card (the mixin alone would keep the old one).
    model.save_pretrained(tmp_path, metrics={"refer.p_at_0.5": 0.25})
    card = (tmp_path / "README.md").read_text()
    assert "0.25" in card and "0.8125" not in card and "finetune" not in card


def test_frozen_parts_stay_out_and_come_back(sources, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = PixelLLM(PixelLLMConfig.from_name("tiny", frozen_config(sources))).eval()
    model.save_pretrained(tmp_path)
    frozen = {k for keys in model.frozen_keys().values() for k in keys}
    saved = load_file(tmp_path / "model.safetensors")
    assert frozen and not frozen & set(saved)
    assert any("lora_" in k for k in saved)  # the adapters train: kept
    record = json.loads((tmp_path / "config.json").read_text())["pixelkit"]["frozen"]
    assert record["language_model"]["source"] == str(sources["lm"])
    assert record["image_encoder.backbones.0"]["source"] == str(sources["backbone"])
    card = (tmp_path / "README.md").read_text()
    assert "## Frozen pretrained parts" in card and str(sources["lm"]) in card

    p = Predictor.from_pretrained(tmp_path, device="cpu")  # rebuilt from the sources
    assert_same_model(model, p.model)
    assert predictions(p) == predictions(Predictor(model, device="cpu"))


def test_missing_or_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    PixelLLM(PixelLLMConfig.from_name("tiny")).save_pretrained(tmp_path / "m")
    for name, load in (("model.safetensors", Predictor.from_pretrained),
                       ("config.json", PixelLLM.from_pretrained)):
        folder = tmp_path / name
        folder.mkdir()
        other = "config.json" if name == "model.safetensors" else "model.safetensors"
        (folder / other).write_bytes((tmp_path / "m" / other).read_bytes())
        with pytest.raises(FileNotFoundError) as err:
            load(folder)
        assert str(folder / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Predictor.from_pretrained(tmp_path / "absent")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        Predictor.from_pretrained(tmp_path / "m")


def test_export_from_a_checkpoint_keeps_its_recipe(tmp_path: Path) -> None:
    model = PixelLLM(PixelLLMConfig.from_name("tiny")).eval()
    ckpt = save_model(model, tmp_path / "pixelllm.ckpt", stage="all (quickstart chain)",
                      trained_on=["trace:train.json"], metrics={"densecap.mAP": 0.125})
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "- stage: all (quickstart chain)" in card and "| densecap.mAP | 0.125 |" in card
    p = Predictor.from_pretrained(tmp_path / "hub", device="cpu")
    assert p.info["trained_on"] == ["trace:train.json"]
    assert_same_model(model, p.model)


def test_push_to_hub_uploads_the_saved_folder(monkeypatch, tmp_path: Path) -> None:
    """No network: the Hub client is a stand-in that records what would be uploaded."""
    import huggingface_hub.hub_mixin as hub_mixin

    uploaded: dict[str, str] = {}

    class FakeApi:
        def __init__(self, token=None) -> None:
            pass

        def create_repo(self, repo_id, **_):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **_):
            uploaded.update({f.name: f.read_text(errors="replace")
                             for f in Path(folder_path).iterdir()})
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    assert {"metrics", "training"} <= set(inspect.signature(PixelLLM.push_to_hub).parameters)
    model = PixelLLM(PixelLLMConfig.from_name("tiny"))
    url = model.push_to_hub("user/pixelllm-tiny", metrics={"refer.p_at_0.5": 0.5})
    assert url.startswith("https://huggingface.co/user/pixelllm-tiny")
    assert {"model.safetensors", "config.json", "README.md"} <= set(uploaded)
    assert 'Predictor.from_pretrained("user/pixelllm-tiny")' in uploaded["README.md"]
    assert json.loads(uploaded["config.json"])["pixelkit"]["metrics"] == {"refer.p_at_0.5": 0.5}
