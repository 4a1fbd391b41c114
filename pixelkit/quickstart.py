"""``pixelkit quickstart``: the shapes world, the four stages in turn, an evaluation and a report.

::

    pixelkit quickstart --out outputs/quickstart

1. writes the shapes world (``DIR/data``) in the real formats;
2. trains caption -> trace -> refer -> densecap (:data:`pixelkit.stages.STAGES` order) with
   :func:`pixelkit.runs.run_chain`: the packaged stage configs, each stage from the one
   before's last checkpoint; every resolved config is in ``DIR/configs`` (re-run one with
   ``pixelkit fit --config DIR/configs/<stage>.yaml``), every run in ``DIR/runs``;
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

#: The smoke setting's changes to every stage (tests, CI): small batches, a few samples.
SMOKE = {"batch_size": 4, "val_limit": 8, "overrides": {"data.samples_per_epoch": 16,
                                                        "trainer.log_every_n_steps": 1},
         "wandb": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output directory")
    parser.add_argument("--num-images", type=int, default=3000, help="shapes world size")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the shapes world, the weights and the data order")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny world, a few steps per stage (tests / CI)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override every stage's max_steps")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate on at most this many val samples per task")


def run(args: argparse.Namespace) -> int:
    from pixelkit.data.synth import synthesize
    from pixelkit.files import atomic_write_text
    from pixelkit.report import evaluate_final, write_report
    from pixelkit.runs import run_chain
    from pixelkit.stages import STAGES

    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    num_images = 40 if args.smoke else args.num_images
    steps = 3 if args.smoke else args.steps
    print(f"[quickstart] 1/4 shapes world: {num_images} images -> {out / 'data'}")
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    synthesize(out / "data", num_images=num_images, image_size=64, seed=args.seed,
               val_fraction=0.2, progress=not args.smoke)
    print(f"[quickstart] 2/4 stages: {' -> '.join(STAGES)}")
    options: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    # One seed for the run: the world above, the initial weights and augmentation
    # (seed_everything) and the data sampler's order (data.seed).
    options["overrides"] = {**options.get("overrides", {}), "seed_everything": args.seed,
                            "data.seed": args.seed}
    runs = run_chain(list(STAGES), out=out, steps=steps, data_root=out / "data",
                     quiet=args.smoke, **options)
    stages: dict[str, dict[str, Any]] = {
        name: {"last": str(r.last), "val": r.val, "csv": str(r.csv) if r.csv else None,
               "steps": r.steps, "seconds": r.seconds}
        for name, r in runs.items()}
    print("[quickstart] 3/4 evaluating the final checkpoint on val")
    train_seconds = time.perf_counter() - t0
    limit = 12 if args.smoke else args.eval_limit
    metrics, ckpt = evaluate_final(out, runs[list(STAGES)[-1]].last, stages, limit=limit)
    metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["seed"] = args.seed
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    print("[quickstart] 4/4 report")
    report = write_report(out, metrics, stages, ckpt)
    print(f"[quickstart] done in {metrics['wall_seconds']:.0f} s\n"
          f"  checkpoint: {ckpt}\n  metrics:    {out / 'metrics.json'}\n"
          f"  report:     {report}\n  configs:    {out / 'configs'}\n  runs/logs:  {out / 'runs'}")
    return 0
