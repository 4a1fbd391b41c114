"""Readers for the real annotation formats PixelLLM trains on (DESIGN section 3).

Every reader returns ``(samples, report)``: a list of
:class:`~pixelkit.data.schema.Sample` (boxes in xyxy pixels of the original image) and a
:class:`~pixelkit.data.schema.ReadReport` saying how many records were read, which
were skipped and why, and which fix-ups were made (``clipped_boxes``,
``narratives_without_trace``, ``crowd_boxes``, ...). With ``strict=True`` (the default)
the first bad record raises :class:`~pixelkit.data.schema.DataFormatError` naming the
file, the line or record index and the field. The shared rules (bad values, images,
deeply nested JSON, duplicate ids: the first record with an id is kept and later ones are
skipped and counted as ``duplicate_<kind>_ids``) are listed in
:mod:`pixelkit.data.formats._common`.

=========================  ===============================  ==========================
format name                 file                              reader
=========================  ===============================  ==========================
``localized_narratives``   ``*_localized_narratives.jsonl``  :func:`read_localized_narratives`
``coco_captions``          ``captions_*.json``               :func:`read_coco_captions`
``coco_instances``         ``instances_*.json``              :func:`read_coco_instances`
``mdetr_refcoco``          ``finetune_refcoco*_{split}.json``  :func:`read_mdetr_refcoco`
``refer_pickle``           ``refs(unc).p`` + ``instances.json``  :func:`read_refer_pickle`
``vg_regions``             ``region_descriptions.json``      :func:`read_vg_regions`
``grit``                   GRiT ``train.json`` / ``test.json``  :func:`read_grit`
=========================  ===============================  ==========================

:func:`detect_format` names the format of a file and :func:`read_any` reads any of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pixelkit.data.formats._common import (
    BombImageError,
    DuplicateIdError,
    MissingImageError,
    TruncatedImageError,
    ZeroAreaBoxError,
    decode_image,
    load_json,
    load_rgb,
    to_loca_caption,
)
from pixelkit.data.formats.coco import (
    coco_captions_from_data,
    coco_instances_from_data,
    grit_from_data,
    read_coco_captions,
    read_coco_instances,
    read_grit,
)
from pixelkit.data.formats.localized_narratives import (
    LN_IMAGE_PATTERNS,
    iter_localized_narratives,
    read_localized_narratives,
)
from pixelkit.data.formats.refcoco import (
    default_instances_path,
    mdetr_from_data,
    read_mdetr_refcoco,
    read_refer_pickle,
)
from pixelkit.data.formats.safe_pickle import (
    PlainDataUnpickler,
    UnsafePickleError,
    load_plain_pickle,
)
from pixelkit.data.formats.visual_genome import VG_IMAGE_PATTERNS, read_vg_regions, vg_from_data
from pixelkit.data.schema import DataFormatError, ReadReport, Sample

__all__ = [
    "FORMATS",
    "FORMAT_TASKS",
    "LN_IMAGE_PATTERNS",
    "VG_IMAGE_PATTERNS",
    "BombImageError",
    "DataFormatError",
    "DuplicateIdError",
    "MissingImageError",
    "PlainDataUnpickler",
    "ReadReport",
    "Sample",
    "TruncatedImageError",
    "UnsafePickleError",
    "ZeroAreaBoxError",
    "decode_image",
    "load_rgb",
    "default_instances_path",
    "detect_and_load",
    "detect_format",
    "iter_any",
    "iter_localized_narratives",
    "load_plain_pickle",
    "read_any",
    "read_coco_captions",
    "read_coco_instances",
    "read_grit",
    "read_localized_narratives",
    "read_mdetr_refcoco",
    "read_refer_pickle",
    "read_vg_regions",
    "to_loca_caption",
]

#: Tasks each format can give; the first is the default of :func:`read_any`.
FORMAT_TASKS: dict[str, tuple[str, ...]] = {
    "localized_narratives": ("trace",),
    "coco_captions": ("caption",),
    "coco_instances": ("detection",),
    "mdetr_refcoco": ("refer",),
    "refer_pickle": ("refer",),
    "vg_regions": ("densecap", "loca_caption"),
    "grit": ("densecap", "loca_caption"),
}
FORMATS: tuple[str, ...] = tuple(FORMAT_TASKS)

_PICKLE_SUFFIXES = {".p", ".pkl", ".pickle"}
#: Entries of a JSON list (VG regions, COCO annotations) looked at to detect the format.
_DETECT_ENTRIES = 20
#: Keys that only a Localized Narratives record has.
_LN_KEYS = {"timed_caption", "traces", "voice_recording"}


# --------------------------------------------------------------------------- detection


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name the annotation format of a file.

    Looks at the content (the JSON structure, or the pickle header), with the file name
    as a tie-breaker only where the content is ambiguous (e.g. no annotations at all).

    Args:
        path: an annotation file.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: the file is not one of the supported formats; the message says
            what was found.
    """
    return detect_and_load(path)[0]


