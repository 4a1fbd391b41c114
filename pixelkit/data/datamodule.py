"""``PixelDataModule``: several annotation sources, sampled by weight, into padded batches.

A *source* is one annotation file read by :mod:`pixelkit.data.formats` for one task, e.g.
Localized Narratives for ``trace`` plus COCO captions for ``caption`` (weights 2 : 1). The
training set is their mixture, sampled with replacement by ``weight / len(source)`` per
record through a seeded sampler, so ``samples_per_epoch`` fixes an epoch's length whatever
the file sizes. Batches mix tasks (each row carries its task id in ``batch["task"]``), or
hold one task each with ``batch_by_task``.

Per record the pipeline is: read (lazily opened image) -> :class:`SampleTransform` /
:class:`TrainTransform` (resize-pad, optional flip with left/right swap and scale jitter)
-> task encoding (:mod:`pixelkit.data.encoding`: prompt, targets, per-position points;
trace targets aligned *after* the flip, which can change the words) -> :func:`collate`.

**Bad images are skipped and counted**, as the readers skip bad records: an image that is
missing, unreadable, truncated or a decompression bomb becomes a :class:`SkippedImage`, which
the collate function drops and reports in ``batch["skipped_images"]``; the stage counts them
(:meth:`PixelDataModule.account`, logged as ``data/skipped_images``) and the run stops with
an error naming the files once more than ``max_bad_image_share`` of the images are bad.

**A resumed run continues its epoch.** The training loader is stateful (Lightning saves
``state_dict()`` in checkpoints and calls ``load_state_dict()`` on resume): its state is the
sampler's epoch and the batches of it already trained, so after a kill the run goes on with
the next batch of the same epoch instead of replaying the epoch from its start.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pixelkit.config import LocationConfig, PixelLLMConfig
from pixelkit.data.alignment import align_caption
from pixelkit.data.encoding import Example, collate, grounded_row, make_row
from pixelkit.data.formats import MissingImageError, detect_and_load, iter_any, load_rgb
from pixelkit.data.packed import PackedSamples
from pixelkit.data.schema import Sample
from pixelkit.data.transforms import SampleTransform, TrainTransform
from pixelkit.modeling.location import LocationCodec
from pixelkit.modeling.tokenizer import load_tokenizer, location_tokenizer

#: Tasks a source can train; ``densecap`` trains the proposal head and captions its regions.
SOURCE_TASKS = ("caption", "trace", "refer", "loca_caption", "densecap")


@dataclass
class SourceConfig:
    """One annotation file used for one task: a named split, or explicit files.

    Attributes:
        task: one of :data:`SOURCE_TASKS`.
        ann: annotation file (any format of :mod:`pixelkit.data.formats`); with ``split``,
            left out.
        images: folder of its images; with ``split``, left out.
        weight: relative sampling weight in the mixture.
        format: the file's format when auto-detection should be skipped.
        limit: read at most this many samples (in file order; reading stops there).
        split: a split of :mod:`pixelkit.data.catalog` (``shapes/train``, ``refcoco/val``):
            its file for ``task`` and its images, under the data module's ``root``.
    """

    task: str
    ann: str | None = None
    images: str | None = None
    weight: float = 1.0
    format: str | None = None
    limit: int | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.task not in SOURCE_TASKS:
            raise ValueError(f"SourceConfig.task={self.task!r}: choose one of {SOURCE_TASKS}")
        if self.weight < 0:
            raise ValueError(f"SourceConfig.weight must be >= 0, got {self.weight} "
                             f"({self.split or self.ann})")
        if self.split is not None and (self.ann is not None or self.images is not None):
            raise ValueError(f"SourceConfig: give split ({self.split}) or ann / images, not both")
        if self.split is None and self.ann is None:
            raise ValueError(f"SourceConfig ({self.task}): give a catalog split or an ann file")

    def resolved(self, root: str | Path) -> SourceConfig:
        """The source with its files: a catalog split's under ``root``, else as given."""
        if self.split is None:
            return self
        from pixelkit.data import catalog

        split = catalog.get(self.split)
        return dataclasses.replace(self, split=None, ann=str(split.annotation(self.task, root)),
                                   images=str(split.image_dir(root)))


#: Bump when a reader or the sample encoding changes what it gives for the same file: the
#: packed caches of earlier versions are then not used.
SAMPLES_CACHE_VERSION = 1


