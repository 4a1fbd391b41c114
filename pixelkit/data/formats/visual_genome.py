"""Visual Genome ``region_descriptions.json`` -> ``densecap`` (or ``loca_caption``) samples.

The file is a list with one object per image::

    [{"regions": [{"region_id": 1382, "width": 82, "height": 139, "image_id": 1,
                   "phrase": "the clock is green in colour", "y": 57, "x": 421}, ...],
      "id": 1}, ...]

(some releases name the image-level key ``image_id``). Boxes are absolute pixels
``x, y, width, height``. The file carries no image sizes, so each image header is opened
once (``images_dir/{image_id}.jpg``, also looked up in the release's ``VG_100K`` and
``VG_100K_2`` sub-folders), unless the sizes are given through ``image_sizes`` (e.g.
from VG's ``image_data.json``).

Ids follow the shared keep-the-first rule (:mod:`pixelkit.data.formats._common`): a later
entry for an image already listed is skipped with all its regions
(``duplicate_image_ids``, counting each region), and a later region with an earlier
``region_id`` (region ids are unique across the whole file) is skipped
(``duplicate_region_ids``); strict reads raise on the first duplicate instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pixelkit.data.formats._common import (
    Collector,
    FirstIds,
    ImageResolver,
    ImageSizes,
    check_box_xyxy,
    get_id,
    get_list,
    get_number,
    get_str,
    load_json,
    locate_image,
    show,
    to_loca_caption,
)
from pixelkit.data.schema import DataFormatError, ReadReport, Sample

FORMAT = "vg_regions"

#: Where VG images are looked for, relative to ``images_dir`` (the release unpacks into
#: two folders, ``VG_100K`` and ``VG_100K_2``).
VG_IMAGE_PATTERNS: tuple[str, ...] = (
    "{id}.jpg",
    "VG_100K/{id}.jpg",
    "VG_100K_2/{id}.jpg",
    "{id}.png",
)


def read_vg_regions(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    task: str = "densecap",
    image_pattern: str | Sequence[str] | None = None,
    image_sizes: Mapping[Any, tuple[int, int]] | None = None,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read Visual Genome region descriptions.

    Args:
        path: the ``region_descriptions.json`` file.
        images_dir: folder of the images; needed for image sizes unless every size is
            in ``image_sizes``.
        strict: raise on the first bad region (True) or skip and count it (False).
        task: ``"densecap"`` (one sample per image with all its regions; ``extra`` has
            ``ann_ids`` = region ids) or ``"loca_caption"`` (one sample per region).
        image_pattern: file-name pattern(s) relative to ``images_dir`` with ``{id}``;
            default :data:`VG_IMAGE_PATTERNS`.
        image_sizes: known ``(width, height)`` per image id (then the image is not
            opened unless ``check_images``).
        check_images: open every image even when its size is known.

    Returns:
        ``(samples, report)``; ``report.records`` counts regions read.

    Raises:
        DataFormatError: (strict) a bad region; the message names file, index and field.
        MissingImageError: (strict) an image needed for its size is missing.
    """
    return vg_from_data(
        path,
        load_json(path),
        images_dir,
        strict,
        task=task,
        image_pattern=image_pattern,
        image_sizes=image_sizes,
        check_images=check_images,
    )


def vg_from_data(
    path: str | os.PathLike[str],
    data: Any,
    images_dir: str | os.PathLike[str] | None,
    strict: bool,
    *,
    task: str = "densecap",
    image_pattern: str | Sequence[str] | None = None,
    image_sizes: Mapping[Any, tuple[int, int]] | None = None,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """:func:`read_vg_regions` on already parsed JSON."""
    if task not in ("densecap", "loca_caption"):
        raise ValueError(
            f"task must be 'densecap' or 'loca_caption' for region files, got {task!r}"
        )
    if not isinstance(data, list):
        raise DataFormatError(
            f"{path}: expected a JSON list of images with 'regions', got a {type(data).__name__}"
        )
    if images_dir is None and image_sizes is None:
        raise ValueError(
            f"{path}: region_descriptions.json carries no image sizes, which are needed to clip "
            "the boxes: pass images_dir (or image_sizes)"
        )
    if check_images and images_dir is None:
        raise ValueError("check_images=True needs images_dir")
    col = Collector(path, FORMAT, strict)
    resolver = ImageResolver.from_option(images_dir, image_pattern, VG_IMAGE_PATTERNS)
    sizes = ImageSizes()
    image_ids, region_ids = FirstIds("image"), FirstIds("region")
    samples: list[Sample] = []
    for i, entry in enumerate(data):
        where = f"{path}#{i}"
        try:
            regions = get_list(entry, "regions", where)
            image_id, id_field = _image_id(entry, regions, where)
            image_ids.claim(image_id, where, id_field)
            image_file, size = locate_image(
                resolver, sizes, image_sizes, image_id, where, check_images
            )
        except DataFormatError as e:
            # Every region of the image is lost with it: count them all (at least one).
            lost = entry.get("regions") if isinstance(entry, dict) else None
            col.bad(e, n=len(lost) if isinstance(lost, list) and lost else 1)
            continue
        boxes, texts, ids, sources = [], [], [], []
        for j, region in enumerate(regions):
            rwhere = f"{where}.regions[{j}]"
            try:
                box, phrase, region_id = _region(region, image_id, size, rwhere, col, region_ids)
            except DataFormatError as e:
                col.bad(e)
                continue
            boxes.append(box)
            texts.append(phrase)
            ids.append(region_id)
            sources.append(rwhere)
            col.ok()
        if not boxes:
            col.count("images_without_boxes")
        samples.append(
            Sample(
                image_path=image_file,
                image_size=size,
                task="densecap",
                boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                box_texts=texts,
                image_id=image_id,
                source=where,
                extra={"ann_ids": ids, "ann_sources": sources},
            )
        )
    return (to_loca_caption(samples) if task == "loca_caption" else samples), col.report


def _image_id(entry: dict[str, Any], regions: list[Any], where: str) -> tuple[int | str, str]:
    """The image id and the field it came from: ``id`` (original release) or
    ``image_id``, else the first region's ``image_id``."""
    for key in ("id", "image_id"):
        if key in entry:
            return get_id(entry, key, where), key
    if regions and isinstance(regions[0], dict) and "image_id" in regions[0]:
        return get_id(regions[0], "image_id", f"{where}.regions[0]"), "regions[0].image_id"
    raise DataFormatError(f"{where}: field 'id' (the image id) is missing")


def _region(
    region: Any,
    image_id: int | str,
    size: tuple[int, int],
    where: str,
    col: Collector,
    region_ids: FirstIds,
) -> tuple[np.ndarray, str, int | str]:
    """Validate one region; returns its clipped xyxy box, phrase and region id."""
    region_id = get_id(region, "region_id", where)
    region_ids.claim(region_id, where, "region_id")
    if "image_id" in region and region["image_id"] != image_id:
        raise DataFormatError(
            f"{where}: field 'image_id' is {show(region['image_id'])} but the region "
            f"is listed under image {image_id!r}"
        )
    phrase = get_str(region, "phrase", where)
    x, y = get_number(region, "x", where), get_number(region, "y", where)
    w, h = get_number(region, "width", where), get_number(region, "height", where)
    box = check_box_xyxy((x, y, x + w, y + h), size, where, col, "x, y, width, height")
    return box, phrase, region_id
