"""Location interfaces end to end: ``text``, ``tokens`` and ``regions``.

Each format (``text``, ``tokens`` corner, ``tokens`` axis, ``regions``) trains the trace and refer
stages for a few steps on the tiny preset with a falling loss, its data module taking the
format from the model; its slim checkpoint reloads (``weights_only=True``) to the same
outputs; the Predictor and ``pixelkit eval`` give the same result types and every metric,
with parse failures counted. New tokens train under LoRA through peft's trainable tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from pixelkit.checkpoint import load_model, save_model
from pixelkit.cli import main
from pixelkit.data import catalog
from pixelkit.data.datamodule import PixelDataModule, shapes_sources
from pixelkit.data.synth import synthesize
from pixelkit.decoding import DecodeOptions
from pixelkit.modeling.location import LocationCodec
from pixelkit.modeling.tokenizer import load_tokenizer
from pixelkit.predictor import CaptionResult, Predictor, ReferResult, grounded_result
from pixelkit.stages import CaptionPretraining, ReferringTraining, TraceTraining

FORMATS = {
    "text": {"format": "text"},
    "corner": {"format": "tokens", "token_style": "corner"},
    "axis": {"format": "tokens", "token_style": "axis"},
    "regions": {"format": "regions"},
}
VAL = catalog.get("shapes/val")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, num_images=12, image_size=64, seed=3, val_fraction=0.25, progress=False)
    return root


class Losses(L.Callback):
    """The training loss of every step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def fit(stage: L.LightningModule, world: Path, tasks: list[str], out: Path,
        steps: int = 8) -> tuple[list[float], PixelDataModule, L.Trainer]:
    """``steps`` training steps of ``stage`` on ``tasks``; its last checkpoint in ``out``."""
    losses = Losses()
    dm = PixelDataModule(train=shapes_sources(str(world), "train", tasks),
                         val=shapes_sources(str(world), "val", tasks[:1]), batch_size=4,
                         samples_per_epoch=4 * steps, val_limit=4, image_cache_mb=8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps, limit_val_batches=1,
                        val_check_interval=steps, default_root_dir=out,
                        callbacks=[losses, L.pytorch.callbacks.ModelCheckpoint(
                            dirpath=out, save_last=True)])
    trainer.fit(stage, dm)
    return losses.values, dm, trainer


def falls(losses: list[float]) -> bool:
    """The mean of the last three steps is below 85 % of the first three's."""
    return np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3])


@pytest.fixture(scope="module", params=list(FORMATS))
def trained(request, world, tmp_path_factory) -> dict:
    """Trace then refer stage of one format (8 steps each), and its slim checkpoint."""
    out = tmp_path_factory.mktemp(request.param)
    L.seed_everything(0)
    model = {"location": FORMATS[request.param]}
    trace = TraceTraining(model=model, lr=3e-3, warmup_steps=1)
    trace_losses, trace_dm, trace_tr = fit(trace, world, ["trace", "caption"], out / "trace")
    refer = ReferringTraining(model=model, lr=3e-3, warmup_steps=1,
                              init_from=str(out / "trace" / "last.ckpt"))
    refer_losses, refer_dm, refer_tr = fit(refer, world, ["refer", "trace"], out / "refer")
    slim = save_model(refer.model, out / "pixelllm.ckpt", stage="refer")
    return {"name": request.param, "trace": (trace_losses, trace_dm, trace_tr, trace),
            "refer": (refer_losses, refer_dm, refer_tr, refer), "slim": slim, "out": out}


def test_each_format_trains_trace_and_refer(trained) -> None:
    for stage_name in ("trace", "refer"):
        losses, dm, trainer, stage = trained[stage_name]
        assert all(map(math.isfinite, losses)) and falls(losses), (stage_name, losses)
        # The data module took the model's format; the vocabulary grew before the optimiser.
        assert dm.codec.config == stage.config.location
        rows = stage.model.language_model.model.get_input_embeddings().weight.shape[0]
        assert rows == len(dm.tokenizer) > len(load_tokenizer("shapes"))  # grown
        optimised = {p.shape for g in trainer.optimizers[0].param_groups for p in g["params"]}
        assert (rows, 128) in optimised
        # Written formats validate the box read from the teacher-forced tokens.
        if stage_name == "refer":
            assert 0 <= float(trainer.callback_metrics["val/refer/parse_failure_rate"]) <= 1