def detect_and_load(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """:func:`detect_format`, also returning the parsed JSON it had to read.

    Pass both to :func:`read_any` (``format=..., data=...``) so that a large JSON file
    is parsed once.

    Returns:
        ``(format, data)``; ``data`` is None for formats not parsed whole (JSON lines,
        pickles).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise DataFormatError(f"{path}: is a folder, expected an annotation file")
    with open(p, "rb") as f:
        head = f.read(4096)
    # Pickle protocols 2+ start with the PROTO opcode 0x80.
    if p.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80":
        return "refer_pickle", None
    if not head.strip():
        raise DataFormatError(f"{path}: the file is empty")
    if p.suffix.lower() == ".jsonl":
        # JSON lines is Localized Narratives' format only; the reader reports bad lines.
        return "localized_narratives", None
    try:
        data = load_json(p)
    except DataFormatError as e:
        if _first_line_is_ln(p):
            return "localized_narratives", None  # several JSON objects, one per line
        raise DataFormatError(f"{e} -- cannot detect the format") from None
    return _classify(p, data), data


def _first_line_is_ln(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and _looks_like_ln(obj)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply, ...
        return False
    return False


def _looks_like_ln(obj: dict[str, Any]) -> bool:
    return bool(_LN_KEYS & obj.keys()) or ({"caption", "image_id", "annotator_id"} <= obj.keys())


def _classify(path: Path, data: Any) -> str:
    name = path.name.lower()
    if isinstance(data, list):
        # Look past the first entry: one entry missing "regions" is a bad record for the
        # reader to name, not a reason to refuse the file.
        entries = [x for x in data[:_DETECT_ENTRIES] if isinstance(x, dict)]
        first = entries[0] if entries else None
        if any("regions" in x for x in entries):
            return "vg_regions"
        if not data and "region" in name:
            return "vg_regions"
        what = f"a list whose first object has keys {sorted(first)[:8]}" if first else "a list"
        raise DataFormatError(
            f"{path}: cannot detect the format: found {what}; expected Visual "
            "Genome region_descriptions (a list of {'regions': [...], 'id': ...})"
        )
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{path}: cannot detect the format: top level is a {type(data).__name__}"
        )
    if _looks_like_ln(data):
        return "localized_narratives"  # a one-line LN file saved as .json
    if "images" in data and "annotations" in data:
        images = data["images"] if isinstance(data["images"], list) else []
        anns = data["annotations"] if isinstance(data["annotations"], list) else []
        img = next((x for x in images if isinstance(x, dict)), {})
        if "original_id" in img or "caption" in img:
            return "mdetr_refcoco"
        sample = [a for a in anns[:_DETECT_ENTRIES] if isinstance(a, dict)]
        if sample:
            has_caption = any("caption" in a for a in sample)
            has_bbox = any("bbox" in a for a in sample)
            if has_caption and has_bbox:
                return "grit"
            if has_caption:
                return "coco_captions"
            if has_bbox or any("category_id" in a for a in sample):
                return "coco_instances"
        # No annotations to look at: fall back on the usual file names.
        for hint, fmt in (
            ("captions", "coco_captions"),
            ("instances", "coco_instances"),
            ("finetune_ref", "mdetr_refcoco"),
        ):
            if hint in name:
                return fmt
        raise DataFormatError(
            f"{path}: cannot detect the format: a COCO-style file whose "
            "annotations have neither 'caption' nor 'bbox'"
        )
    raise DataFormatError(
        f"{path}: cannot detect the format: a JSON object with keys "
        f"{sorted(data)[:10]}; expected COCO-style 'images' + 'annotations', "
        "Localized Narratives lines or VG region descriptions"
    )


# --------------------------------------------------------------------------- read_any

#: Keyword options each format's reader takes (beyond images_dir, strict and task).
_OPTIONS: dict[str, set[str]] = {
    "localized_narratives": {"image_pattern", "image_sizes", "check_images", "index_sizes"},
    "coco_captions": {"check_images"},
    "coco_instances": {"check_images"},
    "mdetr_refcoco": {"check_images"},
    "refer_pickle": {"instances_path", "split", "check_images"},
    "vg_regions": {"image_pattern", "image_sizes", "check_images"},
    "grit": {"check_images"},
}


def read_any(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    task: str | None = None,
    *,
    format: str | None = None,
    data: Any = None,
    **options: Any,
) -> tuple[list[Sample], ReadReport]:
    """Detect a file's format and read it with the matching reader.

    Args:
        path: an annotation file of one of :data:`FORMATS`.
        images_dir: folder of the images.
        strict: raise on the first bad record (True) or skip and count (False).
        task: the task of the samples; default the format's natural one (see
            :data:`FORMAT_TASKS`; region files also give ``"loca_caption"``).
        format: skip detection and read as this format.
        data: the file's parsed JSON when already loaded (see :func:`detect_and_load`).
        **options: reader options: ``check_images`` (all), ``image_pattern`` and
            ``image_sizes`` (Localized Narratives, Visual Genome), ``index_sizes``
            (Localized Narratives: a sidecar index of image sizes), ``instances_path`` and
            ``split`` (refer pickle).

    Returns:
        ``(samples, report)`` as the reader returns them.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: undetectable format, or (strict) a bad record.
        ValueError: a task or option the format does not support.
    """
    samples, report = iter_any(path, images_dir, strict, task, format=format, data=data,
                               **options)
    return list(samples), report


def iter_any(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    task: str | None = None,
    *,
    format: str | None = None,
    data: Any = None,
    **options: Any,
) -> tuple[Iterator[Sample], ReadReport]:
    """:func:`read_any` as a stream (same arguments and checks, made at the call).

    A Localized Narratives file is read line by line as the iterator is consumed
    (:func:`iter_localized_narratives`), so memory does not grow with it; the JSON formats
    are one document, parsed whole, and their samples then yielded.

    Returns:
        ``(samples, report)``: the iterator and the report it fills (complete once the
        iterator is exhausted).
    """
    if format is None:
        format, data = detect_and_load(path)
    if format not in FORMAT_TASKS:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    tasks = FORMAT_TASKS[format]
    task = task or tasks[0]
    if task not in tasks:
        raise ValueError(
            f"{path}: a {format} file gives task {' or '.join(map(repr, tasks))}, not {task!r}"
        )
    unknown = set(options) - _OPTIONS[format]
    if unknown:
        raise ValueError(f"{path}: option(s) {sorted(unknown)} do not apply to {format} files")
    check = bool(options.get("check_images", False))

    def loaded() -> Any:
        return data if data is not None else load_json(path)

    if format == "localized_narratives":
        return iter_localized_narratives(path, images_dir, strict, **options)
    readers: dict[str, Callable[[], tuple[list[Sample], ReadReport]]] = {
        "coco_captions": lambda: coco_captions_from_data(path, loaded(), images_dir, strict, check),
        "coco_instances": lambda: coco_instances_from_data(
            path, loaded(), images_dir, strict, check
        ),
        "mdetr_refcoco": lambda: mdetr_from_data(path, loaded(), images_dir, strict, check),
        "refer_pickle": lambda: read_refer_pickle(path, images_dir, strict, **options),
        "vg_regions": lambda: vg_from_data(
            path, loaded(), images_dir, strict, task=task, **options
        ),
        "grit": lambda: grit_from_data(path, loaded(), images_dir, strict, check, task),
    }
    samples, report = readers[format]()
    return iter(samples), report
