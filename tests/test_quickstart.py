"""`pixelkit quickstart --smoke`: the whole chain (world -> 4 stages -> eval -> report) runs."""

from __future__ import annotations

import json

import torch
import yaml

from pixelkit.cli import main
from pixelkit.report import TARGETS


def test_quickstart_smoke_writes_everything(tmp_path) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--smoke", "--seed", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["refer.p_at_0.5", "loca_caption.exact_match", "loca_caption.CIDEr", "caption.CIDEr",
                "trace.pointing_accuracy", "trace.l1", "densecap.mAP", "wall_seconds"]:
        assert key in metrics, key
        assert metrics[key] is None or isinstance(metrics[key], (int, float))
    assert set(TARGETS) <= set(metrics)
    report = (out / "report.md").read_text()
    for picture in ("traces", "refer", "regions", "densecap", "loss_curves"):
        assert (out / "report" / f"{picture}.png").stat().st_size > 1000
        assert f"report/{picture}.png" in report
    ckpt = torch.load(out / "checkpoints" / "pixelllm.ckpt", weights_only=True)
    assert ckpt["pixelkit"]["stages"] == ["caption", "trace", "refer", "densecap"]
    # the resolved stage configs can be re-run by hand; --seed seeds the weights, the
    # augmentation and the data order of every stage (and the world, metrics["seed"])
    for stage in ("caption", "trace", "refer", "densecap"):
        config = yaml.safe_load((out / "configs" / f"{stage}.yaml").read_text())
        assert config["seed_everything"] == 3 and config["data"]["seed"] == 3, stage
    assert metrics["seed"] == 3
