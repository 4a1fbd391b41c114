"""The location-interface comparison (pixelkit.interfaces): runs that differ only in
``location.*``, every metric for every format, the table and the plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pixelkit import runs
from pixelkit.data.synth import synthesize
from pixelkit.interfaces import (
    FORMATS,
    METRICS,
    REFER_WITHOUT_TRACE,
    compare_interfaces,
    steps_to_reach,
    trace_ablation,
)
from pixelkit.optional import available

SMALL = {"batch_size": 2, "val_limit": 4, "accelerator": "cpu", "wandb": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interfaces") / "shapes"
    synthesize(root, num_images=16, image_size=64, seed=0, val_fraction=0.25, progress=False)
    return root


def test_steps_to_reach(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    log.write_text("step,val/refer/p_at_0.5,train/loss\n9,,1.0\n9,0.5,\n19,0.81,\n29,0.9,\n")
    assert steps_to_reach(log, "val/refer/p_at_0.5", 0.8) == 20
    assert math.isnan(steps_to_reach(log, "val/refer/p_at_0.5", 0.95))  # never reached
    assert math.isnan(steps_to_reach(tmp_path / "none.csv", "val/refer/p_at_0.5", 0.8))


def test_the_comparison_runs_differ_only_in_the_format(tmp_path: Path, world: Path) -> None:
    caption = runs.run_stage("caption", out=tmp_path / "caption", data_root=world, steps=2,
                             overrides={"model.init_from": None}, **SMALL)
    cmp = compare_interfaces(tmp_path / "cmp", init_from=caption.last, data_root=world,
                             formats=list(FORMATS), seeds=[0], steps=2,
                             eval_limit=4, **SMALL)
    # the resolved configs differ in model.location.format alone (and the run's own paths)
    plain = {}
    for fmt, _, run in cmp.study.runs:
        cfg = yaml.safe_load(run.config.read_text())
        model = cfg["model"]["init_args"]["model"]
        assert model.pop("location") == {"format": fmt}
        assert cfg["model"]["init_args"]["init_from"] == str(caption.last)
        plain[fmt] = yaml.safe_dump(cfg).replace(run.name, "<run>")
    assert len(set(plain.values())) == 1
    # every metric for every format (steps to 0.8 is NaN after two steps: never reached)
    assert [r["format"] for r in cmp.runs] == ["regression", "text", "tokens", "regions"]
    for r in cmp.runs:
        assert set(METRICS) <= set(r)
        assert 0 <= r["refer.p_at_0.5"] <= 1 and 0 <= r["refer.parse_failure_rate"] <= 1
        assert r["refer.ms_per_answer"] > 0
        assert 0 <= r["trace.caption_parse_failure_rate"] <= 1
    reg, *written = cmp.runs
    assert reg["refer.parse_failure_rate"] == 0 and reg["refer.generated_tokens"] == 0
    assert all(r["refer.generated_tokens"] > 0 for r in written)
    md = cmp.files["md"].read_text()
    assert all(h in md for h in METRICS.values()) and md.count("\n| ") == 5
    with open(cmp.files["csv"], newline="") as f:
        assert [row["format"] for row in csv.DictReader(f)] == list(FORMATS)
    if available("matplotlib"):
        assert Image.open(cmp.files["png"]).size[0] > 500


def test_the_trace_ablation_arms_differ_only_in_where_they_start(tmp_path: Path,
                                                                world: Path) -> None:
    chain = runs.run_chain(["caption", "trace"], out=tmp_path / "chain", steps=2,
                           data_root=world, **SMALL)
    arms = {"caption": chain["caption"].last, "caption + trace": chain["trace"].last}
    ablation = trace_ablation(tmp_path / "ablation", checkpoints=arms, data_root=world,
                              seeds=[0], steps=2, eval_limit=4, **SMALL)
    configs = {}
    for arm, checkpoint in arms.items():
        run_dir = tmp_path / "ablation" / arm.replace(" ", "_")
        cfg = yaml.safe_load((run_dir / "configs" / "seed0.yaml").read_text())
        assert cfg["model"]["init_args"].pop("init_from") == str(checkpoint)
        # no narrative replay in either arm: the trace stage is the only difference
        assert [{k: v for k, v in src.items() if v is not None}
                for src in cfg["data"]["train"]] == REFER_WITHOUT_TRACE
        configs[arm] = yaml.safe_dump(cfg).replace(str(run_dir), "<out>")
    assert len(set(configs.values())) == 1
    assert [r["init"] for r in ablation.runs] == list(arms)
    for r in ablation.runs:
        assert 0 <= r["refer.p_at_0.5"] <= 1 and r["refer.generated_tokens"] == 0
    md = ablation.files["md"].read_text()
    assert md.startswith("# Trace pretraining") and md.count("\n| ") == 3