def test_slim_checkpoint_keeps_the_new_rows(trained) -> None:
    saved = torch.load(trained["slim"], weights_only=True)
    stage = trained["refer"][3]
    model, _ = load_model(trained["slim"])
    assert model.config.location == stage.config.location
    own = stage.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, own[key]), key
    emb = "language_model.model.shared.weight"
    assert saved["state_dict"][emb].shape[0] == len(trained["refer"][1].tokenizer)
    # Same outputs: one teacher-forced batch through both.
    dm = trained["refer"][1]
    batch = dm._collate([dm.val_sets[0][0]])
    inputs = {k: batch[k] for k in ("images", "image_index", "boxes", "points", "point_labels",
                                    "prompt_ids", "prompt_mask", "labels", "regions")}
    stage.model.eval()
    with torch.no_grad():
        assert torch.equal(stage.model(**inputs).logits, model(**inputs).logits)


def test_predictor_result_types(trained, world) -> None:
    p = Predictor.from_checkpoint(trained["slim"], device="cpu",
                                  decode_options=DecodeOptions(max_new_tokens=40))
    assert p.codec.format == FORMATS[trained["name"]]["format"]
    p.set_image(min(VAL.image_dir(world).iterdir()))
    W, H = p.image.size
    for result in (p.caption(), p.caption(box=(2, 2, W / 2, H / 2)), p.caption(task="caption")):
        assert isinstance(result, CaptionResult)
        assert not any(m in result.text for m in ("[", "]", "<loc_", "<p>", "<box>", "<r"))
        assert len(result.words) == len(result.points) == len(result.boxes)
        assert 0 <= result.parse_failures <= result.phrases
        assert 0 < result.num_tokens <= 40
    ref = p.refer("the red circle")
    assert isinstance(ref, ReferResult) and (ref.box is None) == (ref.error is not None)
    assert 0 < ref.score <= 1 and 0 < ref.num_tokens <= p.codec.box_length(p.tokenizer) + 1
    json.dumps(ref.to_dict())


def test_grounded_result_gives_each_word_its_phrase_box() -> None:
    codec = LocationCodec({"format": "text"})
    # 640 x 480: the grid covers the content, 6.4 x 4.8 pixels a bin.
    r = grounded_result(codec, "a red circle [10,20,30,40] and a blue [50,6,90", (640, 480), 11)
    assert r.text == "a red circle and a blue" and r.num_tokens == 11
    assert r.phrases == 2 and r.parse_failures == 1
    for k in range(3):
        assert r.boxes[k] == pytest.approx((67.2, 98.4, 195.2, 194.4))
        assert r.points[k] == pytest.approx((131.2, 146.4))
    assert all(math.isnan(v) for b in r.boxes[3:] for v in b)


def test_region_prompt_written_into_the_text(world) -> None:
    from pixelkit import PixelLLM, PixelLLMConfig

    cfg = PixelLLMConfig.from_name("tiny", overrides={"location": {"format": "text",
                                                                  "prompt": "text"}})
    p = Predictor(PixelLLM(cfg), device="cpu", decode_options=DecodeOptions(max_new_tokens=3))
    p.set_image(np.zeros((48, 64, 3), np.uint8))
    row = p._prompt_row(p.image, None, (0, 0, 32, 24), None, None)
    assert p.tokenizer.decode(row.prompt_ids) == "region [0,0,50,50]"
    assert np.isnan(row.box).all()  # the prompt encoder sees the whole image
    assert isinstance(p.caption(box=(0, 0, 32, 24)), CaptionResult)


def _eval(trained, world: Path, task: str, *extra: str) -> tuple[dict, list[dict]]:
    out = trained["out"] / f"{task}.json"
    preds = trained["out"] / f"{task}.jsonl"
    code = main(["eval", "--task", task, "--ckpt", str(trained["slim"]),
                 "--ann", str(VAL.annotation(task.replace("-", "_"), world)),
                 "--images", str(VAL.image_dir(world)), "--out", str(out),
                 "--predictions", str(preds), "--batch-size", "4", "--max-new-tokens", "12",
                 "--limit", "3", "--no-progress", *extra])
    assert code == 0
    return json.loads(out.read_text()), [json.loads(x) for x in preds.read_text().splitlines()]


