"""Trace-to-token alignment (pixelkit.data.alignment) on hand-worked narratives.

Every expected number below is derived by hand in the comment next to it, from the official
algorithm (google-research/scenic projects/pixel_llm: tools/build_ln_tfrecord.py trace2coord,
io/ops.py DecodeLocalizedNarrativesAnnotations) as summarised in the module docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pixelkit.data.alignment import (
    NUM_SAMPLES_PER_UTTERANCE,
    AlignedCaption,
    UtteranceLocation,
    align_caption,
    align_record,
    compare_methods,
    official_token_to_utterance,
    relative_token_to_utterance,
    utterance_location_arrays,
    utterance_locations,
    utterance_spans,
)
from pixelkit.data.schema import DataFormatError

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures" / "real"
SPECIALS = {"unk_token": "[UNK]", "pad_token": "[PAD]", "bos_token": "[CLS]", "eos_token": "[SEP]"}


# --------------------------------------------------------------------------------------------
# tokenizers built in memory (no downloads)
# --------------------------------------------------------------------------------------------


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level: one token per whitespace / punctuation-separated word."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def wordpiece_tokenizer(vocab_words: list[str]) -> PreTrainedTokenizerFast:
    """WordPiece with a hand-given vocabulary, so the subword splits are known exactly."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *vocab_words])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, tokens carry their leading space) trained on ``texts``."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


class SlowLike:
    """A tokenizer without offsets (like a slow HF tokenizer): only ``__call__`` -> input_ids."""

    is_fast = False

    def __init__(self, fast: PreTrainedTokenizerFast) -> None:
        self.fast = fast

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.fast(text, add_special_tokens=add_special_tokens)["input_ids"]}


def record(
    utts: list[tuple[str, float, float]],
    segments: list[list[tuple[float, float, float]]],
    caption: str | None = None,
) -> dict:
    return {
        "caption": caption if caption is not None else " ".join(u for u, _, _ in utts),
        "timed_caption": [{"utterance": u, "start_time": s, "end_time": e} for u, s, e in utts],
        "traces": [[{"x": x, "y": y, "t": t} for x, y, t in seg] for seg in segments],
    }


def loc(mean: tuple[float, float]) -> UtteranceLocation:
    x, y = mean
    return UtteranceLocation((x, y), (x - 0.05, y - 0.05, x + 0.05, y + 0.05))


# --------------------------------------------------------------------------------------------
# step 1: utterance locations
# --------------------------------------------------------------------------------------------

# The trace moves linearly in x from 0 (t = 0 s) to 1 (t = 2 s) at y = 0.5: x(t) = t / 2.
LINEAR = [[(0.0, 0.5, 0.0), (1.0, 0.5, 2.0)]]


