"""``pixelkit eval``: a checkpoint's metrics on an annotation file in a real format.

::

    pixelkit eval --task refer --ckpt pixelllm.ckpt \\
        --ann data/annotations/finetune_refcoco_val.json --images data/images/val \\
        --out metrics.json --predictions predictions.jsonl

=============  ===================================  ==========================================
task           annotation file (read_any)           metrics (keys of metrics.json)
=============  ===================================  ==========================================
refer          MDETR ``finetune_refcoco*.json``     ``p_at_0.5``, ``mean_iou``,
                                                    ``parse_failure_rate``, ``generated_tokens``
loca-caption   GRiT / VG regions json               ``exact_match``, ``CIDEr``, ``METEOR``,
                                                    ``BLEU-4``, ``ROUGE-L``, ``generated_tokens``
caption        COCO ``captions_*.json``             the same
densecap       GRiT / VG regions json               ``mAP``, ``mAP_detection``
trace          Localized Narratives ``.jsonl``      ``l1``, ``parse_failure_rate``
=============  ===================================  ==========================================

plus counts (``num_samples``, ``num_skipped`` by the reader, and the metric's own).

Every evaluation is two steps, both public so that the training stages and the quickstart
can call them for validation metrics: ``predict_<task>(predictor, samples, batch_size)``
gives one JSON-ready *prediction record* per sample (pixels of the original image, with
the ground truth next to it), and ``score_<task>(records)`` computes the metrics from those
records alone. ``evaluate_<task>`` does both. So ``--predictions FILE`` holds everything
needed to recompute the numbers independently.

Notes per task:

* ``refer``: one teacher-forced pass per batch (:meth:`Predictor.refer_batch`); P@0.5 is
  :func:`pixelkit.eval.refer_accuracy` (IoU strictly above 0.5). With a ``location.format``
  that writes boxes (``text``, ``tokens``) the answer is generated and parsed; an answer
  without a box that parses is a miss (IoU 0) and counts in ``parse_failure_rate``.
* ``caption`` / ``loca-caption``: one batched decode per batch; a COCO image with several
  captions is captioned once and scored against all of them. Scores are
  :func:`pixelkit.eval.caption_scores` (pycocoevalcap; needs Java) and
  :func:`pixelkit.eval.exact_match`.
* ``densecap``: proposals and one batched decode per batch of images; DenseCap mAP is
  :func:`pixelkit.eval.densecap_map` (METEOR through Java).
* ``trace``: teacher-forced per-token location error, L1 between the point head's box
  (two points ordered into a box, clipped to the image) and the token's target box,
  averaged over the four coordinates and pooled over all tokens with a target, in the
  model frame's normalised coordinates (pixels / max(W, H), the frame of the training
  loss). Targets come from :func:`pixelkit.data.alignment.align_caption` with
  ``method="text"`` on the evaluation transform's utterance boxes, as in training. Formats
  that write boxes are teacher-forced on the grounded caption with the model's own box
  values (:func:`_predict_grounded_trace`): the L1 of each word's phrase box, in the same
  units. Pointing accuracy of *generated* narratives is
  :func:`pixelkit.report.pointing_accuracy_on` (every format: words take their phrase's
  box centre).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.data.schema import Sample

__all__ = [
    "EVAL_TASKS",
    "evaluate",
    "evaluate_captions",
    "evaluate_densecap",
    "evaluate_refer",
    "evaluate_trace",
    "load_samples",
    "predict",
    "read_predictions",
    "score",
    "write_predictions",
]

#: ``--task`` value -> the sample task of :func:`pixelkit.data.formats.read_any`.
EVAL_TASKS: dict[str, str] = {
    "caption": "caption",
    "trace": "trace",
    "refer": "refer",
    "loca-caption": "loca_caption",
    "densecap": "densecap",
}

Records = list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Loading and batching
# --------------------------------------------------------------------------------------------


def load_samples(task: str, ann: str | Path, images: str | Path | None = None,
                 limit: int | None = None, strict: bool = True) -> tuple[list[Sample], Any]:
    """Read an annotation file for ``task`` through :func:`pixelkit.data.formats.read_any`.

    Args:
        task: a key of :data:`EVAL_TASKS` (``loca_caption`` is accepted too).
        ann: the annotation file.
        images: the images folder.
        limit: keep the first ``limit`` samples (for ``caption``: the captions of the
            first ``limit`` images).
        strict: raise on the first bad record (else skip and count it in the report).

    Returns:
        ``(samples, report)``.
    """
    from pixelkit.data.formats import read_any

    fmt_task = EVAL_TASKS.get(task, task)
    if fmt_task not in EVAL_TASKS.values():
        raise ValueError(f"unknown eval task {task!r}; choose one of {sorted(EVAL_TASKS)}")
    samples, report = read_any(ann, images, strict=strict, task=fmt_task)
    if limit is not None:
        if fmt_task == "caption":
            keep = set(list(dict.fromkeys(s.image_path for s in samples))[:limit])
            samples = [s for s in samples if s.image_path in keep]
        else:
            samples = samples[:limit]
    if not samples:
        raise ValueError(f"{ann}: no {fmt_task} samples to evaluate")
    return samples, report


def _chunks(items: Sequence[Any], size: int, progress: bool, desc: str) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``size`` items, with a tqdm bar over items when asked."""
    from tqdm.auto import tqdm

    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    with tqdm(total=len(items), desc=desc, unit="sample", disable=not progress,
              file=sys.stderr) as bar:
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            yield chunk
            bar.update(len(chunk))


