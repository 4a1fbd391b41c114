"""Readers of the real annotation formats (pixelkit.data.formats), on the real fixtures
in ../shared/fixtures/real and on files written here in the same structures."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pixelkit.data.formats import (
    FORMATS,
    BombImageError,
    DataFormatError,
    DuplicateIdError,
    MissingImageError,
    TruncatedImageError,
    UnsafePickleError,
    ZeroAreaBoxError,
    decode_image,
    detect_and_load,
    detect_format,
    load_plain_pickle,
    read_any,
    read_coco_captions,
    read_coco_instances,
    read_grit,
    read_localized_narratives,
    read_mdetr_refcoco,
    read_refer_pickle,
    read_vg_regions,
    to_loca_caption,
)

REAL = Path(__file__).parents[1].parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="module")
def real() -> Path:
    # Fail loudly (never skip): these fixtures are what proves the readers match the
    # real formats.
    assert REAL.is_dir(), f"real-data fixtures missing: {REAL} (CI puts ../shared beside the repo)"
    return REAL


def make_image(path: Path, size: tuple[int, int]) -> Path:
    """A small image file of the given (width, height); JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 120, 120)).save(path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- COCO instances


def test_coco_instances_real_fixture(real: Path) -> None:
    path = real / "coco_instances_val2017_slice.json"
    assert detect_format(path) == "coco_instances"
    samples, report = read_coco_instances(path, images_dir="/coco/val2017")
    assert [s.image_id for s in samples] == [255917, 139]
    assert all(s.task == "detection" for s in samples)
    # 37 annotations, one of them crowd (id 900300255917): left out and counted, not an error.
    assert report.records == 36 and report.skipped == 0 and report.errors == []
    assert report.counts == {"crowd_boxes": 1}
    first = samples[0]
    assert first.image_size == (640, 427)
    assert first.image_path == str(Path("/coco/val2017") / "000000255917.jpg")
    assert len(first.boxes) == 16 and len(first.box_texts) == 16
    assert 900300255917 not in first.extra["ann_ids"]
    # annotation 403418: bbox [222.62, 217.82, 19.19, 21.11] (xywh) -> xyxy pixels
    i = first.extra["ann_ids"].index(403418)
    np.testing.assert_allclose(first.boxes[i], [222.62, 217.82, 241.81, 238.93], atol=1e-3)
    assert first.box_texts[i] == "traffic light"
    assert first.extra["category_ids"][i] == 10
    assert samples[1].image_size == (640, 426) and len(samples[1].boxes) == 20


def test_coco_instances_check_images(real: Path, tmp_path: Path) -> None:
    path = real / "coco_instances_val2017_slice.json"
    make_image(tmp_path / "000000255917.jpg", (640, 427))
    make_image(tmp_path / "000000000139.jpg", (640, 426))
    samples, report = read_coco_instances(path, tmp_path, check_images=True)
    assert len(samples) == 2 and report.skipped == 0

    # A wrong size and a missing image are named by file.
    make_image(tmp_path / "000000255917.jpg", (427, 640))
    with pytest.raises(MissingImageError, match=r"000000255917\.jpg is 427x640.*640x427"):
        read_coco_instances(path, tmp_path, check_images=True)
    (tmp_path / "000000000139.jpg").unlink()
    samples, report = read_coco_instances(path, tmp_path, strict=False, check_images=True)
    assert samples == []
    # Each image is skipped with all its annotations (17 + 20, crowd included).
    assert report.skipped == 17 + 20
    assert report.counts["missing_images"] == report.skipped
    assert any("000000000139.jpg not found" in e for e in report.errors)


def _instances(boxes: list[list[float]], size: tuple[int, int] = (100, 80)) -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": size[0], "height": size[1]}],
        "annotations": [
            {"id": 10 + i, "image_id": 1, "category_id": 1, "bbox": b, "iscrowd": 0, "area": 1.0}
            for i, b in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "circle", "supercategory": "shape"}],
    }


def test_boxes_clipped_and_counted(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "instances_x.json",
        _instances([[-5, 10, 20, 20], [90, 70, 30, 30], [10, 10, 5, 5]]),
    )
    samples, report = read_coco_instances(path)
    assert report.counts["clipped_boxes"] == 2 and report.skipped == 0
    np.testing.assert_allclose(
        samples[0].boxes, [[0, 10, 15, 30], [90, 70, 100, 80], [10, 10, 15, 15]]
    )


@pytest.mark.parametrize(
    ("box", "words"),
    [([10, 10, 0, 5], "zero area"), ([10, 10, 5, -1], "zero area"), ([150, 10, 5, 5], "outside")],
)
def test_zero_area_box_rejected(tmp_path: Path, box: list[float], words: str) -> None:
    path = write_json(tmp_path / "instances_x.json", _instances([[1, 1, 5, 5], box]))
    with pytest.raises(ZeroAreaBoxError, match=words) as err:
        read_coco_instances(path)
    assert "instances_x.json#annotations[1]" in str(err.value) and "'bbox'" in str(err.value)
    samples, report = read_coco_instances(path, strict=False)
    assert len(samples[0].boxes) == 1 and report.records == 1 and report.skipped == 1
    assert report.counts["zero_area_boxes"] == 1 and "clipped_boxes" not in report.counts
    assert words in report.errors[0]


def test_instances_bad_fields(tmp_path: Path) -> None:
    data = _instances([[1, 1, 5, 5], [1, 1, 5, 5], [1, 1, 5, 5]])
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["bbox"] = [1, 2, "3", 4]
    data["annotations"][2]["image_id"] = 7
    path = write_json(tmp_path / "instances_bad.json", data)
    with pytest.raises(DataFormatError, match=r"instances_bad\.json#annotations\[\d\]: field"):
        read_coco_instances(path)
    samples, report = read_coco_instances(path, strict=False)
    assert report.skipped == 3 and report.counts["malformed_records"] == 3
    errors = "\n".join(report.errors)
    assert "instances_bad.json#annotations[0]: field 'category_id' is 99" in errors
    assert "instances_bad.json#annotations[1]: field 'bbox[2]' must be a number" in errors
    assert "instances_bad.json#annotations[2]: field 'image_id' is 7" in errors
    assert len(samples) == 1 and len(samples[0].boxes) == 0
    assert report.counts["images_without_boxes"] == 1


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "captions_broken.json"
    path.write_text('{"images": [],\n "annotations": [,]}\n')
    with pytest.raises(DataFormatError, match=r"captions_broken\.json:2: not valid JSON"):
        read_coco_captions(path)
    with pytest.raises(DataFormatError, match="cannot detect"):
        detect_format(path)


