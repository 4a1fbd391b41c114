"""``pixelkit quickstart``: the shapes world, the four stages in turn, an evaluation and a report.

::

    pixelkit quickstart --out outputs/quickstart

1. writes the shapes world (``DIR/data``) in the real formats;
2. trains caption -> trace -> refer -> densecap with the packaged stage YAMLs (``pixelkit/configs/``) run
   through LightningCLI, each stage starting from the previous one's checkpoint (the YAMLs
   are resolved into ``DIR/configs`` with the paths of this run, so any stage can be re-run
   by hand with ``pixelkit fit --config DIR/configs/<stage>.yaml``);
3. evaluates the final checkpoint on the val split with :mod:`pixelkit.evaluate`;
4. writes ``DIR/metrics.json``, ``DIR/report.md`` (metrics per stage, pictures of traces,
   referring boxes and dense captions, loss curves) and ``DIR/checkpoints/pixelllm.ckpt``,
   the all-task checkpoint the demo and the notebooks load.

``--smoke`` runs the same chain on a tiny world for a few steps (tests, CI).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

STAGE_ORDER = ("caption", "trace", "refer", "densecap")
SHAPES_ROOT = "data/shapes"  # the placeholder root of the stage YAMLs


def resolve_stage_config(stage: str, out: Path, init_from: Path | None, *,
                         max_steps: int | None = None, smoke: bool = False) -> Path:
    """Copy the packaged ``<stage>.yaml`` into ``out/configs`` with this run's paths.

    Args:
        stage: one of :data:`STAGE_ORDER`.
        out: the quickstart directory (data in ``out/data``, runs in ``out/runs``).
        init_from: checkpoint of the previous stage (None for the first).
        max_steps: override the stage length.
        smoke: tiny settings (batch 4, val on 8 samples, no W&B).

    Returns:
        The resolved YAML's path.
    """
    from pixelkit.training import resolve_config

    text = resolve_config(stage).read_text().replace(SHAPES_ROOT, str(out / "data")).replace(
        "runs/", f"{out / 'runs'}/")
    cfg = yaml.safe_load(text)
    cfg["model"]["init_args"]["init_from"] = str(init_from) if init_from else None
    trainer = cfg["trainer"]
    if max_steps is not None:
        trainer["max_steps"] = max_steps
    trainer["enable_model_summary"] = False
    if smoke:
        cfg["data"].update(batch_size=4, samples_per_epoch=16, val_limit=8)
        trainer.update(val_check_interval=max(1, trainer["max_steps"]), log_every_n_steps=1,
                       enable_progress_bar=False)
        trainer["logger"] = [lg for lg in trainer["logger"] if "CSVLogger" in lg["class_path"]]
    dst = out / "configs" / f"{stage}.yaml"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(f"# resolved from pixelkit/configs/{stage}.yaml by pixelkit quickstart\n"
                   + yaml.safe_dump(cfg, sort_keys=False))
    return dst


def run_stage(config: Path) -> dict[str, Any]:
    """``pixelkit fit --config config`` in this process; returns the stage's last metrics
    and its checkpoint paths."""
    from pixelkit.training import cli_main

    cli = cli_main(["fit", "--config", str(config)])
    trainer = cli.trainer
    ck = trainer.checkpoint_callback
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("val/") and v.numel() == 1}
    csv_dir = next((lg.log_dir for lg in trainer.loggers if type(lg).__name__ == "CSVLogger"), None)
    return {"last": str(Path(ck.dirpath) / "last.ckpt"), "best": ck.best_model_path,
            "val": metrics, "csv": str(Path(csv_dir) / "metrics.csv") if csv_dir else None,
            "steps": trainer.global_step}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output directory")
    parser.add_argument("--num-images", type=int, default=3000, help="shapes world size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny world, a few steps per stage (tests / CI)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override every stage's max_steps")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate on at most this many val samples per task")


def run(args: argparse.Namespace) -> int:
    from pixelkit.data.synth import synthesize
    from pixelkit.report import evaluate_final, write_report

    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    num_images = 40 if args.smoke else args.num_images
    steps = 3 if args.smoke else args.steps
    print(f"[quickstart] 1/4 shapes world: {num_images} images -> {out / 'data'}")
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    synthesize(out / "data", num_images=num_images, image_size=64, seed=args.seed,
               val_fraction=0.2, progress=not args.smoke)
    stages: dict[str, dict[str, Any]] = {}
    init = None
    for i, stage in enumerate(STAGE_ORDER):
        print(f"[quickstart] 2/4 stage {i + 1}/4: {stage}")
        cfg = resolve_stage_config(stage, out, init, max_steps=steps, smoke=args.smoke)
        t = time.perf_counter()
        stages[stage] = run_stage(cfg)
        stages[stage]["seconds"] = round(time.perf_counter() - t, 1)
        init = Path(stages[stage]["last"])
    print("[quickstart] 3/4 evaluating the final checkpoint on val")
    train_seconds = time.perf_counter() - t0
    limit = 12 if args.smoke else args.eval_limit
    metrics, ckpt = evaluate_final(out, init, stages, limit=limit)
    metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
    metrics["train_seconds"] = round(train_seconds, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("[quickstart] 4/4 report")
    report = write_report(out, metrics, stages, ckpt)
    print(f"[quickstart] done in {metrics['wall_seconds']:.0f} s\n"
          f"  checkpoint: {ckpt}\n  metrics:    {out / 'metrics.json'}\n"
          f"  report:     {report}\n  configs:    {out / 'configs'}\n  runs/logs:  {out / 'runs'}")
    return 0
