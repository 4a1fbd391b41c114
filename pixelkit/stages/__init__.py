"""One LightningModule per PixelLLM stage (DESIGN.md section 2), all on :class:`PixelLLMStage`.

| stage | trains | data (YAML) |
|---|---|---|
| :class:`CaptionPretraining` | extractor, LoRA / LM, prompt encoder (+ encoder) | captions |
| :class:`TraceTraining` | + point head; caption CE + trace L1 | narratives (+ captions) |
| :class:`ReferringTraining` | box at EOS from "where is <expr>" | refcoco (+ replay) |
| :class:`DenseCaptioning` | + proposal head; region captions of matched proposals | VG / GRiT (+ replay) |

They differ only in defaults; everything can be changed from the YAML. Frozen parts of the
model config (a frozen backbone, a frozen base LM under LoRA) stay frozen in every stage.
"""

from pixelkit.stages.base import PixelLLMStage


class CaptionPretraining(PixelLLMStage):
    """Caption pretraining: everything but the heads learns to caption."""

    stage_name = "caption"
    default_frozen = ["point_head.*", "proposal_head.*"]


class TraceTraining(PixelLLMStage):
    """Trace training: adds the point head; caption CE + per-word trace L1."""

    stage_name = "trace"
    default_frozen = ["proposal_head.*"]


class ReferringTraining(TraceTraining):
    """Referring box head: the point head at EOS regresses the referred box."""

    stage_name = "refer"


class DenseCaptioning(PixelLLMStage):
    """Dense captioning: adds the proposal head; captions matched proposals."""

    stage_name = "densecap"
    default_train_proposals = True


#: The four stages by name, in training order (each starts from the one before it): the
#: one place that order is written.
STAGES = {cls.stage_name: cls for cls in
          (CaptionPretraining, TraceTraining, ReferringTraining, DenseCaptioning)}


def previous_stage(stage: str) -> str | None:
    """The stage trained before ``stage`` (None for the first).

    Raises:
        ValueError: an unknown stage name.
    """
    order = list(STAGES)
    if stage not in order:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(order)}")
    i = order.index(stage)
    return order[i - 1] if i else None


__all__ = ["PixelLLMStage", "CaptionPretraining", "TraceTraining", "ReferringTraining",
           "DenseCaptioning", "STAGES", "previous_stage"]
