"""PixelDataModule: weighted sources, mixed or per-task batches, padding, seeding, workers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelkit.data.datamodule import PixelDataModule, SourceConfig, shapes_sources
from pixelkit.data.encoding import IGNORE_INDEX, TASK_IDS
from pixelkit.data.synth import synthesize


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, num_images=30, image_size=64, seed=1, val_fraction=0.2, progress=False)
    return root


def make(world: Path, **kw) -> PixelDataModule:
    weights = kw.pop("weights", {"trace": 2.0, "caption": 1.0, "refer": 1.0})
    dm = PixelDataModule(train=shapes_sources(str(world), "train", list(weights), weights),
                         val=shapes_sources(str(world), "val", ["refer", "densecap"]),
                         batch_size=8, samples_per_epoch=400, **kw)
    dm.setup("fit")
    return dm


def test_mixture_follows_the_weights(world) -> None:
    dm = make(world)
    counts: Counter = Counter()
    for batch in dm.train_dataloader():
        counts.update(batch["task"].tolist())
    total = sum(counts.values())
    # weights 2 : 1 : 1 -> 50 % / 25 % / 25 % of 400 draws (binomial sd ~ 2.5 %)
    assert abs(counts[TASK_IDS["trace"]] / total - 0.5) < 0.1
    assert abs(counts[TASK_IDS["caption"]] / total - 0.25) < 0.1


def test_batches_are_padded_and_consistent(world) -> None:
    dm = make(world)
    b = next(iter(dm.train_dataloader()))
    R, L = b["labels"].shape
    assert b["images"].shape == (8, 3, 64, 64) and b["image_index"].shape == (R,)
    assert b["point_targets"].shape == (R, L, 4) and b["point_mask"].shape == (R, L)
    assert b["prompt_ids"].shape == b["prompt_mask"].shape
    tok = dm.tokenizer
    for r in range(R):
        n = int((b["labels"][r] != IGNORE_INDEX).sum())
        assert b["labels"][r, n - 1] == tok.eos_token_id          # every target ends with EOS
        assert (b["labels"][r, n:] == IGNORE_INDEX).all()          # then padding
        assert not b["point_mask"][r, n:].any()                    # no targets on padding
        assert not b["point_mask"][r, 0]                           # position 0: start token
        if b["task"][r] == TASK_IDS["trace"]:
            assert b["point_mask"][r, 1:n].all()  # every word of a shapes narrative is traced
            prompt = tok.decode(b["prompt_ids"][r][b["prompt_mask"][r].bool()])
            assert prompt == "describe"
        if b["task"][r] == TASK_IDS["refer"]:
            prompt = tok.decode(b["prompt_ids"][r][b["prompt_mask"][r].bool()])
            assert prompt.startswith("where is ")
            box = b["point_targets"][r, n - 1]  # the EOS-emitting position carries the box
            assert (box[2:] > box[:2]).all() and (box >= 0).all() and (box <= 1).all()


def test_batch_by_task_gives_single_task_batches(world) -> None:
    dm = make(world, batch_by_task=True)
    tasks = [set(b["task"].tolist()) for b, _ in zip(dm.train_dataloader(), range(10))]
    assert all(len(t) == 1 for t in tasks)
    assert len(set().union(*tasks)) > 1


def test_sampler_is_seeded(world) -> None:
    first = [b["labels"] for b, _ in zip(make(world, seed=5).train_dataloader(), range(3))]
    again = [b["labels"] for b, _ in zip(make(world, seed=5).train_dataloader(), range(3))]
    other = [b["labels"] for b, _ in zip(make(world, seed=6).train_dataloader(), range(3))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


def test_worker_processes(world) -> None:
    dm = make(world, num_workers=2)
    batches = [b for b, _ in zip(dm.train_dataloader(), range(4))]
    assert len(batches) == 4 and all(b["images"].shape[0] == 8 for b in batches)


def test_decoded_image_cache_gives_the_same_batches(world) -> None:
    """With the cache the batches are identical (same seeds), and it holds each image once."""
    plain = [b for _, b in zip(range(4), make(world, seed=3).train_dataloader())]
    dm = make(world, seed=3, image_cache_mb=1)
    cached = [b for _, b in zip(range(4), dm.train_dataloader())]
    for a, b in zip(plain, cached):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["point_targets"], b["point_targets"])
    paths = {m["image_path"] for b in cached for m in b["meta"]}
    assert set(dm.images._images) == paths and dm.images._bytes == len(paths) * 64 * 64 * 3


def test_decoded_image_cache_evicts_by_bytes_and_never_caches_a_bad_image(tmp_path) -> None:
    from PIL import Image

    from pixelkit.data.datamodule import DecodedImages
    from pixelkit.data.formats import MissingImageError

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (32, 32), (i, 0, 0)).save(paths[-1])
    cache = DecodedImages(max_mb=2 * 32 * 32 * 3 / 2**20)  # room for two
    first = cache.load(paths[0])
    assert cache.load(paths[0]) is first  # a hit: the same decoded image
    cache.load(paths[1])
    cache.load(paths[0])  # paths[0] is now the most recent
    cache.load(paths[2])  # evicts the least recently used: paths[1]
    assert list(cache._images) == [paths[0], paths[2]] and cache._bytes == 2 * 32 * 32 * 3
    (tmp_path / "bad.png").write_bytes(b"not a png")
    for _ in range(2):  # raised every time, never cached
        with pytest.raises(MissingImageError, match="bad.png"):
            cache.load(str(tmp_path / "bad.png"))
    assert str(tmp_path / "bad.png") not in cache._images
    assert DecodedImages(0).load(paths[1]).getpixel((0, 0)) == (1, 0, 0)  # off: plain reads


def test_densecap_examples_share_one_image(world) -> None:
    dm = make(world, weights={"densecap": 1.0})
    b = next(iter(dm.train_dataloader()))
    assert b["gt_boxes"] is not None and len(b["gt_boxes"]) == 8
    rows_per_image = Counter(b["image_index"].tolist())
    for i, boxes in enumerate(b["gt_boxes"]):
        assert rows_per_image[i] == min(len(boxes), dm.hparams.max_regions)
    val = next(iter(dm.val_dataloader()[1]))  # val: no jitter, regions prompted by true boxes
    assert torch.isfinite(val["boxes"]).all()


def test_flip_swaps_words_and_mirrors_targets(world) -> None:
    dm = make(world, weights={"refer": 1.0}, hflip_prob=1.0, scale_jitter=None)
    plain = make(world, weights={"refer": 1.0}, hflip_prob=0.0, scale_jitter=None)
    ra, rb = dm.train_set[0].rows[0], plain.train_set[0].rows[0]
    box_a, box_b = ra.point_targets[-1], rb.point_targets[-1]
    # mirrored in a 64 x 64 square image: x0' = 1 - x1
    np.testing.assert_allclose(box_a[[0, 2]], 1 - box_b[[2, 0]], atol=1e-5)
    np.testing.assert_allclose(box_a[[1, 3]], box_b[[1, 3]], atol=1e-5)
    # narratives name locations: the flipped one says "right" where the original says "left"
    flip_t = make(world, weights={"trace": 1.0}, hflip_prob=1.0, scale_jitter=None)
    plain_t = make(world, weights={"trace": 1.0}, hflip_prob=0.0, scale_jitter=None)
    swapped = 0
    for i in range(len(plain_t.train_set)):
        ta = flip_t.tokenizer.decode(flip_t.train_set[i].rows[0].labels)
        tb = plain_t.tokenizer.decode(plain_t.train_set[i].rows[0].labels)
        assert ta.replace("left", "@").replace("right", "left").replace("@", "right") == tb
        swapped += ("left" in tb) or ("right" in tb)
    assert swapped > 0


def test_bad_sources_are_reported(world) -> None:
    with pytest.raises(ValueError, match="SourceConfig.task"):
        SourceConfig(task="segmentation", ann="x", images="y")
    with pytest.raises(ValueError, match="at least one source"):
        PixelDataModule(train=[])