# --------------------------------------------------------------------------- COCO captions


def test_coco_captions(tmp_path: Path) -> None:
    data = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [],
        "images": [
            {
                "license": 6,
                "file_name": "000000255917.jpg",
                "height": 427,
                "width": 640,
                "id": 255917,
            },
            {"license": 2, "file_name": "000000000139.jpg", "height": 426, "width": 640, "id": 139},
            {"license": 2, "file_name": "000000000632.jpg", "height": 483, "width": 640, "id": 632},
        ],
        "annotations": [
            {
                "image_id": 139,
                "id": 1,
                "caption": "A room with chairs, a table, and a woman in it.\n",
            },
            {"image_id": 255917, "id": 2, "caption": "A street with cars and a traffic light."},
            {"image_id": 139, "id": 3, "caption": "A living room with a television."},
            {"image_id": 139, "id": 4},
        ],
    }
    path = write_json(tmp_path / "captions_val2017.json", data)
    assert detect_format(path) == "coco_captions"
    with pytest.raises(
        DataFormatError,
        match=r"captions_val2017\.json#annotations\[3\]: field 'caption' is missing",
    ):
        read_coco_captions(path)
    samples, report = read_coco_captions(path, tmp_path, strict=False)
    assert report.records == 3 and report.skipped == 1
    assert report.counts == {"malformed_records": 1, "images_without_annotations": 1}
    assert [s.task for s in samples] == ["caption"] * 3
    by_id = {s.ann_id: s for s in samples}
    assert by_id[1].text == "A room with chairs, a table, and a woman in it."
    assert by_id[1].image_size == (640, 426) and by_id[1].image_id == 139
    assert by_id[1].image_path == str(tmp_path / "000000000139.jpg")
    assert len(by_id[2].boxes) == 0 and by_id[2].source.endswith("#annotations[1]")
    # Detect once, parse once: read_any takes the parsed JSON back.
    fmt, parsed = detect_and_load(path)
    again, _ = read_any(path, tmp_path, strict=False, format=fmt, data=parsed)
    assert [s.text for s in again] == [s.text for s in samples]


# --------------------------------------------------------------------------- MDETR RefCOCO


def _mdetr_file(tmp_path: Path) -> Path:
    """A finetune_refcoco_val.json in MDETR's structure.

    Keys as written by MDETR's scripts/fine-tuning/refexp_coco_format.py.
    """
    images, anns = [], []
    sentences = ["the lady with the blue shirt", "lady with back to us", "blue shirt"]
    for k, sent in enumerate(sentences):
        images.append(
            {
                "file_name": "COCO_train2014_000000581857.jpg",
                "height": 480,
                "width": 640,
                "id": 100 + k,
                "original_id": 581857,
                "caption": sent,
                "dataset_name": "refcoco",
                "tokens_negative": [],
            }
        )
        anns.append(
            {
                "area": 5000.0,
                "iscrowd": 0,
                "image_id": 100 + k,
                "category_id": 1,
                "id": 200 + k,
                "bbox": [103.93, 299.99, 134.22, 177.42],
                "original_id": 1719310,
                "tokens_positive": [[4, 8]],
            }
        )
    data = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
    }
    return write_json(tmp_path / "finetune_refcoco_val.json", data)


def test_mdetr_refcoco(tmp_path: Path) -> None:
    path = _mdetr_file(tmp_path)
    assert detect_format(path) == "mdetr_refcoco"
    samples, report = read_mdetr_refcoco(path, tmp_path / "train2014")
    assert report.records == 3 and report.skipped == 0
    s = samples[0]
    assert s.task == "refer" and s.text == "the lady with the blue shirt"
    assert s.image_id == 581857 and s.ann_id == 1719310  # COCO ids, for joining predictions
    assert s.image_size == (640, 480)
    assert s.image_path == str(tmp_path / "train2014" / "COCO_train2014_000000581857.jpg")
    np.testing.assert_allclose(s.boxes, [[103.93, 299.99, 238.15, 477.41]], atol=1e-3)
    assert s.extra["entry_id"] == 100 and s.extra["tokens_positive"] == [[4, 8]]
    assert s.extra["dataset_name"] == "refcoco"


def test_mdetr_entry_needs_exactly_one_box(tmp_path: Path) -> None:
    path = _mdetr_file(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][1]["image_id"] = 100  # entry 100 gets two boxes, entry 101 none
    write_json(path, data)
    with pytest.raises(DataFormatError, match=r"#images\[0\].*has 2 annotations"):
        read_mdetr_refcoco(path)
    samples, report = read_mdetr_refcoco(path, strict=False)
    assert len(samples) == 1 and report.skipped == 2


# --------------------------------------------------------------------------- refer toolkit


def _refer_fixture(real: Path) -> dict[str, Any]:
    return json.loads((real / "refer_sample.json").read_text())


def _joining_instances(fixture: dict[str, Any]) -> dict[str, Any]:
    """The fixture's image and annotation, re-labelled so that the fixture's ref joins."""
    ref = fixture["refs"][0]
    inst = copy.deepcopy(fixture["instances"])
    inst["images"][0].update(id=ref["image_id"], file_name="COCO_train2014_000000581857.jpg")
    inst["annotations"][0].update(id=ref["ann_id"], image_id=ref["image_id"])
    return inst


