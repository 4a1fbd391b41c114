"""Tests of pixelkit.eval: hand-worked cases, pycocoevalcap equality, a DenseCap cross-check.

The Java-based parts (PTB tokenizer, METEOR) are the slow ones: one METEOR JVM (about 9 s
of CPU to load its paraphrase table) is shared by the whole module.
"""

from __future__ import annotations

import gc
import random
import re

import numpy as np
import pytest
import torch

import pixelkit.eval.densecap as densecap_module
from pixelkit.eval import (
    box_iou_pairs,
    densecap_average_precision,
    densecap_map,
    mask_iou_scores,
    merge_ground_truths,
    pointing_accuracy,
    refer_accuracy,
    trace_l1,
)
from pixelkit.optional import available

if available("pycocoevalcap"):  # the metrics extra; its tests are marked `extra`
    from pixelkit.eval import (
        MeteorScorer,
        caption_scores,
        exact_match,
        meteor_scores,
        normalize_text,
        ptb_tokenize,
    )

needs_metrics = pytest.mark.extra("pycocoevalcap")


@pytest.fixture(scope="module")
def meteor_scorer():
    """One METEOR JVM for the module; checks that closing really stops it."""
    scorer = MeteorScorer()
    proc = scorer._meteor.meteor_p
    yield scorer
    scorer.close()
    assert proc.poll() is not None, "METEOR JVM still running after close()"
    scorer.close()  # idempotent


def in_refs_meteor(cands: list[str], refs: list[list[str]]) -> list[float]:
    """Deterministic stand-in for METEOR: 1 if the caption is one of the references."""
    return [1.0 if c in r else 0.0 for c, r in zip(cands, refs)]


def img(boxes, captions, scores=None) -> dict:
    d = {"boxes": np.asarray(boxes, float).reshape(-1, 4), "captions": list(captions)}
    if scores is not None:
        d["scores"] = list(scores)
    return d


# ----------------------------------------------------------------------------- boxes


