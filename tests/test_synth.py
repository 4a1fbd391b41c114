"""Tests of the shapes-world generator against DESIGN.md section 4.

The written files are read back with plain ``json`` and PIL (not with the generator's
internals), and every rule is re-derived here from the design text, so a test failure
means the files disagree with the design, not merely with the implementation.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelkit.data import catalog, synth

SPLITS = ("train", "val")
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZE_FRACTIONS = {"small": (0.16, 0.24), "large": (0.32, 0.44)}

# (image_size, max_objects, num_images): the default world and a crowded, larger one.
WORLDS = [(64, 3, 40), (96, 6, 30)]


def _write_world(root: Path, image_size: int, max_objects: int, num_images: int, seed: int = 0):
    synth.synthesize(
        root,
        num_images=num_images,
        image_size=image_size,
        seed=seed,
        max_objects=max_objects,
        val_fraction=0.25,
        progress=False,
    )
    return root


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"S{w[0]}-max{w[1]}")
def world(request, tmp_path_factory) -> dict:
    """A written world plus everything read back from its files."""
    image_size, max_objects, num_images = request.param
    root = _write_world(tmp_path_factory.mktemp("world"), image_size, max_objects, num_images)
    data: dict = {"root": root, "S": image_size, "max_objects": max_objects, "N": num_images}
    for split in SPLITS:
        layout = catalog.get(f"shapes/{split}")  # the file names are the catalog's

        def read(task: str, layout=layout) -> dict:
            return json.loads(layout.annotation(task, root).read_text())

        data[split] = {
            "ln": [json.loads(line) for line in
                   layout.annotation("trace", root).read_text().splitlines()],
            "captions": read("caption"),
            "instances": read("detection"),
            "refcoco": read("refer"),
            "vg": read("densecap"),
        }
    return data


# ---- the design's rules, re-derived independently -------------------------------------


def location_phrase(bbox: list[float], S: int) -> str:
    cx, cy = bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2
    h = "left" if cx < S / 3 else "right" if cx > 2 * S / 3 else None
    v = "top" if cy < S / 3 else "bottom" if cy > 2 * S / 3 else None
    if h and v:
        return f"in the {v} {h}"
    if h:
        return f"on the {h}"
    if v:
        return f"at the {v}"
    return "in the center"


def objects_by_image(split_data: dict, S: int) -> dict[int, list[dict]]:
    """Objects of each image from the instances file, with shape and location added."""
    cats = {c["id"]: c["name"] for c in split_data["instances"]["categories"]}
    out: dict[int, list[dict]] = {im["id"]: [] for im in split_data["instances"]["images"]}
    for a in split_data["instances"]["annotations"]:
        obj = dict(a, shape=cats[a["category_id"]], location=location_phrase(a["bbox"], S))
        out[a["image_id"]].append(obj)
    return out


def left_to_right(objs: list[dict]) -> list[dict]:
    return sorted(
        objs, key=lambda o: (o["bbox"][0] + o["bbox"][2] / 2, o["bbox"][1] + o["bbox"][3] / 2)
    )


def parse_expression(expr: str) -> dict[str, str]:
    """Attribute values named by an expression of one of the six templates."""
    words = expr.split()
    assert words[0] == "the", expr
    words = words[1:]
    attrs: dict[str, str] = {}
    if words and words[0] in SIZE_FRACTIONS:
        attrs["size"] = words.pop(0)
    if words and words[0] in PALETTE:
        attrs["colour"] = words.pop(0)
    assert words, expr
    noun = words.pop(0)
    if noun != "object":
        assert noun in SHAPES, expr
        attrs["shape"] = noun
    else:
        assert set(attrs) == {"colour"} and not words, expr
    if words:
        attrs["location"] = " ".join(words)
    allowed = [
        {"shape"},
        {"colour"},
        {"colour", "shape"},
        {"size", "shape"},
        {"size", "colour", "shape"},
        {"colour", "shape", "location"},
    ]
    assert set(attrs) in allowed, expr
    return attrs


TEMPLATE_KEYS = [
    ("shape",),
    ("colour",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
    ("colour", "shape", "location"),
]


def first_unique_template(obj: dict, objs: list[dict]) -> tuple[str, ...] | None:
    for keys in TEMPLATE_KEYS:
        if sum(all(o[k] == obj[k] for k in keys) for o in objs) == 1:
            return keys
    return None


# ---- tests ------------------------------------------------------------------------------


def test_files_and_image_ids_agree(world):
    root, S, N = world["root"], world["S"], world["N"]
    all_ids: list[int] = []
    for split in SPLITS:
        d = world[split]
        ids = [im["id"] for im in d["instances"]["images"]]
        assert len(ids) == len(set(ids)) > 0
        assert ids == [im["id"] for im in d["captions"]["images"]]
        assert ids == [im["id"] for im in d["vg"]["images"]]
        assert [str(i) for i in ids] == [r["image_id"] for r in d["ln"]]
        assert sorted(a["image_id"] for a in d["captions"]["annotations"]) == sorted(ids)
        assert {a["image_id"] for a in d["instances"]["annotations"]} == set(ids)
        assert {a["image_id"] for a in d["vg"]["annotations"]} == set(ids)
        assert {im["original_id"] for im in d["refcoco"]["images"]} <= set(ids)
        layout = catalog.get(f"shapes/{split}")
        for im in d["instances"]["images"]:
            assert im["file_name"] == layout.image_path(im["id"], root).name
            assert (im["width"], im["height"]) == (S, S)
            with Image.open(layout.image_dir(root) / im["file_name"]) as pil:
                assert pil.mode == "RGB" and pil.size == (S, S)
        for r in d["ln"]:
            assert r["dataset_id"] == f"shapes_world_{split}"
            assert isinstance(r["annotator_id"], int) and isinstance(r["voice_recording"], str)
        assert {c["name"] for c in d["instances"]["categories"]} == set(SHAPES)
        assert all(c["supercategory"] == "shape" for c in d["instances"]["categories"])
        all_ids += ids
    assert sorted(all_ids) == list(range(1, N + 1))
    assert len(world["val"]["ln"]) == round(N * 0.25)


def test_boxes_sizes_layout(world):
    S, max_objects = world["S"], world["max_objects"]
    counts = []
    for split in SPLITS:
        for image_id, objs in objects_by_image(world[split], S).items():
            counts.append(len(objs))
            assert 1 <= len(objs) <= max_objects
            triples = [(o["size"], o["colour"], o["shape"]) for o in objs]
            assert len(set(triples)) == len(triples), image_id
            for o in objs:
                x, y, w, h = o["bbox"]
                assert x >= 0 and y >= 0 and x + w <= S and y + h <= S
                lo, hi = (f * S for f in SIZE_FRACTIONS[o["size"]])
                if o["shape"] == "square":
                    assert w == h and lo <= w <= hi, o
                else:  # circle / triangle: tight box within 2 px of the square's side
                    assert lo - 2 <= w <= hi and lo - 2 <= h <= hi and abs(w - h) <= 2, o
                assert 0 < o["area"] <= w * h and o["iscrowd"] == 0
                poly = o["segmentation"][0]
                assert len(poly) >= 6 and len(poly) % 2 == 0
            for i, a in enumerate(objs):
                for b in objs[i + 1 :]:
                    ax, ay, aw, ah = a["bbox"]
                    bx, by, bw, bh = b["bbox"]
                    apart = ax + aw < bx or bx + bw < ax or ay + ah < by or by + bh < ay
                    assert apart, (image_id, a["bbox"], b["bbox"])
    assert max(counts) > 1  # the count varies


def test_pixels_colours_and_background(world):
    S, root = world["S"], world["root"]
    for split in SPLITS:
        for image_id, objs in objects_by_image(world[split], S).items():
            with Image.open(catalog.get(f"shapes/{split}").image_path(image_id, root)) as pil:
                pixels = np.asarray(pil.convert("RGB")).astype(int)
            covered = np.zeros((S, S), bool)
            for o in objs:
                x, y, w, h = o["bbox"]
                covered[y : y + h, x : x + w] = True
                cx = x + w // 2
                cy = y + (2 * h) // 3 if o["shape"] == "triangle" else y + h // 2
                rgb = pixels[cy, cx]
                assert np.abs(rgb - PALETTE[o["colour"]]).max() <= 15, (image_id, o, rgb)
                # The tight box is tight: every border row / column has an object pixel.
                patch = pixels[y : y + h, x : x + w]
                is_obj = np.abs(patch - rgb).max(axis=2) <= 30
                assert is_obj[0].any() and is_obj[-1].any()
                assert is_obj[:, 0].any() and is_obj[:, -1].any()
            background = pixels[~covered]
            assert (background[:, 0] == background[:, 1]).all()  # grey
            assert (background[:, 1] == background[:, 2]).all()
            mean = background[:, 0].mean()
            assert 90 - 5 <= mean <= 160 + 5
            assert 3 < background[:, 0].std() < 10  # sigma 6 noise


def test_referring_expressions(world):
    S = world["S"]
    for split in SPLITS:
        d = world[split]
        objects = objects_by_image(d, S)
        ref_images = {im["id"]: im for im in d["refcoco"]["images"]}
        assert len(ref_images) == len(d["refcoco"]["images"]) == len(d["refcoco"]["annotations"])
        inst_by_id = {a["id"]: a for a in d["instances"]["annotations"]}
        referred: set[int] = set()
        for ann in d["refcoco"]["annotations"]:
            im = ref_images[ann["image_id"]]
            assert (
                im["dataset_name"] == "shapes"
                and im["file_name"] == catalog.get(f"shapes/{split}").image_path(
                    im["original_id"], world["root"]).name
            )
            assert (im["width"], im["height"]) == (S, S)
            objs = objects[im["original_id"]]
            attrs = parse_expression(im["caption"])
            matches = [o for o in objs if all(o[k] == v for k, v in attrs.items())]
            assert len(matches) == 1, (im["caption"], objs)
            target = matches[0]
            assert ann["bbox"] == target["bbox"] and ann["category_id"] == target["category_id"]
            assert ann["original_id"] == target["id"] and inst_by_id[target["id"]] is not None
            assert ann["iscrowd"] == 0 and ann["area"] == target["area"]
            # The template used is the first one that singles the object out.
            assert tuple(sorted(attrs)) == tuple(sorted(first_unique_template(target, objs)))
            ((s, e),) = ann["tokens_positive"]
            assert im["caption"][s:e] in (*SHAPES, "object")
            referred.add(target["id"])
        for objs in objects.values():
            for o in objs:
                assert (o["id"] in referred) == (first_unique_template(o, objs) is not None)


def test_region_phrases_and_captions(world):
    S = world["S"]
    for split in SPLITS:
        d = world[split]
        objects = objects_by_image(d, S)
        inst = {a["id"]: a for a in d["instances"]["annotations"]}
        assert len(d["vg"]["annotations"]) == len(inst)
        assert d["vg"]["categories"] == [{"id": 1, "name": "object"}]
        for region in d["vg"]["annotations"]:
            o = next(o for o in objects[region["image_id"]] if o["bbox"] == region["bbox"])
            assert region["caption"] == f"a {o['size']} {o['colour']} {o['shape']}"
            assert region["category_id"] == 1 and region["iscrowd"] == 0
            assert region["id"] == o["id"] == inst[region["id"]]["id"]
        for cap in d["captions"]["annotations"]:
            objs = left_to_right(objects[cap["image_id"]])
            parts = [
                f"a {'small ' if o['size'] == 'small' else ''}{o['colour']} {o['shape']}"
                for o in objs
            ]
            assert cap["caption"] == " and ".join(parts)


def test_narratives_text_timing_and_trace(world):
    S = world["S"]
    vocab = set(synth.shapes_vocabulary())
    for split in SPLITS:
        d = world[split]
        objects = objects_by_image(d, S)
        for r in d["ln"]:
            objs = left_to_right(objects[int(r["image_id"])])
            items = [f"a {o['size']} {o['colour']} {o['shape']} {o['location']}" for o in objs]
            body = items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]
            assert r["caption"] == f"in this image there is {body} ."
            assert set(r["caption"].split()) <= vocab

            timed = r["timed_caption"]
            assert " ".join(u["utterance"] for u in timed) == r["caption"]
            assert all(" " not in u["utterance"] for u in timed)
            for prev, cur in itertools.pairwise(timed):
                assert cur["start_time"] == pytest.approx(prev["end_time"])
            for u in timed:
                assert 0.3 - 1e-9 <= u["end_time"] - u["start_time"] <= 0.5 + 1e-9

            assert 1 <= len(r["traces"]) <= 3 and all(len(seg) >= 2 for seg in r["traces"])
            points = [p for seg in r["traces"] for p in seg]
            ts = np.array([p["t"] for p in points])
            assert (np.diff(ts) > 0).all()
            assert np.median(np.diff(ts)) == pytest.approx(0.05, abs=0.011)  # ~20 Hz
            assert ts[0] <= timed[0]["start_time"] and ts[-1] >= timed[-1]["end_time"] - 1e-9
            xs = np.array([p["x"] for p in points]) * S
            ys = np.array([p["y"] for p in points]) * S
            assert (xs >= 0).all() and (xs <= S).all() and (ys >= 0).all() and (ys <= S).all()

            # Each object's words, "a" through its location phrase, are its item's words.
            word_index = 5  # after "in this image there is"
            for k, o in enumerate(objs):
                n_words = len(items[k].split())
                spoken = [u["utterance"] for u in timed[word_index : word_index + n_words]]
                assert spoken == items[k].split()
                start = timed[word_index]["start_time"]
                end = timed[word_index + n_words - 1]["end_time"]
                sel = (ts >= start - 1e-9) & (ts <= end + 1e-9)
                assert sel.sum() >= 6  # >= 0.3 s per word x 6+ words at 20 Hz
                x, y, w, h = o["bbox"]
                assert ((xs[sel] >= x) & (xs[sel] <= x + w)).all(), (r["image_id"], k)
                assert ((ys[sel] >= y) & (ys[sel] <= y + h)).all(), (r["image_id"], k)
                # Samples sit exactly at both ends of the window, so an interpolated
                # trace stays inside too.
                assert np.isclose(ts, start).any() and np.isclose(ts, end).any()
                word_index += n_words + 1  # the item plus its "," / "and" / "."


def test_vocabulary_covers_all_texts(world):
    vocab = set(synth.shapes_vocabulary())
    assert len(vocab) == len(synth.shapes_vocabulary())
    for split in SPLITS:
        d = world[split]
        texts = [a["caption"] for a in d["captions"]["annotations"]]
        texts += [im["caption"] for im in d["refcoco"]["images"]]
        texts += [a["caption"] for a in d["vg"]["annotations"]]
        for t in texts:
            assert set(t.split()) <= vocab, t


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic(tmp_path):
    a = _digest(_write_world(tmp_path / "a", 64, 3, 12, seed=3))
    b = _digest(_write_world(tmp_path / "b", 64, 3, 12, seed=3))
    c = _digest(_write_world(tmp_path / "c", 64, 3, 12, seed=4))
    assert a == b
    assert len(a) == 12 + 10  # images + 5 annotation files x 2 splits
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith((".png", ".jsonl")))


def test_scene_is_independent_of_world_size(tmp_path):
    """Scene i depends only on (seed, i): a bigger world starts with the same images."""
    small = _digest(_write_world(tmp_path / "s", 64, 3, 4, seed=1))
    big = _digest(_write_world(tmp_path / "b", 64, 3, 8, seed=1))
    train = catalog.get("shapes/train")
    for image_id in (1, 2):
        name = str(train.image_path(image_id, "/").relative_to("/"))
        assert small[name] == big[name]


def test_render_single_scene():
    objs = [
        synth.ShapeObject("square", "red", "small", (2, 3, 14, 15), (220, 40, 40)),
        synth.ShapeObject("circle", "blue", "large", (20, 20, 44, 44), (40, 80, 220)),
        synth.ShapeObject("triangle", "green", "large", (40, 2, 62, 24), (40, 170, 60)),
    ]
    image = synth.render_image(objs, 64, grey=120.0, rng=np.random.default_rng(0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    for o in objs:
        mask = (image == np.array(o.rgb, np.uint8)).all(axis=2)
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == o.gt_box
        assert mask.sum() == o.area
    assert objs[0].gt_box == (2, 3, 14, 15) and objs[1].gt_box == (20, 20, 44, 44)
    x0, y0, x1, y1 = objs[2].gt_box
    assert (x0, x1, y1) == (40, 62, 24) and y0 in (2, 3)  # apex row may be empty
    assert synth.location_phrase(objs[0].gt_box, 64) == "in the top left"
    assert synth.location_phrase(objs[1].gt_box, 64) == "in the center"
    assert synth.location_phrase(objs[2].gt_box, 64) == "in the top right"
    assert synth.referring_expressions(objs, 64) == ["the square", "the circle", "the triangle"]
    assert synth.caption_text(objs) == "a small red square and a blue circle and a green triangle"


def test_sample_scene_respects_limits():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = synth.sample_scene(rng, image_size=64, max_objects=6)
        assert 1 <= len(scene.objects) <= 6
    with pytest.raises(ValueError, match="max_objects"):
        synth.sample_scene(rng, image_size=64, max_objects=7)
    with pytest.raises(ValueError, match="image_size"):
        synth.synthesize("unused", num_images=1, image_size=8, progress=False)


def test_cli_glue(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(
        ["--out", str(tmp_path / "w"), "--num-images", "5", "--seed", "2", "--no-progress"]
    )
    assert (args.image_size, args.max_objects, args.val_fraction) == (64, 3, 0.2)
    assert synth.run(args) == 0
    out = capsys.readouterr().out
    assert "train: 4 images" in out and "val: 1 images" in out
    assert catalog.get("shapes/val").annotation("refer", tmp_path / "w").is_file()
    assert f"wrote {catalog.get('shapes/train').annotation('trace', tmp_path / 'w')}" in out
    assert len(list((tmp_path / "w" / "images").rglob("*.png"))) == 5