def _encode(predictor: Any, samples: Sequence[Sample]) -> list[Any]:
    """Encode the distinct images of ``samples`` once; one EncodedImage per sample."""
    paths = list(dict.fromkeys(s.image_path for s in samples))
    encoded = dict(zip(paths, predictor.encode_images(paths)))
    for s in samples:
        if tuple(encoded[s.image_path].size) != tuple(s.image_size):
            w, h = encoded[s.image_path].size
            raise ValueError(f"{s.source or s.image_path}: image {s.image_path} is {w}x{h} but "
                             f"the annotation says {s.image_size[0]}x{s.image_size[1]}")
    return [encoded[s.image_path] for s in samples]


def _base_record(i: int, s: Sample) -> dict[str, Any]:
    return {"index": i, "image_id": s.image_id, "ann_id": s.ann_id, "image": s.image_path,
            "image_size": [int(s.image_size[0]), int(s.image_size[1])]}


def _box(b: Any) -> list[float]:
    return [float(v) for v in np.asarray(b, np.float64).reshape(4)]


# --------------------------------------------------------------------------------------------
# refer
# --------------------------------------------------------------------------------------------


def predict_refer(predictor: Any, samples: Sequence[Sample], batch_size: int = 32,
                  progress: bool = False) -> Records:
    """One record per expression: ``expression``, ``box`` (predicted, pixels; null when a
    written answer did not parse, with the reason in ``error``), ``score``,
    ``num_tokens`` (generated) and ``gt_box`` (pixels)."""
    records: Records = []
    for chunk in _chunks(samples, batch_size, progress, "refer"):
        results = predictor.refer_batch(_encode(predictor, chunk), [s.text for s in chunk])
        for s, r in zip(chunk, results):
            rec = _base_record(len(records), s)
            rec.update(expression=s.text, box=None if r.box is None else _box(r.box),
                       score=float(r.score), error=r.error, num_tokens=int(r.num_tokens),
                       gt_box=_box(s.boxes[0]))
            records.append(rec)
    return records


def score_refer(records: Records) -> dict[str, Any]:
    """``p_at_0.5`` (IoU > 0.5), ``mean_iou``, ``parse_failure_rate`` (answers without a
    box, each a miss at IoU 0), ``generated_tokens`` (mean per answer; 0 for
    ``regression``, whose box comes from a teacher-forced pass) and ``num_samples``."""
    from pixelkit.eval import box_iou_pairs, refer_accuracy

    # A missing box is an empty one: IoU 0 with anything, a miss.
    pred = [r["box"] if r.get("box") is not None else [0.0, 0.0, 0.0, 0.0] for r in records]
    gt = [r["gt_box"] for r in records]
    return {"p_at_0.5": refer_accuracy(pred, gt), "mean_iou": float(box_iou_pairs(pred, gt).mean()),
            "parse_failure_rate": _share(sum(r.get("box") is None for r in records), len(records)),
            "generated_tokens": _mean_tokens(records), "num_samples": len(records)}


