"""Data at scale: streaming readers, samples packed in one buffer, the image-size index.

* the streaming readers give exactly the samples the list readers gave (fixtures and a
  synth world), and the data module's packed samples equal them too;
* :class:`PackedSamples`: ``len``, indexing, pickling, and data-loader workers;
* a forked worker's private memory stays flat over an epoch over packed samples, and grows
  over a list of sample objects (the copy-on-read problem it exists for);
* the sidecar index of image sizes: the second read opens no image, a changed image is
  read again, a read-only folder is no error.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pixelkit.data import catalog
from pixelkit.data.datamodule import SourceConfig, read_source
from pixelkit.data.formats import _common, iter_any, read_any
from pixelkit.data.packed import PackedSamples
from pixelkit.data.schema import Sample
from pixelkit.data.synth import synthesize


def same(a: Sample, b: Sample) -> bool:
    """Field by field, NaN equal to NaN, tuple or list alike."""
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    synthesize(root, num_images=24, image_size=64, seed=3, val_fraction=0.25, progress=False)
    return root


def _fixture_sizes(path: Path) -> dict[Any, tuple[int, int]]:
    """A size for every image id the fixture's parseable lines name (no images needed)."""
    sizes = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            sizes[rec["image_id"]] = (640 + len(str(rec["image_id"])), 480)
        except (ValueError, KeyError, TypeError):
            pass  # a deliberately bad line of the fixture: the readers skip and count it
    return sizes


@pytest.mark.parametrize("name", ["localized_narratives_sample.jsonl",
                                  "localized_narratives_partial_records.jsonl"])
def test_streaming_equals_the_list_reader_on_fixtures(fixtures_dir: Path, name: str) -> None:
    ann = fixtures_dir / name
    sizes = _fixture_sizes(ann)
    listed, report = read_any(ann, strict=False, image_sizes=sizes)
    stream, streamed_report = iter_any(ann, strict=False, image_sizes=sizes)
    streamed = list(stream)
    assert listed and len(streamed) == len(listed)
    assert all(same(a, b) for a, b in zip(listed, streamed))
    assert (streamed_report.records, streamed_report.skipped) == (report.records, report.skipped)
    packed = PackedSamples(listed)
    assert all(same(a, b) for a, b in zip(listed, packed))


@pytest.mark.parametrize("task", ["trace", "caption", "refer", "loca_caption", "densecap"])
def test_packed_sources_equal_the_readers_on_a_synth_world(world: Path, task: str) -> None:
    split = catalog.get("shapes/train")
    src = SourceConfig(task=task, split="shapes/train").resolved(world)
    listed, _ = read_any(split.annotation(task, world), split.image_dir(world),
                         task=None if task in ("trace", "caption", "refer") else task)
    if task == "trace":
        listed = [s for s in listed if s.has_trace]
    packed = read_source(src)
    assert isinstance(packed, PackedSamples) and len(packed) == len(listed) > 0
    assert all(same(a, b) for a, b in zip(listed, packed))
    # a limit stops reading there
    limited = read_source(SourceConfig(**{**src.__dict__, "limit": 3}))
    assert [s.source for s in limited] == [s.source for s in listed[:3]]


def test_packed_indexing_slicing_and_pickling(world: Path) -> None:
    samples = list(read_source(SourceConfig(task="densecap", split="shapes/val").resolved(world)))
    packed = PackedSamples(iter(samples))  # from a generator: never a list inside
    assert len(packed) == len(samples)
    assert same(packed[-1], samples[-1]) and same(packed[0], samples[0])
    assert [s.source for s in packed[1:4]] == [s.source for s in samples[1:4]]
    with pytest.raises(IndexError, match="out of range"):
        packed[len(samples)]
    packed[0].boxes[:] = -1  # a decoded sample is a copy: the buffer is unchanged
    assert same(packed[0], samples[0])
    again = pickle.loads(pickle.dumps(packed))
    assert len(again) == len(packed) and all(same(a, b) for a, b in zip(again, samples))
    assert PackedSamples([]).__len__() == 0


class _Texts(Dataset):
    def __init__(self, samples: Any) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> str:
        return self.samples[i].text


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_packed_samples_in_loader_workers(world: Path, context: str) -> None:
    packed = read_source(SourceConfig(task="caption", split="shapes/train").resolved(world))
    loader = DataLoader(_Texts(packed), batch_size=4, num_workers=2,
                        multiprocessing_context=context)
    assert [t for batch in loader for t in batch] == [s.text for s in packed]


def _private_kib() -> int:
    """This process's private (unshared) memory, from /proc/self/smaps_rollup."""
    fields = dict(line.split(":", 1) for line in
                  Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))


def _epoch_growth(samples: Any, conn: Any) -> None:
    """In a forked worker: private memory growth over one pass reading every sample, after
    a warm-up over the first 2,000 (the allocator's own arenas, the same for both kinds)."""

    def read(indices: range) -> None:
        for i in indices:  # what TaskDataset reads of a sample
            s = samples[i]
            (s.text, s.image_path, s.utterances, s.utterance_boxes.sum(), s.extra)  # noqa: B018

    read(range(2000))
    before = _private_kib()
    read(range(len(samples)))
    conn.send(_private_kib() - before)


