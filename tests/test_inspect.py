"""``pixelkit data inspect`` (pixelkit.data.inspect)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pixelkit.data import inspect as data_inspect

REAL = Path(__file__).parents[1].parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="module")
def real() -> Path:
    assert REAL.is_dir(), f"real-data fixtures missing: {REAL} (CI puts ../shared beside the repo)"
    return REAL


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    data_inspect.add_arguments(parser)
    status = data_inspect.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_json_keys_on_real_coco(real: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run([str(real / "coco_instances_val2017_slice.json"), "--json"], capsys)
    assert status == 0
    info = json.loads(out)  # exactly one JSON object
    assert {"format", "records", "skipped", "errors", "counts"} <= info.keys()
    assert info["format"] == "coco_instances"
    assert info["records"] == 36 and info["skipped"] == 0 and info["errors"] == []
    assert info["counts"] == {"crowd_boxes": 1}
    assert info["samples"] == 2 and info["tasks"] == {"detection": 2}


@pytest.mark.parametrize(
    ("name", "fmt", "records"),
    [
        ("localized_narratives_sample.jsonl", "localized_narratives", 1),
        ("localized_narratives_partial_records.jsonl", "localized_narratives", 2),
        ("vg_region_descriptions_sample.json", "vg_regions", 4),
    ],
)
def test_sizeless_formats_without_images(
    real: Path, capsys: pytest.CaptureFixture[str], name: str, fmt: str, records: int
) -> None:
    status, out, _ = run([str(real / name), "--json"], capsys)
    info = json.loads(out)
    assert status == 0 and info["format"] == fmt
    assert info["records"] == records and info["skipped"] == 0
    assert info["notes"] and "no --images" in info["notes"][0]


def test_text_output_with_images(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (640, 480)).save(tmp_path / "000000137576.jpg")
    status, out, _ = run(
        [
            str(real / "localized_narratives_sample.jsonl"),
            "--images",
            str(tmp_path),
            "--check-images",
        ],
        capsys,
    )
    assert status == 0
    assert "format:   localized_narratives" in out
    assert "records:  1 read, 0 skipped" in out
    assert "narratives_without_trace: 1" in out and "note:" not in out


def test_bad_records_counted_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "captions_val.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}],
                "annotations": [
                    {"image_id": 1, "id": 1, "caption": "a cat"},
                    {"image_id": 1, "id": 2, "caption": 3},
                    {"image_id": 2, "id": 3, "caption": "a dog"},
                ],
            }
        )
    )
    status, out, _ = run([str(path), "--json"], capsys)
    info = json.loads(out)
    assert status == 0
    assert info["records"] == 1 and info["skipped"] == 2 and len(info["errors"]) == 2
    assert info["counts"]["malformed_records"] == 2
    assert all("captions_val.json#annotations[" in e for e in info["errors"])

    status, out, _ = run([str(path)], capsys)
    assert status == 0 and "errors (first 2 of 2 skipped):" in out

    status, out, err = run([str(path), "--strict"], capsys)
    assert status == 1 and "captions_val.json#annotations[" in err


def test_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run([str(tmp_path / "missing.json"), "--json"], capsys)
    assert status == 2 and "missing.json" in err and json.loads(out)["error"]

    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    status, _, err = run([str(other)], capsys)
    assert status == 2 and "cannot detect the format" in err

    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    status, _, err = run([str(broken)], capsys)
    assert status == 2 and "broken.json:1: not valid JSON" in err


def test_refer_pickle_with_instances_option(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    fixture = json.loads((real / "refer_sample.json").read_text())
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    instances = tmp_path / "somewhere_instances.json"
    instances.write_text(json.dumps(fixture["instances"]))  # does not join (see PROVENANCE)
    status, out, _ = run([str(refs), "--instances", str(instances), "--json"], capsys)
    info = json.loads(out)
    assert status == 0 and info["format"] == "refer_pickle"
    assert info["records"] == 0 and info["skipped"] == 1 and "1719310" in info["errors"][0]


def test_duplicate_counts_are_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "instances_dup.json"
    ann = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0}
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}],
                "annotations": [ann, {**ann, "bbox": [2, 2, 4, 4]}],
                "categories": [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}],
            }
        )
    )
    status, out, _ = run([str(path), "--json"], capsys)
    info = json.loads(out)
    assert status == 0 and info["records"] == 1 and info["skipped"] == 2
    assert info["counts"] == {"duplicate_annotation_ids": 1, "duplicate_category_ids": 1}
    status, out, _ = run([str(path)], capsys)
    assert "duplicate_annotation_ids: 1" in out and "duplicate_category_ids: 1" in out
    assert "field 'id': duplicate annotation id 5" in out


def _truncated_and_bomb_world(tmp_path: Path, png_header: Callable[..., Path]) -> tuple[Path, Path]:
    """A captions file over three images: a good one, a truncated one (its header reads
    fine) and one whose header declares more pixels than PIL's bomb limit."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "good.jpg")
    Image.effect_noise((64, 64), 60).convert("RGB").save(images / "full.jpg")
    (images / "cut.jpg").write_bytes((images / "full.jpg").read_bytes()[:-400])
    png_header(images / "bomb.png", (10_000, 10_000))
    entries = [("good.jpg", 64), ("cut.jpg", 64), ("bomb.png", 10_000)]
    path = tmp_path / "captions_x.json"
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": name, "width": side, "height": side}
                    for i, (name, side) in enumerate(entries)
                ],
                "annotations": [
                    {"id": i, "image_id": i, "caption": "a picture"} for i in range(len(entries))
                ],
            }
        )
    )
    return path, images


def test_check_images_decodes_in_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], png_header: Callable[..., Path]
) -> None:
    path, images = _truncated_and_bomb_world(tmp_path, png_header)
    status, out, _ = run([str(path), "--images", str(images), "--check-images", "--json"], capsys)
    info = json.loads(out)
    assert status == 0
    # The bomb is refused by its header (a skipped record); the cut file only by decoding.
    assert info["counts"] == {"bomb_images": 1, "truncated_images": 1}
    assert info["skipped"] == 1 and "bomb.png refused" in info["errors"][0]
    assert info["images"] == 2 and info["images_decoded"] == 1
    (message,) = info["image_errors"]
    assert message.startswith(
        f"{path}#annotations[1]: image file {images / 'cut.jpg'} is truncated"
    )

    status, out, _ = run([str(path), "--images", str(images), "--check-images"], capsys)
    assert "images:   1 decoded in full, 1 not" in out and "cut.jpg is truncated" in out
    assert "truncated_images: 1" in out and "bomb_images: 1" in out

    (images / "bomb.png").unlink()  # strict stops at the truncated image (status 1)
    status, _, err = run([str(path), "--images", str(images), "--check-images", "--strict"], capsys)
    assert status == 1 and "bomb.png not found" in err
    path.write_text(path.read_text().replace('"bomb.png"', '"good.jpg"').replace("10000", "64"))
    status, _, err = run([str(path), "--images", str(images), "--check-images", "--strict"], capsys)
    assert status == 1 and "cut.jpg is truncated" in err


def test_cli_messages_name_cli_flags(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(
        [str(real / "coco_instances_val2017_slice.json"), "--check-images"], capsys
    )
    assert status == 2 and "--check-images needs --images DIR" in err

    import pickle

    fixture = json.loads((real / "refer_sample.json").read_text())
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps(fixture["refs"], protocol=2))
    status, _, err = run([str(refs)], capsys)
    assert status == 2 and "instances.json does not exist" in err and "--instances FILE" in err