def _share(part: int, total: int) -> float:
    """``part / total``; NaN for nothing counted (visible, not a perfect 0)."""
    return part / total if total else float("nan")


def _mean_tokens(records: Records) -> float:
    """Mean ``num_tokens`` of the records (generated tokens per answer)."""
    return float(np.mean([r.get("num_tokens", 0) for r in records])) if records else float("nan")


def evaluate_refer(predictor: Any, samples: Sequence[Sample], batch_size: int = 32,
                   progress: bool = False) -> tuple[dict[str, Any], Records]:
    """Referring localisation: ``(metrics, predictions)``, see :func:`score_refer`."""
    records = predict_refer(predictor, samples, batch_size, progress)
    return score_refer(records), records


# --------------------------------------------------------------------------------------------
# caption / loca-caption
# --------------------------------------------------------------------------------------------


def predict_captions(predictor: Any, samples: Sequence[Sample], batch_size: int = 32,
                     progress: bool = False) -> Records:
    """One record per captioned prompt: ``caption`` (+ ``words``, per-word ``points`` and
    ``boxes``, pixels) and its ``references``.

    ``caption`` samples are grouped by image (one prediction per image, all its captions
    as references); ``loca_caption`` samples are one prediction each, prompted with the
    sample's box (also in the record as ``box``).
    """
    if not samples:
        return []
    task = samples[0].task
    if task == "caption":
        by_image: dict[str, list[Sample]] = {}
        for s in samples:
            by_image.setdefault(s.image_path, []).append(s)
        units = [(g[0], [s.text for s in g]) for g in by_image.values()]
    elif task == "loca_caption":
        units = [(s, [s.text]) for s in samples]
    else:
        raise ValueError(f"predict_captions takes caption or loca_caption samples, not {task!r}")
    records: Records = []
    for chunk in _chunks(units, batch_size, progress, task):
        chunk_samples = [s for s, _ in chunk]
        images = _encode(predictor, chunk_samples)
        if task == "caption":
            results = predictor.caption_batch(images, task="caption")
        else:
            results = predictor.caption_batch(images, boxes=[s.boxes[0] for s in chunk_samples])
        for (s, refs), r in zip(chunk, results):
            rec = _base_record(len(records), s)
            if task == "loca_caption":
                rec["box"] = _box(s.boxes[0])
            d = r.to_dict()
            rec.update(caption=d["text"], words=d["words"], points=d["points"], boxes=d["boxes"],
                       num_tokens=d["num_tokens"], references=list(refs))
            records.append(rec)
    return records


def score_captions(records: Records, metrics: Sequence[str] | None = None,
                   meteor: Any = None) -> dict[str, Any]:
    """``exact_match`` and the COCO caption metrics (CIDEr, METEOR, BLEU-4, ROUGE-L).

    Args:
        records: from :func:`predict_captions`.
        metrics: subset of :data:`pixelkit.eval.CAPTION_METRICS` (default all).
        meteor: a :class:`pixelkit.eval.MeteorScorer` to reuse.
    """
    from pixelkit.eval import CAPTION_METRICS, caption_scores, exact_match

    preds = {r["index"]: r["caption"] for r in records}
    refs = {r["index"]: r["references"] for r in records}
    out: dict[str, Any] = {"exact_match": exact_match(preds, refs)}
    out.update(caption_scores(preds, refs, metrics or CAPTION_METRICS, meteor=meteor))
    out["generated_tokens"] = _mean_tokens(records)
    return out


def evaluate_captions(predictor: Any, samples: Sequence[Sample], batch_size: int = 32,
                      progress: bool = False, metrics: Sequence[str] | None = None,
                      meteor: Any = None) -> tuple[dict[str, Any], Records]:
    """Captioning (``caption``) or location-conditioned captioning (``loca_caption``)."""
    records = predict_captions(predictor, samples, batch_size, progress)
    return score_captions(records, metrics, meteor), records