def test_eval_gives_every_metric(trained, world) -> None:
    metrics, preds = _eval(trained, world, "refer")
    assert {"p_at_0.5", "mean_iou", "parse_failure_rate", "generated_tokens"} <= set(metrics)
    failed = [p for p in preds if p["box"] is None]
    assert all(p["error"] for p in failed)
    assert metrics["parse_failure_rate"] == pytest.approx(len(failed) / len(preds))
    assert 0 <= metrics["p_at_0.5"] <= 1 - metrics["parse_failure_rate"] + 1e-9
    assert 0 < metrics["generated_tokens"] <= 10
    metrics, preds = _eval(trained, world, "trace")
    assert 0 <= metrics["parse_failure_rate"] <= 1 and sum(p["phrases"] for p in preds) > 0
    assert metrics["parse_failure_rate"] == pytest.approx(
        sum(p["parse_failures"] for p in preds) / sum(p["phrases"] for p in preds))
    assert math.isnan(metrics["l1"] or math.nan) == (metrics["num_tokens"] == 0)
    if metrics["num_tokens"]:
        assert 0 <= metrics["l1"] <= 1


@pytest.mark.extra("pycocoevalcap")
def test_eval_captions(trained, world) -> None:
    if trained["name"] != "text":
        pytest.skip("one format is enough for the caption metrics (one JVM start each)")
    metrics, preds = _eval(trained, world, "loca-caption", "--metrics", "CIDEr")
    assert {"exact_match", "CIDEr", "generated_tokens"} <= set(metrics)
    assert all(len(p["words"]) == len(p["boxes"]) for p in preds)


def test_new_tokens_train_under_lora_in_a_stage(world, tmp_path) -> None:
    """A frozen base LM with LoRA: the location tokens' rows train through peft's trainable
    tokens (their delta changes, the base rows do not), and a slim checkpoint keeps them."""
    L.seed_everything(0)
    stage = TraceTraining(model={"location": {"format": "tokens", "task_tokens": True},
                                 "language_model": {"freeze_base": True,
                                                    "lora": {"r": 4, "alpha": 8}}},
                          lr=1e-2, warmup_steps=1)
    deltas = {n: p.detach().clone() for n, p in stage.model.named_parameters()
              if "trainable_tokens_delta" in n}
    assert deltas and all(p.requires_grad for n, p in stage.model.named_parameters()
                          if n in deltas)
    frozen = {n: p.detach().clone() for n, p in stage.model.language_model.named_parameters()
              if not p.requires_grad}
    assert any("shared" in n for n in frozen)  # the base embedding rows are frozen
    fit(stage, world, ["trace"], tmp_path, steps=3)
    after = dict(stage.model.named_parameters())
    assert any(not torch.equal(v, after[n]) for n, v in deltas.items())
    now = dict(stage.model.language_model.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in frozen.items())
    slim = save_model(stage.model, tmp_path / "lora.ckpt")
    model, _ = load_model(slim)
    for key, value in model.state_dict().items():
        assert torch.equal(value, stage.model.state_dict()[key]), key


def test_init_from_a_regression_checkpoint_grows_the_vocabulary(world, tmp_path) -> None:
    L.seed_everything(0)
    caption = CaptionPretraining()
    fit(caption, world, ["caption"], tmp_path, steps=1)
    stage = TraceTraining(model={"location": {"format": "text"}},
                          init_from=str(tmp_path / "last.ckpt"))
    old = caption.model.language_model.model.get_input_embeddings().weight
    new = stage.model.language_model.model.get_input_embeddings().weight
    assert new.shape[0] > old.shape[0]
    assert torch.equal(new[: old.shape[0]], old)


def test_narratives_are_not_cut_in_written_formats(world) -> None:
    for location in FORMATS.values():
        dm = PixelDataModule(train=shapes_sources(str(world), "train", ["trace"]),
                             batch_size=2, hflip_prob=0.0)  # max_text_length 48: a few phrases
        dm.set_location(location)
        dm.setup("fit")
        ds = dm.train_set.parts[0]
        for i in range(len(ds)):
            row = ds[i].rows[0]
            text = dm.tokenizer.decode(row.labels, skip_special_tokens=True)
            g = dm.codec.parse_grounded(text, regions=row.regions)
            assert g.failures == 0
            # no word lost (the decoder may glue punctuation to the word before it)
            assert "".join(g.words) == "".join(ds.samples[i].text.split())
