"""Predictor: pixels in and out for any image shape, checkpoints, results, bad inputs, SAM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer

from pixelkit import PixelLLM, PixelLLMConfig, Predictor
from pixelkit.checkpoint import save_model
from pixelkit.data.transforms import from_model_boxes, to_model_boxes, to_model_points
from pixelkit.decoding import DecodeOptions
from pixelkit.predictor import (
    CaptionResult,
    DenseCaptionResult,
    ReferResult,
    SegmentResult,
    group_words,
    mask_to_rle,
)

SIZES = [(100, 40), (40, 100), (64, 64), (333, 517)]  # (W, H)



@pytest.fixture(scope="module")
def model() -> PixelLLM:
    torch.manual_seed(0)
    return PixelLLM(PixelLLMConfig.from_name("tiny")).eval()


@pytest.fixture
def predictor(model: PixelLLM) -> Predictor:
    # Short outputs keep the tests quick; the decoding itself is tested in test_decoding.
    return Predictor(model, device="cpu", decode_options=DecodeOptions(max_new_tokens=6))


def _image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


class _Spy:
    """Wraps model.visual_tokens / point_head to record prompts and fix the point outputs."""

    def __init__(self, model: PixelLLM, monkeypatch: pytest.MonkeyPatch,
                 points: tuple[float, float, float, float] | None = None) -> None:
        self.calls: list[dict[str, torch.Tensor | None]] = []
        original = model.visual_tokens

        def visual_tokens(features, boxes=None, points_=None, point_labels=None,
                          image_index=None):
            self.calls.append({"boxes": boxes, "points": points_, "labels": point_labels})
            return original(features, boxes, points_, point_labels, image_index)

        monkeypatch.setattr(model, "visual_tokens", visual_tokens)
        if points is not None:
            fixed = torch.tensor(points)
            monkeypatch.setattr(model.point_head, "forward",
                                lambda h: fixed.expand(*h.shape[:-1], 4).clone())


# --------------------------------------------------------------------------- coordinates
@pytest.mark.parametrize("size", SIZES)
def test_box_prompt_goes_in_as_the_model_frame(model, predictor, monkeypatch, size) -> None:
    W, H = size
    spy = _Spy(model, monkeypatch)
    predictor.set_image(_image(W, H))
    box = (0.1 * W, 0.25 * H, 0.6 * W, 0.9 * H)
    predictor.caption(box=box)
    sent = spy.calls[-1]["boxes"].numpy()
    np.testing.assert_allclose(sent, to_model_boxes(np.array([box]), (W, H)), atol=1e-6)
    pts = [(0.3 * W, 0.7 * H), (W, 0.0)]  # the image edge is inside
    predictor.caption(points=pts, labels=[1, 0])
    call = spy.calls[-1]
    np.testing.assert_allclose(call["points"][0].numpy(), to_model_points(np.array(pts), (W, H)),
                               atol=1e-6)
    assert call["labels"][0].tolist() == [1, 0]
    assert torch.isnan(call["boxes"]).all()  # points only: no box prompt
    predictor.caption()
    assert torch.isnan(spy.calls[-1]["boxes"]).all()  # whole image: the default prompt


def _force_words(model: PixelLLM, predictor: Predictor, monkeypatch: pytest.MonkeyPatch,
                 text: str) -> None:
    """Make the LM emit ``text`` then EOS, whatever its random weights would say (the
    tests about frames need words to locate, not a trained model)."""
    lm = model.language_model
    ids = predictor.tokenizer(text, add_special_tokens=False)["input_ids"] + [lm.eos_id]
    t = {"step": 0}

    def forced(logits: torch.Tensor) -> torch.Tensor:
        wanted = ids[min(t["step"], len(ids) - 1)]
        t["step"] += 1
        out = torch.full_like(logits, -1e4)
        out[:, wanted] = 0.0
        return out

    start, step = lm.start, lm.step

    def forced_start(*args, **kwargs):
        t["step"] = 0
        logits, hidden, state = start(*args, **kwargs)
        return forced(logits), hidden, state

    def forced_step(*args, **kwargs):
        logits, hidden = step(*args, **kwargs)
        return forced(logits), hidden

    monkeypatch.setattr(lm, "start", forced_start)
    monkeypatch.setattr(lm, "step", forced_step)


@pytest.mark.parametrize("size", SIZES)
def test_predicted_locations_come_back_in_pixels(model, predictor, monkeypatch, size) -> None:
    W, H = size
    _force_words(model, predictor, monkeypatch, "a red circle")
    # Corners given in the "wrong" order (x1 < x0): the result is an ordered box.
    _Spy(model, monkeypatch, points=(0.3, 0.2, 0.1, 0.35))
    predictor.set_image(_image(W, H))
    expected = from_model_boxes(np.array([[0.1, 0.2, 0.3, 0.35]]), (W, H))[0]
    cap = predictor.caption()
    assert cap.words == ["a", "red", "circle"]
    assert len(cap.points) == len(cap.boxes) == 3
    for box, point in zip(cap.boxes, cap.points):
        np.testing.assert_allclose(box, expected, atol=1e-4)
        np.testing.assert_allclose(point, [(expected[0] + expected[2]) / 2,
                                           (expected[1] + expected[3]) / 2], atol=1e-4)
        assert 0 <= box[0] <= box[2] <= W and 0 <= box[1] <= box[3] <= H
    np.testing.assert_allclose(predictor.refer("the red circle").box, expected, atol=1e-4)


def test_locations_in_the_padding_are_clipped_to_the_image(model, predictor, monkeypatch) -> None:
    _Spy(model, monkeypatch, points=(0.5, 0.5, 0.9, 0.95))  # y > H / max(W, H) = 0.4
    predictor.set_image(_image(100, 40))
    box = predictor.refer("the circle").box
    assert box == pytest.approx((50.0, 40.0, 90.0, 40.0))


def test_batched_boxes_equal_single_calls(predictor) -> None:
    predictor.set_image(_image(90, 60))
    boxes = [(0, 0, 45, 30), (10, 5, 80, 55), (30, 30, 90, 60)]
    batched = predictor.caption_boxes(boxes)
    for box, got in zip(boxes, batched):
        one = predictor.caption(box=box)
        assert one.text == got.text and one.words == got.words
        np.testing.assert_allclose(one.boxes, got.boxes, atol=1e-4)


# --------------------------------------------------------------------------- words
def test_words_take_their_last_alphanumeric_token() -> None:
    from pixelkit.bench import build_bench_tokenizers

    text = "a red circle, and a large square."
    for name, tok in build_bench_tokenizers([text] * 4 + ["in this image there is"]).items():
        ids = tok(text, add_special_tokens=False).input_ids
        decoded, words, locating = group_words(tok, ids)
        # Words are the whitespace-separated pieces of the decoded text (the word-level
        # tokenizer decodes "circle ,", the byte-level one "circle,").
        assert words == tok.decode(ids, clean_up_tokenization_spaces=False).split(), name
        assert decoded.replace(" ", "") == text.replace(" ", "")
        pieces = [tok.decode([i]).strip() for i in ids]
        for word, k in zip(words, locating):
            # The locating token ends the word's letters ("circle" of "circle,"), whatever
            # the word's split into pieces; a punctuation-only word locates by itself.
            if any(ch.isalnum() for ch in word):
                assert any(ch.isalnum() for ch in pieces[k]), (name, word, pieces[k])
                assert word.rstrip(",.").endswith(pieces[k]), (name, word, pieces[k])
            else:
                assert pieces[k] == word
        if name == "subword":
            assert words == ["a", "red", "circle,", "and", "a", "large", "square."]
            assert len(ids) > len(words)  # the test does exercise multi-token words
    assert group_words(tok, []) == ("", [], [])


def _metaspace_tokenizer(texts: list[str]) -> Tokenizer:
    """A SentencePiece-style BPE (Metaspace "▁" pieces, as T5's tokenizer) trained on texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    sp.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=60, show_progress=False,
                                                      special_tokens=["<pad>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=sp, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def test_streamed_token_texts_equal_decoded_windows(predictor) -> None:
    """The DecodeStream path and the window-decoding fallback give every token the same text,
    on word-level, byte-level BPE, WordPiece (shapes) and SentencePiece-style tokenizers;
    special tokens add nothing."""
    from pixelkit.bench import build_bench_tokenizers
    from pixelkit.predictor import _token_texts, _window_token_texts

    texts = ["a red circle, and a large square.", "in this image there is a small blue triangle",
             "on the left , a green circle ; then the top right ."]
    toks = {**build_bench_tokenizers(texts * 4), "shapes": predictor.tokenizer,
            "metaspace": _metaspace_tokenizer(texts * 4)}
    for name, tok in toks.items():
        for text in texts:
            ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
            streamed = _token_texts(tok, ids)
            assert streamed == _window_token_texts(tok, ids), (name, text)
            assert "".join(streamed) == tok.decode(ids, skip_special_tokens=True,
                                                   clean_up_tokenization_spaces=False)
            assert streamed[-1] == ""  # EOS
    # SentencePiece: the first word has no leading space, the others do.
    sp = toks["metaspace"]
    _, words, _ = group_words(sp, sp("a red circle", add_special_tokens=False).input_ids)
    assert words == ["a", "red", "circle"]


def test_a_character_split_over_byte_tokens_is_one_word() -> None:
    """Byte-level BPE splits "é" into two tokens: the first adds no text (half a UTF-8
    character), the word is whole and takes the location of the token that completes it."""
    from pixelkit.bench import build_bench_tokenizers

    tok = build_bench_tokenizers(["a red circle"] * 4)["subword"]
    ids = tok("a rouge café", add_special_tokens=False).input_ids
    text, words, locating = group_words(tok, ids)
    assert text == "a rouge café" and words == ["a", "rouge", "café"]
    assert tok.decode(ids[-2:-1]) == "\ufffd" and locating[-1] == len(ids) - 1


def test_word_location_rule_on_the_shapes_tokenizer(predictor) -> None:
    ids = predictor.tokenizer("a red circle , and a square .", add_special_tokens=False).input_ids
    _, words, locating = group_words(predictor.tokenizer, ids)
    # The decoder glues punctuation to the word before it; the word keeps its own location.
    assert words == ["a", "red", "circle,", "and", "a", "square."]
    assert locating == [0, 1, 2, 4, 5, 6]


# --------------------------------------------------------------------------- results
def test_results_are_typed_and_json(predictor) -> None:
    predictor.set_image(Image.fromarray(_image(80, 50)))
    cap = predictor.caption(task="caption")
    ref = predictor.refer("the blue square")
    dense = predictor.dense_caption(max_regions=3, score_threshold=0.0)
    assert isinstance(cap, CaptionResult) and isinstance(ref, ReferResult)
    assert isinstance(dense, DenseCaptionResult)
    assert 0 < ref.score <= 1 and len(ref.box) == 4
    assert 0 < len(dense.boxes) <= 3
    assert len(dense.boxes) == len(dense.captions) == len(dense.scores)
    assert all(0 <= b[0] < b[2] <= 80 and 0 <= b[1] < b[3] <= 50 for b in dense.boxes)
    assert dense.scores == sorted(dense.scores, reverse=True)
    for result in (cap, ref, dense):
        back = json.loads(json.dumps(result.to_dict()))
        assert set(back) == set(result.__dataclass_fields__)


def test_refer_score_is_the_geometric_mean_probability(model, predictor) -> None:
    predictor.set_image(_image(64, 48))
    ref = predictor.refer("the red circle")
    from pixelkit.data.encoding import make_row

    row = make_row(predictor.tokenizer, "refer", "the red circle")
    out, _ = predictor.forward_rows([predictor.image], [row])
    logp = torch.log_softmax(out.logits[0], -1)[torch.arange(len(row.labels)), row.labels]
    assert ref.score == pytest.approx(float(logp.mean().exp()), rel=1e-5)


def test_from_checkpoint(model, tmp_path: Path) -> None:
    path = save_model(model, tmp_path / "tiny.ckpt", stage="trace", trained_on="shapes",
                      metrics={"l1": 0.1})
    loaded = Predictor.from_checkpoint(path, device="cpu",
                                       decode_options=DecodeOptions(max_new_tokens=5))
    assert loaded.info["stage"] == "trace" and loaded.info["metrics"] == {"l1": 0.1}
    direct = Predictor(model, device="cpu", decode_options=DecodeOptions(max_new_tokens=5))
    image = _image(70, 30)
    a = loaded.set_image(image).caption(box=(5, 5, 50, 25))
    b = direct.set_image(image).caption(box=(5, 5, 50, 25))
    assert a.text == b.text
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)


def test_image_inputs(predictor, tmp_path: Path) -> None:
    arr = _image(30, 20)
    path = tmp_path / "im.png"
    Image.fromarray(arr).save(path)
    variants = [arr, arr / 255.0, Image.fromarray(arr), str(path), path,
                torch.from_numpy(arr).permute(2, 0, 1), arr[:, :, 0], np.dstack([arr, arr[:, :, :1]])]
    for v in variants:
        predictor.set_image(v)
        assert predictor.image.size == (30, 20)
        assert predictor.image.tensor.shape == (3, 64, 64)


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_say_what_is_wrong(model, tmp_path: Path) -> None:
    p = Predictor(model, device="cpu", decode_options=DecodeOptions(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="set_image"):
        p.caption()
    with pytest.raises(TypeError, match="expected an image"):
        p.set_image(42)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        p.set_image(tmp_path / "nope.png")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="cannot be read"):
        p.set_image(text)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        p.set_image(np.zeros((4, 4, 7), np.uint8))
    p.set_image(_image(100, 40))
    with pytest.raises(ValueError, match="outside the 100x40 image"):
        p.caption(box=(10, 10, 120, 30))
    with pytest.raises(ValueError, match="outside the 100x40 image"):
        p.caption(box=(-5, 0, 20, 20))
    with pytest.raises(ValueError, match="x1 > x0"):
        p.caption(box=(50, 10, 20, 30))
    with pytest.raises(ValueError, match="four"):
        p.caption(box=(1, 2, 3))
    with pytest.raises(ValueError, match="outside the 100x40 image"):
        p.caption(points=[(10, 50)])
    with pytest.raises(ValueError, match="labels"):
        p.caption(points=[(10, 10)], labels=[2])
    with pytest.raises(ValueError, match="not both"):
        p.caption(box=(0, 0, 10, 10), points=[(5, 5)])
    with pytest.raises(ValueError, match="loca_caption"):
        p.caption(box=(0, 0, 10, 10), task="caption")
    with pytest.raises(ValueError, match="non-empty"):
        p.refer("  ")
    with pytest.raises(RuntimeError, match="SAM"):
        p.segment("the circle")
    with pytest.raises(TypeError, match="SamModel"):
        Predictor(model, device="cpu", sam=3.0)


# --------------------------------------------------------------------------- SAM
@pytest.mark.parametrize("size", [(100, 40), (37, 90)])
def test_segment_with_a_tiny_sam_from_a_directory(model, tmp_path, tiny_sam, size) -> None:
    tiny_sam.save_pretrained(tmp_path / "sam")
    p = Predictor(model, device="cpu", sam=tmp_path / "sam",
                  decode_options=DecodeOptions(max_new_tokens=2))
    W, H = size
    seg = p.set_image(_image(W, H)).segment("the red circle")
    assert isinstance(seg, SegmentResult)
    assert seg.mask.shape == (H, W) and seg.mask.dtype == bool
    assert seg.box == p.refer("the red circle").box
    rle = json.loads(json.dumps(seg.to_dict()))["mask"]
    assert rle["size"] == [H, W] and sum(rle["counts"]) == H * W


def test_mask_rle_round_trip() -> None:
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = mask[1:, 2] = True
    rle = mask_to_rle(mask)
    flat = np.concatenate([np.full(c, i % 2, bool) for i, c in enumerate(rle["counts"])])
    assert np.array_equal(flat.reshape(4, 3).T, mask)  # column-major, zeros first
    assert mask_to_rle(np.ones((2, 2), bool))["counts"] == [0, 4]