def test_refer_pickle_round_trip(real: Path, tmp_path: Path) -> None:
    fixture = _refer_fixture(real)
    folder = tmp_path / "refcoco"
    folder.mkdir()
    refs_path = folder / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    write_json(folder / "instances.json", _joining_instances(fixture))
    assert load_plain_pickle(refs_path) == fixture["refs"]
    assert detect_format(refs_path) == "refer_pickle"

    samples, report = read_refer_pickle(refs_path, images_dir=tmp_path / "train2014")
    assert report.records == 1 and report.counts["sentences"] == 3
    assert [s.text for s in samples] == [
        "the lady with the blue shirt",
        "lady with back to us",
        "blue shirt",
    ]
    s = samples[0]
    assert s.task == "refer" and s.image_id == 581857 and s.ann_id == 1719310
    assert s.image_size == (640, 424)
    assert s.image_path == str(tmp_path / "train2014" / "COCO_train2014_000000581857.jpg")
    # The annotation's bbox [263.87, 216.88, 21.13, 15.17] (xywh) as xyxy pixels.
    np.testing.assert_allclose(s.boxes, [[263.87, 216.88, 285.0, 232.05]], atol=1e-3)
    assert s.extra["ref_id"] == 0 and s.extra["split"] == "train"
    assert s.extra["raw"] == "THE LADY WITH THE BLUE SHIRT" and s.extra["sent_id"] == 0

    samples, report = read_refer_pickle(refs_path, split="val")
    assert samples == [] and report.counts["other_split_refs"] == 1
    samples, _ = read_any(refs_path, split=["train", "val"])
    assert len(samples) == 3


def test_refer_pickle_not_joining(real: Path, tmp_path: Path) -> None:
    # The fixture's ref (ann_id 1719310) and its instances excerpt (ann 3007) do not join.
    fixture = _refer_fixture(real)
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    inst_path = write_json(tmp_path / "coco_instances.json", fixture["instances"])
    with pytest.raises(DataFormatError, match=r"ref_id 0: field 'ann_id' is 1719310"):
        read_refer_pickle(refs_path, instances_path=inst_path)
    samples, report = read_refer_pickle(refs_path, instances_path=inst_path, strict=False)
    assert samples == [] and report.skipped == 1
    assert report.counts["skipped_sentences"] == 3
    assert "1719310" in report.errors[0]
    # Without instances.json beside the pickle (and no instances_path) the error says so.
    with pytest.raises(DataFormatError, match="instances.json does not exist"):
        read_refer_pickle(refs_path)


def test_python2_pickle_strings_decode_as_utf8(tmp_path: Path) -> None:
    # The refer toolkit's pickles were written by Python 2: its ``str`` is a byte string
    # (opcode SHORT_BINSTRING ``U``) holding UTF-8.
    # Hand-written here: [{"sent": "café", "ann_id": 1719054}].
    path = tmp_path / "refs(unc).p"
    path.write_bytes(
        b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x05caf\xc3\xa9q\x03U\x06ann_idq\x04J\x0e;\x1a\x00ua."
    )
    assert load_plain_pickle(path) == [{"sent": "café", "ann_id": 1719054}]


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {_Evil.marker}",))

    marker = ""


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": _Evil()}], protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        read_refer_pickle(path)
    message = str(err.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # e.g. "posix.system"
    assert not marker.exists()
    # Any class at all is refused, not only known-dangerous ones.
    path.write_bytes(pickle.dumps(OrderedDict(a=1), protocol=4))
    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict"):
        load_plain_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataFormatError, match="not a readable pickle"):
        load_plain_pickle(path)


# --------------------------------------------------------------------------- Visual Genome


def test_vg_regions_real_fixture(real: Path, tmp_path: Path) -> None:
    path = real / "vg_region_descriptions_sample.json"
    assert detect_format(path) == "vg_regions"
    make_image(tmp_path / "VG_100K" / "1.jpg", (800, 600))  # found in the release's sub-folder
    samples, report = read_vg_regions(path, tmp_path)
    assert report.records == 4 and report.skipped == 0 and report.counts == {}
    (s,) = samples
    assert s.task == "densecap" and s.image_id == 1 and s.image_size == (800, 600)
    assert s.image_path == str(tmp_path / "VG_100K" / "1.jpg")
    # x, y, width, height -> xyxy; the Note.md roidb boxes of image 1.
    np.testing.assert_allclose(
        s.boxes[:3], [[421, 57, 503, 196], [194, 372, 376, 481], [241, 491, 302, 521]]
    )
    assert s.box_texts[1] == "shade is along the street"  # trailing space stripped
    assert s.box_texts[3] == "bicycles are seen in the bckground"
    assert s.extra["ann_ids"] == [1382, 1383, 1384, 1936]

    regions = to_loca_caption(samples)
    assert [r.task for r in regions] == ["loca_caption"] * 4
    assert [r.ann_id for r in regions] == [1382, 1383, 1384, 1936]
    assert regions[0].text == "the clock is green in colour" and regions[0].boxes.shape == (1, 4)
    assert regions[0].source.endswith("#0.regions[0]")
    same, _ = read_vg_regions(path, tmp_path, task="loca_caption")
    assert [r.text for r in same] == [r.text for r in regions]


def test_vg_regions_sizes_and_missing_images(real: Path, tmp_path: Path) -> None:
    path = real / "vg_region_descriptions_sample.json"
    # A known size needs no image; a small one clips region 1384 (y 491 + 30 > 500).
    samples, report = read_vg_regions(path, image_sizes={1: (800, 500)})
    assert report.counts["clipped_boxes"] == 1
    np.testing.assert_allclose(samples[0].boxes[2], [241, 491, 302, 500])
    with pytest.raises(ValueError, match="images_dir"):
        read_vg_regions(path)
    with pytest.raises(MissingImageError, match=r"image_id 1 not found .*1\.jpg"):
        read_vg_regions(path, tmp_path)
    samples, report = read_vg_regions(path, tmp_path, strict=False)
    assert samples == [] and report.skipped == 4 and report.counts["missing_images"] == 4
    (tmp_path / "1.jpg").write_bytes(b"not an image")
    with pytest.raises(MissingImageError, match=r"1\.jpg cannot be read"):
        read_vg_regions(path, tmp_path)


