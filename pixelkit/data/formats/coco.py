"""COCO-style JSON files: captions, instances and GRiT dense captions.

All three share the COCO layout ``{"images": [{id, file_name, width, height}, ...],
"annotations": [{image_id, ...}, ...]}``:

* ``captions_*.json``: annotations ``{image_id, id, caption}`` -> ``caption`` samples;
* ``instances_*.json``: annotations ``{image_id, id, bbox [x, y, w, h], category_id,
  iscrowd}`` plus ``categories`` -> one ``detection`` sample per image;
* GRiT's Visual Genome ``train.json`` / ``test.json``: annotations ``{image_id, id,
  bbox, caption}`` -> one ``densecap`` sample per image (or ``loca_caption`` per box).

Boxes are absolute pixels, 0-indexed, ``[x, y, w, h]``; samples hold xyxy pixels.

Ids follow the shared keep-the-first rule (:mod:`pixelkit.data.formats._common`): a
later image, annotation or category with the id of an earlier one is skipped and counted
(``duplicate_image_ids``, ``duplicate_annotation_ids``, ``duplicate_category_ids``), or
raised when strict. An annotation's ``id`` is optional, but when present it must be a
valid id. ``iscrowd`` is 0 / 1 (``true`` / ``false`` and those as strings are accepted);
any other value is an error of its field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from pixelkit.data.formats._common import (
    Collector,
    FirstIds,
    ImageSizes,
    check_image,
    get,
    get_flag,
    get_id,
    get_list,
    get_size,
    get_str,
    image_path,
    load_json,
    to_loca_caption,
    xywh_to_checked_xyxy,
)
from pixelkit.data.schema import DataFormatError, ReadReport, Sample


class _Image:
    """One entry of ``images``: its path, size and the annotations that point at it."""

    __slots__ = ("image_id", "path", "size", "where", "anns", "entry")

    def __init__(
        self,
        image_id: int | str,
        path: str,
        size: tuple[int, int],
        where: str,
        entry: dict[str, Any],
    ) -> None:
        self.image_id = image_id
        self.path = path
        self.size = size
        self.where = where
        self.entry = entry
        self.anns: list[tuple[str, dict[str, Any]]] = []


def index_coco(
    path: str | os.PathLike[str],
    data: Any,
    images_dir: str | os.PathLike[str] | None,
    col: Collector,
) -> dict[int | str, _Image]:
    """Check the top level, index ``images`` by id and group ``annotations`` by image.

    A bad image entry or an annotation pointing at no (valid) image goes through
    ``col.bad``; the images come back in file order.

    Raises:
        DataFormatError: the top level is not a COCO-style object (always, even when
            not strict: nothing in the file could be read).
    """
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{path}: expected a JSON object with 'images' and 'annotations', "
            f"got a {type(data).__name__}"
        )
    where_top = str(path)
    images_list = get_list(data, "images", where_top)
    anns_list = get_list(data, "annotations", where_top)
    images: dict[int | str, _Image] = {}
    image_ids, ann_ids = FirstIds("image"), FirstIds("annotation")
    for i, entry in enumerate(images_list):
        where = f"{path}#images[{i}]"
        try:
            image_id = get_id(entry, "id", where)
            image_ids.claim(image_id, where, "id")
            file_name = get_str(entry, "file_name", where)
            size = get_size(entry, where)
        except DataFormatError as e:
            col.bad(e)
            continue
        images[image_id] = _Image(image_id, image_path(images_dir, file_name), size, where, entry)
    for i, ann in enumerate(anns_list):
        where = f"{path}#annotations[{i}]"
        try:
            if isinstance(ann, dict) and "id" in ann:
                ann_ids.claim(get_id(ann, "id", where), where, "id")
            image_id = get_id(ann, "image_id", where)
            if image_id not in images:
                raise DataFormatError(
                    f"{where}: field 'image_id' is {image_id!r}, which has no "
                    "(valid) entry in 'images'"
                )
        except DataFormatError as e:
            col.bad(e)
            continue
        images[image_id].anns.append((where, ann))
    return images


def checked_images(
    images: dict[int | str, _Image], col: Collector, check_images: bool, images_dir: Any
) -> list[_Image]:
    """The images whose files are fine (all of them unless ``check_images``).

    With ``check_images`` each file must open and have the declared size; a bad one
    is skipped together with its annotations (counted as that many skipped records, or
    one for an image without annotations; reason ``missing_images``).
    """
    if not check_images:
        return list(images.values())
    if images_dir is None:
        raise ValueError("check_images=True needs images_dir")
    sizes = ImageSizes()
    good = []
    for img in images.values():
        try:
            check_image(img.path, img.size, sizes, img.where)
        except DataFormatError as e:
            col.bad(e, n=len(img.anns) or 1)
            continue
        good.append(img)
    return good


# --------------------------------------------------------------------------- captions


def read_coco_captions(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read a COCO ``captions_*.json`` file: one ``caption`` sample per caption.

    Args:
        path: the JSON file.
        images_dir: folder of the images (joined to each ``file_name``).
        strict: raise on the first bad record (True) or skip and count it (False).
        check_images: open every image and check its size against the file.

    Returns:
        ``(samples, report)``; ``report.records`` counts captions read. Images with no
        caption are counted as ``images_without_annotations``.

    Raises:
        DataFormatError: (strict) a bad record; the message names file, index and field.
    """
    return coco_captions_from_data(path, load_json(path), images_dir, strict, check_images)