# --------------------------------------------------------------------------------------------
# densecap
# --------------------------------------------------------------------------------------------


def predict_densecap(predictor: Any, samples: Sequence[Sample], batch_size: int = 8,
                     progress: bool = False, max_regions: int | None = None,
                     score_threshold: float | None = None) -> Records:
    """One record per image: predicted ``boxes`` (pixels), ``captions``, ``scores`` and the
    ground truth ``gt_boxes``, ``gt_captions``."""
    records: Records = []
    for chunk in _chunks(samples, batch_size, progress, "densecap"):
        results = predictor.dense_caption_batch(_encode(predictor, chunk), max_regions,
                                                score_threshold)
        for s, r in zip(chunk, results):
            rec = _base_record(len(records), s)
            rec.update(r.to_dict())
            rec.update(gt_boxes=[_box(b) for b in s.boxes], gt_captions=list(s.box_texts))
            records.append(rec)
    return records


def score_densecap(records: Records, meteor_fn: Callable[..., Any] | None = None
                   ) -> dict[str, Any]:
    """DenseCap ``mAP`` and ``mAP_detection`` (+ counts) from densecap records."""
    from pixelkit.eval import densecap_map

    preds = [{"boxes": np.asarray(r["boxes"], np.float64).reshape(-1, 4),
              "captions": r["captions"], "scores": r["scores"]} for r in records]
    gts = [{"boxes": np.asarray(r["gt_boxes"], np.float64).reshape(-1, 4),
            "captions": r["gt_captions"]} for r in records]
    res = densecap_map(preds, gts, meteor_fn=meteor_fn)
    return {k: v for k, v in res.items() if not isinstance(v, dict)}


def evaluate_densecap(predictor: Any, samples: Sequence[Sample], batch_size: int = 8,
                      progress: bool = False, meteor_fn: Callable[..., Any] | None = None,
                      max_regions: int | None = None, score_threshold: float | None = None
                      ) -> tuple[dict[str, Any], Records]:
    """Dense captioning: ``(metrics, predictions)``, see :func:`score_densecap`."""
    records = predict_densecap(predictor, samples, batch_size, progress, max_regions,
                               score_threshold)
    return score_densecap(records, meteor_fn), records


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------


def predict_trace(predictor: Any, samples: Sequence[Sample], batch_size: int = 16,
                  progress: bool = False) -> Records:
    """One record per narrative: its ``tokens``, the teacher-forced ``pred_boxes`` and the
    ``target_boxes`` per token (pixels; ``null`` for a token without a target)."""
    from pixelkit.data.alignment import align_caption
    from pixelkit.data.encoding import make_row
    from pixelkit.data.transforms import SampleTransform, from_model_boxes
    from pixelkit.predictor import point_head_boxes

    tok = predictor.tokenizer
    transform = SampleTransform(predictor.model.config.image_size)
    if predictor.codec.writes_targets:
        return _predict_grounded_trace(predictor, samples, batch_size, progress, transform)
    records: Records = []
    for chunk in _chunks(samples, batch_size, progress, "trace"):
        images = _encode(predictor, chunk)
        rows = []
        for s, im in zip(chunk, images):
            # The evaluation transform puts the utterance boxes in the model frame (clipped
            # to the image); the text alignment gives each token its utterance's box.
            ts = transform(s, image=im.image)
            aligned = align_caption(ts.utterances, ts.utterance_boxes, tok,
                                    points=ts.utterance_points, caption=ts.text, method="text")
            rows.append(make_row(tok, "trace", ts.text, token_boxes=aligned.boxes,
                                 target_ids=aligned.input_ids,
                                 max_length=predictor.max_text_length))
        out, _ = predictor.forward_rows(images, rows)
        for r, (s, row) in enumerate(zip(chunk, rows)):
            n = len(row.labels) - 1  # text tokens; position p >= 1 locates token p - 1
            pred = point_head_boxes(out.points[r, 1:n + 1], s.image_size)
            target = row.point_targets[1:n + 1]
            has = np.isfinite(target).all(axis=1)
            tgt_px = from_model_boxes(np.nan_to_num(target), s.image_size)
            rec = _base_record(len(records), s)
            rec.update(text=_decode_text(tok, row.labels[:n]),
                       tokens=tok.convert_ids_to_tokens(row.labels[:n]),
                       pred_boxes=pred.tolist(),
                       target_boxes=[t.tolist() if h else None for t, h in zip(tgt_px, has)])
            records.append(rec)
    return records