def test_vg_bad_region(tmp_path: Path) -> None:
    data = [
        {
            "id": 7,
            "regions": [
                {
                    "region_id": 1,
                    "image_id": 7,
                    "phrase": "a cat",
                    "x": 1,
                    "y": 1,
                    "width": 5,
                    "height": 5,
                },
                {"region_id": 2, "image_id": 7, "phrase": "a dog", "x": 1, "y": 1, "width": 5},
                {
                    "region_id": 3,
                    "image_id": 7,
                    "phrase": "",
                    "x": 1,
                    "y": 1,
                    "width": 5,
                    "height": 5,
                },
            ],
        }
    ]
    path = write_json(tmp_path / "region_descriptions.json", data)
    with pytest.raises(DataFormatError, match=r"#0\.regions\[1\]: field 'height' is missing"):
        read_vg_regions(path, image_sizes={7: (50, 50)})
    samples, report = read_vg_regions(path, image_sizes={7: (50, 50)}, strict=False)
    assert report.records == 1 and report.skipped == 2
    assert "field 'phrase' is empty" in report.errors[1]


# --------------------------------------------------------------------------- GRiT


def test_grit_dense_captions(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 800, "height": 600}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [421, 57, 82, 139],
                "area": 11398,
                "caption": "the clock is green in colour",
                "category_id": 1,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "bbox": [194, 372, 182, 109],
                "area": 19838,
                "caption": "shade is along the street",
                "category_id": 1,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    path = write_json(tmp_path / "train.json", data)
    assert detect_format(path) == "grit"
    samples, report = read_grit(path, tmp_path)
    assert report.records == 2
    (s,) = samples
    assert s.task == "densecap" and s.box_texts == [
        "the clock is green in colour",
        "shade is along the street",
    ]
    np.testing.assert_allclose(s.boxes, [[421, 57, 503, 196], [194, 372, 376, 481]])
    regions, _ = read_any(path, tmp_path, task="loca_caption")
    assert [(r.task, r.ann_id, r.text) for r in regions] == [
        ("loca_caption", 1, "the clock is green in colour"),
        ("loca_caption", 2, "shade is along the street"),
    ]
    assert regions[1].source.endswith("train.json#annotations[1]")
    with pytest.raises(ValueError, match="not 'refer'"):
        read_any(path, task="refer")


# --------------------------------------------------------------------------- Localized Narratives


def test_ln_real_sample(real: Path, tmp_path: Path) -> None:
    path = real / "localized_narratives_sample.jsonl"
    assert detect_format(path) == "localized_narratives"
    make_image(tmp_path / "000000137576.jpg", (640, 480))  # COCO id -> 12-digit file name
    samples, report = read_localized_narratives(path, tmp_path)
    (s,) = samples
    assert s.task == "trace" and s.image_id == "137576" and s.image_size == (640, 480)
    assert s.image_path == str(tmp_path / "000000137576.jpg")
    assert s.text.startswith("In this image there are group of cows")
    assert s.utterances == ["In this"]
    # One trace point only: no trace target (as the official code), still a caption.
    assert s.utterance_boxes.shape == (1, 4) and np.isnan(s.utterance_boxes).all()
    assert np.isnan(s.utterance_points).all() and not s.has_trace
    assert report.counts == {"narratives_without_trace": 1} and report.records == 1
    assert s.extra["voice_recording"] == "coco_val/coco_val_137576_93.ogg"
    assert s.extra["annotator_id"] == 93 and s.source == f"{path}:1"


def test_ln_real_partial_records(real: Path, tmp_path: Path) -> None:
    path = real / "localized_narratives_partial_records.jsonl"
    make_image(tmp_path / "ADE_val_00000175.jpg", (683, 512))
    make_image(tmp_path / "000000381639.png", (640, 427))
    samples, report = read_localized_narratives(path, tmp_path)
    assert [s.image_id for s in samples] == ["ADE_val_00000175", "381639"]
    assert samples[1].image_path.endswith("000000381639.png")
    # ADE: one trace point; COCO 381639: no "traces" field at all (LN issue #10).
    assert report.counts == {"narratives_without_trace": 2} and report.skipped == 0
    assert samples[1].utterances[:3] == ["In the", "image", "we"]
    assert samples[1].utterance_boxes.shape == (8, 4)


def _ln_record(image_id: str = "42", **changes: Any) -> dict[str, Any]:
    record = {
        "dataset_id": "mscoco_val2017",
        "image_id": image_id,
        "annotator_id": 1,
        "caption": "a dog on the left",
        "timed_caption": [
            {"utterance": "a dog", "start_time": 0.0, "end_time": 1.0},
            {"utterance": "on the left", "start_time": 1.0, "end_time": 2.0},
        ],
        "traces": [
            [{"x": 0.1, "y": 0.2, "t": 0.0}, {"x": 0.3, "y": 0.4, "t": 1.0}],
            [{"x": -0.05, "y": 0.5, "t": 1.5}, {"x": 0.2, "y": 1.02, "t": 2.0}],
        ],
        "voice_recording": "coco_val/coco_val_42_1.ogg",
    }
    record.update(changes)
    return record


def test_ln_trace_in_pixels(tmp_path: Path) -> None:
    from pixelkit.data.alignment import utterance_location_arrays

    make_image(tmp_path / "000000000042.jpg", (200, 100))
    record = _ln_record()
    path = write_jsonl(tmp_path / "ln.jsonl", [record])
    (s,), report = read_localized_narratives(path, tmp_path)
    means, boxes = utterance_location_arrays(record)
    scale = np.array([200, 100, 200, 100])
    expected = np.clip(boxes * scale, 0, scale)
    np.testing.assert_allclose(s.utterance_boxes, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        s.utterance_points, np.clip(means * scale[:2], 0, scale[:2]), rtol=1e-5, atol=1e-4
    )
    assert s.has_trace
    # The second utterance's trace leaves the image (x < 0, y > 1): clipped and counted.
    assert report.counts == {"clipped_trace_boxes": 1}
    assert s.utterance_boxes[1, 0] == 0 and s.utterance_boxes[1, 3] == 100


def test_ln_image_pattern_and_sizes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ln.jsonl", [_ln_record()])
    make_image(tmp_path / "COCO_val2014_000000000042.jpg", (300, 300))
    (s,), _ = read_localized_narratives(path, tmp_path, image_pattern="COCO_val2014_{id:012d}.jpg")
    assert s.image_size == (300, 300)
    # Known sizes need no image file at all.
    (s,), _ = read_localized_narratives(path, image_sizes={"42": (10, 20)})
    assert s.image_size == (10, 20) and s.image_path == "42.jpg"
    with pytest.raises(ValueError, match="images_dir"):
        read_localized_narratives(path)


