"""Named data splits: where each data set's files are, spelled out once.

As detectron2's registered data sets (``data/datasets/builtin.py``), every split a config,
the synthesizer, the report, the notebooks, the demo or a test uses has a name here, and
its file layout is written nowhere else::

    from pixelkit.data import catalog

    split = catalog.get("shapes/val")
    split.annotation("refer", root)   # <root>/annotations/finetune_refcoco_val.json
    split.image_dir(root)             # <root>/images/val
    split.sources(root, {"trace": 2.0, "caption": 1.0})   # SourceConfigs for a data module

A split names one annotation file per task it can train or evaluate, and one image folder,
both relative to a *data root*: the shapes world's folder (what ``pixelkit synth --out``
wrote) or the folder that holds the real data sets in their own layouts (``coco/``, ``ln/``,
``mdetr_annotations/``, ``vg/``). A data module's ``root`` is the one setting that moves a
config to another machine.

=============================  ====================================================  =====
name                            files (under the root)                               tasks
=============================  ====================================================  =====
``shapes/{train,val}``          ``annotations/{localized_narratives,captions,...}``  all
``coco_captions/{train,val}``   ``coco/annotations/captions_{train,val}2017.json``    caption
``ln_coco/{train,val}``         ``ln/coco_{train,val}_localized_narratives.jsonl``    trace
``refcoco/{train,val,testA,testB}``, ``refcoco+/...``, ``refcocog/{train,val,test}``
                                ``mdetr_annotations/finetune_<name>_<split>.json``     refer
``vg/{train,test}``             ``vg/{train,test}.json`` (GRiT layout)                densecap, loca_caption
=============================  ====================================================  =====
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CATALOG", "DatasetSplit", "get", "names", "register"]


@dataclass(frozen=True)
class DatasetSplit:
    """One named split of a data set.

    Attributes:
        name: ``<data set>/<split>``, e.g. ``shapes/val`` or ``refcoco/testA``.
        images: the image folder, relative to the data root.
        files: task -> annotation file, relative to the data root.
        image_file: file name of an image from its id (``"{id:012d}.png"``), where the
            data set fixes one (the shapes world); None where the annotations name files.
        description: one line for listings.
    """

    name: str
    images: str
    files: Mapping[str, str]
    image_file: str | None = None
    description: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this split has an annotation file for."""
        return tuple(self.files)

    def annotation(self, task: str, root: str | Path) -> Path:
        """The annotation file of ``task`` under ``root``.

        Raises:
            ValueError: the split has no file for ``task``.
        """
        if task not in self.files:
            raise ValueError(f"data split {self.name!r} has no {task!r} annotations "
                             f"(it has: {', '.join(self.tasks)})")
        return Path(root) / self.files[task]

    def image_dir(self, root: str | Path) -> Path:
        """The image folder under ``root``."""
        return Path(root) / self.images

    def image_path(self, image_id: int, root: str | Path) -> Path:
        """An image's file from its id (only for splits that fix file names)."""
        if self.image_file is None:
            raise ValueError(f"data split {self.name!r} names its image files in its "
                             "annotations; read them from there")
        return self.image_dir(root) / self.image_file.format(id=image_id)

    def sources(self, root: str | Path | None = None,
                weights: Mapping[str, float] | None = None) -> list[Any]:
        """``SourceConfig`` s of this split for a data module, one per task in ``weights``
        (default: every task, weight 1), in catalog form (``split=...``) or, with a
        ``root``, as resolved files."""
        from pixelkit.data.datamodule import SourceConfig

        weights = weights or dict.fromkeys(self.tasks, 1.0)
        if root is None:
            return [SourceConfig(task=t, split=self.name, weight=w) for t, w in weights.items()]
        return [SourceConfig(task=t, ann=str(self.annotation(t, root)),
                             images=str(self.image_dir(root)), weight=w)
                for t, w in weights.items()]


#: Every named split, by name.
CATALOG: dict[str, DatasetSplit] = {}


def register(split: DatasetSplit) -> DatasetSplit:
    """Add a split (your own data set) to the catalog; a name is registered once."""
    if split.name in CATALOG and CATALOG[split.name] != split:
        raise ValueError(f"data split {split.name!r} is already registered differently")
    CATALOG[split.name] = split
    return split


def get(name: str) -> DatasetSplit:
    """The split of that name.

    Raises:
        ValueError: unknown name (the message suggests the closest names).
    """
    try:
        return CATALOG[name]
    except KeyError:
        close = difflib.get_close_matches(name, CATALOG, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown data split {name!r}{hint} (known: {', '.join(names())})"
                         ) from None


def names() -> list[str]:
    """Every registered split name, sorted."""
    return sorted(CATALOG)


# --------------------------------------------------------------------------- the shapes world

#: Annotation file names of the shapes world, by task (``{split}`` is train or val).
SHAPES_FILES: dict[str, str] = {
    "trace": "annotations/localized_narratives_{split}.jsonl",
    "caption": "annotations/captions_{split}.json",
    "detection": "annotations/instances_{split}.json",
    "refer": "annotations/finetune_refcoco_{split}.json",
    "loca_caption": "annotations/vg_{split}.json",
    "densecap": "annotations/vg_{split}.json",
}
SHAPES_IMAGE_FILE = "{id:012d}.png"

for _split in ("train", "val"):
    register(DatasetSplit(
        name=f"shapes/{_split}", images=f"images/{_split}",
        files={task: path.format(split=_split) for task, path in SHAPES_FILES.items()},
        image_file=SHAPES_IMAGE_FILE,
        description=f"the shapes world's {_split} split (pixelkit synth)"))

# --------------------------------------------------------------------------- real data sets

for _split in ("train", "val"):
    register(DatasetSplit(
        name=f"coco_captions/{_split}", images=f"coco/{_split}2017",
        files={"caption": f"coco/annotations/captions_{_split}2017.json"},
        description=f"COCO captions {_split}2017"))
    register(DatasetSplit(
        name=f"ln_coco/{_split}", images=f"coco/{_split}2017",
        files={"trace": f"ln/coco_{_split}_localized_narratives.jsonl"},
        description=f"Localized Narratives on COCO {_split}2017"))

for _name, _splits in (("refcoco", ("train", "val", "testA", "testB")),
                       ("refcoco+", ("train", "val", "testA", "testB")),
                       ("refcocog", ("train", "val", "test"))):
    for _split in _splits:
        register(DatasetSplit(
            name=f"{_name}/{_split}", images="coco/train2014",
            files={"refer": f"mdetr_annotations/finetune_{_name}_{_split}.json"},
            description=f"{_name} {_split} (MDETR's files; images are COCO train2014)"))

for _split in ("train", "test"):
    register(DatasetSplit(
        name=f"vg/{_split}", images="vg/images",
        files={"densecap": f"vg/{_split}.json", "loca_caption": f"vg/{_split}.json"},
        description=f"Visual Genome regions, GRiT's {_split}.json"))