def coco_captions_from_data(
    path: str | os.PathLike[str], data: Any, images_dir: Any, strict: bool, check_images: bool
) -> tuple[list[Sample], ReadReport]:
    """:func:`read_coco_captions` on already parsed JSON."""
    col = Collector(path, "coco_captions", strict)
    images = index_coco(path, data, images_dir, col)
    samples: list[Sample] = []
    for img in checked_images(images, col, check_images, images_dir):
        if not img.anns:
            col.count("images_without_annotations")
        for where, ann in img.anns:
            try:
                text = get_str(ann, "caption", where)
            except DataFormatError as e:
                col.bad(e)
                continue
            samples.append(
                Sample(
                    image_path=img.path,
                    image_size=img.size,
                    task="caption",
                    text=text,
                    image_id=img.image_id,
                    ann_id=ann.get("id"),
                    source=where,
                )
            )
            col.ok()
    return samples, col.report


# --------------------------------------------------------------------------- boxes


def _boxes_per_image(
    path: str | os.PathLike[str],
    data: Any,
    images_dir: Any,
    col: Collector,
    check_images: bool,
    task: str,
    text_of: Callable[[dict[str, Any], str], str],
) -> list[Sample]:
    """One sample per image with every (non-crowd, valid) box and its text."""
    images = index_coco(path, data, images_dir, col)
    samples: list[Sample] = []
    for img in checked_images(images, col, check_images, images_dir):
        boxes, texts, ann_ids, sources, extra_ids = [], [], [], [], []
        for where, ann in img.anns:
            try:
                if get_flag(ann, "iscrowd", where):
                    # Crowd regions mark many objects at once (RLE masks); detection and
                    # captioning use single objects only, as COCO evaluation does.
                    col.count("crowd_boxes")
                    continue
                box = xywh_to_checked_xyxy(get(ann, "bbox", where), img.size, where, col)
                text = text_of(ann, where)
            except DataFormatError as e:
                col.bad(e)
                continue
            boxes.append(box)
            texts.append(text)
            ann_ids.append(ann.get("id"))
            sources.append(where)
            extra_ids.append(ann.get("category_id"))
            col.ok()
        if not boxes:
            col.count("images_without_boxes")
        extra: dict[str, Any] = {"ann_ids": ann_ids, "ann_sources": sources}
        if task == "detection":
            extra["category_ids"] = extra_ids
        samples.append(
            Sample(
                image_path=img.path,
                image_size=img.size,
                task=task,
                boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                box_texts=texts,
                image_id=img.image_id,
                source=img.where,
                extra=extra,
            )
        )
    return samples