def samples_cache(src: SourceConfig) -> Path:
    """The folder caching a source's packed samples: beside its annotation file, named by a
    hash of everything the samples depend on (the file's path, size and modification time,
    the images folder's path and modification time, the task, the format, the pixelkit and
    cache versions). A changed file or folder gives another name, so a stale cache is never
    read; ``rm -r <ann>.samples-*`` removes them."""
    import hashlib

    from pixelkit import __version__

    ann = Path(src.ann).resolve()
    st = ann.stat()
    images = Path(src.images).resolve() if src.images else None
    images_mtime = images.stat().st_mtime_ns if images and images.is_dir() else None
    # The samples keep their image paths as the source spells them: a relative folder is
    # another cache from another working directory (its paths would not open from here).
    spelled = [src.images, None if src.images is None or Path(src.images).is_absolute()
               else os.getcwd()]
    key = json.dumps([str(ann), st.st_size, st.st_mtime_ns, str(images), images_mtime,
                      src.task, src.format, __version__, SAMPLES_CACHE_VERSION, *spelled])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return ann.with_name(f"{ann.name}.samples-{src.task}-{digest}")


def read_source(src: SourceConfig, strict: bool = False,
                bad_images: dict[str, str] | None = None,
                cache: bool = False) -> PackedSamples:
    """Read a source's samples (non-strict: bad records are skipped and counted), packed.

    The reader streams (a Localized Narratives file line by line) into
    :class:`~pixelkit.data.packed.PackedSamples`, so neither the file nor a list of sample
    objects is ever held whole, and data-loader workers share the packed bytes.

    Args:
        src: the source.
        strict: stop at the first bad record.
        bad_images: collects the image files the reader could not use (path -> message).
        cache: keep the packed samples beside the annotation file (:func:`samples_cache`)
            and memory-map them on the next run instead of reading the file again: 500k
            narratives are then ready in a second, whatever their reading cost.
    """
    folder = samples_cache(src) if cache and not strict else None
    if folder is not None and (folder / "meta.json").is_file():
        packed, meta = PackedSamples.load(folder)
    else:
        # With a cache the whole file is packed (the limit applies below); without one, a
        # limit stops the reading there.
        packed, meta = _read_packed(src, strict, limit=None if folder else src.limit)
        if folder is not None:
            try:
                packed.save(folder, meta)
            except OSError as err:
                print(f"[pixelkit] {src.ann}: packed samples not cached ({err}); the file "
                      "will be read again next run", file=sys.stderr)
    if bad_images is not None:
        for path, message in meta["bad_images"].items():
            bad_images.setdefault(path, message)
    if meta["skipped"]:
        print(f"[pixelkit] {src.ann}: read {meta['records']}, skipped {meta['skipped']} "
              f"(first error: {meta['first_error']})")
    if meta["without_trace"]:
        print(f"[pixelkit] {src.ann}: {meta['without_trace']} narratives without a trace not "
              "used for 'trace'")
    return packed.head(src.limit) if src.limit else packed


def _read_packed(src: SourceConfig, strict: bool, limit: int | None
                 ) -> tuple[PackedSamples, dict[str, Any]]:
    """Every usable sample of a source, packed, and what the reading met (for the cache)."""
    reader_task = {"trace": None, "caption": None, "refer": None}.get(src.task, src.task)
    # Detection parses a JSON file whole: the parsed data goes on to the reader (parsed once).
    fmt, data = (src.format, None) if src.format else detect_and_load(src.ann)
    # Image sizes of narratives (the one format without them) come from a sidecar index,
    # built on the first run: later runs open no image before training.
    options = {"index_sizes": True} if fmt == "localized_narratives" else {}
    stream, report = iter_any(src.ann, src.images, strict=strict, task=reader_task,
                              format=fmt, data=data, **options)
    without = 0
    if src.task == "trace":  # trace needs utterances with locations

        def with_trace(samples: Iterator[Sample]) -> Iterator[Sample]:
            nonlocal without
            for s in samples:
                if s.has_trace:
                    yield s
                else:
                    without += 1

        stream = with_trace(stream)
    packed = PackedSamples(itertools.islice(stream, limit or None))
    meta = {"records": report.records, "skipped": report.skipped,
            "first_error": report.errors[0] if report.errors else "-",
            "bad_images": dict(report.bad_images), "without_trace": without}
    return packed, meta


@dataclass(frozen=True)
class SkippedImage:
    """An example whose image could not be used (what :class:`TaskDataset` returns for it).

    Attributes:
        path: the image file.
        reason: ``missing_images``, ``truncated_images`` or ``bomb_images``.
        message: the error, naming the file.
    """

    path: str
    reason: str
    message: str