def test_ln_bad_lines(tmp_path: Path) -> None:
    make_image(tmp_path / "42.jpg", (64, 64))
    # Other annotators' narratives: a repeat of line 1's would be a duplicate first.
    bad_point = _ln_record(annotator_id=2)
    bad_point["traces"][0][1]["x"] = "0.3"
    bad_time = _ln_record(annotator_id=3)
    bad_time["timed_caption"][1]["start_time"] = None
    lines = [
        json.dumps(_ln_record()),
        json.dumps(_ln_record(caption=5)),
        '{"image_id": "42", "caption": "unterminated',
        "",
        json.dumps(bad_point),
        json.dumps({k: v for k, v in _ln_record().items() if k != "image_id"}),
        json.dumps(_ln_record(image_id="43")),
        json.dumps(bad_time),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_localized_narratives(path, tmp_path)
    assert f"{path}:2" in str(err.value) and "'caption'" in str(err.value)

    samples, report = read_localized_narratives(path, tmp_path, strict=False)
    assert len(samples) == 1 and report.records == 1 and report.skipped == 6
    assert report.counts["blank_lines"] == 1
    assert report.counts["malformed_records"] == 5 and report.counts["missing_images"] == 1
    e = report.errors
    assert f"{path}:2: field 'caption' must be a string" in e[0]
    assert f"{path}:3: line is not valid JSON" in e[1]
    assert f"{path}:5: field 'traces[0][1].x' must be a number" in e[2]
    assert f"{path}:6: field 'image_id' is missing" in e[3]
    assert f"{path}:7: image for image_id '43' not found" in e[4] and "43.jpg" in e[4]
    assert f"{path}:8: field 'timed_caption[1].start_time' must be a number" in e[5]


def test_ln_reversed_utterance_times_counted(tmp_path: Path) -> None:
    # The official builder accepts end_time < start_time (it averages); kept and counted.
    record = _ln_record()
    record["timed_caption"][1].update(start_time=2.0, end_time=1.5)
    path = write_jsonl(tmp_path / "ln.jsonl", [record])
    (s,), report = read_localized_narratives(path, image_sizes={"42": (100, 100)})
    assert report.counts["utterances_ending_before_start"] == 1 and s.has_trace


# --------------------------------------------------------------------------- detection + read_any


def test_detect_format_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope.json")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        detect_format(empty)
    other = write_json(tmp_path / "other.json", {"hello": 1})
    with pytest.raises(DataFormatError, match="cannot detect the format"):
        read_any(other)


def test_synth_world_reads_through_every_reader(tmp_path: Path) -> None:
    from pixelkit.data.synth import synthesize

    summary = synthesize(tmp_path, num_images=4, image_size=32, seed=3, progress=False)
    seen = set()
    for path in summary.files:
        split = "train" if path.stem.endswith("train") else "val"
        fmt = detect_format(path)
        seen.add(fmt)
        samples, report = read_any(path, tmp_path / "images" / split, check_images=True)
        assert report.skipped == 0 and report.errors == [], (path, report)
        assert samples, path
        for s in samples:
            assert s.image_size == (32, 32) and Path(s.image_path).is_file()
            if len(s.boxes):
                assert (s.boxes[:, 2:] > s.boxes[:, :2]).all() and (s.boxes >= 0).all()
                assert (s.boxes <= 32).all()
        if fmt == "localized_narratives":
            assert all(s.has_trace for s in samples)
    assert seen == {
        "localized_narratives",
        "coco_captions",
        "coco_instances",
        "mdetr_refcoco",
        "grit",
    }
    assert set(FORMATS) >= seen


# --------------------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(
    "size",
    [(100_000, 100_000), (10_000, 10_000)],
    ids=["over-twice-the-limit (PIL error)", "over-the-limit (PIL warning)"],
)
def test_decompression_bomb_header_is_a_record_error(
    tmp_path: Path, size: tuple[int, int], png_header: Callable[..., Path]
) -> None:
    # 10000 x 10000 is over Image.MAX_IMAGE_PIXELS (~89 M), where PIL only warns.
    png_header(tmp_path / "images" / "7.png", size)
    make_image(tmp_path / "images" / "8.png", (50, 50))
    region = {"region_id": 1, "phrase": "a cat", "x": 1, "y": 1, "width": 5, "height": 5}
    path = write_json(
        tmp_path / "region_descriptions.json",
        [{"id": 7, "regions": [region]}, {"id": 8, "regions": [{**region, "region_id": 2}]}],
    )
    images = tmp_path / "images"
    with pytest.raises(BombImageError) as err:
        read_vg_regions(path, images, image_pattern="{id}.png")
    message = str(err.value)
    assert message.startswith(f"{path}#0: image file {images / '7.png'}") and "bomb" in message
    samples, report = read_vg_regions(path, images, strict=False, image_pattern="{id}.png")
    assert [s.image_id for s in samples] == [8] and report.counts["bomb_images"] == 1

    # The same through COCO's check_images and Localized Narratives' size lookup.
    coco = _instances([[1, 1, 5, 5]], size=size)
    coco["images"][0]["file_name"] = "7.png"
    coco_path = write_json(tmp_path / "instances_bomb.json", coco)
    with pytest.raises(
        BombImageError, match=r"instances_bomb\.json#images\[0\]: image file .*7\.png"
    ):
        read_coco_instances(coco_path, images, check_images=True)
    ln_path = write_jsonl(tmp_path / "ln.jsonl", [_ln_record("7")])
    _, report = read_localized_narratives(ln_path, images, strict=False)
    assert report.counts == {"bomb_images": 1} and f"{ln_path}:1: image file" in report.errors[0]


HUGE = "9" * 400