def test_linear_trace_two_utterances() -> None:
    # Utterance [0, 1] s: 16 samples t_i = i/15 s, x_i = t_i / 2 in [0, 0.5]. The trapezoid
    # rule is exact on a linear function, so mean x = (1/1) * integral_0^1 t/2 dt = 0.25;
    # box x = [min, max] = [0, 0.5], y = 0.5 throughout. Utterance [1, 2] s: mean
    # integral_1^2 t/2 dt = 0.75, box x [0.5, 1].
    locs = utterance_locations(record([("a", 0.0, 1.0), ("b", 1.0, 2.0)], LINEAR))
    assert locs[0] is not None and locs[1] is not None
    np.testing.assert_allclose(locs[0].mean, (0.25, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[0].box, (0.0, 0.5, 0.5, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[1].mean, (0.75, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[1].box, (0.5, 0.5, 1.0, 0.5), atol=1e-12)


def test_extrapolates_outside_the_trace_and_does_not_clip() -> None:
    # interp1d(fill_value='extrapolate') extends the last segment: for [2, 3] s,
    # x = t / 2 in [1, 1.5], mean = integral_2^3 t/2 dt = 1.25 (np.interp would clamp at 1).
    # Before the trace: [-1, 0] s -> x in [-0.5, 0], mean -0.25. Nothing is clipped.
    locs = utterance_locations(record([("c", 2.0, 3.0), ("d", -1.0, 0.0)], LINEAR))
    np.testing.assert_allclose(locs[0].mean, (1.25, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[0].box, (1.0, 0.5, 1.5, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[1].mean, (-0.25, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[1].box, (-0.5, 0.5, 0.0, 0.5), atol=1e-12)


def test_zero_duration_and_reversed_utterances_use_the_plain_mean() -> None:
    # Zero duration at t = 0.5 s: all 16 samples are x(0.5) = 0.25 -> a location, zero-size box.
    # (The official code keeps such utterances; "In" 0.0-0.0 in the ADE20k fixture is one.)
    # Triangle trace x: 0 -> 1 -> 0 over [0, 2] s, utterance [0, 2] s: samples t_i = 2i/15,
    # x_i = 2i/15 for i <= 7 and symmetric (x_{15-i} = x_i), so sum x_i = 2 * (2/15) * 28 =
    # 112/15. The trapezoid average is (sum - (x_0 + x_15)/2) / 15 = 112/225 ~ 0.4978 (not the
    # exact 0.5: the peak at t = 1 falls between samples 7 and 8; not the plain mean 112/240).
    # The same utterance reversed ([2, 0] s, end < start): duration < 1e-5, so the official
    # code takes the plain mean of the (reversed) samples = 112/15 / 16 = 7/15.
    triangle = [[(0.0, 0.0, 0.0), (1.0, 0.0, 1.0), (0.0, 0.0, 2.0)]]
    locs = utterance_locations(
        record([("in", 0.5, 0.5), ("x", 0.0, 2.0), ("y", 2.0, 0.0)], triangle)
    )
    lin = utterance_locations(record([("in", 0.5, 0.5)], LINEAR))[0]
    np.testing.assert_allclose(lin.mean, (0.25, 0.5), atol=1e-12)
    np.testing.assert_allclose(lin.box, (0.25, 0.5, 0.25, 0.5), atol=1e-12)
    np.testing.assert_allclose(locs[0].mean, (0.5, 0.0), atol=1e-12)
    np.testing.assert_allclose(locs[1].mean[0], 112 / 225, atol=1e-12)
    np.testing.assert_allclose(locs[1].box, (0.0, 0.0, 14 / 15, 0.0), atol=1e-12)
    np.testing.assert_allclose(locs[2].mean[0], 7 / 15, atol=1e-12)


def test_segments_are_joined_and_sorted_by_time() -> None:
    # The same linear trace split in three segments given out of time order (and one point
    # inside a segment out of order) gives the same locations as the sorted trace.
    shuffled = [[(1.0, 0.5, 2.0)], [(0.75, 0.5, 1.5), (0.25, 0.5, 0.5)], [(0.0, 0.5, 0.0)]]
    utts = [("a", 0.0, 1.0), ("b", 1.0, 2.0), ("c", 0.3, 1.7)]
    a = utterance_location_arrays(record(utts, shuffled))
    b = utterance_location_arrays(record(utts, LINEAR))
    np.testing.assert_allclose(a[0], b[0], atol=1e-12)
    np.testing.assert_allclose(a[1], b[1], atol=1e-12)


def test_fewer_than_two_points_gives_none_everywhere() -> None:
    one_point = record([("a", 0.0, 1.0), ("b", 1.0, 2.0)], [[(0.3, 0.3, 0.5)]])
    assert utterance_locations(one_point) == [None, None]
    assert utterance_locations(record([("a", 0.0, 1.0)], [])) == [None]
    no_traces = {
        "caption": "a",
        "timed_caption": [{"utterance": "a", "start_time": 0, "end_time": 1}],
    }
    assert utterance_locations(no_traces) == [None]
    assert utterance_locations({"caption": "a", "traces": record([], LINEAR)["traces"]}) == []


def test_bad_fields_raise_a_clear_error() -> None:
    with pytest.raises(DataFormatError, match="f.jsonl:3.*traces"):
        utterance_locations(
            record([("a", 0, 1)], [[(0, 0, 0)]]) | {"traces": [[{"x": 1}]]}, source="f.jsonl:3"
        )
    with pytest.raises(DataFormatError, match="timed_caption"):
        utterance_locations({"timed_caption": [{"utterance": "a"}], "traces": []})


# A straightforward transcription of the official trace2coord / process_record, with
# scipy's interp1d(kind='linear', fill_value='extrapolate') written out (scipy is not a
# dependency): bracket = searchsorted(t, x_new, 'left') clipped to [1, n - 1].
def _interp1d_extrapolate(t: np.ndarray, v: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    out = []
    for x in x_new:
        hi = min(max(int(np.searchsorted(t, x, side="left")), 1), len(t) - 1)
        lo = hi - 1
        slope = (v[hi] - v[lo]) / (t[hi] - t[lo])
        out.append(slope * (x - t[lo]) + v[lo])
    return np.array(out)


def official_reference(rec: dict) -> list[tuple | None]:
    traces = [p for seg in rec.get("traces", []) for p in seg]
    timed = rec.get("timed_caption", [])
    if len(traces) <= 1:  # process_record: "no traces" -> the annotation is skipped
        return [None] * len(timed)
    t = np.array([p["t"] for p in traces], float)
    x = np.array([p["x"] for p in traces], float)
    y = np.array([p["y"] for p in traces], float)
    order = np.argsort(t, kind="stable")
    t, x, y = t[order], x[order], y[order]
    out = []
    for dic in timed:
        tv = np.linspace(dic["start_time"], dic["end_time"], num=16)
        xv, yv = _interp1d_extrapolate(t, x, tv), _interp1d_extrapolate(t, y, tv)
        if tv[-1] - tv[0] < 1e-5:
            ix, iy = np.mean(xv), np.mean(yv)
        else:
            ix = np.sum(np.diff(tv) * (xv[1:] + xv[:-1]) / 2.0) / (tv[-1] - tv[0])
            iy = np.sum(np.diff(tv) * (yv[1:] + yv[:-1]) / 2.0) / (tv[-1] - tv[0])
        out.append(((ix, iy), (xv.min(), yv.min(), xv.max(), yv.max())))
    return out


def _fixture_records() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(FIXTURES.glob("localized_narratives_*.jsonl")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                out.append((f"{path.name}:{i}", json.loads(line)))
    return out


@pytest.mark.skipif(not FIXTURES.exists(), reason="shared fixtures not present")
def test_real_fixture_records_agree_with_the_official_reference() -> None:
    # The three real records (one full-schema, two partial: ADE20k with 1 trace point,
    # COCO 381639 with no 'traces' field at all and no 'voice_recording') each have fewer
    # than 2 trace points, so the official builder skips them (no location for any
    # utterance). The missing 'traces' field is read as an empty trace; the official
    # LocalizedNarrative(**record) would raise on it.
    recs = _fixture_records()
    assert len(recs) == 3
    for source, rec in recs:
        ours = utterance_locations(rec, source=source)
        ref = official_reference(rec)
        assert len(ours) == len(rec.get("timed_caption", [])), source
        assert ours == ref == [None] * len(ours), source


@pytest.mark.skipif(not FIXTURES.exists(), reason="shared fixtures not present")
def test_fixture_utterances_with_a_longer_trace_agree_with_the_reference() -> None:
    # The fixtures' real timings (including the zero-length "In" 0.0-0.0 and "In the" 0-0
    # utterances and integer times) over a made-up multi-segment trace, compared number by
    # number with the straightforward reference.
    rng = np.random.default_rng(0)
    for source, rec in _fixture_records():
        timed = rec.get("timed_caption", [])
        end = max(u["end_time"] for u in timed)
        segs = []
        for _ in range(3):
            t = np.sort(rng.uniform(-0.5, end + 0.5, size=20))
            segs.append(
                [
                    {"x": float(a), "y": float(b), "t": float(c)}
                    for a, b, c in zip(rng.normal(0.5, 0.3, 20), rng.normal(0.5, 0.3, 20), t)
                ]
            )
        rec = dict(rec, traces=segs[::-1])
        ours = utterance_locations(rec, source=source)
        ref = official_reference(rec)
        for o, r in zip(ours, ref):
            np.testing.assert_allclose(o.mean, r[0], rtol=0, atol=1e-12, err_msg=source)
            np.testing.assert_allclose(o.box, r[1], rtol=0, atol=1e-12, err_msg=source)


def test_random_records_agree_with_the_reference() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        n_pts = int(rng.integers(2, 60))
        t = rng.uniform(0, 10, n_pts)
        pts = [
            (float(a), float(b), float(c))
            for a, b, c in zip(rng.random(n_pts), rng.random(n_pts), t)
        ]
        cut = sorted(rng.integers(0, n_pts, 2))
        segs = [pts[: cut[0]], pts[cut[0] : cut[1]], pts[cut[1] :]]
        starts = rng.uniform(-1, 11, 8)
        durs = np.where(rng.random(8) < 0.2, 0.0, rng.uniform(0, 2, 8))
        utts = [(f"w{i}", float(s), float(s + d)) for i, (s, d) in enumerate(zip(starts, durs))]
        rec = record(utts, [s for s in segs if s])
        for o, r in zip(utterance_locations(rec), official_reference(rec)):
            np.testing.assert_allclose(o.mean, r[0], rtol=0, atol=1e-9)
            np.testing.assert_allclose(o.box, r[1], rtol=0, atol=1e-9)


def test_sample_count_is_the_official_sixteen() -> None:
    assert NUM_SAMPLES_PER_UTTERANCE == 16


# --------------------------------------------------------------------------------------------
# step 2: tokens -> utterances
# --------------------------------------------------------------------------------------------


def test_official_mapping_by_hand() -> None:
    # N = 4 valid utterances at k/N = .25 .5 .75 1; T = 4 tokens at j/T rescaled to
    # [1/N, 1]: .25 + (j/4) * .75 = .4375 .625 .8125 1. Nearest (squared distance, ties to
    # the lower index): .4375 -> .5 (#1); .625 is .125 from both .5 and .75 -> #1;
    # .8125 -> .75 (#2); 1 -> #3. So [1, 1, 2, 3]: the first half is shifted by one.
    np.testing.assert_array_equal(official_token_to_utterance(np.ones(4, bool), 4), [1, 1, 2, 3])
    # T = 5, N = 3 (utterances at 1/3 2/3 1): tokens 1/3 + (j/5)(2/3) =
    # j=1: .4667 -> |d| to #0 .1333, to #1 .2 -> #0; j=2: .6 -> #1 (.0667);
    # j=3: .7333 -> #1 (.0667); j=4: .8667 -> #1 .2, #2 .1333 -> #2; j=5: 1 -> #2.
    np.testing.assert_array_equal(official_token_to_utterance(np.ones(3, bool), 5), [0, 1, 1, 2, 2])
    # Invalid utterances are skipped: valid = [0, 1, 3, 4] at .25 .5 .75 1, T = 5 tokens at
    # .25 + (j/5) .75 = .4 .55 .7 .85 1 -> .5 .5 .75 .75 1 -> utterances [1, 1, 3, 3, 4].
    valid = np.array([True, True, False, True, True])
    np.testing.assert_array_equal(official_token_to_utterance(valid, 5), [1, 1, 3, 3, 4])
    assert (official_token_to_utterance(np.zeros(3, bool), 4) == -1).all()


def test_relative_mapping_by_hand() -> None:
    # floor((j + .5) * N / T): T = 5, N = 4 -> .4 1.2 2 2.8 3.6 -> [0, 1, 2, 2, 3].
    np.testing.assert_array_equal(relative_token_to_utterance(np.ones(4, bool), 5), [0, 1, 2, 2, 3])
    np.testing.assert_array_equal(relative_token_to_utterance(np.ones(4, bool), 4), [0, 1, 2, 3])


CAPTION = "a red car is on the left ."
UTTS = CAPTION.split()  # 8 utterances, one per word


def test_align_caption_word_level() -> None:
    tok = word_tokenizer(UTTS)
    locs = [loc((0.1 * (i + 1), 0.5)) for i in range(len(UTTS))]
    # Text method: word-level tokens are exactly the utterances -> token i -> utterance i.
    text = align_caption(UTTS, locs, tok, caption=CAPTION, method="text")
    assert isinstance(text, AlignedCaption)
    assert len(text) == 8 and text.input_ids == tok(CAPTION, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(text.utterance_index, np.arange(8))
    np.testing.assert_allclose(text.points[:, 0], 0.1 * np.arange(1, 9), atol=1e-6)
    np.testing.assert_allclose(text.boxes[3], (0.35, 0.45, 0.45, 0.55), atol=1e-6)
    # Official, T = N = 8: 1/8 + (j/8)(7/8) vs k/8, i.e. k = 1 + round_half_down(7j/8):
    # j=1..8 -> 7/8, 14/8, 21/8, 28/8, 35/8, 42/8, 49/8, 56/8 = .875 1.75 2.625 3.5 4.375
    # 5.25 6.125 7 -> rounded (half down) 1 2 3 3 4 5 6 7 -> utterances (0-based) 1 2 3 3 4 5 6 7.
    off = align_caption(UTTS, locs, tok, caption=CAPTION, method="official")
    np.testing.assert_array_equal(off.utterance_index, [1, 2, 3, 3, 4, 5, 6, 7])
    assert off.input_ids == text.input_ids
    rel = align_caption(UTTS, locs, tok, caption=CAPTION, method="relative")
    np.testing.assert_array_equal(rel.utterance_index, np.arange(8))


def test_align_caption_subword() -> None:
    # WordPiece with a hand vocabulary: "redcar" -> red ##car, "lefty" -> left ##y, so
    # 5 utterances -> 7 tokens: the(0) red(1) ##car(1) is(2) on(3) left(4) ##y(4).
    tok = wordpiece_tokenizer(["the", "red", "##car", "is", "on", "left", "##y"])
    utts = ["the", "redcar", "is", "on", "lefty"]
    caption = "the redcar is on lefty"
    locs = [loc((0.1 * (i + 1), 0.2)) for i in range(5)]
    ids = tok(caption, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["the", "red", "##car", "is", "on", "left", "##y"]
    text = align_caption(utts, locs, tok, caption=caption, method="text")
    np.testing.assert_array_equal(text.utterance_index, [0, 1, 1, 2, 3, 4, 4])
    # Official, T = 7, N = 5 (utterances at .2 .4 .6 .8 1): tokens .2 + (j/7)(.8) =
    # .314 .429 .543 .657 .771 .886 1 -> nearest .4(#1) .4(#1) .6(#2) .6(#2) .8(#3) .8(#3)
    # 1(#4) (.314: .114 from .2 vs .086 from .4 -> #1; .886: .086 from .8 -> #3).
    off = align_caption(utts, locs, tok, caption=caption, method="official")
    np.testing.assert_array_equal(off.utterance_index, [1, 1, 2, 2, 3, 3, 4])
    # The same with a tokenizer that has no offsets (slow-tokenizer path, piece by piece).
    slow = align_caption(utts, locs, SlowLike(tok), caption=caption, method="text")
    assert slow.input_ids == ids
    np.testing.assert_array_equal(slow.utterance_index, [0, 1, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(
        align_caption(utts, locs, SlowLike(tok), caption=caption).utterance_index,
        off.utterance_index,
    )


@pytest.mark.parametrize("vocab_size", [262, 275, 300])
def test_text_method_with_byte_level_bpe_groups_tokens_by_utterance(vocab_size: int) -> None:
    # Byte-level BPE tokens carry the space before a word ("Ġred"), or are that space alone
    # ("Ġ", "r", "ed") when the vocabulary is tiny. Each utterance's tokens, decoded, must be
    # exactly " word" (the space included): the space token belongs to the word after it.
    caption = "in this image there is a small red circle on the left ."
    utts = caption.split()
    tok = bpe_tokenizer([caption] * 5, vocab_size=vocab_size)
    locs = [loc((0.5, 0.5))] * len(utts)
    out = align_caption(utts, locs, tok, caption=caption, method="text")
    assert len(out) > len(utts) or vocab_size == 300  # 300: one token per word
    assert (np.diff(out.utterance_index) >= 0).all()
    for i, word in enumerate(utts):
        ids = [t for t, u in zip(out.input_ids, out.utterance_index) if u == i]
        assert tok.backend_tokenizer.decode(ids) == (" " if i else "") + word


def test_official_validity_rules() -> None:
    # Valid = non-empty stripped text and mean > 1e-5 in x and y. Utterance 1 has its mean
    # left of the image (x = -0.01), utterance 3 is blank, utterance 4 has no location:
    # valid = [0, 2, 5] at 1/3 2/3 1. T = 6 word tokens ("a b c d e f"; the caption is given
    # explicitly): 1/3 + (j/6)(2/3) = .444 .556 .667 .778 .889 1 -> #0? |.444-.333| = .111,
    # |.444-.667| = .222 -> #0; .556 -> #2 (.111 vs .222); .667 -> #2; .778 -> #2 (.111 vs
    # .222); .889 -> #5 (.111 vs .222); 1 -> #5.
    tok = word_tokenizer(list("abcdef"))
    locs = [
        loc((0.3, 0.3)),
        loc((-0.01, 0.3)),
        loc((0.5, 0.5)),
        loc((0.6, 0.6)),
        None,
        loc((0.9, 0.9)),
    ]
    utts = ["a", "b", "c", "  ", "e", "f"]
    out = align_caption(utts, locs, tok, caption="a b c d e f", method="official")
    np.testing.assert_array_equal(out.utterance_index, [0, 2, 2, 2, 5, 5])
    # Text method: token -> its own utterance, no target where that has no location or is
    # blank ("d" is not an utterance: it follows "c" and takes c's; "e" has no location).
    txt = align_caption(utts, locs, tok, caption="a b c d e f", method="text")
    np.testing.assert_array_equal(txt.utterance_index, [0, 1, 2, 2, -1, 5])
    assert np.isnan(txt.boxes[4]).all() and not txt.has_target[4]


def test_no_valid_utterance_gives_no_targets() -> None:
    tok = word_tokenizer(["a", "b"])
    out = align_caption(["a", "b"], [None, None], tok, method="official")
    assert out.input_ids == tok("a b", add_special_tokens=False)["input_ids"]
    assert (out.utterance_index == -1).all() and np.isnan(out.boxes).all()
    assert out.boxes.shape == (2, 4) and out.points.shape == (2, 2)


def test_max_tokens_reproduces_the_official_truncation() -> None:
    # 4 valid utterances; only the first T = 2 tokens kept *before* mapping (officially:
    # max_text_tokens): positions .25 + (j/2)(.75) = .625, 1. The first is exactly .125 from
    # both .5 (#1) and .75 (#2): the tie goes to the lower index, #1; the second is #3. So
    # the two kept tokens are spread over the whole narrative.
    tok = word_tokenizer(list("abcd"))
    locs = [loc((0.2 * (i + 1), 0.5)) for i in range(4)]
    out = align_caption(list("abcd"), locs, tok, method="official", max_tokens=2)
    np.testing.assert_array_equal(out.utterance_index, [1, 3])
    full = align_caption(list("abcd"), locs, tok, method="official")
    np.testing.assert_array_equal(full.utterance_index[:2], [1, 1])


def test_array_locations_and_default_caption() -> None:
    tok = word_tokenizer(list("abc"))
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [np.nan] * 4, [0.5, 0.5, 0.7, 0.9]])
    out = align_caption(["a", " b ", "c"], boxes, tok, method="text")
    np.testing.assert_array_equal(out.utterance_index, [0, -1, 2])
    np.testing.assert_allclose(out.points[2], (0.6, 0.7), atol=1e-6)  # box centre stands in
    with pytest.raises(ValueError, match="3 utterances but 2"):
        align_caption(["a", "b", "c"], boxes[:2], tok)
    with pytest.raises(ValueError, match="method"):
        align_caption(["a"], boxes[:1], tok, method="nearest")  # type: ignore[arg-type]


def test_utterance_spans() -> None:
    cap = "A man, a dog and a cat.  In the image"
    spans = utterance_spans(
        cap, ["a", "man", "a", "dog", "and", "a", "cat.", "xyz", "in the", "image"]
    )
    words = [cap[span[0] : span[1]] if span is not None else None for span in spans]
    assert words == ["A", "man", "a", "dog", "and", "a", "cat.", None, "In the", "image"]


def test_align_record_end_to_end() -> None:
    rec = record([("left", 0.0, 1.0), ("right", 1.0, 2.0)], LINEAR, caption="Left right")
    tok = word_tokenizer(["left", "right"])
    out = align_record(rec, tok, method="text")
    np.testing.assert_array_equal(out.utterance_index, [0, 1])
    np.testing.assert_allclose(out.points[:, 0], [0.25, 0.75], atol=1e-6)
    np.testing.assert_allclose(out.boxes[1], (0.5, 0.5, 1.0, 0.5), atol=1e-6)


def _shapes_records(n: int) -> list[dict]:
    from pixelkit.data.synth import narrative_records

    return narrative_records(n, seed=3)  # what synth writes for these scenes, in memory


def test_shapes_world_text_method_is_exact_and_official_is_shifted() -> None:
    recs = _shapes_records(12)
    assert recs
    words = sorted({w for r in recs for w in r["caption"].split()})
    tok = word_tokenizer(words)
    for rec in recs:
        out = align_record(rec, tok, method="text")
        assert len(out) == len(rec["timed_caption"])  # one token per word per utterance
        np.testing.assert_array_equal(out.utterance_index, np.arange(len(out)))
    stats = compare_methods(recs, tok)
    assert stats["tokens"] > 0
    assert stats["relative_token_error_rate"] == 0.0
    # The official shift sends about half of the tokens to the next utterance.
    assert 0.3 < stats["official_token_error_rate"] < 0.6


def test_fast_backend_path_matches_the_tokenizer_call() -> None:
    from pixelkit.data.alignment import _encode

    tok = bpe_tokenizer(["a small red circle on the left"] * 3, vocab_size=280)
    text = "a small red circle on the left"
    ids, offsets = _encode(tok, text, want_offsets=True)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == enc["input_ids"]
    assert [tuple(o) for o in offsets] == [tuple(o) for o in enc["offset_mapping"]]