def _growth_in_fork(samples: Any) -> int:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_epoch_growth, args=(samples, child))
    proc.start()
    growth = parent.recv()
    proc.join()
    return growth


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_a_forked_worker_stays_flat_over_packed_samples(world: Path) -> None:
    one = list(read_source(SourceConfig(task="trace", split="shapes/train").resolved(world)))
    samples = [Sample(**{**s.__dict__, "source": f"{s.source}#{i}"})
               for i in range(2000) for s in one]  # ~36k samples, ~40 MB as objects
    listed = _growth_in_fork(samples)
    packed = PackedSamples(samples)
    del samples
    flat = _growth_in_fork(packed)
    # The list's pages are copied into the worker as it reads them (reference counts);
    # the packed buffer is read, never written, so it stays shared.
    print(f"private KiB over an epoch: list {listed}, packed {flat}")
    assert listed > 4 * 1024, listed                 # KiB: the copy-on-read is real here
    assert flat < listed / 4, (flat, listed)


def test_image_size_index_beside_the_annotations(tmp_path: Path, monkeypatch, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + i, 30)).save(images / f"{i:012d}.png")
    ann = tmp_path / "ln.jsonl"
    ann.write_text("".join(json.dumps({
        "image_id": str(i), "annotator_id": 1, "caption": "a red circle",
        "timed_caption": [{"utterance": "a red circle", "start_time": 0.0, "end_time": 1.0}],
        "traces": [[{"x": 0.1, "y": 0.2, "t": 0.1}, {"x": 0.3, "y": 0.4, "t": 0.5}]],
    }) + "\n" for i in range(3)))
    src = SourceConfig(task="trace", ann=str(ann), images=str(images))
    first = read_source(src)
    index = Path(f"{ann}.image-sizes.json")
    assert index.is_file() and len(json.loads(index.read_text())["images"]) == 3

    def no_open(path: str, where: str) -> tuple[int, int]:
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(_common, "open_image_size", no_open)
    second = read_source(src)  # every size from the index
    assert [s.image_size for s in second] == [s.image_size for s in first] == \
        [(40, 30), (41, 30), (42, 30)]
    monkeypatch.undo()
    # A changed image (new size, new mtime) is read again and the index updated.
    Image.new("RGB", (90, 30)).save(images / "000000000001.png")
    os.utime(images / "000000000001.png", ns=(1, 1))
    assert read_source(src)[1].image_size == (90, 30)
    assert json.loads(index.read_text())["images"][str(images / "000000000001.png")][:2] == [90, 30]
    # A read-only folder (simulated: the tests may run as root): sizes are read, the index
    # is not written, reading goes on with a notice.
    index.unlink()

    def read_only(path: Any, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("pixelkit.files.atomic_write_text", read_only)
    assert len(read_source(src)) == 3 and not index.exists()
    assert "image-size index not written" in capsys.readouterr().err


def test_a_corrupt_index_is_rebuilt(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x.jsonl.image-sizes.json"
    path.write_text("{not json")
    sizes = _common.ImageSizes(path)
    assert "unreadable" in capsys.readouterr().err
    image = tmp_path / "a.png"
    Image.new("RGB", (5, 7)).save(image)
    assert sizes(str(image), "here") == (5, 7)
    sizes.save()
    assert json.loads(path.read_text())["images"][str(image)][:2] == [5, 7]
    assert np.isfinite(os.stat(image).st_mtime_ns)


def test_packed_samples_cache_is_memory_mapped_on_the_next_run(world: Path, tmp_path: Path,
                                                               capsys) -> None:
    ann = tmp_path / "ln.jsonl"
    split = catalog.get("shapes/train")
    lines = split.annotation("trace", world).read_text().splitlines(keepends=True)
    ann.write_text("".join(lines) + "{not json\n")  # one bad line: skipped, counted
    src = SourceConfig(task="trace", ann=str(ann), images=str(split.image_dir(world)))
    first = read_source(src, cache=True)
    assert "skipped 1" in capsys.readouterr().out
    (folder,) = tmp_path.glob("ln.jsonl.samples-trace-*")
    second = read_source(src, cache=True)
    assert second._folder == folder and isinstance(second._bytes, np.memmap)
    assert "skipped 1" in capsys.readouterr().out  # the report is repeated from the cache
    assert len(second) == len(first) and all(same(a, b) for a, b in zip(first, second))
    limited = read_source(SourceConfig(**{**src.__dict__, "limit": 2}), cache=True)
    assert len(limited) == 2 and same(limited[1], first[1])
    # A spawned worker gets the folder, not the bytes.
    assert len(pickle.dumps(limited)) < 1000 and same(pickle.loads(pickle.dumps(limited))[1], first[1])
    # A changed file is read again (another cache), never the stale one.
    ann.write_text("".join(lines[:3]))
    assert len(read_source(src, cache=True)) == 3
    assert len(list(tmp_path.glob("ln.jsonl.samples-trace-*"))) == 2


def test_an_unwritable_cache_is_a_notice(world: Path, monkeypatch, capsys) -> None:
    src = SourceConfig(task="caption", split="shapes/val").resolved(world)

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    assert len(read_source(src, cache=True)) > 0
    assert "packed samples not cached" in capsys.readouterr().err


def test_a_cache_read_from_another_directory_opens_its_images(world: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """Samples keep their image paths as the source spells them: a relative folder read
    from another working directory is cached again, never read with paths that do not
    open from there."""
    import shutil

    root = tmp_path / "a" / "shapes"
    shutil.copytree(world, root)
    split = catalog.get("shapes/val")
    monkeypatch.chdir(tmp_path / "a")
    src = SourceConfig(task="caption", split="shapes/val").resolved("shapes")
    first = read_source(src, cache=True)
    assert Path(first[0].image_path).exists()
    monkeypatch.chdir(tmp_path)
    again = SourceConfig(task="caption", split="shapes/val").resolved("a/shapes")
    second = read_source(again, cache=True)
    assert Path(second[0].image_path).exists() and len(second) == len(first)
    assert len(list(split.annotation("caption", root).parent.glob("captions_val.json.samples-*"))) == 2
