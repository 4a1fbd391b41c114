"""The real-data stage configs (``pixelkit/configs/real/*.yaml``) run.

Each real stage runs two steps through :func:`pixelkit.runs.run_stage` (the one code path
of every run) on the real-format fixtures (``../shared/fixtures/real``) laid out as the
data catalog names them, on the CPU with bf16-mixed autocast. The model is the ``base``
preset's architecture (384 px, ViT-B/16, T5-base width) at random initialisation, with a
local word-level tokenizer in place of Flan-T5's (nothing is downloaded). This proves that
paths, readers, collation, trainable patterns and checkpointing compose at the real sizes;
the step time is printed (a bench figure, ``pixelkit bench --only real_step``), never
asserted.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from pixelkit import runs
from pixelkit.checkpoint import load_model, read_checkpoint
from pixelkit.config import PixelLLMConfig
from pixelkit.data import catalog
from pixelkit.data.encoding import TASK_PROMPTS
from pixelkit.modeling.tokenizer import word_tokenizer
from pixelkit.modeling.trainable import set_trainable
from pixelkit.stages import STAGES
from pixelkit.training import CONFIG_DIR, config_files

REAL_DIR = CONFIG_DIR / "real"
REAL_STAGES = sorted(p.stem for p in REAL_DIR.glob("*.yaml") if p.stem != "base")

#: The sizes of the fixture images whose records carry none: Localized Narratives records
#: name no size, and COCO 137576 / 381639 are not in the instances slice. Any size serves
#: (trace points are relative); a COCO-like one keeps the resize realistic.
LN_IMAGE_SIZE = (640, 480)
#: Visual Genome image 1 (``vg/images/1.jpg`` of the release) is 800 x 600; the fixture's
#: regions lie inside it.
VG_IMAGE_SIZE = (800, 600)


# --------------------------------------------------------------------------- the data root


def _jpeg(path: Path, size: tuple[int, int]) -> None:
    """A small flat-colour JPEG of ``size`` (width, height): the fixtures have no pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 140, 160)).save(path, quality=50)


