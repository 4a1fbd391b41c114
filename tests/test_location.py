"""Location interfaces, first slice: ``location.*`` config, the codec, tokenizers, rows.

The codec writes boxes into text (``[12,40,33,61]``) or location tokens and reads them
back: round trips land within half a bin for both text grids (100, 1000), both token
styles and non-square images; malformed generations give a parse failure with its reason,
never an exception. The default ``regression`` format leaves every row byte-identical.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from pixelkit.config import (
    LocationConfig,
    LoraSettings,
    ModelOverrides,
    PixelLLMConfig,
    overrides_dict,
)
from pixelkit.data.encoding import (
    NO_BOX,
    TASK_PROMPTS,
    Row,
    collate,
    encode_text,
    grounded_row,
    make_row,
)
from pixelkit.modeling.location import (
    PARSE_ERRORS,
    TASK_IDENTIFIERS,
    LocationCodec,
    image_extent,
)
from pixelkit.modeling.tokenizer import (
    add_location_tokens,
    location_token_strings,
    new_token_ids,
    shapes_tokenizer,
    tokenizer_for,
)

SIZES = [(640, 480), (480, 640), (64, 64), (1000, 300)]
CODECS = {
    "text100": {"format": "text", "bins": 100},
    "text1000": {"format": "text", "bins": 1000},
    "corner32": {"format": "tokens", "token_grid": 32, "token_style": "corner"},
    "axis32": {"format": "tokens", "token_grid": 32, "token_style": "axis"},
    "axis1000": {"format": "tokens", "token_grid": 1000, "token_style": "axis"},
}


def random_boxes(rng: np.random.Generator, extent: tuple[float, float], n: int) -> np.ndarray:
    """``n`` valid xyxy boxes inside the content extent (model frame)."""
    ex, ey = extent
    a, b = rng.uniform(0, 1, (n, 2)), rng.uniform(0, 1, (n, 2))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.concatenate([lo, hi], 1) * np.array([ex, ey, ex, ey])


def half_bin(codec: LocationCodec, extent: tuple[float, float]) -> np.ndarray:
    n = codec.bins if codec.style == "text" else codec.grid
    return np.array([extent[0], extent[1], extent[0], extent[1]]) / (2 * n)


# --------------------------------------------------------------------------- config
def test_default_config_is_regression_and_changes_nothing() -> None:
    cfg = PixelLLMConfig.from_name("tiny")
    assert cfg.location == LocationConfig()
    codec = LocationCodec(cfg.location)
    assert codec.format == "regression" and not codec.changes_rows
    assert codec.added_tokens() == [] and codec.special_tokens() == []
    # The default model's tokenizer is the shared shapes tokenizer itself.
    assert tokenizer_for(cfg) is shapes_tokenizer()


def test_config_overrides_round_trip() -> None:
    cfg = PixelLLMConfig.from_name("tiny", {"location": {"format": "text", "bins": 1000}},
                                   **{"location.task_tokens": True})
    assert (cfg.location.format, cfg.location.bins, cfg.location.task_tokens) == ("text", 1000, True)
    assert cfg.location.token_grid == 32  # untouched fields keep their defaults
    again = PixelLLMConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.location, LocationConfig)
    # A checkpoint written before location existed reads as the default.
    old = cfg.to_dict()
    del old["location"]
    assert PixelLLMConfig.from_dict(old).location == LocationConfig()
    # A stage's typed overrides carry the group like the others.
    typed = ModelOverrides(location=type(ModelOverrides().location)(format="tokens"))
    assert overrides_dict(typed) == {"location": {"format": "tokens"}}


@pytest.mark.parametrize("bad, message", [
    ({"format": "boxes"}, "format"),
    ({"token_style": "cells"}, "token_style"),
    ({"prompt": "points"}, "prompt"),
    ({"bins": 1}, ">= 2"),
    ({"bins": 0}, "> 0"),
    ({"token_grid": 2000}, "token_grid"),
])
def test_config_rejects_bad_values(bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        PixelLLMConfig.from_name("tiny", {"location": bad})


def test_config_typo_names_the_field() -> None:
    with pytest.raises(ValueError, match="did you mean model.location.bins"):
        PixelLLMConfig.from_name("tiny", {"location": {"bin": 10}})


def test_regions_config() -> None:
    cfg = PixelLLMConfig.from_name("tiny", {"location": {"format": "regions", "num_regions": 5}})
    codec = LocationCodec(cfg.location)
    assert codec.writes_targets and codec.uses_regions and not codec.uses_numbers
    assert codec.added_tokens() == ["<r1>", "<r2>", "<r3>", "<r4>", "<r5>", "<p>", "</p>"]
    with pytest.raises(ValueError, match="num_regions"):
        PixelLLMConfig.from_name("tiny", {"location": {"format": "regions", "num_regions": 0}})


# --------------------------------------------------------------------------- regions
REGIONS = np.array([[0.10, 0.10, 0.30, 0.40], [0.50, 0.50, 0.90, 0.80],
                    [0.20, 0.20, 0.60, 0.60], [np.nan] * 4], np.float32)


def test_region_tokens_round_trip() -> None:
    """A box is written as the region holding its centre (of those, the best IoU), and the
    token reads back as that region's box: exactly, whatever the image's shape."""
    codec = LocationCodec({"format": "regions", "num_regions": 4})
    for j, region in enumerate(REGIONS[:3]):
        markup = codec.box_markup(region, regions=REGIONS)
        assert markup == f"<r{j + 1}>"
        parsed = codec.decode_box(f"the answer is {markup}", (1.0, 0.75), REGIONS)
        np.testing.assert_array_equal(parsed.box, region)
    # a jittered box still finds its region; the overlapping bigger one loses on IoU
    assert codec.box_markup([0.12, 0.11, 0.28, 0.42], regions=REGIONS) == "<r1>"
    assert codec.box_markup([0.3, 0.3, 0.5, 0.5], regions=REGIONS) == "<r3>"
    with pytest.raises(ValueError, match="no region holds"):
        codec.box_markup([0.92, 0.02, 0.98, 0.08], regions=REGIONS)
    tok = add_location_tokens(shapes_tokenizer(), codec)
    assert codec.box_length(tok) == 1
    ids = tok("<r2>", add_special_tokens=False).input_ids
    assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=True) == "<r2>"


@pytest.mark.parametrize("text, regions, error", [
    ("<r4>", REGIONS, "out_of_range"),        # a padding row
    ("<r9>", REGIONS, "out_of_range"),        # past the proposals
    ("<r0>", REGIONS, "out_of_range"),
    ("<r1>", None, "out_of_range"),           # no proposals known
    ("", REGIONS, "no_box"),                  # truncated before the answer
    ("the red circle", REGIONS, "no_box"),
    ("<r2", REGIONS, "no_box"),               # a token cut in half is words
])
def test_region_parser_on_malformed_generations(text, regions, error) -> None:
    codec = LocationCodec({"format": "regions", "num_regions": 4})
    assert codec.decode_box(text, regions=regions).error == error


def test_region_grounded_captions() -> None:
    codec = LocationCodec({"format": "regions", "num_regions": 4})
    segments = [("in this image there is", None), ("a red circle", [0.12, 0.12, 0.25, 0.3]),
                ("and", None), ("a blue square", [0.6, 0.6, 0.8, 0.75]),
                ("nowhere", [0.92, 0.02, 0.98, 0.08])]
    markup = codec.grounded_markup(segments, regions=REGIONS)
    assert markup == ("in this image there is <p>a red circle</p><r1> and "
                      "<p>a blue square</p><r2> nowhere")
    g = codec.parse_grounded(markup, regions=REGIONS)
    assert g.text == "in this image there is a red circle and a blue square nowhere"
    np.testing.assert_array_equal(g.word_boxes[5:8], np.tile(REGIONS[0], (3, 1)))
    assert np.isnan(g.word_boxes[:5]).all() and np.isnan(g.word_boxes[-1]).all()
    # a phrase naming a region past the proposals keeps its words, counted as a failure
    bad = codec.parse_grounded("<p>a red circle</p><r7> .", regions=REGIONS)
    assert bad.words == ["a", "red", "circle", "."] and bad.failures == 1
    assert codec.parse_grounded("<p>a red circle</p>", regions=REGIONS).phrases[0].error == "no_box"


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("size", SIZES)
def test_box_round_trip_within_half_a_bin(name, size) -> None:
    codec = LocationCodec(CODECS[name])
    extent = image_extent(size)
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, extent, 200)
    # the content's corners and a degenerate (point) box too
    point = [0.3 * extent[0], 0.3 * extent[1]] * 2
    boxes = np.concatenate([boxes, [[0, 0, extent[0], extent[1]], point]])
    tol = half_bin(codec, extent) + 1e-6
    for box in boxes:
        markup = codec.box_markup(box, extent)
        parsed = codec.decode_box(f"the answer is {markup} .", extent)
        assert parsed.ok, (markup, parsed)
        assert np.all(np.abs(parsed.box - box) <= tol), (markup, box, parsed.box)


def test_text_box_format_and_grid() -> None:
    codec = LocationCodec({"format": "text", "bins": 100})
    extent = image_extent((640, 480))
    assert extent == (1.0, 0.75)
    # 640x480: x normalised by 1, y by 0.75 -> the grid covers the image, not the padding.
    assert codec.box_markup([0.12, 0.30, 0.335, 0.4575], extent) == "[12,40,33,61]"
    assert codec.box_markup([0.0, 0.0, 1.0, 0.75], extent) == "[0,0,99,99]"
    back = codec.decode_box("[12,40,33,61]", extent).box
    np.testing.assert_allclose(back, [0.125, 0.30375, 0.335, 0.46125], atol=1e-6)


def test_token_styles() -> None:
    extent = (1.0, 1.0)
    corner = LocationCodec({"format": "tokens", "token_grid": 32})
    assert corner.num_loc_tokens == 1024 and corner.loc_tokens()[-1] == "<loc_1023>"
    # top-left cell (col 3, row 1), bottom-right cell (col 31, row 31)
    box = [3.5 / 32, 1.5 / 32, 1.0, 1.0]
    assert corner.box_tokens(box, extent) == ["<loc_35>", "<loc_1023>"]
    assert corner.box_markup(box, extent) == "<box><loc_35><loc_1023></box>"
    axis = LocationCodec({"format": "tokens", "token_grid": 1000, "token_style": "axis"})
    assert axis.num_loc_tokens == 1000
    assert axis.box_tokens([0.1205, 0.4, 0.3305, 0.6105], extent) == [
        "<loc_120>", "<loc_400>", "<loc_330>", "<loc_610>"]
    assert axis.added_tokens()[-4:] == ["<p>", "</p>", "<box>", "</box>"]


@pytest.mark.parametrize("name", list(CODECS))
def test_round_trip_through_the_shapes_tokenizer(name) -> None:
    codec = LocationCodec(CODECS[name])
    tok = add_location_tokens(shapes_tokenizer(), codec)
    extent = image_extent((640, 480))
    rng = np.random.default_rng(1)
    for box in random_boxes(rng, extent, 50):
        markup = codec.box_markup(box, extent)
        ids = encode_text(tok, markup)
        assert tok.unk_token_id not in ids
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert decoded == markup  # exactly, e.g. "[12,40,33,61]"
        np.testing.assert_allclose(codec.decode_box(decoded, extent).box,
                                   codec.decode_box(markup, extent).box)
    # one token per coordinate for text on a word-level vocabulary; 2 / 4 loc tokens
    per_box = len(encode_text(tok, codec.box_markup([0.1, 0.1, 0.5, 0.5], extent)))
    expected = {"text100": 9, "text1000": 9, "corner32": 4, "axis32": 6, "axis1000": 6}[name]
    assert per_box == expected


# --------------------------------------------------------------------------- malformed
TEXT_CASES = [
    ("", "no_box"),
    ("a red circle", "no_box"),
    ("a red circle [12,40,33", "truncated"),
    ("[12,40,33,61", "truncated"),
    ("[12,40,33,61 and a blue square", "unclosed"),
    ("[12,40 [12,40,33,61]", "unclosed"),
    ("[12,40,33]", "count"),
    ("[12,40,33,61,70]", "count"),
    ("[]", "count"),
    ("[12,40,33,100]", "out_of_range"),
    ("[12,40,33,161]", "out_of_range"),
    ("[-1,40,33,61]", "out_of_range"),
    ("[33,40,12,61]", "reversed"),
    ("[12,61,33,40]", "reversed"),
    ("[12,a,33,61]", "malformed"),
    ("[12.5,40,33,61]", "malformed"),
    ("[refer] [12,,33,61]", "malformed"),
]


@pytest.mark.parametrize("text, error", TEXT_CASES)
def test_text_parser_on_malformed_generations(text, error) -> None:
    parsed = LocationCodec({"format": "text", "bins": 100}).decode_box(text, (1.0, 0.75))
    assert parsed.box is None and parsed.error == error and error in PARSE_ERRORS


def test_text_parser_accepts_spaces_and_equal_corners() -> None:
    codec = LocationCodec({"format": "text", "bins": 100})
    assert codec.decode_box("[ 12 , 40, 33 ,61 ]").ok
    thin = codec.decode_box("[12,40,12,40]")  # both corners in one bin: a zero-size box
    assert thin.ok and thin.box[0] == thin.box[2]
    # a task identifier is not a box
    assert codec.decode_box("[refer] [1,2,3,4]").ok


CORNER_CASES = [
    ("", "no_box"),
    ("<p>a red circle</p>", "no_box"),
    ("<box><loc_1>", "truncated"),
    ("<box><loc_1></box>", "count"),
    ("<box><loc_1><loc_2><loc_3></box>", "count"),
    ("<box></box>", "count"),
    ("<box><loc_5000><loc_1></box>", "out_of_range"),
    ("<box><loc_1023><loc_0></box>", "reversed"),  # bottom-right cell first
    ("<box><loc_31><loc_32></box>", "reversed"),  # col 31 then col 0: x1 < x0
    ("<box>red<loc_1></box>", "malformed"),
    ("<box><loc_1><p>a</p>", "unclosed"),
]


@pytest.mark.parametrize("text, error", CORNER_CASES)
def test_token_parser_on_malformed_generations(text, error) -> None:
    codec = LocationCodec({"format": "tokens", "token_grid": 32})
    if error == "no_box" and text:
        g = codec.parse_grounded(text)
        assert g.phrases[0].error == "no_box" and g.words == ["a", "red", "circle"]
        assert np.isnan(g.word_boxes).all() and g.failures == 1
    else:
        parsed = codec.decode_box(text)
        assert parsed.box is None and parsed.error == error


def test_axis_tokens_malformed() -> None:
    codec = LocationCodec({"format": "tokens", "token_grid": 32, "token_style": "axis"})
    assert codec.decode_box("<box><loc_1><loc_2></box>").error == "count"
    assert codec.decode_box("<box><loc_1><loc_2><loc_3><loc_32></box>").error == "out_of_range"
    assert codec.decode_box("<box><loc_5><loc_2><loc_3><loc_4></box>").error == "reversed"
    # the wrapper left out: a bare run of location tokens still reads
    assert codec.decode_box("<loc_1><loc_2><loc_3><loc_4>").ok


@pytest.mark.parametrize("name", list(CODECS))
def test_parsers_never_raise(name) -> None:
    codec = LocationCodec(CODECS[name])
    pieces = ["[", "]", ",", "12", "-3", "999999", "a", "red", " ", "<p>", "</p>", "<box>",
              "</box>", "<loc_3>", "<loc_99999>", "<loc_", ">", "<", "[refer]", "\n", "1.5"]
    rng = np.random.default_rng(2)
    for _ in range(1500):
        text = "".join(rng.choice(pieces, size=int(rng.integers(0, 14))))
        parsed = codec.decode_box(text, (1.0, 0.75))
        assert parsed.ok or parsed.error in PARSE_ERRORS
        g = codec.parse_grounded(text, (1.0, 0.75))
        assert g.word_boxes.shape == (len(g.words), 4)
        assert all(p.error is None or p.error in PARSE_ERRORS for p in g.phrases)
    for junk in (None, 3, b"[1,2,3,4]"):
        assert codec.decode_box(junk).error == "no_box"  # type: ignore[arg-type]
        assert codec.parse_grounded(junk).words == []  # type: ignore[arg-type]
    assert codec.decode_box("[1,2,3,4]", (0, 1)).error == "no_box"  # a bad extent


# --------------------------------------------------------------------------- grounded
SEGMENTS = [("in this image there is", None), ("a red circle", [0.1, 0.2, 0.3, 0.5]),
            (",", None), ("a blue square", [0.5, 0.05, 0.9, 0.7]), (".", [np.nan] * 4)]


def test_grounded_markup_per_format() -> None:
    extent = (1.0, 0.75)
    text = LocationCodec({"format": "text"}).grounded_markup(SEGMENTS, extent)
    assert text == "in this image there is a red circle [10,26,30,66] , a blue square [50,6,90,93] ."
    tokens = LocationCodec({"format": "tokens"}).grounded_markup(SEGMENTS, extent)
    assert tokens == ("in this image there is <p>a red circle</p><box><loc_259><loc_681></box> , "
                      "<p>a blue square</p><box><loc_80><loc_956></box> .")
    with pytest.raises(ValueError, match="regression"):
        LocationCodec().grounded_markup(SEGMENTS, extent)


@pytest.mark.parametrize("name", list(CODECS))
def test_grounded_parse_gives_each_word_its_phrase_box(name) -> None:
    codec = LocationCodec(CODECS[name])
    extent = image_extent((640, 480))
    markup = codec.grounded_markup(SEGMENTS, extent)
    tok = add_location_tokens(shapes_tokenizer(), codec)
    decoded = tok.decode(encode_text(tok, markup), skip_special_tokens=True)
    for text in (markup, decoded):
        g = codec.parse_grounded(text, extent)
        assert g.text.replace(" ,", ",").replace(" .", ".") == \
            "in this image there is a red circle, a blue square."
        assert codec.strip(text) == g.text
        tol = half_bin(codec, extent) + 1e-6
        boxes = {w: b for w, b in zip(g.words, g.word_boxes)}
        assert np.all(np.abs(boxes["circle"] - SEGMENTS[1][1]) <= tol)
        assert np.all(np.abs(boxes["square"] - SEGMENTS[3][1]) <= tol)
        np.testing.assert_allclose(g.word_points[g.words.index("red")],
                                   (g.word_boxes[g.words.index("red"), :2]
                                    + g.word_boxes[g.words.index("red"), 2:]) / 2)
        assert len(g.boxes) == 2 and g.failures == 0
        if codec.style == "tokens":  # words outside <p>...</p> have no box
            assert np.isnan(boxes["image"]).all()
            assert [p.phrase for p in g.phrases] == ["a red circle", "a blue square"]
        else:  # a text box belongs to the words since the previous box
            assert g.phrases[0].phrase == "in this image there is a red circle"
            assert np.isfinite(boxes["image"]).all()
        assert np.isnan(g.word_boxes[-1]).all()  # the final "." follows the last box


def test_grounded_parse_keeps_words_of_failed_phrases() -> None:
    codec = LocationCodec({"format": "text"})
    g = codec.parse_grounded("[grounding] a red circle [12,40,33 and a blue square [50,6,90,93]")
    assert g.words == ["a", "red", "circle", "and", "a", "blue", "square"]
    assert [p.error for p in g.phrases] == ["unclosed", None]
    assert np.isnan(g.word_boxes[:3]).all() and np.isfinite(g.word_boxes[3:]).all()
    t = LocationCodec({"format": "tokens"})
    g = t.parse_grounded("<p>a red circle</p><box><loc_1></box> and <p>a blue square</p>"
                         "<box><loc_0><loc_1023></box> <p>a green")
    assert g.words[-2:] == ["a", "green"] and [p.error for p in g.phrases] == ["count", None, "truncated"]
    assert g.failures == 2 and len(g.boxes) == 1


# --------------------------------------------------------------------------- tokenizer
def test_location_tokenizer_extends_without_changing_ids() -> None:
    base = shapes_tokenizer()
    n = len(base)
    text = "in this image there is a large red circle in the top left ."
    for name, cfg in [*CODECS.items(), ("task", {"task_tokens": True})]:
        codec = LocationCodec(cfg)
        tok = add_location_tokens(base, codec)
        assert len(base) == n  # the cached tokenizer is never changed in place
        assert tok.convert_ids_to_tokens(list(range(n))) == base.convert_ids_to_tokens(list(range(n)))
        assert tok(text).input_ids == base(text).input_ids
        assert tok.decode(tok(text).input_ids) == base.decode(base(text).input_ids)
        added = new_token_ids(base, tok)
        assert added == list(range(n, len(tok)))
        for t in location_token_strings(codec):
            ids = tok(t, add_special_tokens=False).input_ids
            assert len(ids) == 1 and ids[0] in added, t
    tok = add_location_tokens(base, LocationCodec({"format": "tokens", "task_tokens": True}))
    ids = tok("[refer] where is a red circle").input_ids
    assert tok.convert_ids_to_tokens(ids)[0] == "[refer]"
    assert tok.decode(ids, skip_special_tokens=True) == "where is a red circle"  # special
    assert "<loc_7>" in tok.decode(tok("<box><loc_7><loc_9></box>").input_ids, skip_special_tokens=True)


def test_tokenizer_for_a_location_config() -> None:
    cfg = PixelLLMConfig.from_name("tiny", {"location": {"format": "tokens", "task_tokens": True}})
    tok = tokenizer_for(cfg)
    assert len(tok) == len(shapes_tokenizer()) + 1024 + 4 + 4


# --------------------------------------------------------------------------- language model
def test_new_tokens_train_under_lora_with_a_frozen_base() -> None:
    from pixelkit.modeling.language_model import LanguageModel, resize_vocab

    lm_cfg = dataclasses.replace(PixelLLMConfig.from_name("tiny").language_model,
                                 freeze_base=True, lora=LoraSettings(r=4))
    n = len(shapes_tokenizer())
    new = list(range(n, n + 11))
    lm = LanguageModel(lm_cfg, vocab_size=n, new_token_ids=new)  # grown from n rows
    assert lm.vocab_size == n + 11
    trainable = [k for k, p in lm.model.named_parameters() if p.requires_grad]
    assert any("trainable_tokens_delta" in k for k in trainable)
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in trainable)
    base = lm._base()
    # T5's decoder reads the same (wrapped) embedding as `shared`
    assert base.decoder.embed_tokens is base.get_input_embeddings()
    prefix, mask = torch.randn(2, 5, lm.hidden_size), torch.ones(2, 5, dtype=torch.long)
    labels = torch.tensor([[3, new[6], 1], [new[1], 4, 1]])
    logits, _ = lm(prefix, mask, labels)
    assert logits.shape[-1] == n + 11
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    grads = {k: p.grad for k, p in lm.model.named_parameters() if "trainable_tokens_delta" in k}
    embed = next(g for k, g in grads.items() if "shared" in k)
    # decoder inputs new[6] and new[1] get gradient through the decoder's embedding
    assert embed[6].abs().sum() > 0 and embed[1].abs().sum() > 0 and embed[0].abs().sum() == 0
    head = next(g for k, g in grads.items() if "lm_head" in k)
    assert head.abs().sum(-1).gt(0).all()  # every new token is scored by the head
    # an incremental decode runs through the wrapped modules
    _, _, state = lm.start(prefix, mask)
    assert lm.step(state, torch.tensor([new[2], 3]))[0].shape == (2, n + 11)
    # resize_vocab grows only
    hf = base
    assert not resize_vocab(hf, 5)


def test_pixel_llm_builds_the_location_vocabulary() -> None:
    from pixelkit.modeling.pixel_llm import PixelLLM

    cfg = PixelLLMConfig.from_name("tiny", {"location": {"format": "tokens"},
                                            "proposal_head": {"enabled": False}})
    model = PixelLLM(cfg)
    tok = tokenizer_for(cfg)
    assert model.language_model.vocab_size == len(tok)
    codec = LocationCodec(cfg.location)
    rows = [make_row(tok, "refer", "a red circle", box=np.array([0.1, 0.2, 0.4, 0.6], np.float32),
                     codec=codec),
            make_row(tok, "caption", "a red circle", codec=codec)]
    from pixelkit.data.encoding import MODEL_KEYS, Example
    batch = collate([Example(torch.rand(3, 64, 64), rows)])
    out = model(batch["images"], **{k: batch[k] for k in MODEL_KEYS})
    assert torch.isfinite(out.losses["text"])
    assert "point" not in out.losses or float(out.losses["point"]) == 0.0


# --------------------------------------------------------------------------- encoding
def _row_bytes(row: Row) -> tuple:
    def b(a):
        return None if a is None else (np.asarray(a).dtype.str, np.asarray(a).shape,
                                       np.asarray(a).tobytes())
    return (row.task, tuple(row.prompt_ids), tuple(row.labels), b(row.point_targets), b(row.box),
            b(row.points), b(row.point_labels))


REG_CALLS = [
    ("caption", "a red circle and a small blue square", {}),
    ("trace", "a red circle", {"token_boxes": np.tile([[0.1, 0.2, 0.3, 0.4]], (3, 1))}),
    ("refer", "the red circle", {"box": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}),
    ("refer", "the red circle", {"box": np.array([0.1, 0.2, 0.3, 0.4], np.float32),
                                 "locate_words": False}),
    ("loca_caption", "a red circle", {"box": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}),
    ("loca_caption", "a red circle", {"box": np.array([0.1, 0.2, 0.3, 0.4], np.float32),
                                      "points": np.array([[0.2, 0.3]], np.float32),
                                      "point_labels": np.array([1])}),
]


@pytest.mark.parametrize("task, text, kw", REG_CALLS)
def test_regression_rows_are_byte_identical(task, text, kw) -> None:
    tok = shapes_tokenizer()
    before = _row_bytes(make_row(tok, task, text, **kw))
    assert _row_bytes(make_row(tok, task, text, codec=None, **kw)) == before
    assert _row_bytes(make_row(tok, task, text, codec=LocationCodec(), extent=(1, 0.75), **kw)) == before
    # the tokens settings of a regression config change nothing either
    quiet = LocationCodec({"format": "regression", "bins": 1000, "token_style": "axis"})
    assert _row_bytes(make_row(tok, task, text, codec=quiet, **kw)) == before


def test_text_and_token_rows() -> None:
    box = np.array([0.12, 0.30, 0.335, 0.4575], np.float32)
    extent = (1.0, 0.75)
    for name in ("text100", "corner32"):
        codec = LocationCodec(CODECS[name])
        tok = add_location_tokens(shapes_tokenizer(), codec)
        refer = make_row(tok, "refer", "the red circle", box=box, codec=codec, extent=extent)
        assert tok.decode(refer.prompt_ids) == "where is the red circle"
        target = tok.decode(refer.labels, skip_special_tokens=True)
        assert target == codec.box_markup(box, extent)
        assert (name != "text100") or target == "[12,40,33,61]"
        assert np.isnan(refer.point_targets).all() and np.isnan(refer.box).all()
        np.testing.assert_allclose(codec.decode_box(target, extent).box, box,
                                   atol=half_bin(codec, extent).max() + 1e-6)
        # region prompts stay with the prompt encoder unless location.prompt is text
        region = make_row(tok, "loca_caption", "a red circle", box=box, codec=codec, extent=extent)
        assert tok.decode(region.prompt_ids) == "region"
        np.testing.assert_array_equal(region.box, box)
        assert tok.decode(region.labels, skip_special_tokens=True) == "a red circle"
        assert np.isnan(region.point_targets).all()
        caption = make_row(tok, "caption", "a red circle", codec=codec)
        assert _row_bytes(caption)[1:3] == _row_bytes(make_row(shapes_tokenizer(), "caption",
                                                               "a red circle"))[1:3]


def test_region_prompt_written_into_text() -> None:
    box = np.array([0.12, 0.30, 0.335, 0.4575], np.float32)
    codec = LocationCodec({"format": "regression", "prompt": "text", "task_tokens": True})
    tok = add_location_tokens(shapes_tokenizer(), codec)
    row = make_row(tok, "loca_caption", "a red circle", box=box, codec=codec, extent=(1.0, 0.75))
    assert tok.decode(row.prompt_ids) == "[identify] region [12,40,33,61]"
    assert np.isnan(row.box).all() and row.points is None  # the encoder sees the whole image
    # regression targets are untouched: every word and the EOS state carry the box
    ref = make_row(shapes_tokenizer(), "loca_caption", "a red circle", box=box)
    assert row.labels == ref.labels
    np.testing.assert_array_equal(row.point_targets, ref.point_targets)
    clicks = make_row(tok, "loca_caption", "a red circle", box=box, codec=codec, extent=(1.0, 0.75),
                      points=np.array([[0.2, 0.3], [0.9, 0.1]], np.float32),
                      point_labels=np.array([1, 0]))
    assert tok.decode(clicks.prompt_ids) == "[identify] region [20,40]"  # positive clicks only
    tcodec = LocationCodec({"format": "tokens", "prompt": "text"})
    ttok = add_location_tokens(shapes_tokenizer(), tcodec)
    trow = make_row(ttok, "loca_caption", "a red circle", box=box, codec=tcodec, extent=(1.0, 0.75))
    assert ttok.decode(trow.prompt_ids) == "region " + tcodec.box_markup(box, (1.0, 0.75))


@pytest.mark.parametrize("task", list(TASK_PROMPTS))
def test_task_identifiers_start_prompts(task) -> None:
    codec = LocationCodec({"task_tokens": True})
    tok = add_location_tokens(shapes_tokenizer(), codec)
    kw = {"box": np.array([0.1, 0.2, 0.3, 0.4], np.float32)} if task in ("refer", "loca_caption") else {}
    row = make_row(tok, task, "a red circle", codec=codec, **kw)
    assert tok.convert_ids_to_tokens(row.prompt_ids)[0] == TASK_IDENTIFIERS[task]
    ref = make_row(shapes_tokenizer(), task, "a red circle", **kw)
    assert row.prompt_ids[1:] == ref.prompt_ids and row.labels == ref.labels


@pytest.mark.parametrize("name", ["text100", "corner32"])
def test_grounded_trace_rows(name) -> None:
    codec = LocationCodec(CODECS[name])
    tok = add_location_tokens(shapes_tokenizer(), codec)
    utterances = ["in", "this", "image", "a", "red", "circle", ",", "a", "blue", "square", "."]
    boxes = np.full((len(utterances), 4), np.nan, np.float32)
    boxes[3:6] = [0.1, 0.2, 0.3, 0.5]
    boxes[7:10] = [0.5, 0.05, 0.9, 0.7]
    row = grounded_row(tok, codec, utterances, boxes, extent=(1.0, 0.75), max_length=200)
    assert tok.decode(row.prompt_ids) == "describe"
    assert np.isnan(row.point_targets).all()
    g = codec.parse_grounded(tok.decode(row.labels, skip_special_tokens=True), (1.0, 0.75))
    assert g.words == utterances and g.failures == 0
    located = np.isfinite(g.word_boxes).all(1)
    if codec.style == "tokens":
        np.testing.assert_array_equal(located, np.isfinite(boxes).all(1))
    np.testing.assert_allclose(g.word_boxes[np.isfinite(boxes).all(1)],
                               boxes[np.isfinite(boxes).all(1)],
                               atol=half_bin(codec, (1.0, 0.75)).max() + 1e-6)
    # a short max_length keeps whole phrases: the target never ends inside a box
    for max_length in range(2, 40):
        short = grounded_row(tok, codec, utterances, boxes, extent=(1.0, 0.75),
                             max_length=max_length)
        assert len(short.labels) <= max_length
        text = tok.decode(short.labels, skip_special_tokens=True)
        assert all(p.error is None for p in codec.parse_grounded(text).phrases), text


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelkit.data.synth import synthesize

    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, num_images=4, image_size=64, seed=3, val_fraction=0.25, progress=False)
    return root


def _dataset(world, task, codec=None, tokenizer=None):
    from pixelkit.data.datamodule import TaskDataset, read_source, shapes_sources
    from pixelkit.data.transforms import SampleTransform

    src = next(s for s in shapes_sources(str(world), "train", [task]) if s.task == task)
    return TaskDataset(read_source(src), task, tokenizer or shapes_tokenizer(),
                       SampleTransform(64), codec=codec, max_text_length=1000)


@pytest.mark.parametrize("task", ["caption", "trace", "refer", "loca_caption", "densecap"])
def test_task_dataset_regression_unchanged(world, task) -> None:
    plain, default = _dataset(world, task), _dataset(world, task, LocationCodec())
    for i in range(len(plain)):
        torch.manual_seed(i)
        a = plain[i]
        torch.manual_seed(i)
        b = default[i]
        assert [_row_bytes(r) for r in a.rows] == [_row_bytes(r) for r in b.rows]


@pytest.mark.parametrize("name", ["text100", "corner32"])
def test_task_dataset_location_rows(world, name) -> None:
    codec = LocationCodec({**CODECS[name], "task_tokens": True})
    tok = add_location_tokens(shapes_tokenizer(), codec)
    refer = _dataset(world, "refer", codec, tok)
    for i in range(len(refer)):
        ex = refer[i]
        extent = tuple(ex.meta["frame"]["image_size"])
        text = tok.decode(ex.rows[0].labels, skip_special_tokens=True)
        parsed = codec.decode_box(text, image_extent(extent))
        assert parsed.ok
        assert tok.convert_ids_to_tokens(ex.rows[0].prompt_ids)[0] == "[refer]"
    trace = _dataset(world, "trace", codec, tok)
    for i in range(len(trace)):
        ex = trace[i]
        row = ex.rows[0]
        assert np.isnan(row.point_targets).all()
        g = codec.parse_grounded(tok.decode(row.labels, skip_special_tokens=True))
        assert g.failures == 0 and len(g.boxes) > 0
        assert " ".join(g.words).replace(" ,", ",").replace(" .", ".") == \
            trace.samples[i].text.replace(" ,", ",").replace(" .", ".")
    batch = collate([trace[0], refer[0]])
    assert batch["point_mask"].sum() == 0 and (batch["labels"] >= len(shapes_tokenizer())).any()


def test_combinations_of_the_switches() -> None:
    box = np.array([0.2, 0.2, 0.6, 0.5], np.float32)
    for fmt, prompt, task_tokens in itertools.product(["regression", "text", "tokens", "regions"],
                                                      ["encoder", "text"], [False, True]):
        codec = LocationCodec({"format": fmt, "prompt": prompt, "task_tokens": task_tokens})
        tok = add_location_tokens(shapes_tokenizer(), codec)
        regions = REGIONS if fmt == "regions" else None
        for task in TASK_PROMPTS:
            row = make_row(tok, task, "a red circle", box=box, codec=codec, regions=regions)
            assert tok.unk_token_id not in row.prompt_ids + row.labels, (fmt, prompt, task)
            assert np.isnan(row.box).all() == (task != "loca_caption" or prompt == "text")
            assert np.array_equal(np.isnan(row.box), np.isnan(NO_BOX)) or task == "loca_caption"


def test_group_phrases_merges_where_the_mouse_stays() -> None:
    from pixelkit.modeling.location import group_phrases

    nan = [np.nan] * 4
    utterances = ["in", "a", "red", "circle", "and", "a", "blue", "square", "here", "."]
    boxes = np.array([
        [0.80, 0.80, 0.90, 0.85],                                     # travel in
        [0.10, 0.10, 0.14, 0.14], [0.12, 0.12, 0.16, 0.16], [0.11, 0.10, 0.15, 0.13],
        [0.15, 0.15, 0.60, 0.60],                                     # travel: too wide to join
        [0.60, 0.60, 0.64, 0.64], [0.61, 0.62, 0.65, 0.66], [0.60, 0.61, 0.63, 0.65],
        nan, nan])                                                    # no location: plain words
    out = group_phrases(utterances, boxes)
    assert [p for p, _ in out] == ["in", "a red circle", "and", "a blue square", "here ."]
    np.testing.assert_allclose(out[1][1], [0.10, 0.10, 0.16, 0.16])   # the union
    assert out[4][1] is None
    # a mouse drifting in small steps is cut once the phrase grows past 6 * radius
    drift = np.array([[x, 0.5, x + 0.02, 0.52] for x in np.arange(0.0, 0.8, 0.04)])
    spans = [b[2] - b[0] for _, b in group_phrases(["w"] * len(drift), drift)]
    assert len(spans) > 1 and max(spans) <= 6 * 0.05 + 1e-9
    with pytest.raises(ValueError, match="utterances"):
        group_phrases(["a"], boxes)


def test_region_parsers_never_raise() -> None:
    codec = LocationCodec({"format": "regions", "num_regions": 4})
    pieces = ["<r1>", "<r3>", "<r99>", "<r", ">", "<p>", "</p>", "a", "red", " ", "<", "r2",
              "<box>", "[1,2,3,4]", "\n"]
    rng = np.random.default_rng(3)
    for _ in range(1000):
        text = "".join(rng.choice(pieces, size=int(rng.integers(0, 12))))
        for regions in (REGIONS, None):
            parsed = codec.decode_box(text, regions=regions)
            assert parsed.ok or parsed.error in PARSE_ERRORS
            g = codec.parse_grounded(text, regions=regions)
            assert g.word_boxes.shape == (len(g.words), 4)


def test_region_tokens_enter_the_lm() -> None:
    """Region tokens (<ri> embedding + RoIAlign-pooled features) sit between the visual
    tokens and the prompt: the loss trains the region encoder, and the answer depends on
    where the proposals are."""
    from pixelkit.data.encoding import MODEL_KEYS, Example
    from pixelkit.modeling.pixel_llm import PixelLLM

    cfg = PixelLLMConfig.from_name("tiny", {"location": {"format": "regions", "num_regions": 4}})
    torch.manual_seed(0)
    model = PixelLLM(cfg)
    tok = tokenizer_for(cfg)
    assert model.region_ids.tolist() == tok.convert_tokens_to_ids(["<r1>", "<r2>", "<r3>", "<r4>"])
    codec = LocationCodec(cfg.location)
    rows = [make_row(tok, "refer", "a red circle", box=REGIONS[1], codec=codec, regions=REGIONS),
            make_row(tok, "caption", "a red circle", codec=codec, regions=REGIONS[:2])]
    assert tok.convert_ids_to_tokens(rows[0].labels)[0] == "<r2>"
    batch = collate([Example(torch.rand(3, 64, 64), rows)])
    assert batch["regions"].shape == (2, 4, 4) and torch.isnan(batch["regions"][1, 2:]).all()
    out = model(batch["images"], **{k: batch[k] for k in MODEL_KEYS})
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.region_encoder.parameters())
    moved = batch["regions"].clone()
    moved[:, 0] = torch.tensor([0.6, 0.05, 0.95, 0.3])
    inputs = {k: batch[k] for k in MODEL_KEYS if k != "regions"}
    with torch.no_grad():
        a = model(batch["images"], regions=batch["regions"], **inputs).logits
        b = model(batch["images"], regions=moved, **inputs).logits
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="num_regions"):
        model.region_tokens(torch.rand(1, 128, 8, 8), torch.rand(1, 5, 4))
    plain = PixelLLM(PixelLLMConfig.from_name("tiny"))
    with pytest.raises(ValueError, match="not 'regions'"):
        plain.region_tokens(torch.rand(1, 128, 8, 8), torch.rand(1, 2, 4))


def test_data_module_region_rows(world) -> None:
    """Training proposals: every object of the image (the split's instances file), the
    referred one always among them; the target names it; the proposal head learns them all."""
    from pixelkit.data.datamodule import PixelDataModule, shapes_sources
    from pixelkit.data.transforms import to_model_boxes

    dm = PixelDataModule(train=shapes_sources(str(world), "train", ["refer", "trace"]),
                         batch_size=2, hflip_prob=0.0, box_jitter=0.0)
    dm.set_location({"format": "regions", "num_regions": 2})
    dm.setup("fit")
    refer, trace = dm.train_set.parts
    objects = dm.image_boxes(dm.train_sources[0])
    assert objects and all(len(b) >= 1 for b in objects.values())
    for i in range(len(refer)):
        torch.manual_seed(i)
        ex, sample = refer[i], refer.samples[i]
        row = ex.rows[0]
        assert 1 <= len(row.regions) <= 2
        assert len(ex.gt_boxes) == len(objects[sample.image_path])
        text = dm.tokenizer.decode(row.labels, skip_special_tokens=True)
        got = dm.codec.decode_box(text, regions=row.regions)
        truth = to_model_boxes(sample.boxes[:1], sample.image_size)[0]
        np.testing.assert_allclose(got.box, truth, atol=1e-5)
    for i in range(len(trace)):
        row = trace[i].rows[0]
        g = dm.codec.parse_grounded(dm.tokenizer.decode(row.labels, skip_special_tokens=True),
                                    regions=row.regions)
        assert g.failures == 0
    batch = dm._collate([refer[0], trace[0]])
    assert batch["regions"].shape[:2] == (2, 2) and len(batch["gt_boxes"]) == 2


def test_region_prompt_written_as_a_region() -> None:
    """``prompt: text`` with ``regions``: the prompt box becomes one of the row's regions
    (an equal proposal is reused) and the prompt names it."""
    codec = LocationCodec({"format": "regions", "num_regions": 4, "prompt": "text"})
    tok = add_location_tokens(shapes_tokenizer(), codec)
    same = make_row(tok, "loca_caption", "a red circle", box=REGIONS[1], codec=codec,
                    regions=REGIONS)
    assert tok.decode(same.prompt_ids) == "region <r2>" and np.isnan(same.box).all()
    np.testing.assert_array_equal(same.regions, REGIONS)
    new = np.array([0.7, 0.05, 0.95, 0.3], np.float32)
    row = make_row(tok, "loca_caption", "a red circle", box=new, codec=codec, regions=REGIONS)
    assert tok.decode(row.prompt_ids) == "region <r4>"            # the padding row
    np.testing.assert_array_equal(row.regions[3], new)
    full = codec.with_region(REGIONS[:3].copy(), new)
    assert full[1] == 3 and len(full[0]) == 4                      # appended (K = 4)
    assert codec.with_region(np.tile(REGIONS[:1], (4, 1)), new)[1] == 3  # replaces the last
    with pytest.raises(ValueError, match="box prompts only"):
        make_row(tok, "loca_caption", "a red circle", points=np.array([[0.2, 0.3]], np.float32),
                 point_labels=np.array([1]), codec=codec, regions=REGIONS)
