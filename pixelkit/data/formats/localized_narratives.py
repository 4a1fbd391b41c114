"""Localized Narratives JSON lines -> ``trace`` samples.

One line per narrative::

    {"dataset_id": "mscoco_val2017", "image_id": "137576", "annotator_id": 93,
     "caption": "In this image there are ...",
     "timed_caption": [{"utterance": "In this", "start_time": 0.0, "end_time": 0.4}, ...],
     "traces": [[{"x": 0.2086, "y": -0.0533, "t": 0.022}, ...], ...],
     "voice_recording": "coco_val/coco_val_137576_93.ogg"}

``x`` and ``y`` are normalised to the image width and height and may fall slightly
outside [0, 1]; ``t`` is in seconds. Records carry no image size, so each image header
is opened once (or sizes are given through ``image_sizes``).

Rules beyond the shared ones (:mod:`pixelkit.data.formats._common`):

* times are seconds from the start of the recording, so never negative. A trace point
  with ``t < 0`` is dropped and counted (``negative_trace_times``, points); an utterance
  with a negative ``start_time`` or ``end_time`` keeps its text but gets no location
  (NaN, counted as ``negative_utterance_times``). Both are fix-ups, as clipping is: the
  rest of the narrative is still good.
* a narrative is identified by ``(dataset_id, image_id, annotator_id, caption)``; a line
  repeating all four of an earlier line is a duplicate (``duplicate_narrative_ids``), so
  a file concatenated with itself reads as the file once. Different annotators of one
  image, or one annotator's different narratives, are not duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pixelkit.data.formats._common import (
    Collector,
    FirstIds,
    ImageResolver,
    ImageSizes,
    as_number,
    get,
    get_id,
    get_list,
    get_str,
    iter_jsonl,
    locate_image,
    show,
)
from pixelkit.data.schema import DataFormatError, ReadReport, Sample

FORMAT = "localized_narratives"

#: File-name patterns tried (in order) to find an LN image in ``images_dir``: the id as
#: written (Open Images, ADE20k, Flickr30k) and the zero-padded COCO 2017 names.
LN_IMAGE_PATTERNS: tuple[str, ...] = (
    "{id}.jpg",
    "{id:012d}.jpg",
    "{id}.png",
    "{id:012d}.png",
    "{id}.jpeg",
)

#: The official pipeline needs at least two trace points to interpolate a location.
MIN_TRACE_POINTS = 2


def _timed_caption(
    record: dict[str, Any], where: str, col: Collector
) -> tuple[list[str], np.ndarray]:
    """Validate ``timed_caption``; returns the utterances and their ``(U, 2)`` start / end
    times (a missing field is no utterance)."""
    if "timed_caption" not in record:
        return [], np.zeros((0, 2))
    items = get_list(record, "timed_caption", where)
    # Fast path (as for traces): pull every field at once and check the types in bulk.
    try:
        utterances = [u["utterance"] for u in items]
        times = [v for u in items for v in (u["start_time"], u["end_time"])]
    except (KeyError, TypeError):
        utterances, times = [], None
    if (
        times is not None
        and set(map(type, utterances)) <= {str}
        and (t := _finite_array(times)) is not None
    ):
        t = t.reshape(-1, 2)
        # The official builder tolerates end < start (it averages instead of
        # integrating); count it so the oddity is visible, but keep the record.
        col.note("utterances_ending_before_start", int((t[:, 1] < t[:, 0]).sum()))
        return utterances, t
    # Slow path, only for a bad record: find the exact field to name.
    for i, item in enumerate(items):
        field = f"timed_caption[{i}]"
        text = get(item, "utterance", where, field=f"{field}.utterance")
        if not isinstance(text, str):
            raise DataFormatError(
                f"{where}: field '{field}.utterance' must be a string, got {show(text)}"
            )
        for key in ("start_time", "end_time"):
            as_number(get(item, key, where, field=f"{field}.{key}"), where, f"{field}.{key}")
    raise AssertionError("unreachable: the fast path refused a valid timed caption")


def _trace_points(record: dict[str, Any], where: str) -> np.ndarray:
    """Validate ``traces`` (segments of ``{x, y, t}`` numbers); returns all points as a
    ``(P, 3)`` float64 array of ``(x, y, t)``.

    A missing ``traces`` is no trace (a real COCO record lacks it, see
    google/localized-narratives issue #10), not an error.
    """
    if "traces" not in record:
        return np.zeros((0, 3))
    segments = get_list(record, "traces", where)
    # Fast path: one flat list checked by type in C; traces have hundreds of points per
    # record and LN files hundreds of thousands of records.
    try:
        flat = [v for seg in segments for p in seg for v in (p["x"], p["y"], p["t"])]
    except (KeyError, TypeError):
        flat = None
    if flat is not None and (points := _finite_array(flat)) is not None:
        return points.reshape(-1, 3)
    # Slow path, only for a bad record: find the exact field to name.
    for i, segment in enumerate(segments):
        if not isinstance(segment, list):
            raise DataFormatError(
                f"{where}: field 'traces[{i}]' must be a list of points, got {show(segment)}"
            )
        for j, point in enumerate(segment):
            for key in ("x", "y", "t"):
                field = f"traces[{i}][{j}].{key}"
                as_number(get(point, key, where, field=field), where, field)
    raise AssertionError("unreachable: the fast path refused a valid trace")


def _finite_array(values: list[Any]) -> np.ndarray | None:
    """``values`` as a float64 array when all are finite JSON numbers, else None (the
    caller then looks for the bad value one by one)."""
    if not set(map(type, values)) <= {int, float}:
        return None
    try:
        array = np.asarray(values, np.float64)
    except OverflowError:  # an int beyond float range
        return None
    return array if np.isfinite(array).all() else None


def _locations_to_pixels(
    means: np.ndarray, boxes: np.ndarray, size: tuple[int, int], col: Collector
) -> tuple[np.ndarray, np.ndarray]:
    """Scale normalised per-utterance means ``(U, 2)`` and boxes ``(U, 4)`` to pixels.

    Trace points may lie slightly outside the image; boxes and points are clipped to it
    and the utterances affected counted (``clipped_trace_boxes``), the same fix-up as for
    annotated boxes. NaN rows (no location) stay NaN.
    """
    w, h = size
    scale = np.array([w, h, w, h], np.float64)
    box_px = np.asarray(boxes, np.float64) * scale
    point_px = np.asarray(means, np.float64) * scale[:2]
    box_c = np.clip(box_px, 0.0, scale)
    point_c = np.clip(point_px, 0.0, scale[:2])
    with np.errstate(invalid="ignore"):
        changed = (box_c != box_px).any(axis=1) | (point_c != point_px).any(axis=1)
    changed &= np.isfinite(box_px).all(axis=1)
    col.note("clipped_trace_boxes", int(changed.sum()))
    return box_c.astype(np.float32), point_c.astype(np.float32)


def read_localized_narratives(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    image_pattern: str | Sequence[str] | None = None,
    image_sizes: Mapping[Any, tuple[int, int]] | None = None,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read a Localized Narratives ``.jsonl`` file into a list of ``trace`` samples:
    :func:`iter_localized_narratives` to the end (same arguments, same samples)."""
    samples, report = iter_localized_narratives(path, images_dir, strict,
                                                image_pattern=image_pattern,
                                                image_sizes=image_sizes,
                                                check_images=check_images)
    return list(samples), report


def iter_localized_narratives(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    image_pattern: str | Sequence[str] | None = None,
    image_sizes: Mapping[Any, tuple[int, int]] | None = None,
    check_images: bool = False,
    index_sizes: bool = False,
) -> tuple[Iterator[Sample], ReadReport]:
    """Stream a Localized Narratives ``.jsonl`` file as ``trace`` samples, line by line
    (memory does not grow with the file: Open Images' 500k narratives are 12 GB of JSON).

    Each narrative becomes one sample whose ``utterances`` are the timed-caption
    utterances and whose ``utterance_boxes`` / ``utterance_points`` (pixels) come from
    :func:`pixelkit.data.alignment.utterance_locations`. A narrative with fewer than two
    trace points (or no timed caption) keeps NaN locations (counted as
    ``narratives_without_trace``, as the official pipeline skips its trace) and stays
    usable as a caption.

    Args:
        path: the ``.jsonl`` file.
        images_dir: folder of the images; needed to read image sizes unless every
            size is given in ``image_sizes``.
        strict: raise :class:`DataFormatError` on the first bad line (True) or skip
            and count bad lines (False).
        image_pattern: file-name pattern(s) relative to ``images_dir``, with ``{id}``
            for the image id and ``{dataset_id}`` available, e.g.
            ``"COCO_val2014_{id:012d}.jpg"``; default :data:`LN_IMAGE_PATTERNS`.
        image_sizes: known ``(width, height)`` per image id; looked up before opening
            the image (the image is then not needed).
        check_images: also open every image even when its size is known.
        index_sizes: keep image sizes in the sidecar index (see above).

    With ``index_sizes`` (what training does), image sizes read from headers are kept in
    a sidecar index beside the file (``<file>.image-sizes.json``,
    :class:`~pixelkit.data.formats._common.ImageSizes`), so the next run opens no image.

    Returns:
        ``(samples, report)``: a generator of samples, and the report it fills (complete
        once the generator is exhausted); ``report.records`` counts narratives read and
        ``report.skipped`` bad ones. The arguments are checked at the call.

    Raises:
        DataFormatError: (strict) a bad line; the message names file, line and field.
        MissingImageError: (strict) an image needed for its size is missing.
    """
    if images_dir is None and image_sizes is None:
        raise ValueError(
            f"{path}: Localized Narratives records carry no image size, which is needed to turn "
            "trace coordinates into pixels: pass images_dir (or image_sizes)"
        )
    if check_images and images_dir is None:
        raise ValueError("check_images=True needs images_dir")
    col = Collector(path, FORMAT, strict)
    resolver = ImageResolver.from_option(images_dir, image_pattern, LN_IMAGE_PATTERNS)
    sizes = ImageSizes.beside(path) if index_sizes else ImageSizes()
    seen = FirstIds("narrative")

    def samples() -> Iterator[Sample]:
        try:
            for lineno, record in iter_jsonl(path, col):
                where = f"{path}:{lineno}"
                try:
                    sample = _read_record(
                        record, where, resolver, sizes, image_sizes, check_images, col, seen
                    )
                except DataFormatError as e:
                    col.bad(e)
                    continue
                col.ok()
                yield sample
        finally:  # also when the caller stops early (a limit): keep what was read
            sizes.save()

    return samples(), col.report


def _read_record(
    record: dict[str, Any],
    where: str,
    resolver: ImageResolver,
    sizes: ImageSizes,
    image_sizes: Mapping[Any, tuple[int, int]] | None,
    check_images: bool,
    col: Collector,
    seen: FirstIds,
) -> Sample:
    image_id = get_id(record, "image_id", where)
    caption = get_str(record, "caption", where)
    annotator_id = get_id(record, "annotator_id", where) if "annotator_id" in record else None
    dataset_id = record.get("dataset_id")
    dataset_id = dataset_id if isinstance(dataset_id, str) else None
    seen.claim(
        (dataset_id, image_id, annotator_id, caption),
        where,
        "dataset_id, image_id, annotator_id, caption",
    )
    utterances, times = _timed_caption(record, where, col)
    trace = _trace_points(record, where)
    fields = {"dataset_id": dataset_id or ""}

    # Image: its size is needed to turn normalised trace coordinates into pixels.
    path, size = locate_image(resolver, sizes, image_sizes, image_id, where, check_images, **fields)

    # Negative times (see the module docstring): drop such points, unlocate such utterances.
    late = trace[:, 2] >= 0
    col.note("negative_trace_times", len(trace) - int(late.sum()))
    trace = trace[late]
    early_utt = (times < 0).any(axis=1)
    col.note("negative_utterance_times", int(early_utt.sum()))

    n_utt = len(utterances)
    if len(trace) < MIN_TRACE_POINTS or n_utt == 0:
        col.note("narratives_without_trace")
        boxes = np.full((n_utt, 4), np.nan, np.float32)
        points = np.full((n_utt, 2), np.nan, np.float32)
    else:
        # Imported here: only trace records need it, and it is a sibling module.
        from pixelkit.data.alignment import locations_from_arrays

        # Coordinates or times near the float limit overflow to inf / NaN here; such an
        # utterance ends up without a location (counted below), so numpy need not warn.
        with np.errstate(over="ignore", invalid="ignore"):
            means, norm_boxes = locations_from_arrays(times, trace)
            means[early_utt] = np.nan
            norm_boxes[early_utt] = np.nan
            boxes, points = _locations_to_pixels(means, norm_boxes, size, col)
        col.note("utterances_without_trace", int(np.isnan(boxes).any(axis=1).sum()))

    extra = {k: record[k] for k in ("dataset_id", "annotator_id", "voice_recording") if k in record}
    extra["trace_points"] = len(trace)
    return Sample(
        image_path=path,
        image_size=(int(size[0]), int(size[1])),
        task="trace",
        text=caption,
        utterances=utterances,
        utterance_boxes=boxes,
        utterance_points=points,
        image_id=image_id,
        source=where,
        extra=extra,
    )
