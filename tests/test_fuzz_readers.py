"""Fuzzing the annotation readers (pixelkit.data.formats) with hypothesis.

Every real-format fixture in ../shared/fixtures/real and every file a small shapes world
writes (Localized Narratives, COCO captions, COCO instances, MDETR RefCOCO, GRiT), plus a
refer-toolkit pickle built from the real refer excerpt, is mutated at random: a field
deleted, a value replaced by another JSON type, a 400-digit or 5000-digit integer, NaN,
a negative or empty value, a deeply nested list; records duplicated; the file cut short,
doubled, given bytes that are not UTF-8 or (JSON lines) garbage lines. Each mutated file
is then detected, inspected (``pixelkit data inspect``'s ``inspect_file``) and read
strict and not strict, through the format's reader and through ``read_any``.

The property: a reader either reads a record (and what it returns is sane: finite boxes
of positive area inside the image), skips and counts it, or raises a ``DataFormatError``
whose message starts with the file it is about (and the line or record, where there is
one). Any other exception fails the test. A strict read that succeeds must match the
non-strict one; a strict error must be a skipped record (or the same error) when not
strict. Duplicates never double the data: per-image samples, annotation / region ids and
narratives are unique in what a read returns.

Both profiles are derandomized (the same examples on every run, for CI): 50 examples per
file by default (a few seconds), 300 in the ``slow`` variant (``-m "not slow"`` skips it).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixelkit.data import catalog
from pixelkit.data.formats import (
    DataFormatError,
    ReadReport,
    Sample,
    detect_format,
    read_any,
    read_coco_captions,
    read_coco_instances,
    read_grit,
    read_localized_narratives,
    read_mdetr_refcoco,
    read_refer_pickle,
    read_vg_regions,
)
from pixelkit.data.inspect import inspect_file

REAL = Path(__file__).parents[1].parent / "shared" / "fixtures" / "real"

# ----------------------------------------------------------------------------- values

#: Placeholders for values json.dumps cannot write (or that the test cannot even build):
#: they are swapped in as text after serialising.
DEEP = "__fuzz_deep__"  # nested past the JSON parser's recursion limit
LONG_INT = "__fuzz_long_int__"  # more digits than Python converts (4300)
DEEP_TEXT = "[" * 5000 + "]" * 5000
LONG_INT_TEXT = "7" * 5000


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


#: Values that broke or could break a reader: out-of-range numbers, other JSON types,
#: empty or odd strings, nesting. The worst ones are listed twice, to be drawn more often.
NASTY: list[Any] = [
    10**400, 10**400, -(10**400), DEEP, DEEP, LONG_INT, LONG_INT, _nested(200),
    math.nan, math.inf, -math.inf, -1, -7.5, -0.001, 2**63, -(2**63) - 1, 1e308, -1e308,
    None, True, False, 0, 1, 0.5, -0.0, 1e-300,
    "", " ", "0", "1", "true", "no", "x", "\u00b2", "123\u00b2", "\x00", "../../x",
    "a" * 300, "9" * 400,
    [], {}, [1, 2], [1, 2, 3, 4], [[]], {"a": 1}, [None] * 4, ["1", "2", "3", "4"],
    [10**400] * 4, [math.nan] * 4,
]  # fmt: skip

values = st.one_of(
    # Copied: a drawn list must not be the shared one, which a later mutation may change.
    st.sampled_from(NASTY).map(copy.deepcopy),
    st.sampled_from(NASTY).map(copy.deepcopy),
    st.sampled_from(NASTY).map(copy.deepcopy),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)

#: Places deeper than this are not mutated (only inside values the fuzzer put there).
MAX_DEPTH = 8

#: Whole lines put into JSON-lines files.
GARBAGE_LINES = [
    "", "   ", "null", "[]", "{}", "{", "42", '"text"', "[1, 2]", "\x00", "\ufeff{}",
    DEEP_TEXT, "[" + LONG_INT_TEXT + "]", '{"image_id": [], "caption": {}}',
    '{"image_id": "1", "caption": "c", "traces": [[{"x": 1, "y": 1, "t": -1}]]}',
]  # fmt: skip


# ----------------------------------------------------------------------------- mutation


def _places(doc: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every place in a JSON document, grouped by a name: the key for an object member
    (``"bbox"``), the parent's name plus ``[]`` for a list element (``"annotations[]"``).

    Mutations draw a name first and then one of its places, so that the thousands of
    polygon coordinates of a COCO file do not crowd out its few dozen boxes.
    """
    out: dict[str, list[tuple[Any, ...]]] = {"<root>": [()]}
    stack: list[tuple[tuple[Any, ...], str, Any]] = [((), "", doc)]
    while stack:
        path, name, node = stack.pop()
        if len(path) >= MAX_DEPTH:
            continue
        if isinstance(node, dict):
            items = [(k, k, v) for k, v in node.items()]
        elif isinstance(node, list):
            items = [(i, f"{name}[]", v) for i, v in enumerate(node)]
        else:
            continue
        for key, child_name, child in items:
            out.setdefault(child_name, []).append((*path, key))
            stack.append(((*path, key), child_name, child))
    return out