@pytest.mark.parametrize(
    ("field", "place", "words"),
    [
        ("bbox[2]", lambda d: d["annotations"][0]["bbox"], "too large for a number"),
        ("width", lambda d: d["images"][0], "too large for a number"),
        ("id", lambda d: d["images"][0], "beyond 64 bits"),
        ("image_id", lambda d: d["annotations"][0], "beyond 64 bits"),
        ("category_id", lambda d: d["annotations"][0], "beyond 64 bits"),
    ],
)
def test_400_digit_numbers_in_coco(
    tmp_path: Path, field: str, place: Callable[[Any], Any], words: str
) -> None:
    data = _instances([[1, 1, 5, 5], [2, 2, 5, 5]])
    target = place(data)
    key = field.split("[")[0]
    if key == "bbox":
        target[2] = "HUGE"
    else:
        target[key] = "HUGE"
    path = tmp_path / "instances_huge.json"
    path.write_text(json.dumps(data).replace('"HUGE"', HUGE))
    with pytest.raises(
        DataFormatError,
        match=rf"instances_huge\.json#\w+\[0\]: field '{re.escape(field)}'.*{words}",
    ):
        read_coco_instances(path)
    _, report = read_coco_instances(path, strict=False)
    assert report.skipped >= 1 and words in report.errors[0]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r["traces"][0][1].update(t="HUGE"), "traces[0][1].t"),
        (lambda r: r["traces"][1][0].update(x="HUGE"), "traces[1][0].x"),
        (lambda r: r["timed_caption"][0].update(start_time="HUGE"), "timed_caption[0].start_time"),
    ],
)
def test_400_digit_numbers_in_ln(tmp_path: Path, edit: Callable[[Any], Any], field: str) -> None:
    record = _ln_record()
    edit(record)
    path = tmp_path / "ln.jsonl"
    path.write_text(
        json.dumps(_ln_record("1")) + "\n" + json.dumps(record).replace('"HUGE"', HUGE) + "\n"
    )
    sizes = {"1": (10, 10), "42": (10, 10)}
    with pytest.raises(
        DataFormatError, match=rf"ln\.jsonl:2: field '{re.escape(field)}' is too large"
    ):
        read_localized_narratives(path, image_sizes=sizes)
    samples, report = read_localized_narratives(path, image_sizes=sizes, strict=False)
    assert len(samples) == 1 and report.skipped == 1


def test_400_digit_numbers_in_vg_and_mdetr(tmp_path: Path) -> None:
    region = {"region_id": 1, "phrase": "a cat", "x": "HUGE", "y": 1, "width": 5, "height": 5}
    path = tmp_path / "region_descriptions.json"
    path.write_text(json.dumps([{"id": 7, "regions": [region]}]).replace('"HUGE"', HUGE))
    with pytest.raises(DataFormatError, match=r"#0\.regions\[0\]: field 'x' is too large"):
        read_vg_regions(path, image_sizes={7: (50, 50)})

    mdetr = _mdetr_file(tmp_path)
    mdetr.write_text(
        mdetr.read_text().replace('"original_id": 581857', f'"original_id": {HUGE}', 1)
    )
    with pytest.raises(
        DataFormatError, match=r"#images\[0\]: field 'original_id' is an integer id beyond 64 bits"
    ):
        read_mdetr_refcoco(mdetr)
    samples, report = read_mdetr_refcoco(mdetr, strict=False)
    assert len(samples) == 2 and report.skipped == 1


def test_400_digit_image_id_finds_no_file(tmp_path: Path) -> None:
    # A 400-digit id gives a 412-character file name: "not found", not an OSError
    # (the file name is too long for the file system).
    path = write_jsonl(tmp_path / "ln.jsonl", [_ln_record(HUGE)])
    with pytest.raises(MissingImageError, match=r"ln\.jsonl:1: image for image_id '9999"):
        read_localized_narratives(path, tmp_path)
    # A digit that int() refuses ("²") is just not a numeric id.
    path = write_jsonl(tmp_path / "ln.jsonl", [_ln_record("12\u00b2")])
    with pytest.raises(MissingImageError, match="not in image_sizes"):
        read_localized_narratives(path, image_sizes={})


DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_json_file(tmp_path: Path) -> None:
    path = tmp_path / "instances_deep.json"
    path.write_text('{"images": [], "annotations": ' + DEEP + "}")
    with pytest.raises(DataFormatError, match=r"instances_deep\.json: JSON nested too deeply"):
        read_coco_instances(path)
    with pytest.raises(DataFormatError, match=r"instances_deep\.json: JSON nested too deeply"):
        detect_format(path)
    # An integer of more digits than Python converts is the file's error too.
    path.write_text('{"images": [], "annotations": [' + "7" * 5000 + "]}")
    with pytest.raises(DataFormatError, match=r"instances_deep\.json: not readable JSON \(Exceeds"):
        read_any(path)


def test_deeply_nested_jsonl_line_is_that_lines_error(tmp_path: Path) -> None:
    path = tmp_path / "ln.jsonl"
    lines = [json.dumps(_ln_record()), DEEP, "[" + "7" * 5000 + "]", json.dumps(_ln_record("43"))]
    path.write_text("\n".join(lines) + "\n")
    sizes = {"42": (10, 10), "43": (10, 10)}
    assert detect_format(path) == "localized_narratives"
    with pytest.raises(DataFormatError, match=r"ln\.jsonl:2: JSON nested too deeply"):
        read_localized_narratives(path, image_sizes=sizes)
    samples, report = read_localized_narratives(path, image_sizes=sizes, strict=False)
    assert [s.image_id for s in samples] == ["42", "43"] and report.skipped == 2
    assert report.errors[0].startswith(f"{path}:2: JSON nested too deeply")
    assert report.errors[1].startswith(f"{path}:3: not readable JSON")
    # A line of JSON that is merely nested (not past the parser's limit) in a field: the
    # message stays short.
    path.write_text(json.dumps(_ln_record(caption=json.loads("[" * 500 + "]" * 500))) + "\n")
    with pytest.raises(
        DataFormatError, match=r"ln\.jsonl:1: field 'caption' must be a string, got \[\[\["
    ) as err:
        read_localized_narratives(path, image_sizes=sizes)
    assert len(str(err.value)) < 200


# --------------------------------------------------------------------------- duplicate ids