def read_coco_instances(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read a COCO ``instances_*.json`` file: one ``detection`` sample per image.

    Each sample holds every non-crowd box (xyxy pixels) with its category name in
    ``box_texts``; ``extra`` has ``ann_ids``, ``category_ids`` and ``ann_sources``.
    Crowd boxes are left out and counted (``crowd_boxes``); images without boxes stay
    (counted as ``images_without_boxes``).

    Args:
        path: the JSON file.
        images_dir: folder of the images (joined to each ``file_name``).
        strict: raise on the first bad record (True) or skip and count it (False).
        check_images: open every image and check its size against the file.

    Returns:
        ``(samples, report)``; ``report.records`` counts boxes read.

    Raises:
        DataFormatError: (strict) a bad record; the message names file, index and field.
    """
    return coco_instances_from_data(path, load_json(path), images_dir, strict, check_images)


def coco_instances_from_data(
    path: str | os.PathLike[str], data: Any, images_dir: Any, strict: bool, check_images: bool
) -> tuple[list[Sample], ReadReport]:
    """:func:`read_coco_instances` on already parsed JSON."""
    col = Collector(path, "coco_instances", strict)
    categories: dict[Any, str] = {}
    if isinstance(data, dict):
        category_ids = FirstIds("category")
        for i, cat in enumerate(get_list(data, "categories", str(path))):
            where = f"{path}#categories[{i}]"
            try:
                cat_id = get_id(cat, "id", where)
                category_ids.claim(cat_id, where, "id")
                categories[cat_id] = get_str(cat, "name", where)
            except DataFormatError as e:
                col.bad(e)

    def category_name(ann: dict[str, Any], where: str) -> str:
        cat = get_id(ann, "category_id", where)
        if cat not in categories:
            raise DataFormatError(
                f"{where}: field 'category_id' is {cat!r}, which is not in 'categories'"
            )
        return categories[cat]

    samples = _boxes_per_image(
        path, data, images_dir, col, check_images, "detection", category_name
    )
    return samples, col.report


def read_grit(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    task: str = "densecap",
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read a GRiT / COCO-style dense-caption file (``train.json`` / ``test.json``).

    Args:
        path: the JSON file.
        images_dir: folder of the images (joined to each ``file_name``).
        strict: raise on the first bad record (True) or skip and count it (False).
        task: ``"densecap"`` (one sample per image with all its regions) or
            ``"loca_caption"`` (one sample per region).
        check_images: open every image and check its size against the file.

    Returns:
        ``(samples, report)``; ``report.records`` counts regions read.

    Raises:
        DataFormatError: (strict) a bad record; the message names file, index and field.
    """
    return grit_from_data(path, load_json(path), images_dir, strict, check_images, task)


def grit_from_data(
    path: str | os.PathLike[str],
    data: Any,
    images_dir: Any,
    strict: bool,
    check_images: bool,
    task: str = "densecap",
) -> tuple[list[Sample], ReadReport]:
    """:func:`read_grit` on already parsed JSON."""
    _check_region_task(task)
    col = Collector(path, "grit", strict)
    samples = _boxes_per_image(
        path,
        data,
        images_dir,
        col,
        check_images,
        "densecap",
        lambda ann, where: get_str(ann, "caption", where),
    )
    return (to_loca_caption(samples) if task == "loca_caption" else samples), col.report


def _check_region_task(task: str) -> None:
    if task not in ("densecap", "loca_caption"):
        raise ValueError(
            f"task must be 'densecap' or 'loca_caption' for region files, got {task!r}"
        )
