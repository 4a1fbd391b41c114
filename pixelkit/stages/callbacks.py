"""Callbacks of the stages: pictures of the model's predictions at every validation, and
a validation at the last step.

:class:`PredictionImages` draws, for a few fixed validation images, the generated narrative
with its per-word trace, the referring boxes and the dense captions, with the same
:class:`~pixelkit.predictor.Predictor` and :mod:`pixelkit.viz` the demo uses. It logs them as
``wandb.Image`` through :class:`WandbLogger` (``log_image``) and always writes the PNGs next
to the run's logs, so a CSV-only run has them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from pixelkit.viz import draw_boxes, draw_trace, side_by_side


class PredictionImages(L.Callback):
    """Log predictions on ``num_images`` validation images after each validation.

    Args:
        num_images: how many validation images (the first ones of the first val source).
        dense: also draw dense captions (when the model has a proposal head).
    """

    def __init__(self, num_images: int = 4, dense: bool = True) -> None:
        self.num_images = num_images
        self.dense = dense

    def _images(self, trainer: L.Trainer) -> list[Any]:
        dm = trainer.datamodule
        seen, paths = set(), []
        for ds in getattr(dm, "val_sets", []):
            for s in ds.samples:
                if s.image_path not in seen:
                    seen.add(s.image_path)
                    paths.append(s)
                if len(paths) >= self.num_images:
                    return paths
        return paths

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        from pixelkit.predictor import Predictor

        samples = self._images(trainer)
        if not samples:
            return
        predictor = Predictor(pl_module.model, trainer.datamodule.tokenizer, device=pl_module.device)
        panels, captions = [], []
        for s in samples:
            try:
                predictor.set_image(s.image_path)
            except ValueError:  # a bad image: the data module skips and counts it
                continue
            image = predictor.image.image
            cap = predictor.caption()
            row = [draw_trace(image, cap.words, cap.points, min_side=192)]
            if s.task == "refer" and len(s.boxes):
                ref = predictor.refer(s.text)
                # A written answer that did not parse has no box: the truth alone.
                shown = [(ref.box, s.text, (255, 60, 60))] if ref.box is not None else []
                shown.append((s.boxes[0], "truth", (60, 255, 60)))
                row.append(draw_boxes(image, [b for b, _, _ in shown], [t for _, t, _ in shown],
                                      colours=[c for _, _, c in shown], min_side=192))
            if self.dense and pl_module.model.proposal_head is not None:
                dc = predictor.dense_caption(max_regions=5, score_threshold=0.2)
                row.append(draw_boxes(image, dc.boxes, dc.captions, dc.scores, min_side=192))
            panels.append(side_by_side(row))
            captions.append(cap.text)
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, panel in enumerate(panels):
            panel.save(out_dir / f"step{trainer.global_step:06d}_{i}.png")
        for logger in trainer.loggers if panels else []:
            if hasattr(logger, "log_image"):  # WandbLogger: wandb.Image per panel
                logger.log_image(key="val/predictions", images=panels, caption=captions,
                                 step=trainer.global_step)
        pl_module.model.train(pl_module.training)


class ValidateAtEnd(L.Callback):
    """Validate after the last training step, whatever ``val_check_interval`` is.

    Lightning validates every ``val_check_interval`` steps only, so a run of 350 steps that
    validates every 250 would end with step 250's metrics (and its last checkpoint would
    skip ``ModelCheckpoint``'s monitored save). Asking the trainer to stop at ``max_steps``
    makes Lightning's own loop run the validation for that step (its early-stop path), once
    even when the step is also a regular validation step. Validation can then be sparse
    (the quickstart's cost) while each stage still ends with its metrics.
    """

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True