def test_duplicate_annotation_id_keeps_the_first(tmp_path: Path) -> None:
    data = _instances([[1, 1, 5, 5], [20, 20, 5, 5], [40, 40, 5, 5]])
    data["annotations"][2]["id"] = data["annotations"][0]["id"]  # id 10 twice
    path = write_json(tmp_path / "instances_dup.json", data)
    with pytest.raises(DuplicateIdError) as err:
        read_coco_instances(path)
    assert str(err.value) == (
        f"{path}#annotations[2]: field 'id': duplicate annotation id 10 "
        f"(first at {path}#annotations[0], which is kept)"
    )
    (s,), report = read_coco_instances(path, strict=False)
    assert s.extra["ann_ids"] == [10, 11] and report.records == 2 and report.skipped == 1
    np.testing.assert_allclose(s.boxes[0], [1, 1, 6, 6])
    assert report.counts == {"duplicate_annotation_ids": 1}


def test_duplicate_category_id_keeps_the_first_name(tmp_path: Path) -> None:
    data = _instances([[1, 1, 5, 5]])
    data["categories"].append({"id": 1, "name": "square"})
    path = write_json(tmp_path / "instances_dup.json", data)
    with pytest.raises(
        DataFormatError, match=r"#categories\[1\]: field 'id': duplicate category id 1"
    ):
        read_coco_instances(path)
    (s,), report = read_coco_instances(path, strict=False)
    assert s.box_texts == ["circle"] and report.counts == {"duplicate_category_ids": 1}


def test_duplicate_image_id_is_the_same_rule(tmp_path: Path) -> None:
    data = _instances([[1, 1, 5, 5]])
    data["images"].append({**data["images"][0], "file_name": "b.jpg"})
    path = write_json(tmp_path / "instances_dup.json", data)
    with pytest.raises(DuplicateIdError, match=r"#images\[1\]: field 'id': duplicate image id 1"):
        read_coco_instances(path)
    (s,), report = read_coco_instances(path, strict=False)
    assert s.image_path == "a.jpg" and report.counts == {"duplicate_image_ids": 1}


def test_records_repeated_in_a_file_are_read_once(real: Path, tmp_path: Path) -> None:
    # The same records twice in one file (e.g. a file concatenated with itself).
    ln = real / "localized_narratives_partial_records.jsonl"
    twice = tmp_path / "ln_twice.jsonl"
    twice.write_text(ln.read_text() * 2)
    sizes = {"ADE_val_00000175": (683, 512), "381639": (640, 427)}
    once, _ = read_localized_narratives(ln, image_sizes=sizes)
    with pytest.raises(DuplicateIdError, match=r"ln_twice\.jsonl:3: field 'dataset_id, image_id"):
        read_localized_narratives(twice, image_sizes=sizes)
    samples, report = read_localized_narratives(twice, image_sizes=sizes, strict=False)
    assert [s.source for s in samples] == [f"{twice}:1", f"{twice}:2"]
    assert [s.text for s in samples] == [s.text for s in once]
    assert report.counts["duplicate_narrative_ids"] == 2 and report.skipped == 2
    assert f"(first at {twice}:1, which is kept)" in report.errors[0]
    # Other annotators of the same image, or other captions, are not duplicates.
    records = [_ln_record(), _ln_record(annotator_id=2), _ln_record(caption="a dog")]
    samples, _ = read_localized_narratives(
        write_jsonl(tmp_path / "ln.jsonl", records), image_sizes={"42": (10, 10)}
    )
    assert len(samples) == 3

    # Visual Genome: the image listed twice, and a region id repeated under another image.
    vg = json.loads((real / "vg_region_descriptions_sample.json").read_text())
    other = {"id": 2, "regions": [{**vg[0]["regions"][0], "image_id": 2}]}
    path = write_json(tmp_path / "region_descriptions.json", vg + vg + [other])
    sizes = {1: (800, 600), 2: (800, 600)}
    with pytest.raises(
        DuplicateIdError, match=r"#1: field 'id': duplicate image id 1 \(first at .*#0"
    ):
        read_vg_regions(path, image_sizes=sizes)
    samples, report = read_vg_regions(path, image_sizes=sizes, strict=False)
    assert [s.image_id for s in samples] == [1, 2] and len(samples[0].boxes) == 4
    assert len(samples[1].boxes) == 0  # region 1382 belongs to image 1 (first)
    assert report.counts["duplicate_image_ids"] == 4  # the repeat's four regions
    assert report.counts["duplicate_region_ids"] == 1

    # COCO captions: the annotations listed twice.
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}],
        "annotations": [{"image_id": 1, "id": 5, "caption": "a cat"}] * 2,
    }
    samples, report = read_coco_captions(
        write_json(tmp_path / "captions_x.json", data), strict=False
    )
    assert len(samples) == 1 and report.counts == {"duplicate_annotation_ids": 1}