def _mutate(data: st.DataObject, doc: Any) -> Any:
    """One random change at a random place of ``doc`` (changed in place; returned)."""
    places = _places(doc)
    name = data.draw(st.sampled_from(sorted(places)), label="name")
    path = data.draw(st.sampled_from(places[name]), label="path")
    ops = ["replace", "replace", "replace", "delete", "duplicate", "wrap"]
    op = data.draw(st.sampled_from(ops), label="op")
    if not path:  # the root: only a replacement makes sense
        return data.draw(values, label="root")
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if op == "replace":
        parent[key] = data.draw(values, label="value")
    elif op == "delete":
        del parent[key]
    elif op == "wrap":  # the same value, one level deeper (a list where a number was...)
        parent[key] = data.draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
    elif isinstance(parent, list):  # duplicate a list element (a record, a point, ...)
        where = data.draw(st.integers(0, len(parent)), label="at")
        parent.insert(where, copy.deepcopy(parent[key]))
    else:  # duplicate the record holding this key inside its list, when there is one
        grand = doc
        for k in path[:-2]:
            grand = grand[k]
        if len(path) >= 2 and isinstance(grand, list):
            grand.append(copy.deepcopy(parent))
    return doc


def _as_text(value: Any) -> str:
    text = json.dumps(value, allow_nan=True)  # NaN / Infinity: Python's json reads them
    return text.replace(f'"{DEEP}"', DEEP_TEXT).replace(f'"{LONG_INT}"', LONG_INT_TEXT)


def _damage_text(data: st.DataObject, text: str, jsonl: bool) -> bytes:
    """Maybe damage the serialised file: cut it short, double it, add garbage lines or
    bytes that are not UTF-8; returns the file's bytes."""
    ops = ["none", "none", "truncate", "double", "bytes"] + (["garbage"] * 2 if jsonl else [])
    op = data.draw(st.sampled_from(ops), label="text op")
    if op == "truncate":
        text = text[: data.draw(st.integers(0, max(len(text) - 1, 0)), label="cut")]
    elif op == "double":
        text = text + ("" if text.endswith("\n") or not jsonl else "\n") + text
    elif op == "garbage":
        lines = text.split("\n")
        line = data.draw(st.one_of(st.sampled_from(GARBAGE_LINES), st.text(max_size=20)))
        lines.insert(data.draw(st.integers(0, len(lines)), label="line"), line)
        text = "\n".join(lines)
    raw = text.encode("utf-8", "surrogatepass")
    if op == "bytes":
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    return raw