def _place(root: Path, split: str, task: str, data: Any = None, copy: Path | None = None) -> Path:
    """Write (or copy) one split's annotation file at the catalog's path under ``root``."""
    path = catalog.get(split).annotation(task, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if copy is not None:
        shutil.copyfile(copy, path)
    else:
        path.write_text(json.dumps(data))
    return path


def build_real_root(fixtures: Path, root: Path) -> tuple[Path, list[str]]:
    """Every split the real configs name, in the catalog's layout, from the fixtures.

    Returns:
        ``(root, texts)``: the data root and every text the files hold (for a tokenizer).
    """
    instances = json.loads((fixtures / "coco_instances_val2017_slice.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    texts: list[str] = []

    # COCO captions: the fixtures have no captions file. Derived from the instances slice:
    # its images as they are, one caption per image naming its annotated categories (text
    # of ours, in the captions file's layout), so the reader and the caption task run.
    captions = []
    for img in instances["images"]:
        cats = sorted({names[a["category_id"]] for a in instances["annotations"]
                       if a["image_id"] == img["id"]})
        captions.append({"image_id": img["id"], "id": img["id"],
                         "caption": "a photo with " + ", ".join(cats) + "."})
    texts += [c["caption"] for c in captions]
    for split in ("coco_captions/train", "coco_captions/val"):
        _place(root, split, "caption", {"images": instances["images"], "annotations": captions})
        for img in instances["images"]:
            _jpeg(catalog.get(split).image_dir(root) / img["file_name"],
                  (img["width"], img["height"]))

    # Localized Narratives: the COCO records (the full-schema sample, and the partial one
    # without traces, which the trace task leaves out). The fixture's narratives are cut to
    # one trace point each (PROVENANCE.md), and a location needs two (the official
    # interpolation between points): derived, the sample's recorded point is repeated at
    # its utterance's end time (a pen held still), so the one utterance gets a location.
    ln = [json.loads(line) for f in ("localized_narratives_sample.jsonl",
                                     "localized_narratives_partial_records.jsonl")
          for line in (fixtures / f).read_text().splitlines() if line.strip()]
    coco_ln = [r for r in ln if r["dataset_id"].startswith("mscoco")]
    for r in coco_ln:
        for segment in r.get("traces", []):
            if len(segment) == 1:
                end = max(u["end_time"] for u in r["timed_caption"])
                segment.append({**segment[0], "t": end})
    texts += [r["caption"] for r in coco_ln]
    for split in ("ln_coco/train", "ln_coco/val"):
        path = catalog.get(split).annotation("trace", root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in coco_ln))
        for r in coco_ln:
            _jpeg(catalog.get(split).image_dir(root) / f"{int(r['image_id']):012d}.jpg",
                  LN_IMAGE_SIZE)

    # RefCOCO(g), MDETR's layout: the fixture is the refer toolkit's (a ref and, apart, an
    # image and an annotation that do not join, see PROVENANCE.md). Derived: one MDETR entry
    # per sentence of the ref, on the one image and box the fixture has. The text does not
    # describe that box; what this checks is the reader, the box targets and collation.
    refer = json.loads((fixtures / "refer_sample.json").read_text())
    (image,), (ann,) = refer["instances"]["images"], refer["instances"]["annotations"]
    entries, anns = [], []
    for i, sent in enumerate(refer["refs"][0]["sentences"]):
        entries.append({"id": i, "file_name": image["file_name"], "height": image["height"],
                        "width": image["width"], "original_id": image["id"],
                        "caption": sent["sent"], "dataset_name": "refcoco",
                        "tokens_negative": []})
        anns.append({"id": i, "image_id": i, "bbox": ann["bbox"], "area": ann["area"],
                     "category_id": ann["category_id"], "original_id": ann["id"],
                     "iscrowd": 0, "tokens_positive": [[0, len(sent["sent"])]]})
        texts.append(sent["sent"])
    mdetr = {"images": entries, "annotations": anns,
             "categories": [{"id": ann["category_id"], "name": names[ann["category_id"]]}]}
    for split in ("refcoco/train", "refcoco/val", "refcocog/train"):
        _place(root, split, "refer", mdetr)
    _jpeg(catalog.get("refcoco/train").image_dir(root) / image["file_name"],
          (image["width"], image["height"]))

    # Visual Genome: the catalog names GRiT's vg/{train,test}.json, but the readers tell the
    # format from the content, so the fixture's region_descriptions.json is copied as it is.
    regions = fixtures / "vg_region_descriptions_sample.json"
    for split in ("vg/train", "vg/test"):
        _place(root, split, "densecap", copy=regions)
    vg = json.loads(regions.read_text())
    texts += [r["phrase"] for img in vg for r in img["regions"]]
    for img in vg:
        _jpeg(catalog.get("vg/train").image_dir(root) / f"{img['id']}.jpg", VG_IMAGE_SIZE)
    return root, texts


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The data root and a local tokenizer directory (its words: every fixture text and
    the task prompts), shared by the stages."""
    from conftest import FIXTURES

    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"real-data fixtures not found at {FIXTURES} (../shared missing?)")
    tmp = tmp_path_factory.mktemp("real")
    root, texts = build_real_root(FIXTURES, tmp / "data")
    words = re.findall(r"\w+|[^\w\s]", " ".join(texts + list(TASK_PROMPTS.values())).lower())
    tokenizer = tmp / "tokenizer"
    word_tokenizer(sorted(set(words))).save_pretrained(tokenizer)
    return root, tokenizer


# --------------------------------------------------------------------------- the runs


def test_the_real_configs_are_the_stages_on_one_base() -> None:
    """Every real YAML runs below: ``base.yaml`` under each stage's own file."""
    assert REAL_STAGES == sorted(STAGES)
    for stage in REAL_STAGES:
        assert config_files(f"real/{stage}") == [REAL_DIR / "base.yaml", REAL_DIR / f"{stage}.yaml"]


def _splits(stage: str) -> set[str]:
    data = yaml.safe_load((REAL_DIR / f"{stage}.yaml").read_text())["data"]
    return {src["split"] for src in data["train"] + data["val"]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", REAL_STAGES)
def test_a_real_config_runs_two_steps(stage: str, real_root: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    root, tokenizer = real_root
    for split in _splits(stage):  # the builder covers every split the YAML names
        for task in catalog.get(split).tasks:
            assert catalog.get(split).annotation(task, root).is_file(), split
    # The base preset's architecture at random initialisation: its backbones with the
    # pretrained flags off (a list: given whole), the LM from its built-in architecture.
    base = PixelLLMConfig.from_name("base").without_pretrained().to_dict()
    backbones = base["image_encoder"]["backbones"]
    run = runs.run_stage(
        f"real/{stage}", out=tmp_path, data_root=root, steps=2, batch_size=2, val_limit=2,
        accelerator="cpu", precision="bf16-mixed", wandb=False, prediction_images=False,
        model={"image_encoder": {"backbones": backbones},
               "language_model": {"pretrained": False, "tokenizer": str(tokenizer)}},
        # each stage on its own (not from the previous one's checkpoint); no worker
        # processes on a 2-core machine; an epoch as short as the run
        overrides={"model.init_from": None, "data.num_workers": 0,
                   "data.samples_per_epoch": 4})
    assert run.steps == 2 and run.last.is_file()
    print(f"\n[real/{stage}] 2 steps in {run.seconds:.1f} s (fit, incl. model build and "
          "validation)")

    cfg = run.resolved()
    assert cfg["model"]["init_args"]["preset"] == "base"
    assert cfg["trainer"]["precision"] == "bf16-mixed"
    model, meta = load_model(run.last)
    assert meta["stage"] == stage and model.config.image_size == 384
    assert model.config.language_model.tokenizer == str(tokenizer)
    # Nothing trainable is left out of the checkpoint: random init has no frozen pretrained
    # part to rebuild from a source, so the checkpoint must hold every weight.
    assert not meta.get("frozen")
    # The stage's trainable set, as the stage sets it: the model config's own flags, then
    # the stage's patterns (set_trainable checks each pattern matches a parameter).
    init = cfg["model"]["init_args"]
    frozen = init.get("frozen")
    set_trainable(model, init.get("trainable"),
                  frozen if frozen is not None else STAGES[stage].default_frozen)
    trainable = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
    state = read_checkpoint(run.last)["state_dict"]
    assert trainable and trainable <= set(state)