def _refer_files(real: Path, tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    fixture = _refer_fixture(real)
    folder = tmp_path / "refcoco"
    folder.mkdir(exist_ok=True)
    return folder / "refs(unc).p", fixture, _joining_instances(fixture)


def test_refer_duplicate_annotation_id_cannot_replace_the_box(real: Path, tmp_path: Path) -> None:
    refs_path, fixture, inst = _refer_files(real, tmp_path)
    refs_path.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    # A second annotation with the ref's ann_id, elsewhere: it used to replace the box.
    inst["annotations"].append({**inst["annotations"][0], "bbox": [0, 0, 10, 10]})
    inst_path = write_json(refs_path.with_name("instances.json"), inst)
    with pytest.raises(DuplicateIdError) as err:
        read_refer_pickle(refs_path)
    assert str(err.value).startswith(
        f"{inst_path}#annotations[1]: field 'id': duplicate annotation"
    )
    samples, report = read_refer_pickle(refs_path, strict=False)
    np.testing.assert_allclose(samples[0].boxes, [[263.87, 216.88, 285.0, 232.05]], atol=1e-3)
    assert report.counts["instances_duplicate_annotation_ids"] == 1
    assert report.counts["bad_instances_records"] == 1

    # A ref listed twice: read once, its sentences counted as skipped.
    inst["annotations"].pop()
    write_json(inst_path, inst)
    refs_path.write_bytes(pickle.dumps(fixture["refs"] * 2, protocol=2))
    with pytest.raises(
        DuplicateIdError, match=r"refs\(unc\)\.p#1: field 'ref_id': duplicate ref id 0"
    ):
        read_refer_pickle(refs_path)
    samples, report = read_refer_pickle(refs_path, strict=False)
    assert len(samples) == 3 and report.counts["duplicate_ref_ids"] == 1
    assert report.counts["skipped_sentences"] == 3


# --------------------------------------------------------------------------- smaller rules


@pytest.mark.parametrize(
    ("value", "crowd"),
    [(0, False), (1, True), ("0", False), ("1", True), (True, True), (False, False),
     ("false", False), ("TRUE", True)],
)  # fmt: skip
def test_iscrowd_values(tmp_path: Path, value: Any, crowd: bool) -> None:
    data = _instances([[1, 1, 5, 5], [2, 2, 5, 5]])
    data["annotations"][0]["iscrowd"] = value
    (s,), report = read_coco_instances(write_json(tmp_path / "instances_x.json", data))
    assert len(s.boxes) == (1 if crowd else 2)
    assert report.counts.get("crowd_boxes", 0) == int(crowd)


@pytest.mark.parametrize("value", [2, "2", "yes", "", None, [], 0.5])
def test_iscrowd_other_values_are_field_errors(tmp_path: Path, value: Any) -> None:
    data = _instances([[1, 1, 5, 5], [2, 2, 5, 5]])
    data["annotations"][0]["iscrowd"] = value
    path = write_json(tmp_path / "instances_x.json", data)
    with pytest.raises(DataFormatError, match=r"#annotations\[0\]: field 'iscrowd' must be 0 or 1"):
        read_coco_instances(path)
    (s,), report = read_coco_instances(path, strict=False)
    assert len(s.boxes) == 1 and report.skipped == 1


def test_ln_negative_times_are_dropped_and_counted(tmp_path: Path) -> None:
    record = _ln_record()
    # A third point before the recording started, and an utterance that starts before it.
    record["traces"][0].insert(0, {"x": 0.9, "y": 0.9, "t": -0.5})
    record["timed_caption"][1]["start_time"] = -1.0
    path = write_jsonl(tmp_path / "ln.jsonl", [record])
    (s,), report = read_localized_narratives(path, image_sizes={"42": (100, 100)})
    assert report.skipped == 0 and report.records == 1
    assert report.counts["negative_trace_times"] == 1
    assert report.counts["negative_utterance_times"] == 1
    assert s.utterances == ["a dog", "on the left"] and s.extra["trace_points"] == 4
    # The first utterance is located as if the negative point were not there.
    (ref,), _ = read_localized_narratives(
        write_jsonl(tmp_path / "ref.jsonl", [_ln_record()]), image_sizes={"42": (100, 100)}
    )
    np.testing.assert_allclose(s.utterance_boxes[0], ref.utterance_boxes[0])
    assert np.isnan(s.utterance_boxes[1]).all() and np.isnan(s.utterance_points[1]).all()
    assert report.counts["utterances_without_trace"] == 1


def test_vg_first_entry_without_regions(real: Path, tmp_path: Path) -> None:
    vg = json.loads((real / "vg_region_descriptions_sample.json").read_text())
    path = write_json(tmp_path / "region_descriptions.json", [{"id": 9}] + vg)
    assert detect_format(path) == "vg_regions"
    with pytest.raises(
        DataFormatError, match=r"region_descriptions\.json#0: field 'regions' is missing"
    ):
        read_any(path, image_sizes={1: (800, 600), 9: (10, 10)})
    samples, report = read_any(path, strict=False, image_sizes={1: (800, 600)})
    assert [s.image_id for s in samples] == [1] and report.skipped == 1


def test_refer_missing_instances_names_the_options(real: Path, tmp_path: Path) -> None:
    refs_path, fixture, _ = _refer_files(real, tmp_path)
    refs_path.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    with pytest.raises(DataFormatError) as err:
        read_refer_pickle(refs_path)
    message = str(err.value)
    assert "instances.json does not exist" in message
    assert "--instances FILE" in message and "instances_path=" in message


def test_decode_image_finds_truncated_images(
    tmp_path: Path, png_header: Callable[..., Path]
) -> None:
    from PIL import ImageFile

    good = make_image(tmp_path / "good.jpg", (64, 64))
    data = Image.effect_noise((64, 64), 60).convert("RGB")
    data.save(tmp_path / "full.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "full.jpg").read_bytes()[:-400])
    assert decode_image(str(good), "here") == (64, 64)
    # The header of a cut file reads fine (what the readers' check_images looks at);
    # only decoding finds it.
    with Image.open(cut) as im:
        assert im.size == (64, 64)
    with pytest.raises(TruncatedImageError, match=r"^here: image file .*cut\.jpg is truncated"):
        decode_image(str(cut), "here")
    # LOAD_TRUNCATED_IMAGES would hide it: it is off during the call, and restored.
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(TruncatedImageError):
            decode_image(str(cut), "here")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    with pytest.raises(BombImageError):
        decode_image(str(png_header(tmp_path / "bomb.png", (10_000, 10_000))), "here")


def test_refs_that_are_not_objects_are_errors_in_any_split(real: Path, tmp_path: Path) -> None:
    # The restricted unpickler builds sets, bytes and tuples too: each is a bad ref, not a
    # ref of "another split" that a split filter would quietly pass over.
    refs_path, fixture, inst = _refer_files(real, tmp_path)
    write_json(refs_path.with_name("instances.json"), inst)
    refs_path.write_bytes(pickle.dumps([fixture["refs"][0], {1, 2}, b"x", (1, 2)], protocol=4))
    samples, report = read_refer_pickle(refs_path, strict=False, split="train")
    assert len(samples) == 3 and report.skipped == 3
    assert report.errors[0] == f"{refs_path}#1: expected a ref (an object), got {{1, 2}}"
    fixture["refs"][0]["split"] = ["train"]
    refs_path.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    with pytest.raises(DataFormatError, match=r"#0: field 'split' must be a string"):
        read_refer_pickle(refs_path, split="train")