def _predict_grounded_trace(predictor: Any, samples: Sequence[Sample], batch_size: int,
                            progress: bool, transform: Any) -> Records:
    """:func:`predict_trace` for formats that write boxes: teacher-forced on the narrative's
    grounded caption (:func:`~pixelkit.data.encoding.grounded_row`, as in training), with
    the model's argmax at the box values' positions
    (:meth:`~pixelkit.modeling.location.LocationCodec.value_positions`) and the true tokens
    elsewhere. Each box is thus predicted given the true words before it, as the point head
    is; each word gets its phrase's box (pixels), the predicted one ``null`` where it did not
    parse (a failure: counted in ``parse_failures``, left out of the L1)."""
    from pixelkit.data.encoding import grounded_row
    from pixelkit.data.transforms import from_model_boxes

    tok, codec = predictor.tokenizer, predictor.codec
    records: Records = []
    for chunk in _chunks(samples, batch_size, progress, "trace"):
        images = _encode(predictor, chunk)
        rows, extents = [], []
        for s, im in zip(chunk, images):
            ts = transform(s, image=im.image)
            extents.append(ts.frame.visible[2:])
            # regions: the phrases are written as the proposals that hold them
            rows.append(grounded_row(tok, codec, ts.utterances, ts.utterance_boxes,
                                     extent=extents[-1], max_length=predictor.max_text_length,
                                     regions=im.regions))
        out, _ = predictor.forward_rows(images, rows)
        for r, (s, row) in enumerate(zip(chunk, rows)):
            gold = row.labels[:-1]  # EOS excluded
            argmax = out.logits[r, : len(gold)].argmax(-1).tolist()
            spliced = [a if v else g for a, g, v in
                       zip(argmax, gold, codec.value_positions(tok.convert_ids_to_tokens(gold)))]
            regions = images[r].regions
            truth = codec.parse_grounded(_decode_text(tok, gold), extents[r], regions)
            got = codec.parse_grounded(_decode_text(tok, spliced), extents[r], regions)
            if got.words != truth.words:  # a box value predicted as a word: no box read
                got = dataclass_replace(truth, word_boxes=np.full_like(truth.word_boxes, np.nan),
                                        phrases=[dataclass_replace(p, box=None, error="malformed")
                                                 for p in truth.phrases])
            pred, target = (from_model_boxes(g.word_boxes, s.image_size) for g in (got, truth))
            rec = _base_record(len(records), s)
            rec.update(text=truth.text, tokens=truth.words,
                       pred_boxes=[p.tolist() if np.isfinite(p).all() else None for p in pred],
                       target_boxes=[t.tolist() if np.isfinite(t).all() else None for t in target],
                       phrases=len(got.phrases), parse_failures=got.failures)
            records.append(rec)
    return records


def _decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The decoded text of target ids (what the model was scored on, after truncation)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def score_trace(records: Records) -> dict[str, Any]:
    """``l1``: token-pooled mean |pred - target| over the 4 coordinates, pixels / max(W, H)
    (written formats: word-pooled, over the words whose box parsed); ``parse_failure_rate``:
    the share of located phrases whose box did not parse (0 for ``regression``)."""
    from pixelkit.eval import trace_l1

    preds, targets = [], []
    for r in records:
        scale = float(max(r["image_size"]))
        for p, t in zip(r["pred_boxes"], r["target_boxes"]):
            if t is not None and p is not None:  # p: null where a written box failed
                preds.append(np.asarray(p, np.float64) / scale)
                targets.append(np.asarray(t, np.float64) / scale)
    l1 = trace_l1(np.asarray(preds).reshape(-1, 4), np.asarray(targets).reshape(-1, 4))
    # The point head gives every token a location: regression never fails to give one.
    written = any("phrases" in r for r in records)
    failures = _share(sum(r.get("parse_failures", 0) for r in records),
                      sum(r.get("phrases", 0) for r in records)) if written else 0.0
    return {"l1": l1, "num_tokens": len(preds), "num_samples": len(records),
            "parse_failure_rate": failures}