def test_refer_accuracy_iou_boundary():
    # pred (0,0,10,10) area 100; gt (0,0,10,5) area 50 inside it:
    # IoU = 50 / (100 + 50 - 50) = 0.5 exactly -> NOT a hit (strictly > 0.5 needed).
    # gt (0,0,10,5.01): IoU = 50.1 / 100 = 0.501 -> hit.
    pred = [[0, 0, 10, 10], [0, 0, 10, 10]]
    gt = [[0, 0, 10, 5], [0, 0, 10, 5.01]]
    np.testing.assert_allclose(box_iou_pairs(pred, gt), [0.5, 0.501], rtol=0, atol=1e-12)
    assert refer_accuracy(pred, gt) == 0.5
    assert refer_accuracy(np.array(pred[:1]), np.array(gt[:1])) == 0.0
    assert refer_accuracy(torch.tensor(pred[1:]), torch.tensor(gt[1:])) == 1.0
    # Lower threshold: both hits (0.5 > 0.4).
    assert refer_accuracy(pred, gt, iou_threshold=0.4) == 1.0
    with pytest.raises(ValueError, match="not xyxy"):
        refer_accuracy([[10, 0, 0, 10]], [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="no"):
        refer_accuracy(np.zeros((0, 4)), np.zeros((0, 4)))


# ----------------------------------------------------------------------------- masks


def test_mask_ciou_vs_giou_different_sizes():
    # Sample 1: 100x100 image, gt = whole image, prediction perfect: I = U = 10000.
    # Sample 2: 10x10 image, gt = whole image (100 px), prediction = left half (50 px):
    #   I = 50, U = 100 -> IoU 0.5.
    # cIoU = (10000 + 50) / (10000 + 100) = 0.99505 (dominated by the big mask);
    # gIoU = (1.0 + 0.5) / 2 = 0.75.
    big = np.ones((100, 100), bool)
    small_gt = np.ones((10, 10), bool)
    small_pred = np.zeros((10, 10), np.uint8)
    small_pred[:, :5] = 1
    out = mask_iou_scores([big, small_pred], [big, torch.from_numpy(small_gt)])
    assert out["cIoU"] == pytest.approx(10050 / 10100, abs=1e-12)
    assert out["gIoU"] == pytest.approx(0.75, abs=1e-12)

    # Empty prediction for empty ground truth: IoU 1 by default (ReLA), 0 on request
    # (LAVT / official PixelLLM). cIoU ignores the pair (adds 0 / 0).
    empty = np.zeros((4, 4), bool)
    out = mask_iou_scores([small_pred, empty], [small_gt, empty])
    assert out["gIoU"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["cIoU"] == pytest.approx(0.5)
    assert out["num_empty_pairs"] == 1
    assert mask_iou_scores([small_pred, empty], [small_gt, empty], empty_iou=0.0)["gIoU"] == 0.25
    with pytest.raises(ValueError, match="threshold"):
        mask_iou_scores([np.full((2, 2), 0.7)], [empty[:2, :2]])
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou_scores([empty], [small_gt])


# ---------------------------------------------------------------------------- traces


def test_trace_l1_and_pointing():
    # Token errors: |0.1-0.2|,|0.2-0.2| -> 0.05 ; |0.5-0.5|,|0.5-0.7| -> 0.1 ; token 3
    # masked out. Mean over valid tokens = 0.075.
    pred = [[0.1, 0.2], [0.5, 0.5], [0.9, 0.9]]
    target = [[0.2, 0.2], [0.5, 0.7], [0.0, 0.0]]
    assert trace_l1(pred, target, [True, True, False]) == pytest.approx(0.075)
    # Pixels with size=(width, height)=(10, 20): x errors /10, y errors /20.
    assert trace_l1([[1.0, 2.0]], [[2.0, 4.0]], size=(10, 20)) == pytest.approx((0.1 + 0.1) / 2)
    # NaN target (no trace) is excluded; nothing valid -> NaN.
    assert trace_l1([[0.1, 0.1], [0.3, 0.3]], [[0.2, 0.1], [np.nan, np.nan]]) == pytest.approx(0.05)
    assert np.isnan(trace_l1([[0.1, 0.1]], [[0.2, 0.2]], [False]))

    objects = [((0, 0, 10, 10), {"red", "circle", "small"}), ((20, 20, 30, 30), {"blue", "square"})]
    words = ["a", "▁Red", "circle", "and", "a", "blue", "square", "."]
    points = [[0, 0], [5, 5], [25, 25], [0, 0], [0, 0], [25, 25], [50, 50], [0, 0]]
    # red -> (5,5) in the red circle: hit; circle -> (25,25) in the blue square: miss;
    # blue -> (25,25): hit; square -> (50,50) outside everything: miss. 2 / 4.
    assert pointing_accuracy(words, points, objects) == 0.5
    assert np.isnan(pointing_accuracy(["a", "thing"], [[0, 0], [1, 1]], objects))


# --------------------------------------------------------------------- exact match


@needs_metrics
def test_exact_match_normalisation():
    assert normalize_text("  A Red-Circle,\tplease! ") == "a red circle please"
    preds = {"1": "A red circle.", 2: "blue  square", 3: "green"}
    refs = {"1": ["a red circle"], 2: ["a blue square", "Blue square"], 3: "red"}
    assert exact_match(preds, refs) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same ids"):
        exact_match({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError, match="same ids"):
        caption_scores({1: "a"}, {1: ["a"], 2: ["b"]})  # fails before any Java runs


# ---------------------------------------------------------------- caption metrics


def _random_caption_set(rng: random.Random, n: int) -> tuple[dict, dict]:
    words = [
        "a",
        "the",
        "red",
        "green",
        "blue",
        "big",
        "small",
        "circle",
        "square",
        "triangle",
        "on",
        "left",
        "of",
        "and",
        "is",
    ]
    punct = ["", ".", "!", ",", " ."]

    def sentence() -> str:
        s = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        s = s.capitalize() if rng.random() < 0.5 else s
        return s + rng.choice(punct)

    preds, refs = {}, {}
    for i in range(n):
        key = i if i % 2 else f"img{i}"  # mixed int / str ids
        preds[key] = sentence()
        refs[key] = [sentence() for _ in range(rng.randint(1, 5))]
    first = next(iter(preds))
    preds[first] = ""  # an empty prediction
    return preds, refs


@needs_metrics
def test_caption_scores_equal_pycocoevalcap(meteor_scorer):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    rng = random.Random(0)
    sets = [_random_caption_set(rng, n) for n in (6, 9, 12)]
    sets[1][0][1] = 'Don\'t "quote" me -- (please) ...'  # tokenizer-sensitive text
    # Direct path, as COCOEvalCap does it: tokenize references and predictions with
    # pycocoevalcap's PTBTokenizer (all sets at once, keys (set, id); the tokenizer is
    # line by line so this equals per-set calls), then call the scorers.
    tok = PTBTokenizer()
    gts_all = tok.tokenize(
        {
            (s, k): [{"caption": r} for r in refs[k]]
            for s, (_, refs) in enumerate(sets)
            for k in refs
        }
    )
    res_all = tok.tokenize(
        {(s, k): [{"caption": p}] for s, (preds, _) in enumerate(sets) for k, p in preds.items()}
    )
    for s, (preds, refs) in enumerate(sets):
        gts = {k: gts_all[(s, k)] for k in preds}
        res = {k: res_all[(s, k)] for k in preds}
        expected = {
            "CIDEr": Cider().compute_score(gts, res)[0],
            "BLEU-4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
            "ROUGE-L": Rouge().compute_score(gts, res)[0],
            # pycocoevalcap's own Meteor.compute_score (inherited unchanged by the
            # scorer's process wrapper), on the shared JVM.
            "METEOR": meteor_scorer._meteor.compute_score(gts, res)[0],
        }
        got = caption_scores(preds, refs, meteor=meteor_scorer)
        assert got["num_captions"] == len(preds)
        for name, value in expected.items():
            assert got[name] == pytest.approx(float(value), abs=1e-6), name
        # Our tokenizer equals pycocoevalcap's on every caption.
        flat_keys = list(preds)
        assert ptb_tokenize([preds[k] for k in flat_keys]) == [res[k][0] for k in flat_keys]
    assert caption_scores(sets[0][0], sets[0][1], metrics=("CIDEr",)).keys() == {
        "CIDEr",
        "num_captions",
    }


@needs_metrics
def test_meteor_scorer_survives_a_dead_jvm():
    # pycocoevalcap's Meteor leaves its lock held when compute_score fails, and its
    # __del__ then deadlocks; ours must raise a clear error and clean up.
    # A timeout kills a JVM that does not answer in time (loading alone takes seconds).
    scorer = MeteorScorer(timeout_s=0.3)
    with pytest.raises(RuntimeError, match="timed out"):
        scorer.score(["a red circle"], [["a red circle"]])
    scorer.close()
    scorer = MeteorScorer()
    scorer._meteor.meteor_p.kill()
    scorer._meteor.meteor_p.wait()
    with pytest.raises(RuntimeError, match="METEOR"):
        scorer.score(["a red circle"], [["a red circle"]])
    scorer.close()
    del scorer
    gc.collect()  # must return (no deadlock in __del__)
    assert meteor_scores([], []) == []  # no pairs: no JVM at all


# ------------------------------------------------------------------------ DenseCap


def test_densecap_perfect_predictions():
    gt = img([[0, 0, 10, 10], [20, 20, 40, 40]], ["a red circle", "a blue square"])
    pred = img(gt["boxes"], gt["captions"], [0.9, 0.8])
    out = densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    assert out["mAP"] == 1.0 and out["mAP_detection"] == 1.0
    assert len(out["ap_by_threshold"]) == 30 and len(out["ap_detection_by_iou"]) == 5
    assert out["num_ground_truths"] == 2 and out["num_predictions"] == 2


def test_densecap_duplicate_detection():
    # GT A, GT B (far apart). Predictions by score: A (0.9), A again (0.8), B (0.7).
    # The duplicate's best GT (A) is used -> FP. TP/FP sequence: TP, FP, TP; 2 positives.
    # recall = [.5, .5, 1], precision = [1, .5, 2/3].
    # Levels t = 0..50 (recall >= t/100 reachable at k=1): max precision 1 -> 51 x 1.
    # Levels t = 51..99: only k=3 -> 49 x 2/3.  AP = (51 + 49 * 2/3) / 100 = 0.83667.
    a, b = [0, 0, 10, 10], [20, 20, 40, 40]
    gt = img([a, b], ["a red circle", "a blue square"])
    pred = img([a, a, b], ["a red circle", "a red circle", "a blue square"], [0.9, 0.8, 0.7])
    expected = (51 + 49 * 2 / 3) / 100
    out = densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    assert out["mAP_detection"] == pytest.approx(expected, abs=1e-12)
    assert out["mAP"] == pytest.approx(expected, abs=1e-12)
    assert densecap_average_precision(np.array([True, False, True]), 2) == pytest.approx(expected)


def test_densecap_right_box_wrong_caption():
    # Two perfect boxes; the higher-scored one has the right caption, the other a wrong
    # one (METEOR 0, not > 0). Detection: TP, TP -> AP 1.
    # Caption-aware at every threshold: TP, FP -> recall [.5, .5], precision [1, .5]:
    # levels t = 0..50 -> 1, t = 51..99 -> nothing reaches -> 0. AP = 51/100 = 0.51.
    gt = img([[0, 0, 10, 10], [20, 20, 40, 40]], ["a red circle", "a blue square"])
    pred = img(gt["boxes"], ["a red circle", "a green triangle"], [0.9, 0.8])
    out = densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    assert out["mAP_detection"] == 1.0
    assert out["mAP"] == pytest.approx(0.51, abs=1e-12)
    # Wrong caption first: FP, TP -> precision [0, .5], recall [0, .5]: 51 x 0.5 / 100.
    pred["scores"] = [0.7, 0.8]
    assert densecap_map([pred], [gt], meteor_fn=in_refs_meteor)["mAP"] == pytest.approx(0.255)


def test_densecap_meteor_threshold_is_strict_and_iou_threshold_inclusive():
    # One GT, one prediction with IoU 1 and "METEOR" exactly 0.05: a TP at METEOR
    # threshold 0 (0.05 > 0) but not at 0.05 (not strictly above). Per IoU threshold the
    # six METEOR thresholds give APs 1, 0, 0, 0, 0, 0 -> mAP = 1/6.
    gt = img([[0, 0, 10, 10]], ["a red circle"])
    pred = img([[0, 0, 10, 10]], ["a red circle"], [1.0])
    out = densecap_map([pred], [gt], meteor_fn=lambda c, r: [0.05] * len(c))
    assert out["mAP"] == pytest.approx(1 / 6)
    assert out["ap_by_threshold"]["iou0.3_meteor0"] == 1.0
    assert out["ap_by_threshold"]["iou0.3_meteor0.05"] == 0.0
    # IoU is compared with >=: a box of IoU exactly 0.5 (0,0,10,5) vs (0,0,10,10) is a
    # TP at IoU thresholds .3, .4, .5 and an FP at .6, .7 -> mAP_detection = 3/5.
    # A later exact box of the same GT is an FP: the GT was used by the first match
    # even though that match fails the .6 / .7 thresholds.
    pred = img([[0, 0, 10, 5], [0, 0, 10, 10]], ["a red circle"] * 2, [0.9, 0.8])
    out = densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    # .3/.4/.5: TP, FP -> AP 1; .6/.7: FP, FP -> AP 0.
    assert out["ap_detection_by_iou"] == {"iou0.3": 1.0, "iou0.4": 1.0, "iou0.5": 1.0,
                                          "iou0.6": 0.0, "iou0.7": 0.0}  # fmt: skip
    assert out["mAP_detection"] == pytest.approx(0.6)


def test_densecap_merges_ground_truths():
    # A = (0,0,10,10) and A' = (0,0,10,9): IoU = 90/100 = 0.9 >= 0.7 -> merged into
    # (0,0,10,9.5) with references ["red circle", "a red ball"]; B is far away.
    # Predictions: on A with "a red ball" (only A' had it -> pooled refs make it right),
    # on A' with "red circle" (the merged GT is used -> FP), on B (TP).
    # Sequence TP, FP, TP over 2 positives -> AP = (51 + 49 * 2/3) / 100 as above.
    # Without merging there are 3 positives and 3 detection TPs -> detection AP 1, but
    # each caption then only has its own box's reference (2 of 3 captions wrong).
    boxes = [[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 40, 40]]
    gt = img(boxes, ["red circle", "a red ball", "a blue square"])
    pred = img(boxes, ["a red ball", "red circle", "a blue square"], [0.9, 0.8, 0.7])
    out = densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    assert out["num_ground_truths"] == 2
    assert out["mAP"] == pytest.approx((51 + 49 * 2 / 3) / 100, abs=1e-12)
    unmerged = densecap_map([pred], [gt], merge_iou=None, meteor_fn=in_refs_meteor)
    assert unmerged["num_ground_truths"] == 3 and unmerged["mAP_detection"] == 1.0
    assert unmerged["mAP"] < out["mAP"]


def test_merge_is_largest_cluster_first_one_hop():
    # Unit-height boxes shifted by 1 along x: IoU(shift 1) = 9/11 = .82, shift 2 =
    # 8/12 = .67 < .7. Neighbour counts (self included): W 2, X 3, Y 3, Z 2 -> X first
    # (first of the ties): cluster {W, X, Y}, mean box (1, 0, 11, 10); Z stays alone.
    # (A transitive closure would have merged all four.)
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [3, 0, 13, 10]]
    merged = merge_ground_truths(boxes, ["w", "x", "y", "z"])
    assert merged.members == [[0, 1, 2], [3]]
    assert merged.references == [["w", "x", "y"], ["z"]]
    np.testing.assert_allclose(merged.boxes, [[1, 0, 11, 10], [3, 0, 13, 10]])
    # The merge test is IoU >= 0.7: (0,0,10,7) in (0,0,10,10) has IoU 70/100 = 0.7 exactly.
    assert merge_ground_truths([[0, 0, 10, 10], [0, 0, 10, 7]], ["a", "b"]).members == [[0, 1]]
    # A zero-area box is kept as its own ground truth (Johnson forces IoU(i, i) = 1).
    assert merge_ground_truths([[5, 5, 5, 5]], ["dot"]).members == [[0]]


def test_densecap_no_fallback_to_unused_ground_truth():
    # GT A = (0,0,10,10), GT B = (4,0,14,10): IoU 60/140 = .43 -> not merged.
    # P1 (0.9) = A exactly -> TP on A.  P2 (0.8) = (1.5,0,11.5,10):
    #   IoU with A = 85/115 = .739, with B = 75/125 = .6 -> best is A, already used -> FP,
    #   although B is unused and overlaps enough for thresholds .3-.6.
    # Every IoU threshold: TP, FP over 2 positives -> AP = 51/100 (see wrong-caption
    # case). With a COCO-style fall-back it would be AP 1 for .3-.6.
    gt = img([[0, 0, 10, 10], [4, 0, 14, 10]], ["a", "b"])
    pred = img([[0, 0, 10, 10], [1.5, 0, 11.5, 10]], ["a", "b"], [0.9, 0.8])
    out = densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    assert out["num_ground_truths"] == 2
    assert out["mAP_detection"] == pytest.approx(0.51, abs=1e-12)
    # Images without predictions still count their positives; images without ground
    # truth make every prediction an FP.
    out = densecap_map(
        [pred, img(np.zeros((0, 4)), [], []), img([[0, 0, 5, 5]], ["x"], [0.95])],
        [gt, img([[0, 0, 1, 1]], ["c"]), img(np.zeros((0, 4)), [])],
        meteor_fn=in_refs_meteor,
    )
    assert out["num_ground_truths"] == 3
    # FP (0.95), TP (0.9), FP (0.8); 3 positives: recall [0, 1/3, 1/3], precision
    # [0, .5, 1/3] -> levels 0..33 reach recall 1/3 -> 34 x 0.5 / 100 = 0.17.
    assert out["mAP_detection"] == pytest.approx(0.17, abs=1e-12)


@needs_metrics
def test_densecap_real_meteor(meteor_scorer, monkeypatch):
    # METEOR 1.5 of an identical caption is well above 0.25 (~0.5 for four words: the
    # fragmentation penalty never vanishes), of a caption sharing no word it is 0.
    gt = img([[0, 0, 10, 10], [20, 20, 40, 40]], ["a large red circle", "a small blue square"])
    pred = img(gt["boxes"], ["a large red circle", "green triangle"], [0.9, 0.8])
    calls = []

    def shared_meteor(cands, refs):
        calls.append(len(cands))  # one batched call for all pairs
        return meteor_scorer.score(cands, refs)[1]

    # The default meteor_fn (pixelkit.eval.caption.meteor_scores, one JVM per call) is
    # routed to the module's shared JVM to save ~9 s of CPU; the wiring is what is tested.
    monkeypatch.setattr(densecap_module, "meteor_scores", shared_meteor)
    out = densecap_map([pred], [gt])
    assert calls == [2]
    assert out["mAP_detection"] == 1.0
    assert out["mAP"] == pytest.approx(0.51, abs=1e-12)
    assert out == densecap_map([pred], [gt], meteor_fn=in_refs_meteor)
    scores = meteor_scorer.score(
        ["a large red circle", "green triangle"], [[c] for c in gt["captions"]]
    )[1]
    assert scores[0] > 0.25 and scores[1] == 0.0


# ------------------------------------------------- independent reference implementation


def _ref_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ref_densecap(preds, gts, meteor_fn, ious=(0.3, 0.4, 0.5, 0.6, 0.7),
                  meteors=(0, 0.05, 0.1, 0.15, 0.2, 0.25)):  # fmt: skip
    """Plain-loop transcription of the protocol (no code shared with pixelkit)."""
    records = []
    npos = 0
    for p, g in zip(preds, gts):
        gboxes = [list(map(float, b)) for b in g["boxes"]]
        n = len(gboxes)
        # merge
        D = [
            [1.0 if i == j else _ref_iou(gboxes[i], gboxes[j]) for j in range(n)] for i in range(n)
        ]
        alive = [True] * n
        merged = []
        while True:
            best_i, best_c = -1, 0
            for i in range(n):
                c = sum(1 for j in range(n) if alive[i] and alive[j] and D[i][j] >= 0.7)
                if c > best_c:
                    best_i, best_c = i, c
            if best_c == 0:
                break
            group = [j for j in range(n) if alive[j] and D[best_i][j] >= 0.7]
            box = [sum(gboxes[j][c] for j in group) / len(group) for c in range(4)]
            merged.append((box, [g["captions"][j] for j in group]))
            for j in group:
                alive[j] = False
        npos += len(merged)
        # match
        dets = sorted(zip(p["scores"], range(len(p["scores"]))), key=lambda t: -t[0])
        used = [False] * len(merged)
        for score, k in dets:
            box = list(map(float, p["boxes"][k]))
            ovmax, jmax = 0.0, -1
            for j, (gb, _) in enumerate(merged):
                ov = _ref_iou(box, gb)
                if ov > ovmax:
                    ovmax, jmax = ov, j
            ok = jmax >= 0 and not used[jmax]
            if ok:
                used[jmax] = True
            refs = merged[jmax][1] if jmax >= 0 else []
            records.append(
                {"score": score, "ok": ok, "ov": ovmax, "cand": p["captions"][k], "refs": refs}
            )
    records.sort(key=lambda r: -r["score"])
    for r in records:
        r["meteor"] = meteor_fn([r["cand"]], [r["refs"]])[0] if r["ok"] else 0.0

    def ap(flags):
        tp = fp = 0
        rec, prec = [], []
        for f in flags:
            tp += f
            fp += not f
            rec.append(tp / npos)
            prec.append(tp / (tp + fp))
        total = 0.0
        for t in range(100):
            total += max([pr for rc, pr in zip(rec, prec) if rc >= t / 100], default=0.0)
        return total / 100

    det = [ap([r["ok"] and r["ov"] >= u for r in records]) for u in ious]
    cap = [ap([r["ok"] and r["ov"] >= u and r["meteor"] > m for r in records])
           for u in ious for m in meteors]  # fmt: skip
    return sum(cap) / len(cap), sum(det) / len(det)


def _word_overlap_meteor(cands, refs):
    """Deterministic graded stand-in for METEOR: word overlap scaled into [0, 0.3]."""
    out = []
    for c, r in zip(cands, refs):
        cw = set(c.split())
        rw = {w for x in r for w in x.split()}
        out.append(0.3 * len(cw & rw) / max(1, len(cw)))
    return out


def test_densecap_matches_reference_implementation():
    rng = np.random.default_rng(0)
    vocab = ["a", "red", "green", "blue", "circle", "square", "triangle", "big", "small"]

    def caption():
        return " ".join(rng.choice(vocab, size=int(rng.integers(1, 4))))

    for trial in range(25):
        preds, gts = [], []
        for _ in range(int(rng.integers(1, 4))):
            # A few base objects; ground truths are jittered copies (so some merge).
            bases = rng.uniform(0, 60, (int(rng.integers(0, 4)), 2))
            gboxes, gcaps = [], []
            for bx, by in bases:
                w, h = rng.uniform(5, 30, 2)
                for _ in range(int(rng.integers(1, 4))):
                    j = rng.normal(0, 1.5, 4)
                    gboxes.append(
                        [bx + j[0], by + j[1], bx + w + abs(j[2]) + 0.1, by + h + abs(j[3]) + 0.1]
                    )
                    gcaps.append(caption())
            pboxes, pcaps = [], []
            for gb, gcap in zip(gboxes, gcaps):
                for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per GT (duplicates)
                    j = rng.normal(0, 3.0, 4)
                    x1, y1 = gb[0] + j[0], gb[1] + j[1]
                    pboxes.append(
                        [x1, y1, max(x1 + 0.5, gb[2] + j[2]), max(y1 + 0.5, gb[3] + j[3])]
                    )
                    pcaps.append(gcap if rng.random() < 0.5 else caption())
            for _ in range(int(rng.integers(0, 3))):  # background detections
                x1, y1 = rng.uniform(0, 80, 2)
                pboxes.append([x1, y1, x1 + rng.uniform(1, 20), y1 + rng.uniform(1, 20)])
                pcaps.append(caption())
            gts.append(img(np.array(gboxes).reshape(-1, 4), gcaps))
            preds.append(
                img(np.array(pboxes).reshape(-1, 4), pcaps, rng.uniform(0, 1, len(pboxes)))
            )
        if sum(len(g["captions"]) for g in gts) == 0:
            continue
        out = densecap_map(preds, gts, meteor_fn=_word_overlap_meteor)
        ref_map, ref_det = _ref_densecap(preds, gts, _word_overlap_meteor)
        assert out["mAP"] == pytest.approx(ref_map, abs=1e-9), trial
        assert out["mAP_detection"] == pytest.approx(ref_det, abs=1e-9), trial


def test_densecap_input_errors():
    gt = img([[0, 0, 1, 1]], ["a"])
    with pytest.raises(ValueError, match="scores"):
        densecap_map([{"boxes": [[0, 0, 1, 1]], "captions": ["a"]}], [gt])
    with pytest.raises(ValueError, match="must match"):
        densecap_map([img([[0, 0, 1, 1]], ["a", "b"], [1.0])], [gt])
    with pytest.raises(ValueError, match="no ground-truth"):
        densecap_map([img([[0, 0, 1, 1]], ["a"], [1.0])], [img(np.zeros((0, 4)), [])])
    with pytest.raises(ValueError, match=re.escape("predictions[0]['boxes']")):
        densecap_map([img([[1, 0, 0, 1]], ["a"], [1.0])], [gt])
