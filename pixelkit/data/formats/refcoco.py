"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions -> ``refer`` samples.

Two layouts:

* MDETR's ``finetune_refcoco*_{split}.json`` (written by MDETR's
  ``scripts/fine-tuning/refexp_coco_format.py``): COCO-style, with **one image entry
  per expression** ``{id, file_name, height, width, original_id (COCO image id),
  caption, dataset_name, tokens_negative}`` and one annotation per entry
  ``{image_id (= the entry id), bbox [x, y, w, h], category_id, original_id (COCO
  annotation id), tokens_positive, area, iscrowd, id}``.
* The refer toolkit's ``refs(unc).p`` (``refs(umd).p`` / ``refs(google).p`` for
  RefCOCOg): a pickled list of refs ``{ref_id, ann_id, image_id, split, category_id,
  file_name, sent_ids, sentences [{sent, raw, tokens, sent_id}]}`` joined with the
  COCO ``instances.json`` next to it for boxes and image sizes. The pickle is read
  with :func:`~pixelkit.data.formats.safe_pickle.load_plain_pickle`, never
  ``pickle.load``.

Ids follow the shared keep-the-first rule (:mod:`pixelkit.data.formats._common`): in
``instances.json`` a later annotation or image with an earlier one's id is skipped (so
a repeated annotation id can never replace the box a ref points at), counted in the
report as ``instances_duplicate_annotation_ids`` / ``instances_duplicate_image_ids``;
a later ref with an earlier ``ref_id`` is skipped with its sentences
(``duplicate_ref_ids``). Strict reads raise on the first duplicate instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pixelkit.data.formats._common import (
    Collector,
    FirstIds,
    ImageSizes,
    check_image,
    get,
    get_id,
    get_list,
    get_size,
    get_str,
    image_path,
    load_json,
    show,
    xywh_to_checked_xyxy,
)
from pixelkit.data.formats.coco import checked_images, index_coco
from pixelkit.data.formats.safe_pickle import load_plain_pickle
from pixelkit.data.schema import DataFormatError, ReadReport, Sample

# --------------------------------------------------------------------------- MDETR