def evaluate_trace(predictor: Any, samples: Sequence[Sample], batch_size: int = 16,
                   progress: bool = False) -> tuple[dict[str, Any], Records]:
    """Teacher-forced trace L1: ``(metrics, predictions)``, see :func:`score_trace`."""
    records = predict_trace(predictor, samples, batch_size, progress)
    return score_trace(records), records


# --------------------------------------------------------------------------------------------
# Dispatch, files
# --------------------------------------------------------------------------------------------

def predict(task: str, predictor: Any, samples: Sequence[Sample], batch_size: int = 16,
            progress: bool = False, *, max_regions: int | None = None,
            score_threshold: float | None = None) -> Records:
    """The prediction records of any eval task (a key of :data:`EVAL_TASKS`).

    ``max_regions`` and ``score_threshold`` apply to ``densecap`` only.
    """
    t = EVAL_TASKS.get(task, task)
    if t == "refer":
        return predict_refer(predictor, samples, batch_size, progress)
    if t in ("caption", "loca_caption"):
        return predict_captions(predictor, samples, batch_size, progress)
    if t == "densecap":
        return predict_densecap(predictor, samples, batch_size, progress, max_regions,
                                score_threshold)
    if t == "trace":
        return predict_trace(predictor, samples, batch_size, progress)
    raise ValueError(f"unknown eval task {task!r}; choose one of {sorted(EVAL_TASKS)}")