class DecodedImages:
    """Decoded RGB images kept in memory up to ``max_mb`` (least recently used out).

    A small world is read thousands of times per run (the quickstart draws 3,000 images
    ~17 times each): decoding its PNGs again is a third of a batch's loading time on the
    shapes world. Each process (a DataLoader worker too) keeps its own cache. Images that
    fail to load are not cached: they raise every time, for the skip-and-count rule.

    Args:
        max_mb: the budget in MB of decoded pixels; 0 turns the cache off.
    """

    def __init__(self, max_mb: float = 0.0) -> None:
        from collections import OrderedDict

        self.max_bytes = int(max_mb * 2**20)
        self._images: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0

    def load(self, path: str, where: str | None = None) -> Any:
        """The RGB ``PIL.Image`` of ``path`` (:func:`load_rgb`'s errors on a bad image)."""
        if self.max_bytes <= 0:
            return load_rgb(path, where)
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image
        image = load_rgb(path, where)
        size = image.width * image.height * 3
        if size <= self.max_bytes:
            self._images[path] = image
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self._bytes -= old.width * old.height * 3
        return image


class TaskDataset(Dataset):
    """One source's samples encoded for its task.

    Args:
        samples: the source's samples (:class:`~pixelkit.data.packed.PackedSamples` from
            :func:`read_source`; any sequence works).
        task: the task to encode them for.
        tokenizer: the LM's tokenizer.
        transform: image + coordinates into the model frame (with augmentation or not).
        max_text_length: longest target in tokens (EOS included).
        alignment: trace-to-token method (``"text"``: exact word matching; ``"official"``:
            the official relative-position rule, which is one utterance off for half of
            the tokens, see :mod:`pixelkit.data.alignment`).
        point_prompt_prob: for ``loca_caption`` / ``densecap`` rows, probability of
            prompting with clicked points inside the box instead of the box itself.
        box_jitter: random shift / scale of region box prompts, as a fraction of their side
            (proposals are never exact; 0 for evaluation).
        max_regions: most region rows per ``densecap`` image.
        seed: seed of the encoding randomness (point prompts, box jitter).
        images: where images are read from (default: decoded from disk at every read).
        codec: the model's location codec (:mod:`pixelkit.modeling.location`); None: the
            default ``regression`` rows. With another format ``tokenizer`` must hold the
            codec's tokens (:func:`~pixelkit.modeling.tokenizer.add_location_tokens`), and
            ``trace`` rows become grounded captions (:func:`grounded_row`).
        image_boxes: image path -> ``(N, 4)`` pixel boxes of every object in it (the
            ``regions`` format's training proposals, :meth:`_regions`).
    """

    def __init__(self, samples: Sequence[Sample], task: str, tokenizer: Any,
                 transform: SampleTransform, max_text_length: int = 48,
                 alignment: str = "text", point_prompt_prob: float = 0.0,
                 box_jitter: float = 0.0, max_regions: int = 8, seed: int = 0,
                 images: DecodedImages | None = None,
                 codec: LocationCodec | None = None,
                 image_boxes: dict[str, np.ndarray] | None = None) -> None:
        self.codec = codec if codec is not None and codec.changes_rows else None
        self.image_boxes = image_boxes
        self.samples, self.task, self.tokenizer = samples, task, tokenizer
        self.images = images or DecodedImages()
        self.transform = transform
        self.max_text_length, self.alignment = max_text_length, alignment
        self.point_prompt_prob, self.box_jitter = point_prompt_prob, box_jitter
        self.max_regions, self.seed = max_regions, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Example | SkippedImage:
        sample = self.samples[index]
        try:
            ts = self.transform(sample, self.images.load(sample.image_path, sample.source or None))
        except MissingImageError as err:  # missing, unreadable, truncated, bomb: skip, count
            return SkippedImage(sample.image_path, err.reason, str(err))
        # Seeded through torch's RNG, which Lightning seeds per process and worker.
        rng = np.random.default_rng([self.seed, int(torch.randint(0, 2**31, ()))])
        meta = {"task": self.task, "image_id": sample.image_id, "ann_id": sample.ann_id,
                "frame": dataclasses.asdict(ts.frame), "source": sample.source, "image_path": sample.image_path}
        # Location formats write boxes on a grid of the visible image content.
        loc: dict[str, Any] = {} if self.codec is None else {"codec": self.codec,
                                                             "extent": ts.frame.visible[2:]}
        gt = None
        if self.codec is not None and self.codec.uses_regions:
            # Every row of the image reads its proposals; their boxes train the proposal
            # head, whose proposals replace them at inference.
            loc["regions"], gt = self._regions(sample, ts, rng)
        row = lambda task, text, **kw: make_row(self.tokenizer, task, text,
                                                max_length=self.max_text_length, **loc, **kw)
        if self.task == "caption":
            return Example(ts.image, [row("caption", ts.text)], gt_boxes=gt, meta=meta)
        if self.task == "trace" and self.codec is not None and self.codec.writes_targets:
            return Example(ts.image, [grounded_row(
                self.tokenizer, self.codec, ts.utterances, ts.utterance_boxes,
                extent=loc["extent"], max_length=self.max_text_length,
                regions=loc.get("regions"))], gt_boxes=gt, meta=meta)
        if self.task == "trace":
            aligned = align_caption(ts.utterances, ts.utterance_boxes, self.tokenizer,
                                    points=ts.utterance_points, caption=ts.text,
                                    method=self.alignment)
            return Example(ts.image, [row("trace", ts.text, target_ids=aligned.input_ids,
                                          token_boxes=aligned.boxes)], meta=meta)
        boxes = ts.boxes[ts.box_valid]
        texts = [t for t, ok in zip(ts.box_texts, ts.box_valid) if ok]
        if self.task == "refer":
            return Example(ts.image, [row("refer", ts.text, box=boxes[0])], gt_boxes=gt,
                           meta=meta)
        if self.task == "loca_caption":
            return Example(ts.image, [self._region_row(row, ts.text, boxes[0], rng)],
                           gt_boxes=gt, meta=meta)
        # densecap: the proposal head learns all boxes; a few regions are captioned
        order = rng.permutation(len(boxes))[: self.max_regions]
        rows = [self._region_row(row, texts[i], boxes[i], rng) for i in order]
        return Example(ts.image, rows, gt_boxes=boxes, meta=meta)

    def _region_row(self, row: Any, text: str, box: np.ndarray, rng: np.random.Generator) -> Any:
        """A ``loca_caption`` row: box prompt (jittered) or clicked points inside the box."""
        # (clicks cannot be written as regions: a regions model writing its prompts
        # reads boxes only)
        regions_text = self.codec is not None and self.codec.uses_regions \
            and self.codec.writes_prompts
        if self.point_prompt_prob and not regions_text and rng.random() < self.point_prompt_prob:
            n = int(rng.integers(1, 3))
            # clicks in the central half of the box land on the object for compact shapes
            cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
            pts = np.stack([cx + rng.uniform(-0.25, 0.25, n) * w,
                            cy + rng.uniform(-0.25, 0.25, n) * h], 1).astype(np.float32)
            return row("loca_caption", text, box=box, points=pts,
                       point_labels=np.ones(n, np.int64))
        prompt = jitter_box(box, self.box_jitter, rng)
        if self.codec is not None and self.codec.writes_prompts:
            # The (jittered) prompt is written into the text; regression targets stay on
            # the true box (text / tokens formats have no point targets).
            r = row("loca_caption", text, box=prompt)
            r.point_targets = row("loca_caption", text, box=box).point_targets
            return r
        r = row("loca_caption", text, box=box)
        r.box = prompt  # the (jittered) prompt; the targets stay on the true box
        return r

    def _regions(self, sample: Sample, ts: Any, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Training proposals of the ``regions`` format (Groma trains on ground truth).

        Every object box of the image (:attr:`image_boxes`) and the sample's own boxes (a
        referred object), jittered by ``box_jitter`` as proposals are never exact, in a
        random order, at most ``num_regions``: the sample's first box always among them.

        Returns:
            ``(regions (K, 4), gt_boxes (N, 4))`` in the model frame: the rows' proposals
            and the boxes that train the proposal head.
        """
        vx, vy = ts.frame.visible[2:]
        px = self.image_boxes.get(sample.image_path) if self.image_boxes else None
        found = (ts.frame.boxes_to_model(px) if px is not None and len(px)
                 else np.zeros((0, 4)))
        found = np.clip(found, 0, [vx, vy, vx, vy])
        found = found[(found[:, 2] > found[:, 0]) & (found[:, 3] > found[:, 1])]
        own = np.asarray(ts.boxes, np.float64).reshape(-1, 4)[np.asarray(ts.box_valid, bool)]
        # the image's boxes less those that are the sample's own (the same object twice)
        others = [b for b in found if not any(np.allclose(b, o, atol=1e-3) for o in own)]
        gt = np.asarray([*own, *others], np.float64).reshape(-1, 4)
        order = rng.permutation(len(gt))
        K = self.codec.num_regions if self.codec is not None else len(gt)
        if len(own) and 0 not in order[:K]:  # keep the referred / described box
            order[rng.integers(min(K, len(order)))] = 0
        regions = np.stack([jitter_box(gt[i], self.box_jitter, rng) for i in order[:K]]) \
            if len(gt) else np.zeros((0, 4), np.float32)
        return regions.astype(np.float32), gt.astype(np.float32)


def jitter_box(box: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """``box`` with each side moved by up to ``amount`` of the box's width / height
    (clipped to [0, 1]; the box itself when the jitter would empty it)."""
    box = np.asarray(box, np.float32)
    if not amount:
        return box
    w, h = box[2] - box[0], box[3] - box[1]
    out = np.clip(box + rng.uniform(-amount, amount, 4) * np.array([w, h, w, h]), 0, 1)
    return box if out[2] <= out[0] or out[3] <= out[1] else out.astype(np.float32)


class MixtureDataset(Dataset):
    """Concatenation of task datasets; the sampler decides the mixture."""

    def __init__(self, parts: list[TaskDataset]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Example:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part][index - int(self.offsets[part])]


class MixtureSampler(Sampler[int]):
    """``num_samples`` record indices per epoch, drawn with replacement by record weight.

    Epoch ``e`` is a function of ``(seed, e)`` alone (not of the epochs before it), so a
    resumed run can draw it again and skip what it already trained (:meth:`skip_batches`).

    Args:
        weights: (N,) sampling weight of each record (any scale).
        num_samples: indices per epoch.
        seed: the sampler's seed.
    """

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int) -> None:
        w = np.asarray(weights, np.float64)
        self.probs = w / w.sum()
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0
        self.skip = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, batches: int, batch_size: int) -> None:
        """The next iteration starts ``batches`` batches into the epoch (once)."""
        self.skip = batches * batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.choice(len(self.probs), size=self.num_samples, p=self.probs)
        skip, self.skip = self.skip, 0
        yield from order[skip:].tolist()


class TaskBatchSampler(Sampler[list[int]]):
    """Batches of one task each: draw a source by weight, then ``batch_size`` of its records."""

    def __init__(self, offsets: np.ndarray, weights: list[float], batch_size: int,
                 num_batches: int, seed: int) -> None:
        self.offsets, self.batch_size, self.num_batches = offsets, batch_size, num_batches
        w = np.asarray(weights, np.float64)
        self.probs = w / w.sum()
        self.seed, self.epoch = seed, 0
        self.skip = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, batches: int, batch_size: int | None = None) -> None:
        """The next iteration starts ``batches`` batches into the epoch (once)."""
        self.skip = batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        skip, self.skip = self.skip, 0
        for b in range(self.num_batches):
            part = int(rng.choice(len(self.probs), p=self.probs))
            lo, hi = int(self.offsets[part]), int(self.offsets[part + 1])
            batch = (lo + rng.integers(0, hi - lo, self.batch_size)).tolist()
            if b >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose place in the epoch goes into checkpoints.

    Lightning's stateful dataloader support saves ``state_dict()`` with every checkpoint and
    calls ``load_state_dict()`` before iterating again on resume. The state is the
    sampler's epoch and the number of batches of it trained so far, read from the trainer's
    own progress (``progress``), not counted here: Lightning fetches a batch ahead, so a
    count of batches handed out would be one too many.

    Args:
        progress: returns the batches of the current epoch already trained.
        *args, **kwargs: :class:`torch.utils.data.DataLoader`'s.
    """

    def __init__(self, *args: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def _sampler(self) -> MixtureSampler | TaskBatchSampler:
        return self.batch_sampler if isinstance(self.batch_sampler, TaskBatchSampler) \
            else self.sampler  # type: ignore[return-value]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._sampler().epoch), "batches": int(self._progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts fresh
            epoch, done = epoch + 1, 0
        sampler = self._sampler()
        sampler.set_epoch(epoch)
        sampler.skip_batches(done, self.batch_size or 1)


def resolve_sources(sources: list[SourceConfig | dict[str, Any]], root: str | Path
                    ) -> list[SourceConfig]:
    """Sources (configs or dicts) with their files: catalog splits resolved under ``root``."""
    return [(s if isinstance(s, SourceConfig) else SourceConfig(**s)).resolved(root)
            for s in sources]


class PixelDataModule(L.LightningDataModule):
    """Training and validation data of a stage.

    Args:
        train: training sources (task, annotation file, images folder, weight).
        val: validation sources (read in order, no augmentation).
        root: the data root: catalog splits (``{task: trace, split: shapes/train}``) are
            read from under it (:mod:`pixelkit.data.catalog`); explicit ``ann`` / ``images``
            paths are used as given.
        tokenizer: the LM tokenizer (``"shapes"``, hub id or directory); must match the model.
            The location format is the model's (``model.location.*``): :meth:`setup` takes it
            from the trainer's model (:meth:`set_location`), adds its tokens to this
            tokenizer and encodes every row with its codec; ``max_text_length`` then grows
            for the formats that write boxes into targets
            (:meth:`~pixelkit.modeling.location.LocationCodec.target_length`).
        image_size: the model's input side S.
        batch_size: examples per batch (a ``densecap`` example holds several region rows).
        samples_per_epoch: examples drawn per training epoch (with replacement).
        num_workers: DataLoader worker processes.
        batch_by_task: one task per batch instead of mixed batches.
        hflip_prob: horizontal flip probability (swaps "left"/"right" in the text).
        scale_jitter: content scale range ``[lo, hi]``; null for none.
        alignment: trace-to-token method (see :class:`TaskDataset`).
        max_text_length: longest target in tokens.
        point_prompt_prob: share of region rows prompted with clicks instead of a box.
        box_jitter: region box prompt jitter (fraction of the side).
        max_regions: region rows per dense-captioning image.
        val_limit: at most this many samples per validation source.
        max_bad_image_share: the run stops (naming the files) once more than this share of
            the images are missing, unreadable, truncated or bombs; fewer are skipped and
            counted (``data/skipped_images``).
        cache_samples: keep each source's packed samples beside its annotation file and
            memory-map them on later runs (:func:`read_source`); off: read every run.
        image_cache_mb: keep up to this many MB of decoded images in memory, per process
            (:class:`DecodedImages`); 0: decode every read. Worth it when the images fit
            (the shapes world's 3,000 are 35 MB); a DataLoader worker holds its own.
        seed: sampler / augmentation seed.
    """

    def __init__(self, train: list[SourceConfig], val: list[SourceConfig] | None = None,
                 root: str = "data/shapes",
                 tokenizer: str = "shapes", image_size: int = 64, batch_size: int = 32,
                 samples_per_epoch: int = 4096, num_workers: int = 0, batch_by_task: bool = False,
                 hflip_prob: float = 0.5, scale_jitter: list[float] | None = None,
                 alignment: str = "text", max_text_length: int = 48,
                 point_prompt_prob: float = 0.2, box_jitter: float = 0.1, max_regions: int = 6,
                 val_limit: int | None = 256, max_bad_image_share: float = 0.01,
                 cache_samples: bool = True, image_cache_mb: float = 0.0,
                 seed: int = 0) -> None:
        # Every argument, named explicitly: under LightningCLI, Lightning 2.5's
        # save_hyperparameters() takes the config's values, which leave out the arguments
        # linked from the model (image_size, tokenizer).
        hparams = {k: v for k, v in locals().items() if k not in ("self", "train", "val", "__class__")}
        super().__init__()
        self.train_sources = resolve_sources(train, root)
        self.val_sources = resolve_sources(val or [], root)
        # Checkpoints hold plain values only (they are read with weights_only=True).
        self.save_hyperparameters(hparams)
        self.hparams.update(train=[dataclasses.asdict(s) for s in self.train_sources],
                            val=[dataclasses.asdict(s) for s in self.val_sources])
        if not self.train_sources:
            raise ValueError("PixelDataModule.train needs at least one source")
        for split, sources in (("train", self.train_sources), ("val", self.val_sources)):
            first: dict[tuple[str, str], int] = {}
            for i, src in enumerate(sources):
                key = (src.task, str(Path(src.ann).resolve()))
                if key in first:  # the readers' rule for repeated records, for whole files
                    raise ValueError(f"data.{split}[{i}] repeats data.{split}[{first[key]}] "
                                     f"({src.task}: {src.ann}); to sample a source more, "
                                     "raise its weight")
                first[key] = i
        if not 0 <= max_bad_image_share <= 1:
            raise ValueError(f"PixelDataModule.max_bad_image_share must be in [0, 1], "
                             f"got {max_bad_image_share}")
        #: The LM tokenizer; with a location format, the one with its tokens
        #: (:meth:`set_location`, from the model at :meth:`setup`).
        self.tokenizer = load_tokenizer(tokenizer)
        #: The model's location codec (``model.location.*``, the one place the format is
        #: set): :meth:`setup` takes it from the trainer's model.
        self.codec = LocationCodec()
        self.images = DecodedImages(image_cache_mb)
        self.train_set: MixtureDataset | None = None
        self.val_sets: list[TaskDataset] = []
        #: Bad images met so far: path -> message (first met first).
        self.bad_images: dict[str, str] = {}
        #: image folder -> image path -> every object's pixel boxes (:meth:`image_boxes`).
        self._image_boxes: dict[str | None, dict[str, np.ndarray]] = {}

    def set_location(self, location: LocationConfig | dict[str, Any] | None) -> None:
        """Encode rows for a model's ``location`` config: its codec, and the tokenizer with
        the tokens it adds (:func:`~pixelkit.modeling.tokenizer.add_location_tokens`).

        :meth:`setup` calls it with the trainer's model config, so the format is set in one
        place (``model.location.*``); call it yourself to use the data module without a
        trainer. Datasets built before are rebuilt.
        """
        codec = LocationCodec(location)
        if codec.config == self.codec.config:
            return
        self.codec = codec
        self.tokenizer = location_tokenizer(self.hparams.tokenizer, codec.config)
        self.train_set, self.val_sets = None, []

    def _dataset(self, src: SourceConfig, train: bool) -> TaskDataset:
        hp = self.hparams
        if not train:
            src = SourceConfig(**{**src.__dict__, "limit": src.limit or hp.val_limit})
        samples = read_source(src, bad_images=self.bad_images, cache=hp.cache_samples)
        if not samples:
            raise ValueError(f"source {src.ann} ({src.task}) has no usable samples")
        transform = (TrainTransform(hp.image_size, hflip_prob=hp.hflip_prob,
                                    scale_jitter=tuple(hp.scale_jitter) if hp.scale_jitter else None,
                                    seed=hp.seed)
                     if train else SampleTransform(hp.image_size))
        # Written formats put boxes into the targets: the budget grows so that a narrative
        # that fits as plain text is not cut inside its boxes (LocationCodec.target_length).
        return TaskDataset(samples, src.task, self.tokenizer, transform,
                           max_text_length=self.codec.target_length(self.tokenizer,
                                                                    hp.max_text_length),
                           alignment=hp.alignment, codec=self.codec,
                           point_prompt_prob=hp.point_prompt_prob if train else 0.0,
                           box_jitter=hp.box_jitter if train else 0.0,
                           max_regions=hp.max_regions, seed=hp.seed, images=self.images,
                           image_boxes=self.image_boxes(src) if self.codec.uses_regions else None)

    def image_boxes(self, src: SourceConfig) -> dict[str, np.ndarray]:
        """Every object's pixel box per image of ``src`` (the ``regions`` format's training
        proposals): the ``detection`` annotations of the catalog split whose image folder
        ``src`` reads (under whatever root holds it), read once per folder. Without one (a
        split with no instances file) the proposals are each sample's own boxes, and a line
        says so.
        """
        from pixelkit.data import catalog

        cache = self._image_boxes
        if src.images in cache:
            return cache[src.images]
        folder = Path(src.images).resolve() if src.images else Path()
        ann = None
        for split in map(catalog.get, catalog.names()):
            tail = Path(split.images).parts
            if "detection" in split.tasks and folder.parts[-len(tail):] == tail:
                root = Path(*folder.parts[:-len(tail)])
                if split.annotation("detection", root).is_file():
                    ann = split.annotation("detection", root)
                    break
        boxes: dict[str, np.ndarray] = {}
        if ann is not None:
            stream, report = iter_any(ann, src.images, strict=False, task="detection")
            boxes = {s.image_path: s.boxes for s in stream}
            print(f"[pixelkit] regions: every object box of {len(boxes)} images from {ann}"
                  + (f" ({report.skipped} records skipped)" if report.skipped else ""))
        else:
            print(f"[pixelkit] regions: no detection annotations for the images in "
                  f"{src.images}; each sample's proposals are its own boxes only")
        cache[src.images] = boxes
        return boxes

    def setup(self, stage: str | None = None) -> None:
        config = getattr(getattr(self.trainer, "lightning_module", None), "config", None)
        if isinstance(config, PixelLLMConfig):  # the model decides the location format
            self.set_location(config.location)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = MixtureDataset([self._dataset(s, True) for s in self.train_sources])
        if not self.val_sets and self.val_sources:
            self.val_sets = [self._dataset(s, False) for s in self.val_sources]
        if self.bad_images:  # the readers' skipped images count too; too many stops here
            print(f"[pixelkit] {len(self.bad_images)} image(s) could not be used and were "
                  f"skipped (counted in data/skipped_images); first: "
                  f"{next(iter(self.bad_images.values()))}")
            self._check_share()

    def _collate(self, examples: list[Example | SkippedImage]) -> dict[str, Any]:
        """:func:`collate` of the usable examples; ``skipped_images`` lists the others.

        A batch whose every image was bad has no ``images`` (the stage skips the step).
        """
        good = [ex for ex in examples if isinstance(ex, Example)]
        skipped = [(ex.path, ex.message) for ex in examples if isinstance(ex, SkippedImage)]
        batch = collate(good, pad_id=int(self.tokenizer.pad_token_id or 0)) if good else {}
        batch["skipped_images"] = skipped
        return batch

    def num_images(self) -> int:
        """Distinct images of the data, bad ones included (after setup)."""
        sets = [*(self.train_set.parts if self.train_set else []), *self.val_sets]
        return len({s.image_path for ds in sets for s in ds.samples} | set(self.bad_images))

    def _check_share(self) -> None:
        """Raise once more than ``max_bad_image_share`` of the images are bad."""
        total = max(self.num_images(), 1)
        if len(self.bad_images) > self.hparams.max_bad_image_share * total:
            first = "; ".join(list(self.bad_images.values())[:3])
            raise ValueError(
                f"{len(self.bad_images)} of {total} images cannot be used, more than "
                f"data.max_bad_image_share={self.hparams.max_bad_image_share:g}; first: {first}")

    def account(self, batch: dict[str, Any]) -> int:
        """Count a batch's skipped images; returns how many distinct bad images so far.

        Raises:
            ValueError: more than ``max_bad_image_share`` of the images are bad (the message
                names the first files and why).
        """
        for path, message in batch.get("skipped_images") or []:
            if path not in self.bad_images:
                self.bad_images[path] = message
                if len(self.bad_images) <= 10:
                    print(f"[pixelkit] skipped a bad image (counted in data/skipped_images): "
                          f"{message}")
                self._check_share()
        return len(self.bad_images)

    def _trained_batches(self) -> int:
        """Batches of the current epoch trained so far (the trainer's own progress)."""
        trainer = self.trainer
        return 0 if trainer is None else int(
            trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        hp = self.hparams
        weights = [s.weight for s in self.train_sources]
        common = {"collate_fn": self._collate, "num_workers": hp.num_workers,
                  "persistent_workers": hp.num_workers > 0, "progress": self._trained_batches}
        if hp.batch_by_task:
            sampler = TaskBatchSampler(self.train_set.offsets, weights, hp.batch_size,
                                       math.ceil(hp.samples_per_epoch / hp.batch_size), hp.seed)
            return ResumableDataLoader(self.train_set, batch_sampler=sampler, **common)
        per_record = np.concatenate([np.full(len(p), w / len(p)) for p, w in
                                     zip(self.train_set.parts, weights)])
        sampler = MixtureSampler(per_record, hp.samples_per_epoch, hp.seed)
        return ResumableDataLoader(self.train_set, batch_size=hp.batch_size, sampler=sampler,
                                   drop_last=True, **common)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=False,
                           collate_fn=self._collate, num_workers=self.hparams.num_workers)
                for ds in self.val_sets]

    def val_tasks(self) -> list[str]:
        """Task of each validation dataloader, in order."""
        return [s.task for s in self.val_sources]


def shapes_sources(root: str, split: str, tasks: list[str] | None = None,
                   weights: dict[str, float] | None = None) -> list[SourceConfig]:
    """Sources of a shapes world written by ``pixelkit synth --out root`` for one split
    (the catalog's ``shapes/<split>``, resolved under ``root``)."""
    from pixelkit.data import catalog

    weights = weights or {}
    tasks = tasks or [t for t in SOURCE_TASKS]
    return catalog.get(f"shapes/{split}").sources(root, {t: weights.get(t, 1.0) for t in tasks})