def read_mdetr_refcoco(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read an MDETR ``finetune_refcoco*_{split}.json``: one ``refer`` sample per expression.

    ``image_id`` is the COCO image id (the entry's ``original_id``) and ``ann_id`` the
    COCO annotation id (the annotation's ``original_id``), so predictions join with
    COCO; the MDETR entry id, ``dataset_name``, ``category_id``, ``tokens_positive`` and
    ``tokens_negative`` go to ``extra``.

    Args:
        path: the JSON file.
        images_dir: COCO ``train2014`` folder (joined to each ``file_name``).
        strict: raise on the first bad record (True) or skip and count it (False).
        check_images: open every image and check its size against the file.

    Returns:
        ``(samples, report)``; ``report.records`` counts expressions read.

    Raises:
        DataFormatError: (strict) a bad record; the message names file, index and field.
    """
    return mdetr_from_data(path, load_json(path), images_dir, strict, check_images)


def mdetr_from_data(
    path: str | os.PathLike[str], data: Any, images_dir: Any, strict: bool, check_images: bool
) -> tuple[list[Sample], ReadReport]:
    """:func:`read_mdetr_refcoco` on already parsed JSON."""
    col = Collector(path, "mdetr_refcoco", strict)
    entries = index_coco(path, data, images_dir, col)
    samples: list[Sample] = []
    for img in checked_images(entries, col, check_images, images_dir):
        entry, where = img.entry, img.where
        try:
            text = get_str(entry, "caption", where)
            coco_image_id = _optional_id(entry, "original_id", where, img.image_id)
            if len(img.anns) != 1:
                # MDETR's own evaluator asserts exactly one box per expression entry.
                raise DataFormatError(
                    f"{where}: expression entry {img.image_id!r} has {len(img.anns)} annotations "
                    "(field 'image_id' of 'annotations'); MDETR refexp files have exactly one"
                )
            ann_where, ann = img.anns[0]
            box = xywh_to_checked_xyxy(get(ann, "bbox", ann_where), img.size, ann_where, col)
            coco_ann_id = _optional_id(ann, "original_id", ann_where, ann.get("id"))
        except DataFormatError as e:
            col.bad(e)
            continue
        extra = {"entry_id": img.image_id}
        for key in ("dataset_name", "tokens_negative"):
            if key in entry:
                extra[key] = entry[key]
        for key in ("category_id", "tokens_positive"):
            if key in ann:
                extra[key] = ann[key]
        samples.append(
            Sample(
                image_path=img.path,
                image_size=img.size,
                task="refer",
                text=text,
                boxes=box[None],
                box_texts=[text],
                image_id=coco_image_id,
                ann_id=coco_ann_id,
                source=where,
                extra=extra,
            )
        )
        col.ok()
    return samples, col.report


def _optional_id(record: dict[str, Any], key: str, where: str, default: Any) -> Any:
    """An id field that may be absent (then ``default``), but is checked when present:
    MDETR's ``original_id`` is the COCO id that predictions are joined on."""
    return get_id(record, key, where) if key in record else default


# --------------------------------------------------------------------------- refer toolkit


def default_instances_path(refs_path: str | os.PathLike[str]) -> Path:
    """``instances.json`` beside the refs pickle (refer toolkit layout
    ``data/refcoco/refs(unc).p`` + ``data/refcoco/instances.json``)."""
    return Path(refs_path).with_name("instances.json")


def read_refer_pickle(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    *,
    instances_path: str | os.PathLike[str] | None = None,
    split: str | Iterable[str] | None = None,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read the refer toolkit's ``refs(unc).p`` + ``instances.json``: one ``refer``
    sample per sentence.

    Each ref's ``ann_id`` is joined with the instances annotation (its ``bbox`` xywh
    pixels) and its ``image_id`` with the instances image (``file_name`` and size). A
    ref that does not join is a bad record: an error naming ``ref_id`` and ``ann_id``
    (strict) or skipped with all its sentences and counted (not strict).

    Args:
        path: the refs pickle, read with a restricted unpickler (plain data only).
        images_dir: COCO ``train2014`` folder (joined to each ``file_name``).
        strict: raise on the first bad ref (True) or skip and count it (False).
        instances_path: the COCO instances file; default ``instances.json`` beside
            the pickle.
        split: keep only refs of this split (or these splits), e.g. ``"val"``; refs of
            other splits are counted as ``other_split_refs``.
        check_images: open every image and check its size against the file.

    Returns:
        ``(samples, report)``; ``report.records`` counts refs read (a ref has one
        sample per sentence; ``report.counts["sentences"]`` counts those).

    Raises:
        UnsafePickleError: the pickle references a class or function.
        DataFormatError: (strict) a bad ref; the message names file, index and field.
    """
    refs = load_plain_pickle(path)
    inst_path = Path(instances_path) if instances_path is not None else default_instances_path(path)
    if not inst_path.is_file():
        # Named as each caller can set it: the command line has --instances, Python
        # instances_path=, and a training source only the default place beside the refs.
        raise DataFormatError(
            f"{path}: the refs need the COCO instances file for boxes and image sizes, and "
            f"{inst_path} does not exist (put instances.json beside the refs file, or give "
            "its path: --instances FILE on the pixelkit command line, instances_path=... "
            "in Python)"
        )
    instances = load_json(inst_path)
    return refer_from_data(
        path, refs, inst_path, instances, images_dir, strict, split, check_images
    )


def refer_from_data(
    path: str | os.PathLike[str],
    refs: Any,
    instances_path: str | os.PathLike[str],
    instances: Any,
    images_dir: Any,
    strict: bool,
    split: str | Iterable[str] | None = None,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """:func:`read_refer_pickle` on already loaded refs and instances."""
    col = Collector(path, "refer_pickle", strict)
    if not isinstance(refs, list):
        raise DataFormatError(
            f"{path}: expected a pickled list of refs, got a {type(refs).__name__}"
        )
    if check_images and images_dir is None:
        raise ValueError("check_images=True needs images_dir")
    splits = {split} if isinstance(split, str) else (set(split) if split is not None else None)

    # Index the instances: annotations by id, images by id (bad entries skipped/raised).
    inst_col = Collector(instances_path, "coco_instances", strict)
    if not isinstance(instances, dict):
        raise DataFormatError(
            f"{instances_path}: expected a JSON object with 'images' and "
            f"'annotations', got a {type(instances).__name__}"
        )
    anns: dict[Any, tuple[str, dict[str, Any]]] = {}
    ann_ids, image_ids = FirstIds("annotation"), FirstIds("image")
    for i, ann in enumerate(get_list(instances, "annotations", str(instances_path))):
        where = f"{instances_path}#annotations[{i}]"
        try:
            ann_id = get_id(ann, "id", where)
            ann_ids.claim(ann_id, where, "id")
        except DataFormatError as e:
            inst_col.bad(e)
            continue
        anns[ann_id] = (where, ann)
    images: dict[Any, tuple[str, str, tuple[int, int]]] = {}
    for i, entry in enumerate(get_list(instances, "images", str(instances_path))):
        where = f"{instances_path}#images[{i}]"
        try:
            image_id = get_id(entry, "id", where)
            image_ids.claim(image_id, where, "id")
            images[image_id] = (where, get_str(entry, "file_name", where), get_size(entry, where))
        except DataFormatError as e:
            inst_col.bad(e)
    # Problems in the instances file show up in this report too, not silently: its
    # messages, its skipped entries, and each reason (prefixed ``instances_``).
    room = col.report.max_errors - len(col.report.errors)
    col.report.errors.extend(inst_col.report.errors[: max(room, 0)])
    col.count("bad_instances_records", inst_col.report.skipped)
    for key, n in inst_col.report.counts.items():
        col.count(f"instances_{key}", n)

    sizes = ImageSizes()
    ref_ids = FirstIds("ref")
    samples: list[Sample] = []
    for i, ref in enumerate(refs):
        where = f"{path}#{i}"
        sentences = ref.get("sentences") if isinstance(ref, dict) else None
        n_sent = len(sentences) if isinstance(sentences, list) else 0
        try:
            if splits is not None and _ref_split(ref, where) not in splits:
                col.count("other_split_refs")
                continue
            new = _ref_samples(ref, where, anns, images, images_dir, col, ref_ids)
            if check_images and new:
                check_image(new[0].image_path, new[0].image_size, sizes, where)
        except DataFormatError as e:
            col.bad(e)
            col.count("skipped_sentences", n_sent)
            continue
        samples.extend(new)
        col.ok()
        col.count("sentences", len(new))
    return samples, col.report


def _ref_split(ref: Any, where: str) -> str | None:
    """A ref's ``split`` (None when absent); anything but a string is a field error, and
    a ref that is not an object is an error too (not a ref of another split)."""
    if not isinstance(ref, dict):
        raise DataFormatError(f"{where}: expected a ref (an object), got {show(ref)}")
    split = ref.get("split")
    if split is not None and not isinstance(split, str):
        raise DataFormatError(f"{where}: field 'split' must be a string, got {show(split)}")
    return split


def _ref_samples(
    ref: Any,
    where: str,
    anns: dict[Any, tuple[str, dict[str, Any]]],
    images: dict[Any, tuple[str, str, tuple[int, int]]],
    images_dir: Any,
    col: Collector,
    ref_ids: FirstIds,
) -> list[Sample]:
    ref_id = get_id(ref, "ref_id", where)
    ref_ids.claim(ref_id, where, "ref_id")
    ann_id = get_id(ref, "ann_id", where)
    image_id = get_id(ref, "image_id", where)
    sentences = get_list(ref, "sentences", where)
    if ann_id not in anns:
        raise DataFormatError(
            f"{where}: ref_id {ref_id!r}: field 'ann_id' is {ann_id!r}, which has no annotation "
            "in the instances file"
        )
    ann_where, ann = anns[ann_id]
    ann_image = ann.get("image_id")
    if ann_image != image_id:
        raise DataFormatError(
            f"{where}: ref_id {ref_id!r}: field 'image_id' is {image_id!r} but annotation "
            f"{ann_id!r} ({ann_where}) belongs to image {show(ann_image)}"
        )
    if image_id not in images:
        raise DataFormatError(
            f"{where}: ref_id {ref_id!r}: field 'image_id' is {image_id!r}, which has no image "
            "in the instances file"
        )
    _, file_name, size = images[image_id]
    box = xywh_to_checked_xyxy(get(ann, "bbox", ann_where), size, ann_where, col)
    out = []
    for j, sent in enumerate(sentences):
        text = get_str(sent, "sent", where, field=f"sentences[{j}].sent")
        extra = {
            "ref_id": ref_id,
            "split": ref.get("split"),
            "category_id": ref.get("category_id"),
            "sent_id": sent.get("sent_id"),
            "raw": sent.get("raw"),
            "tokens": sent.get("tokens"),
        }
        out.append(
            Sample(
                image_path=image_path(images_dir, file_name),
                image_size=size,
                task="refer",
                text=text,
                boxes=box[None],
                box_texts=[text],
                image_id=image_id,
                ann_id=ann_id,
                source=f"{where}.sentences[{j}]",
                extra=extra,
            )
        )
    return out