def _deep_objects(value: Any) -> Any:
    """Placeholders as real objects, for pickles (no text to splice them into)."""
    if value == DEEP:
        return _nested(500)
    if value == LONG_INT:
        return 7 * 10**5000
    if isinstance(value, list):
        return [_deep_objects(v) for v in value]
    if isinstance(value, dict):
        return {k: _deep_objects(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- targets


@dataclass(repr=False)
class Target:
    """One file to fuzz and the reads to try on each mutated version of it.

    Attributes:
        name: test id.
        source: the original file.
        dest: where mutated versions are written (its name keeps the format's usual
            file name, which detection uses as a hint).
        reads: ``(label, call(path, strict))`` pairs.
        also_named: other files a message may be about (refer: the instances file).
    """

    name: str
    source: Path
    dest: Path
    reads: list[tuple[str, Callable[[Path, bool], tuple[list[Sample], ReadReport]]]]
    also_named: tuple[Path, ...] = ()

    def __repr__(self) -> str:  # short, for hypothesis' report of a failing example
        return f"Target({self.name})"

    @property
    def jsonl(self) -> bool:
        return self.source.suffix == ".jsonl"


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    """The original files, their images and the reads of each format."""
    assert REAL.is_dir(), f"real-data fixtures missing: {REAL} (CI puts ../shared beside the repo)"
    from pixelkit.data.synth import synthesize

    root = tmp_path_factory.mktemp("fuzz")
    synth = root / "synth"
    synthesize(synth, num_images=4, image_size=64, seed=0, val_fraction=0.2, progress=False)
    synth_images = catalog.get("shapes/train").image_dir(synth)
    real_images = root / "real_images"
    _image(real_images / "000000137576.jpg", (64, 48))
    _image(real_images / "ADE_val_00000175.jpg", (48, 64))
    _image(real_images / "VG_100K" / "1.jpg", (800, 600))
    ln_sizes = {"137576": (640, 480), "ADE_val_00000175": (683, 512), "381639": (640, 427)}

    # The refer pickle: the real excerpt's ref, with its instances re-labelled to join
    # (as tests/test_formats.py does), so that mutations reach the join.
    refer = json.loads((REAL / "refer_sample.json").read_text())
    ref = refer["refs"][0]
    instances = copy.deepcopy(refer["instances"])
    instances["images"][0].update(id=ref["image_id"], file_name="COCO_train2014_000000581857.jpg")
    instances["annotations"][0].update(id=ref["ann_id"], image_id=ref["image_id"])
    refer_dir = root / "refer_source"
    refer_dir.mkdir()
    (refer_dir / "refs.json").write_text(json.dumps(refer["refs"]))
    (refer_dir / "instances.json").write_text(json.dumps(instances))
    out = root / "mutated"

    def dest(name: str, file_name: str) -> Path:
        (out / name).mkdir(parents=True, exist_ok=True)
        return out / name / file_name

    def both(reader: Callable[..., Any], images: Path | None, **kw: Any) -> list[Any]:
        """The format's own reader and read_any (detection included), same options."""
        return [
            ("reader", lambda p, s: reader(p, images, s, **kw)),
            ("read_any", lambda p, s: read_any(p, images, s, **kw)),
        ]

    layout = catalog.get("shapes/train")
    ann = {task: layout.annotation(task, synth) for task in layout.tasks}
    targets = [
        Target("real_coco_instances", REAL / "coco_instances_val2017_slice.json",
               dest("real_coco_instances", "instances_val2017.json"),
               both(read_coco_instances, Path("/coco/val2017"))),
        Target("real_vg_regions", REAL / "vg_region_descriptions_sample.json",
               dest("real_vg_regions", "region_descriptions.json"),
               both(read_vg_regions, real_images)
               + [("sizes", lambda p, s: read_vg_regions(p, None, s, image_sizes={1: (800, 600)}))]),
        Target("real_ln_sample", REAL / "localized_narratives_sample.jsonl",
               dest("real_ln_sample", "ln.jsonl"), both(read_localized_narratives, real_images)),
        Target("real_ln_partial", REAL / "localized_narratives_partial_records.jsonl",
               dest("real_ln_partial", "ln.jsonl"),
               [("sizes", lambda p, s: read_localized_narratives(p, None, s, image_sizes=ln_sizes)),
                ("read_any", lambda p, s: read_any(p, None, s, image_sizes=ln_sizes))]),
        Target("real_refer_pickle", refer_dir / "refs.json",
               dest("real_refer_pickle", "refs(unc).p"),
               both(read_refer_pickle, real_images)
               + [("split", lambda p, s: read_refer_pickle(p, None, s, split="train"))],
               also_named=(out / "real_refer_pickle" / "instances.json",)),
        Target("synth_ln", ann["trace"], dest("synth_ln", ann["trace"].name),
               both(read_localized_narratives, synth_images, check_images=True)),
        Target("synth_captions", ann["caption"], dest("synth_captions", ann["caption"].name),
               both(read_coco_captions, synth_images, check_images=True)),
        Target("synth_instances", ann["detection"],
               dest("synth_instances", ann["detection"].name),
               both(read_coco_instances, synth_images)),
        Target("synth_mdetr", ann["refer"], dest("synth_mdetr", ann["refer"].name),
               both(read_mdetr_refcoco, synth_images, check_images=True)),
        Target("synth_grit", ann["densecap"], dest("synth_grit", ann["densecap"].name),
               both(read_grit, synth_images)
               + [("loca_caption", lambda p, s: read_grit(p, synth_images, s, task="loca_caption"))]),
    ]  # fmt: skip
    shutil.copy(refer_dir / "instances.json", out / "real_refer_pickle" / "instances.json")
    return {t.name: t for t in targets}


def _load(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _write_mutated(data: st.DataObject, target: Target) -> None:
    """A mutated version of ``target.source`` at ``target.dest`` (refer: the refs pickle
    or its instances file)."""
    if target.dest.suffix == ".p":
        inst_source = target.source.with_name("instances.json")
        inst_dest = target.dest.with_name("instances.json")
        refs, instances = _load(target.source), _load(inst_source)
        which = data.draw(st.sampled_from(["refs", "instances"]), label="which file")
        for _ in range(data.draw(st.integers(1, 4), label="mutations")):
            if which == "refs":
                refs = _mutate(data, refs)
            else:
                instances = _mutate(data, instances)
        payload = pickle.dumps(_deep_objects(refs), protocol=2)
        if data.draw(st.booleans(), label="cut pickle"):
            payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
        target.dest.write_bytes(payload)
        inst_dest.write_bytes(_damage_text(data, _as_text(instances), jsonl=False))
        return
    doc = _load(target.source)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        doc = _mutate(data, doc)
    if target.jsonl:
        records = doc if isinstance(doc, list) else [doc]
        text = "".join(_as_text(r) + "\n" for r in records)
    else:
        text = _as_text(doc)
    target.dest.write_bytes(_damage_text(data, text, target.jsonl))


# ----------------------------------------------------------------------------- property


def _assert_names_file(message: str, files: list[Path]) -> None:
    """The message starts with one of the files, then maybe ``:line`` or ``#record``."""
    pattern = "|".join(re.escape(str(f)) for f in files)
    assert re.match(rf"(?:{pattern})(?::\d+|#\S+)?: ", message), message


def _assert_sane(samples: list[Sample], report: ReadReport, files: list[Path]) -> None:
    assert report.records >= 0 and report.skipped >= 0
    assert all(n > 0 for n in report.counts.values()), report.counts
    for message in report.errors:
        _assert_names_file(message, files)
    for s in samples:
        w, h = s.image_size
        assert isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0, s.image_size
        boxes = s.boxes
        assert np.isfinite(boxes).all(), (s.source, boxes)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (
            (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        )
        if s.box_texts or s.task in ("densecap", "detection"):
            assert len(s.box_texts) == len(boxes)
        assert all(isinstance(t, str) and t for t in s.box_texts)
        located = np.isfinite(s.utterance_boxes).all(axis=1)
        assert (located | np.isnan(s.utterance_boxes).all(axis=1)).all()
        ub = s.utterance_boxes[located]
        assert (ub >= 0).all() and (ub[:, [0, 2]] <= w).all() and (ub[:, [1, 3]] <= h).all()
        assert len(s.utterances) == len(s.utterance_boxes) == len(s.utterance_points)
    # Duplicates never double the data (the keep-the-first rule): one sample per image for
    # per-image tasks, each annotation / region id once, each narrative once.
    per_image = [s.image_id for s in samples if s.task in ("detection", "densecap")]
    assert len(per_image) == len(set(per_image)), per_image
    ann_ids = [a for s in samples for a in s.extra.get("ann_ids", []) if a is not None]
    ann_ids += [s.ann_id for s in samples if s.task == "caption" and s.ann_id is not None]
    assert len(ann_ids) == len(set(ann_ids)), ann_ids
    narratives = [
        (s.extra.get("dataset_id"), s.image_id, s.extra.get("annotator_id"), s.text)
        for s in samples
        if s.task == "trace"
    ]
    assert len(narratives) == len(set(map(repr, narratives))), narratives


def _check_reads(target: Target) -> None:
    files = [target.dest, *target.also_named]
    try:
        detect_format(target.dest)
    except DataFormatError as e:
        _assert_names_file(str(e), files)
    try:  # pixelkit data inspect, with no images (sizes stand-ins for LN and VG)
        info = inspect_file(target.dest)
    except DataFormatError as e:
        _assert_names_file(str(e), files)
    else:
        assert all(n > 0 for n in info["counts"].values()), info["counts"]
    for label, read in target.reads:
        outcome: dict[bool, Any] = {}
        for strict in (True, False):
            try:
                outcome[strict] = read(target.dest, strict)
            except DataFormatError as e:
                _assert_names_file(str(e), files)
                outcome[strict] = e
                continue
            _assert_sane(*outcome[strict], files)
        ok, lenient = outcome[True], outcome[False]
        if not isinstance(ok, Exception):
            # Strict read everything: so does the lenient one, identically.
            assert not isinstance(lenient, Exception), (label, lenient)
            assert lenient[1].skipped == 0 and len(lenient[0]) == len(ok[0]), label
            assert lenient[1].counts == ok[1].counts, label
        elif not isinstance(lenient, Exception):
            # What stopped the strict read was skipped and counted by the lenient one.
            report = lenient[1]
            dropped = report.skipped + report.counts.get("bad_instances_records", 0)
            assert dropped >= 1, (label, str(ok), report)


def _fuzz(data: st.DataObject, workspace: dict[str, Target], name: str) -> None:
    target = workspace[name]
    _write_mutated(data, target)
    _check_reads(target)


TARGETS = [
    "real_coco_instances",
    "real_vg_regions",
    "real_ln_sample",
    "real_ln_partial",
    "real_refer_pickle",
    "synth_ln",
    "synth_captions",
    "synth_instances",
    "synth_mdetr",
    "synth_grit",
]

_COMMON: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,  # the same examples on every run: CI stays deterministic
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@pytest.mark.parametrize("name", TARGETS)
@settings(max_examples=50, **_COMMON)
@given(data=st.data())
def test_fuzz_reader(data: st.DataObject, workspace: dict[str, Target], name: str) -> None:
    _fuzz(data, workspace, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
@settings(max_examples=300, **_COMMON)
@given(data=st.data())
def test_fuzz_reader_more(data: st.DataObject, workspace: dict[str, Target], name: str) -> None:
    _fuzz(data, workspace, name)
