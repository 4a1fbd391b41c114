"""``pixelkit data inspect`` (pixelkit.data.inspect)."""

from __future__ import annotations

import argparse
import json
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
