"""pixelkit.tutorial (what the notebooks call) and the tutorial pictures in pixelkit.viz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelkit import tutorial as tut
from pixelkit import viz
from pixelkit.config import PixelLLMConfig
from pixelkit.data import catalog
from pixelkit.modeling.pixel_llm import PixelLLM
from pixelkit.modeling.tokenizer import shapes_tokenizer
from pixelkit.predictor import Predictor


@pytest.fixture(autouse=True)
def _outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELKIT_NOTEBOOK_OUT", str(tmp_path / "nb"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tut.shapes_world(20, root=tmp_path_factory.mktemp("worlds"))


# --------------------------------------------------------------------------- where things are


def test_paths(tmp_path: Path) -> None:
    root = tut.repo_root()
    assert (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file()
    out = tut.output_dir("03_x")
    assert out == tmp_path / "nb" / "03_x" and out.is_dir()
    assert tut.quickstart_checkpoint(tmp_path) is None
    ckpt = tmp_path / "outputs" / "quickstart" / "checkpoints" / "pixelllm.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert tut.quickstart_checkpoint(tmp_path) == ckpt
    with pytest.raises(FileNotFoundError, match="shared/fixtures/real"):
        tut.fixtures_dir(tmp_path / "repo")


def test_output_dir_default_is_git_ignored_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXELKIT_NOTEBOOK_OUT")
    path = tut.output_dir("test-tutorial-probe")
    try:
        assert path == tut.repo_root() / "outputs" / "notebooks" / "test-tutorial-probe"
        assert "outputs/" in (tut.repo_root() / ".gitignore").read_text().split()
    finally:
        path.rmdir()


# --------------------------------------------------------------------------- data


def test_shapes_world_is_written_once_and_reused(tmp_path: Path) -> None:
    a = tut.shapes_world(6, root=tmp_path)
    stamp = (a / "world.json").stat().st_mtime_ns
    assert tut.shapes_world(6, root=tmp_path) == a
    assert (a / "world.json").stat().st_mtime_ns == stamp  # not rewritten
    b = tut.shapes_world(6, seed=2, root=tmp_path)
    assert b != a and catalog.get("shapes/val").annotation("trace", b).is_file()
    assert json.loads((a / "world.json").read_text())["seed"] == 1  # not the quickstart's 0


def test_abridged() -> None:
    rec = {"traces": [[{"x": 0.1, "y": 0.2, "t": t} for t in range(10)]],
           "bbox": [1, 2, 3, 4], "caption": "x" * 200}
    short = tut.abridged(rec, max_items=2, max_chars=10)
    assert short["traces"][0][:2] == rec["traces"][0][:2]
    assert short["traces"][0][2] == "... (8 more)"
    assert short["bbox"] == [1, 2, 3, 4]  # a box stays whole
    assert short["caption"] == "x" * 10 + "..."


def test_shapes_images(world: Path) -> None:
    scenes = tut.shapes_images(world, n=2, min_objects=2)
    assert len(scenes) == 2
    for s in scenes:
        assert s.image.is_file() and len(s.boxes) >= 2 and len(s.phrases) == len(s.boxes)
        centres = [(b[0] + b[2]) / 2 for b in s.boxes]
        assert centres == sorted(centres)  # left to right, as captions are written
        assert s.narrative["image_id"] == str(s.image_id)
        for text, box in s.expressions:
            assert text.startswith("the ") and box in s.boxes


def test_aligned_words_and_trace_segments(world: Path) -> None:
    scene = tut.shapes_images(world, n=1)[0]
    tok = shapes_tokenizer()
    size = Image.open(scene.image).size
    text = tut.aligned_words(scene.narrative, tok, size, method="text")
    official = tut.aligned_words(scene.narrative, tok, size, method="official")
    n = len(scene.narrative["caption"].split())
    assert len(text.tokens) == n == len(official.tokens)  # one shapes token per word
    # text rule: token i is utterance i (one utterance per word); official: shifted by one
    assert text.utterance_index.tolist() == list(range(n))
    assert official.utterance_index[0] == 1 and official.utterances[0] == text.utterances[1]
    assert text.boxes.shape == (n, 4) and np.isfinite(text.boxes).all()
    assert (text.boxes[:, :2] >= -1).all() and (text.boxes[:, 2:] <= size[0] + 1).all()
    trace, segments = tut.trace_segments(scene.narrative, size)
    assert trace.shape[1] == 2 and len(segments) == n
    # an object word's trace segment lies inside its target box (the box is its min / max)
    k = text.tokens.index(scene.phrases[0].split()[-1])
    seg, box = segments[k], text.boxes[k]
    assert len(seg) and (seg >= box[:2] - 1.0).all() and (seg <= box[2:] + 1.0).all()


# --------------------------------------------------------------------------- training


def test_tour_checkpoint_trains_the_chain(tmp_path: Path, world: Path) -> None:
    ckpt = tut.tour_checkpoint(tmp_path, data_root=world, steps=1, prefer_quickstart=False,
                               batch_size=2, val_limit=2, accelerator="cpu", wandb=False,
                               prediction_images=False)
    assert ckpt == tmp_path / "pixelllm.ckpt"
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    assert p.info["stages"] == ["caption", "trace", "refer", "densecap"]
    scene = tut.shapes_images(world, n=1)[0]
    assert isinstance(p.set_image(scene.image).caption().text, str)


# --------------------------------------------------------------------------- looking at runs


def test_split_refer_records_and_gallery(world: Path) -> None:
    scene = tut.shapes_images(world, n=1)[0]
    gt = list(scene.boxes[0])
    recs = [{"image": str(scene.image), "expression": "a", "box": gt, "gt_box": gt},
            {"image": str(scene.image), "expression": "b", "box": [0, 0, 2, 2], "gt_box": gt},
            {"image": str(scene.image), "expression": "c",
             "box": [gt[0], gt[1], (gt[0] + gt[2]) / 2 + 1, gt[3]], "gt_box": gt}]
    good, bad = tut.split_refer_records(recs)
    assert [r["expression"] for r in good] == ["a", "c"] and good[0]["iou"] == pytest.approx(1)
    assert [r["expression"] for r in bad] == ["b"] and bad[0]["iou"] == 0
    assert tut.split_refer_records([]) == ([], [])
    pic = tut.refer_gallery(good, n=4, min_side=96)
    assert pic.width > 2 * 96
    assert tut.refer_gallery([], n=4).height > 0


def test_proposal_steps_on_a_random_model(world: Path) -> None:
    torch.manual_seed(0)
    model = PixelLLM(PixelLLMConfig.from_name("tiny"))
    p = Predictor(model, device="cpu")
    p.set_image(tut.shapes_images(world, n=1)[0].image)
    steps = tut.proposal_steps(p, score_threshold=0.0, max_regions=3)
    assert steps.level_shapes == [(16, 16), (8, 8), (4, 4)]  # scales 2, 1, 0.5 of an 8x8 grid
    assert all(h.shape == s for h, s in zip(steps.heatmaps, steps.level_shapes))
    assert all(((h >= 0) & (h <= 1)).all() for h in steps.heatmaps)
    (b0, _), (b1, s1) = steps.before_nms, steps.after_nms
    assert len(b1) <= 3 and len(b0) >= len(b1) and b0.shape[1] == 4
    assert (b0 >= 0).all() and (b0 <= 64).all() and (np.diff(s1) <= 1e-6).all()
    assert steps.level_titles()[0].startswith("level 0: 16x16 cells, peak ")
    assert model.proposal_head.cfg.nms_iou == 0.5  # restored
    # non-square image: the padding is cropped from the maps
    p.set_image(np.zeros((32, 64, 3), np.uint8))
    assert tut.proposal_steps(p).heatmaps[0].shape == (8, 16)


# --------------------------------------------------------------------------- models


def test_describe_model_and_memory() -> None:
    from pixelkit.modeling.summary import describe_model, memory_estimate

    text = describe_model("tiny", depth=1, device="cpu")
    assert "PixelLLM 'tiny' at 64px (built on cpu)" in text and "point_head (PointHead)" in text
    short = describe_model("tiny", device="meta", tree=False)
    assert "(PointHead)" not in short and "total" in short
    n = sum(p.numel() for p in PixelLLM(PixelLLMConfig.from_name("tiny")).parameters())
    m = memory_estimate("tiny", precision="32-true")
    assert m["trainable"] + m["frozen"] == n
    assert m["total_gib"] == pytest.approx(n * 16 / 1024 ** 3)
    lora = PixelLLMConfig.from_name("tiny", **{"language_model.freeze_base": True,
                                                "language_model.lora": {"r": 4}})
    half, full = memory_estimate(lora, "bf16-mixed"), memory_estimate(lora, "32-true")
    assert half["frozen"] > 0 and half["weights_gib"] < full["weights_gib"]
    table = tut.gpu_fit_table({"tiny": "tiny", "paper": "paper"}, gpus={"8 GB": 8, "80 GB": 80})
    assert list(table.index) == ["tiny", "paper"]
    assert table.loc["paper", "8 GB"] < 0 < table.loc["paper", "80 GB"]  # GiB left
    assert table.loc["tiny", "8 GB"] == pytest.approx(8, abs=0.1)


# --------------------------------------------------------------------------- pictures


def test_tutorial_pictures() -> None:
    img = Image.new("RGB", (64, 48), (120, 120, 120))
    cap = viz.draw_caption(img, ["a", "b"], [(10, 10), (40, 30)], box=(5, 5, 50, 40))
    assert cap.size == (512, 384)
    plain = viz.draw_trace(img, ["a", "b"], [(10, 10), (40, 30)])
    assert cap.size == plain.size and np.asarray(cap).tolist() != np.asarray(plain).tolist()
    assert viz.draw_caption(img, ["a"], [(10, 10)], clicks=[(20, 20)], click_labels=[0]).size \
        == cap.size
    grid = viz.image_grid([[img, img], [img]], row_titles=["r1", "r2"], col_titles=["a", "b"])
    assert grid.width >= 90 + 2 * 64 and grid.height >= 2 * 48
    ref = viz.draw_refer(img, (1, 1, 20, 20), (2, 2, 22, 22), min_side=96)
    assert ref.size == (128, 96)
    heat = viz.draw_heatmaps(img, [np.full((4, 4), 0.01), np.eye(8)], ["x", "y"], size=60,
                             normalize=True)
    assert heat.height > 60
    assert viz.heat_colours(np.zeros((2, 3))).shape == (2, 3, 3)
    words = viz.draw_word_targets(img, ["a", "b", "c"], [[1, 1, 9, 9], [np.nan] * 4, [5, 5, 6, 6]],
                                  [[5, 5], [np.nan, np.nan], [5.5, 5.5]],
                                  trace=[(1, 1), (9, 9), (30, 30)],
                                  segments=[np.array([[1, 1], [9, 9]])] * 3,
                                  utterance_index=[0, -1, 2], cols=2, size=64)
    assert words.height >= 2 * 64  # 3 panels in rows of 2


def test_nms_example_picks_the_image_nms_changes_most(world: Path) -> None:
    torch.manual_seed(0)
    p = Predictor(PixelLLM(PixelLLMConfig.from_name("tiny")), device="cpu")
    scenes = tut.shapes_images(world, n=3)
    images = [s.image for s in scenes]
    removed = []
    for im in images:
        p.set_image(im)
        st = tut.proposal_steps(p, score_threshold=0.0)
        removed.append(len(st.before_nms[1]) - len(st.after_nms[1]))
    item, steps = tut.nms_example(p, images, score_threshold=0.0)
    assert item == images[int(np.argmax(removed))]
    assert len(steps.before_nms[1]) - len(steps.after_nms[1]) == max(removed)
    assert p.image.size == Image.open(item).size
    with pytest.raises(ValueError):
        tut.nms_example(p, [])
