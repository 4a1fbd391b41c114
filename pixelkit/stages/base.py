"""The shared LightningModule of every stage.

A stage is *data + trainable patterns + losses + starting checkpoint* (DESIGN.md section 2):
the subclasses in :mod:`pixelkit.stages` only change class-level defaults, never the loop.

* model: a :class:`PixelLLM` from a preset plus nested overrides (``model:`` in YAML);
* ``init_from``: the previous stage's checkpoint (Lightning or slim), loaded strictly;
* ``trainable`` / ``frozen``: ``fnmatch`` patterns over parameter names;
* losses: text always; per-token points where the batch has targets (weight
  ``model.loss.point_weight``); the proposal head where the batch has ``gt_boxes`` and
  ``train_proposals`` is on. ``proposal_prompt_prob`` swaps region prompts for the
  current proposals that match them (IoU >= 0.5), as the paper trains dense captioning.

Validation logs the losses and teacher-forced task metrics per task (P@0.5 of the box at
the EOS-emitting position, trace L1, token accuracy), which is what a researcher watches
while training; the generation-based metrics run in ``pixelkit eval`` / the quickstart.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torchvision.ops import box_iou

from pixelkit.checkpoint import (
    META_KEY,
    checkpoint_meta,
    frozen_record,
    read_checkpoint,
    restore_frozen,
    slim_state,
)
from pixelkit.config import ModelOverrides, PixelLLMConfig, overrides_dict
from pixelkit.data.encoding import IGNORE_INDEX, MODEL_KEYS, TASK_IDS
from pixelkit.eval import refer_accuracy, trace_l1
from pixelkit.loggers import RUN_STATE_KEY, run_state
from pixelkit.modeling.location import LocationCodec
from pixelkit.modeling.pixel_llm import PixelLLM
from pixelkit.modeling.trainable import format_summary, parameter_summary, set_trainable

_TASK_NAMES = {v: k for k, v in TASK_IDS.items()}


#: No change to the preset (the default of a stage's ``model`` argument; never modified).
NO_OVERRIDES = ModelOverrides()


class PixelLLMStage(L.LightningModule):
    """One PixelLLM training stage.

    Args:
        preset: model preset (``tiny``, ``base``, ``paper``).
        model: nested overrides of the preset's config, e.g. ``{"extractor": {"depth": 4}}``
            or ``{"loss": {"point_weight": 2.0}}``: the one place every model value is set.
            Each key is checked against the config dataclasses
            (:func:`pixelkit.config.apply_overrides`); an unknown one is an error naming it.
        init_from: checkpoint of the previous stage to start from (null: the preset's weights).
        trainable: parameter-name patterns to train, all others frozen (null: what the model
            config leaves trainable).
        frozen: patterns to freeze on top (wins over ``trainable``; null: the stage's default,
            e.g. the heads a stage does not train yet).
        lr: peak learning rate (AdamW).
        head_lr: learning rate of the point and proposal heads (null: ``lr``); new heads
            can learn faster than the pretrained trunk.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 10% over the run.
        train_proposals: train the proposal head on batches with ground-truth boxes.
        proposal_prompt_prob: share of region prompts replaced by matched proposals.
    """

    #: Stage name written into checkpoints.
    stage_name = "custom"
    #: Patterns frozen by default in this stage (on top of the model config's own frozen
    #: parts, e.g. a frozen backbone or base LM, which stay frozen).
    default_frozen: list[str] = []
    default_train_proposals = False

    def __init__(self, preset: str = "tiny", model: ModelOverrides = NO_OVERRIDES,  # type: ignore[valid-type]
                 init_from: str | None = None, trainable: list[str] | None = None,
                 frozen: list[str] | None = None, lr: float = 1e-3, head_lr: float | None = None,
                 weight_decay: float = 0.01, warmup_steps: int = 50,
                 train_proposals: bool | None = None, proposal_prompt_prob: float = 0.0) -> None:
        overrides = overrides_dict(model)
        # Every argument, as plain values (checkpoints are read with weights_only=True): the
        # model overrides as the nested dict of what is set.
        hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        hparams["model"] = hparams.pop("overrides")
        super().__init__()
        self.save_hyperparameters(hparams)
        self.config = PixelLLMConfig.from_name(preset, overrides=overrides)
        #: How boxes enter and leave the text (``model.location.*``); the data module reads
        #: the format from :attr:`config` at setup.
        self.codec = LocationCodec(self.config.location)
        self.model = PixelLLM(self.config)
        if init_from:
            self.load_weights(init_from)
        default_frozen, default_proposals = self.default_frozen, self.default_train_proposals
        if self.codec.uses_regions:
            # Groma: the proposals are what the LM names, so the proposal head learns
            # wherever the LM does (from the ground-truth boxes the regions come from).
            default_frozen = [f for f in default_frozen if not f.startswith("proposal_head")]
            default_proposals = True
        set_trainable(self.model, trainable, frozen if frozen is not None else default_frozen)
        self.train_proposals = default_proposals if train_proposals is None else train_proposals
        self.val_task_names: list[str] = []

    @property
    def image_size(self) -> int:
        """The model's input side (linked into the data module by the CLI)."""
        return self.config.image_size

    @property
    def tokenizer_name(self) -> str:
        """The model's tokenizer (linked into the data module by the CLI)."""
        lm = self.config.language_model
        return lm.tokenizer or lm.name

    # ------------------------------------------------------------------ weights
    def load_weights(self, path: str) -> None:
        """Start from another stage's checkpoint: every shared weight is copied exactly (the
        frozen pretrained parts it left out come from their sources, checked by fingerprint)."""
        ckpt = read_checkpoint(path)
        state = ckpt["state_dict"]
        if any(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        state = restore_frozen(self.model, dict(state), ckpt[META_KEY].get("frozen") or {},
                               f"init_from {path}")
        state = self._grown_vocabulary(state)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if not any(k.startswith("region_encoder.") for k in state):
            # A regions model from a checkpoint of another format (the caption stage every
            # interface starts from): its region encoder is new, as its added token rows are.
            missing = [k for k in missing if not k.startswith("region_encoder.")]
        if missing or unexpected:
            raise ValueError(f"init_from {path}: architecture differs from this stage's model "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")

    def _grown_vocabulary(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` with its vocabulary rows placed into this model's larger vocabulary.

        A location format adds tokens after the existing ids (``<loc_i>``, the grid's
        numbers, task identifiers), so a checkpoint of the same model without them (the
        ``regression`` caption stage every interface starts from) has fewer rows in the
        LM's embedding and head: its rows are copied over the first ones and the added rows
        keep this model's initialisation. Only tensors whose first dimension is the
        vocabulary grow; any other difference stays an architecture error.
        """
        own = self.model.state_dict()
        vocab = self.model.language_model.model.get_input_embeddings().weight.shape[0]
        out = dict(state)
        for key, value in state.items():
            mine = own.get(key)
            if (mine is not None and mine.ndim >= 1 and value.ndim == mine.ndim
                    and mine.shape[0] == vocab and value.shape[0] < vocab
                    and value.shape[1:] == mine.shape[1:]):
                grown = mine.detach().clone()
                grown[: value.shape[0]] = value
                out[key] = grown
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        sources = [f"{s.task}:{s.ann}" for s in getattr(dm, "train_sources", [])]
        # The frozen pretrained weights stay out of every checkpoint (a paper-preset one
        # would carry 14 GB of Flan-T5-XL and SAM ViT-H at each save); their sources and
        # fingerprints stand for them.
        checkpoint["state_dict"], _ = slim_state(self.model, checkpoint["state_dict"], "model.")
        checkpoint[META_KEY] = checkpoint_meta(self.model, stage=self.stage_name,
                                               trained_on=sources)
        if self.trainer.is_global_zero:  # what a resume needs to continue the logs
            checkpoint[RUN_STATE_KEY] = run_state(self.trainer.loggers)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resume: the frozen parts the checkpoint left out are this model's own, rebuilt
        # from their sources; put them back (after the fingerprint check) for the strict load.
        restore_frozen(self.model, checkpoint["state_dict"],
                       (checkpoint.get(META_KEY) or {}).get("frozen") or {}, "the checkpoint",
                       prefix="model.")

    def setup(self, stage: str) -> None:
        # Lightning calls this before the strategy wraps the model. Under FSDP each rank then
        # holds a shard of every weight under wrapper names, so what needs the whole model is
        # read now: the state dict's keys and the frozen parts' fingerprints that every
        # checkpoint save uses (both cached on the model), and the parameter counts.
        frozen_record(self.model)
        self._parameter_summary = format_summary(parameter_summary(self.model))

    def on_fit_start(self) -> None:
        if self.global_rank == 0:
            print(f"[pixelkit] stage {self.stage_name}: parameters\n"
                  f"{self._parameter_summary}")
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm.hparams, "image_size", None) not in (None, self.config.image_size):
            raise ValueError(f"data.image_size={dm.hparams.image_size} but the model's "
                             f"image_size is {self.config.image_size}")

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: dict[str, Any], train: bool) -> Any:
        kwargs = {k: batch[k] for k in MODEL_KEYS}
        if not self.train_proposals:
            kwargs["gt_boxes"] = None
        features = self.model.encode_image(batch["images"])
        if train and self.hparams.proposal_prompt_prob > 0 and batch["gt_boxes"] is not None:
            kwargs["boxes"] = self._proposal_prompts(features, batch)
        return self.model(features=features, **kwargs)

    @torch.no_grad()
    def _proposal_prompts(self, features: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Replace some region box prompts with the current proposal that matches them."""
        boxes = batch["boxes"].clone()
        proposals = self.model.propose(features.detach(), score_threshold=0.0)
        for r in torch.nonzero(torch.isfinite(boxes).all(-1)).flatten().tolist():
            if torch.rand(()) >= self.hparams.proposal_prompt_prob:
                continue
            props = proposals[int(batch["image_index"][r])]["boxes"]
            if len(props):
                iou = box_iou(boxes[r : r + 1], props)[0]
                best = int(iou.argmax())
                if iou[best] >= 0.5:
                    boxes[r] = props[best]
        return boxes

    def _usable(self, batch: dict[str, Any], log: bool = False) -> bool:
        """Count the batch's skipped images (the data module stops the run past its share);
        False when none of its images could be used.

        Args:
            log: log the running count ``data/skipped_images`` (from training steps: the
                count is cumulative, so the images validation met show up at the next one).
        """
        dm = getattr(self.trainer, "datamodule", None)
        if batch.get("skipped_images") and hasattr(dm, "account"):
            dm.account(batch)
        if log and getattr(dm, "bad_images", None):
            self.log("data/skipped_images", float(len(dm.bad_images)), batch_size=1)
        return "images" in batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._usable(batch, log=True):
            return None  # every image of the batch was bad: Lightning skips the step
        out = self._forward(batch, train=True)
        bs = len(batch["labels"])
        for name, value in out.losses.items():
            self.log(f"train/{name}", value, batch_size=bs, prog_bar=name in ("text", "point"))
        self.log("train/loss", out.loss, batch_size=bs, prog_bar=True)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        if not self._usable(batch):
            return
        out = self._forward(batch, train=False)
        task, labels = batch["task"], batch["labels"]
        valid = labels != IGNORE_INDEX
        dm = getattr(self.trainer, "datamodule", None)
        loader = dm.val_tasks()[dataloader_idx] if hasattr(dm, "val_tasks") else str(dataloader_idx)
        log = lambda name, value, n: self.log(name, value, batch_size=n,  # noqa: E731
                                             add_dataloader_idx=False, sync_dist=True)
        # Losses per validation set (one task each); val/loss is their mean (epoch end).
        log(f"val/{loader}/loss", out.loss, len(labels))
        for name, value in out.losses.items():
            log(f"val/{loader}/{name}_loss", value, len(labels))
        correct = (out.logits.argmax(-1) == labels) & valid
        for tid in task.unique().tolist():
            name, rows = _TASK_NAMES[tid], task == tid
            log(f"val/{name}/token_acc", correct[rows].sum() / valid[rows].sum(), int(rows.sum()))
            if name == "refer" and self.codec.writes_targets:
                regions = None if batch["regions"] is None else batch["regions"][rows]
                hits, failures, n = self._written_refer(out.logits[rows], labels[rows], regions)
                log("val/refer/p_at_0.5", hits / n, n)
                log("val/refer/parse_failure_rate", failures / n, n)
            elif name == "refer":
                # box = point head at the position whose label is EOS (last valid position),
                # corners ordered as the Predictor does; P@0.5 from pixelkit.eval
                r_idx = torch.nonzero(rows).flatten()
                last = valid[r_idx].sum(1) - 1
                p = out.points[r_idx, last].detach().float()
                pred = torch.cat([torch.minimum(p[:, :2], p[:, 2:]),
                                  torch.maximum(p[:, :2], p[:, 2:])], 1)
                gt = batch["point_targets"][r_idx, last]
                log("val/refer/p_at_0.5", refer_accuracy(pred.cpu(), gt.cpu()), len(r_idx))
            if name == "trace" and batch["point_mask"][rows].any():  # written formats: none
                m = batch["point_mask"][rows].bool()
                l1 = trace_l1(out.points[rows].detach().float().cpu(),
                              batch["point_targets"][rows].cpu(), m.cpu())
                log("val/trace/l1", l1, int(m.sum()))

    def _written_refer(self, logits: torch.Tensor, labels: torch.Tensor,
                       regions: torch.Tensor | None = None) -> tuple[float, int, int]:
        """Teacher-forced referring of a format that writes the box: the argmax tokens at
        the target's positions, parsed (:meth:`LocationCodec.decode_box`), against the
        target's own box. IoU is the same in any frame scaled per axis, so both are read on
        the default grid extent. A failed parse is a miss.

        Args:
            logits: ``(R, L, V)`` of the refer rows.
            labels: ``(R, L)`` their targets (-100 padding).
            regions: ``(R, K, 4)`` their proposals (``regions``: a token reads as its
                proposal; the target's is the jittered true box).

        Returns:
            ``(hits at IoU > 0.5, parse failures, rows)``.
        """
        tok = self._location_tokenizer()
        hits = failures = 0
        rows = regions.float().cpu().numpy() if regions is not None else [None] * len(labels)
        for pred, gold, row in zip(logits.argmax(-1).tolist(), labels.tolist(), rows):
            keep = [i for i, g in enumerate(gold) if g != IGNORE_INDEX]
            truth = self.codec.decode_box(tok.decode([gold[i] for i in keep],
                                                     skip_special_tokens=True), regions=row)
            got = self.codec.decode_box(tok.decode([pred[i] for i in keep],
                                                   skip_special_tokens=True), regions=row)
            failures += not got.ok
            if got.ok and truth.ok:
                iou = box_iou(torch.from_numpy(got.box[None]), torch.from_numpy(truth.box[None]))
                hits += bool(iou[0, 0] > 0.5)
        return float(hits), failures, len(labels)

    def _location_tokenizer(self) -> Any:
        """The model's tokenizer with its location tokens (built once)."""
        if getattr(self, "_tokenizer", None) is None:
            from pixelkit.modeling.tokenizer import tokenizer_for

            self._tokenizer = tokenizer_for(self.config)
        return self._tokenizer

    def on_validation_epoch_end(self) -> None:
        losses = [v for k, v in self.trainer.callback_metrics.items()
                  if k.startswith("val/") and k.endswith("/loss") and k.count("/") == 2]
        if losses:
            self.log("val/loss", torch.stack([torch.as_tensor(v) for v in losses]).mean(),
                     sync_dist=True)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        heads, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (heads if name.startswith(("point_head.", "proposal_head.")) else rest).append(p)
        groups = [{"params": rest, "lr": hp.lr}]
        if heads:
            groups.append({"params": heads, "lr": hp.head_lr or hp.lr})
        # The fused kernel updates every parameter in one call: on the tiny preset's 234
        # tensors the per-tensor loop cost more than the update (pixelkit/RECIPE.md).
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=hp.weight_decay,
                                fused=fused)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = min(hp.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / max(warm, 1)
            t = (step - warm) / max(total - warm, 1)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