def score(task: str, records: Records, *, metrics: Sequence[str] | None = None,
          meteor: Any = None, meteor_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The metrics of any eval task from its prediction records alone.

    ``metrics`` / ``meteor`` apply to the caption tasks (:func:`score_captions`),
    ``meteor_fn`` to ``densecap`` (:func:`score_densecap`).
    """
    t = EVAL_TASKS.get(task, task)
    if t == "refer":
        return score_refer(records)
    if t in ("caption", "loca_caption"):
        return score_captions(records, metrics, meteor)
    if t == "densecap":
        return score_densecap(records, meteor_fn)
    if t == "trace":
        return score_trace(records)
    raise ValueError(f"unknown eval task {task!r}; choose one of {sorted(EVAL_TASKS)}")


def evaluate(task: str, predictor: Any, samples: Sequence[Sample], batch_size: int = 16,
             progress: bool = False, **options: Any) -> tuple[dict[str, Any], Records]:
    """:func:`predict` then :func:`score` (``options`` go to whichever takes them):
    ``(metrics, predictions)``."""
    pred_keys = {"max_regions", "score_threshold"}
    records = predict(task, predictor, samples, batch_size, progress,
                      **{k: v for k, v in options.items() if k in pred_keys})
    return score(task, records, **{k: v for k, v in options.items() if k not in pred_keys}), records


def _plain(value: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_predictions(records: Records, path: str | Path) -> Path:
    """One JSON list (``*.json``) or JSON lines (anything else)."""
    from pixelkit.files import atomic_write_text

    path = Path(path)
    if path.suffix == ".json":
        return atomic_write_text(path, json.dumps(_plain(records)) + "\n")
    return atomic_write_text(path, "".join(json.dumps(_plain(r)) + "\n" for r in records))


def read_predictions(path: str | Path) -> Records:
    """Records written by :func:`write_predictions` (either layout)."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``pixelkit eval`` options."""
    parser.add_argument("--task", required=True, choices=sorted(EVAL_TASKS))
    parser.add_argument("--ckpt", required=True, help="pixelkit checkpoint (.ckpt)")
    parser.add_argument("--ann", required=True, help="annotation file in the task's real format")
    parser.add_argument("--images", default=None, help="folder of the images")
    parser.add_argument("--out", default="metrics.json", help="metrics JSON file")
    parser.add_argument("--predictions", default=None, metavar="FILE",
                        help="write every prediction (pixels) here: .json = one list, "
                             "else JSON lines")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N samples")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width for captions")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest generated caption (default: the model's max_text_length - 1)")
    parser.add_argument("--metrics", default=None, metavar="NAME[,NAME]",
                        help="caption tasks: compute only these of CIDEr, METEOR, BLEU-4, ROUGE-L "
                             "(leaving out METEOR saves its Java start-up)")
    parser.add_argument("--max-regions", type=int, default=None,
                        help="densecap: regions per image (default: the model config's)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="densecap: minimum proposal score (default: the model config's)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip (and count) bad annotation records and images instead of "
                             "stopping at the first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_arguments(args: argparse.Namespace) -> None:
    """Every ``pixelkit eval`` argument checked before any work (a mistake costs nothing).

    Raises:
        ValueError: a count that is not positive, a threshold outside [0, 1], an output
            that is a folder or cannot be written, or a device this machine lacks.
    """
    from pixelkit.files import check_writable_file
    from pixelkit.predictor import resolve_device

    for name in ("limit", "batch_size", "num_beams", "max_new_tokens", "max_regions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    check_writable_file(args.out, "--out")
    if args.predictions:
        check_writable_file(args.predictions, "--predictions")
        if Path(args.predictions).resolve() == Path(args.out).resolve():
            raise ValueError("--out and --predictions name the same file")
    resolve_device(args.device)


def check_images(samples: Sequence[Sample], skip_bad: bool) -> tuple[list[Sample], list[str]]:
    """Drop the samples whose image cannot be used, or stop at the first such image.

    Every distinct image is decoded once (a header can read while the pixels are cut
    short), so a bad image is found before any prediction runs.

    Returns:
        ``(usable samples, messages of the bad images)``.

    Raises:
        ValueError: a bad image and not ``skip_bad`` (the message names the file).
    """
    from pixelkit.data.formats import MissingImageError, decode_image

    bad: dict[str, str] = {}
    for path in dict.fromkeys(s.image_path for s in samples):
        try:
            decode_image(path, None)
        except MissingImageError as err:
            if not skip_bad:
                raise ValueError(f"{err} (--skip-bad skips and counts bad images)") from None
            bad[path] = str(err)
    return [s for s in samples if s.image_path not in bad], list(bad.values())


def run(args: argparse.Namespace) -> int:
    """Evaluate, print a table, write metrics.json (and the predictions)."""
    from pixelkit.decoding import DecodeOptions
    from pixelkit.files import atomic_write_text
    from pixelkit.predictor import Predictor

    check_arguments(args)
    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    samples, report = load_samples(args.task, args.ann, args.images, args.limit,
                                   strict=not args.skip_bad)
    samples, bad_images = check_images(samples, args.skip_bad)
    for message in bad_images[:5]:
        print(f"[pixelkit] skipped a bad image: {message}", file=sys.stderr)
    if not samples:
        raise ValueError(f"{args.ann}: no sample left to evaluate ({len(bad_images)} bad images)")
    changes: dict[str, Any] = {"num_beams": args.num_beams}
    if args.max_new_tokens is not None:
        changes["max_new_tokens"] = args.max_new_tokens
    predictor.decode_options = DecodeOptions(**{**asdict(predictor.decode_options), **changes})
    options: dict[str, Any] = {}
    if args.task in ("caption", "loca-caption") and args.metrics:
        options["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.task == "densecap":
        options.update(max_regions=args.max_regions, score_threshold=args.score_threshold)
    metrics, records = evaluate(args.task, predictor, samples, args.batch_size,
                                progress=not args.no_progress, **options)
    metrics = {**metrics, "num_skipped": report.skipped, "skipped_images": len(bad_images)}
    out = atomic_write_text(args.out, json.dumps(_plain(metrics), indent=2) + "\n")
    if args.predictions:
        write_predictions(records, args.predictions)
    width = max(len(k) for k in metrics)
    print(f"pixelkit eval --task {args.task}: {args.ann} ({len(samples)} samples)")
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    print(f"wrote {out}" + (f" and {args.predictions}" if args.predictions else ""))
    return 0
