"""``pixelkit eval`` end to end on a tiny shapes world, and its numbers recomputed from the
``--predictions`` file by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelkit import PixelLLM, PixelLLMConfig, Predictor
from pixelkit.checkpoint import save_model
from pixelkit.cli import main
from pixelkit.data import catalog
from pixelkit.data.synth import synthesize
from pixelkit.decoding import DecodeOptions
from pixelkit.eval import densecap_map
from pixelkit.optional import available

if available("pycocoevalcap"):  # the metrics extra; its tests are marked `extra`
    from pixelkit.eval import caption_scores, exact_match

needs_metrics = pytest.mark.extra("pycocoevalcap")
from pixelkit.evaluate import evaluate_refer, load_samples, read_predictions

#: The shapes world's val split: its files and images come from the catalog.
VAL = catalog.get("shapes/val")
KEYS = {
    "refer": {"p_at_0.5", "mean_iou"},
    "loca-caption": {"exact_match", "CIDEr", "METEOR", "BLEU-4", "ROUGE-L"},
    "caption": {"exact_match", "CIDEr", "BLEU-4", "ROUGE-L"},  # METEOR left out: --metrics
    "densecap": {"mAP", "mAP_detection"},
    "trace": {"l1"},
}



@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    synthesize(root / "shapes", num_images=12, val_fraction=0.5, seed=3, progress=False)
    torch.manual_seed(0)
    ckpt = save_model(PixelLLM(PixelLLMConfig.from_name("tiny")), root / "tiny.ckpt",
                      stage="random")
    return {"root": root, "data": root / "shapes", "ckpt": ckpt}


def _stub_meteor(cands: list[str], refs: list[list[str]]) -> list[float]:
    """A cheap stand-in for METEOR (no JVM): word overlap with the best reference."""
    out = []
    for c, rs in zip(cands, refs):
        words = set(c.split())
        out.append(max(len(words & set(r.split())) / max(len(set(r.split())), 1) for r in rs))
    return out


def _ann(world: dict[str, Path], task: str) -> Path:
    return VAL.annotation(task.replace("-", "_"), world["data"])


def _run(world: dict[str, Path], task: str, *extra: str) -> tuple[dict, list[dict]]:
    out = world["root"] / f"{task}.json"
    preds = world["root"] / f"{task}.jsonl"
    code = main(["eval", "--task", task, "--ckpt", str(world["ckpt"]),
                 "--ann", str(_ann(world, task)),
                 "--images", str(VAL.image_dir(world["data"])), "--out", str(out),
                 "--predictions", str(preds), "--batch-size", "4", "--max-new-tokens", "6",
                 "--no-progress", *extra])
    assert code == 0
    return json.loads(out.read_text()), read_predictions(preds)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _in_image(boxes, size) -> bool:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    W, H = size
    return bool((b >= 0).all() and (b[:, [0, 2]] <= W).all() and (b[:, [1, 3]] <= H).all()
                 and (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all())


def test_refer(world) -> None:
    metrics, preds = _run(world, "refer")
    assert KEYS["refer"] <= set(metrics) and metrics["num_samples"] == len(preds) > 0
    pred = np.array([p["box"] for p in preds])
    gt = np.array([p["gt_box"] for p in preds])
    iou = _iou(pred, gt)
    assert metrics["p_at_0.5"] == pytest.approx(float(np.mean(iou > 0.5)))
    assert metrics["mean_iou"] == pytest.approx(float(iou.mean()), abs=1e-9)
    assert all(_in_image(p["box"], p["image_size"]) and 0 < p["score"] <= 1 for p in preds)


@needs_metrics
def test_loca_caption_with_real_meteor(world) -> None:
    metrics, preds = _run(world, "loca-caption")
    assert KEYS["loca-caption"] <= set(metrics) and 0 <= metrics["METEOR"] <= 1
    cands = {p["index"]: p["caption"] for p in preds}
    refs = {p["index"]: p["references"] for p in preds}
    again = caption_scores(cands, refs, metrics=("CIDEr", "BLEU-4", "ROUGE-L"))
    for key in ("CIDEr", "BLEU-4", "ROUGE-L"):
        assert metrics[key] == pytest.approx(again[key])
    assert metrics["exact_match"] == pytest.approx(exact_match(cands, refs))
    for p in preds:  # prompted with the ground-truth box; per-word locations in pixels
        assert len(p["words"]) == len(p["points"]) == len(p["boxes"])
        assert _in_image(p["boxes"], p["image_size"]) and _in_image(p["box"], p["image_size"])


@needs_metrics
def test_caption_groups_references_by_image(world) -> None:
    metrics, preds = _run(world, "caption", "--metrics", "CIDEr,BLEU-4,ROUGE-L")
    assert set(metrics) >= KEYS["caption"] and "METEOR" not in metrics
    samples, _ = load_samples("caption", _ann(world, "caption"),
                              VAL.image_dir(world["data"]))
    assert len(preds) == len({s.image_path for s in samples})
    cands = {p["index"]: p["caption"] for p in preds}
    refs = {p["index"]: p["references"] for p in preds}
    again = caption_scores(cands, refs, metrics=("CIDEr", "BLEU-4", "ROUGE-L"))
    assert metrics["CIDEr"] == pytest.approx(again["CIDEr"])
    assert metrics["exact_match"] == pytest.approx(exact_match(cands, refs))


def test_densecap(world, monkeypatch) -> None:
    from pixelkit.eval import densecap

    monkeypatch.setattr(densecap, "meteor_scores", _stub_meteor)  # no JVM in this test
    metrics, preds = _run(world, "densecap", "--score-threshold", "0", "--max-regions", "2")
    assert KEYS["densecap"] <= set(metrics)
    assert metrics["num_predictions"] == sum(len(p["boxes"]) for p in preds) > 0
    again = densecap_map(
        [{"boxes": np.reshape(p["boxes"], (-1, 4)), "captions": p["captions"],
          "scores": p["scores"]} for p in preds],
        [{"boxes": np.reshape(p["gt_boxes"], (-1, 4)), "captions": p["gt_captions"]}
         for p in preds], meteor_fn=_stub_meteor)
    assert metrics["mAP"] == pytest.approx(again["mAP"])
    assert metrics["mAP_detection"] == pytest.approx(again["mAP_detection"])
    assert all(_in_image(p["boxes"], p["image_size"]) for p in preds)


def test_trace(world) -> None:
    metrics, preds = _run(world, "trace")
    errors = []
    for p in preds:
        scale = max(p["image_size"])
        assert len(p["tokens"]) == len(p["pred_boxes"]) == len(p["target_boxes"])
        for pb, tb in zip(p["pred_boxes"], p["target_boxes"]):
            if tb is not None:
                errors.append(np.abs(np.subtract(pb, tb)).mean() / scale)
        assert _in_image(p["pred_boxes"], p["image_size"])
        assert _in_image([t for t in p["target_boxes"] if t], p["image_size"])
    assert metrics["num_tokens"] == len(errors) > 0
    assert metrics["l1"] == pytest.approx(float(np.mean(errors)))


def test_python_api_is_batch_size_invariant(world) -> None:
    predictor = Predictor.from_checkpoint(world["ckpt"], device="cpu",
                                          decode_options=DecodeOptions(max_new_tokens=4))
    samples, _ = load_samples("refer", _ann(world, "refer"),
                              VAL.image_dir(world["data"]))
    m1, p1 = evaluate_refer(predictor, samples, batch_size=1)
    m8, p8 = evaluate_refer(predictor, samples, batch_size=8)
    assert m1 == pytest.approx(m8)
    np.testing.assert_allclose([p["box"] for p in p1], [p["box"] for p in p8], atol=1e-4)


def test_bad_arguments_exit_cleanly(world, capsys) -> None:
    code = main(["eval", "--task", "refer", "--ckpt", str(world["root"] / "missing.ckpt"),
                 "--ann", str(_ann(world, "refer"))])
    assert code == 2 and "missing.ckpt" in capsys.readouterr().err
    code = main(["eval", "--task", "trace", "--ckpt", str(world["ckpt"]),
                 "--ann", str(_ann(world, "refer"))])
    assert code == 2 and "trace" in capsys.readouterr().err
