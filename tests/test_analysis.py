"""pixelkit.analysis: attention maps per word, attention as SAM prompts, the logit lens.

Hand-built attention stacks check the aggregation arithmetic (answers worked out in the
comments); tiny random models (T5 and causal LMs, the tiny preset) check shapes, that the
maps follow the attention, and the lens's last layer; a tiny shapes world runs the notebook's
two experiments end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_modeling import GPT2, LLAMA, tiny_config

from pixelkit import PixelLLM, Predictor, analysis, viz
from pixelkit.decoding import DecodeOptions
from pixelkit.eval import pointing_counts, pointing_hits

FAMILIES = {"t5": ("seq2seq", None), "llama": ("causal", LLAMA), "gpt2": ("causal", GPT2)}


def _image(w: int = 64, h: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def _predictor(family: str = "t5", sam=None, **overrides) -> Predictor:
    torch.manual_seed(0)
    fam, arch = FAMILIES[family]
    model = PixelLLM(tiny_config(fam, arch, **overrides)).eval()
    # At least 6 tokens: a random model may say EOS first, and then there are no words.
    return Predictor(model, device="cpu", sam=sam,
                     decode_options=DecodeOptions(max_new_tokens=8, min_new_tokens=6))


# --------------------------------------------------------------------------------------------
# Aggregation arithmetic on hand-built stacks
# --------------------------------------------------------------------------------------------


def test_mean_max_head_weights() -> None:
    # One layer, 2 heads, 2 queries, 3 keys.
    # Head 0 attends sharply: rows [1, 0, 0] and [0, 1, 0]: maxima 1 and 1, mean 1.
    # Head 1 attends uniformly: both rows [1/3, 1/3, 1/3]: maxima 1/3, mean 1/3.
    attn = torch.tensor([[[1.0, 0, 0], [0, 1, 0]],
                         [[1 / 3] * 3, [1 / 3] * 3]])                       # (H=2, 2, 3)
    assert torch.allclose(analysis.head_weights(attn), torch.tensor([1.0, 1 / 3]))
    # Normalised over heads: 1 / (4/3) = 0.75 and 0.25. Row 0 of the combined map is
    # 0.75 [1, 0, 0] + 0.25 [1/3, 1/3, 1/3] = [5/6, 1/12, 1/12].
    combined = analysis.combine_heads(attn, "mean-max")
    assert torch.allclose(combined[0], torch.tensor([5 / 6, 1 / 12, 1 / 12]))
    assert torch.allclose(combined.sum(-1), torch.ones(2))  # rows stay distributions
    # The plain mean: row 0 = ([1, 0, 0] + [1/3, 1/3, 1/3]) / 2 = [2/3, 1/6, 1/6].
    assert torch.allclose(analysis.combine_heads(attn, "mean")[0], torch.tensor([2 / 3, 1 / 6, 1 / 6]))
    # A masked query does not count: with only query 1 of head 1 replaced by a sharp row
    # and query 1 masked out, head 1 keeps weight 1/3.
    sharp = attn.clone()
    sharp[1, 1] = torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(analysis.head_weights(sharp, torch.tensor([1, 0])),
                          torch.tensor([1.0, 1 / 3]))
    with pytest.raises(ValueError, match="heads must be"):
        analysis.combine_heads(attn, "max")


def test_rollout_multiplies_layers_bottom_up() -> None:
    # Two tokens. Layer 1: both attend to token 0; layer 2: both attend to token 1.
    a1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # With the residual (r = 0.5): A1' = [[1, 0], [.5, .5]], A2' = [[.5, .5], [0, 1]],
    # R = A2' A1' = [[.5 * 1 + .5 * .5, .5 * .5], [.5, .5]] = [[.75, .25], [.5, .5]].
    r = analysis.rollout([a1, a2])
    assert torch.allclose(r, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    # Order matters: top first would be A1' A2' = [[.5, .5], [.25, .75]].
    assert torch.allclose(analysis.rollout([a2, a1]), torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    # Without the residual it is the plain product A2 A1 = [[1, 0], [1, 0]] ... of rows of A2
    # picking A1's row 1: [[1, 0], [1, 0]].
    assert torch.allclose(analysis.rollout([a1, a2], residual=0.0), a2 @ a1)
    # Batched stacks: (B, N, N) per layer.
    assert analysis.rollout([a1[None].repeat(3, 1, 1), a2[None].repeat(3, 1, 1)]).shape == (3, 2, 2)


def test_encoder_decoder_rollout_by_hand() -> None:
    # Encoder (1 layer, P = 2): both tokens attend to token 1:
    #   R_enc = .5 [[0, 1], [0, 1]] + .5 I = [[.5, .5], [0, 1]].
    enc = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # Decoder (1 layer, L = 1): self-attention [[1]] (S' = [[1]]); cross-attention to
    # encoder position 0 only: C = [[1, 0]].
    dec = torch.tensor([[1.0]])
    cross = torch.tensor([[1.0, 0.0]])
    # R_de = .5 * 0 + .5 * C R_enc = .5 [.5, .5] = [.25, .25]; R_dd = .5: rows sum to 1.
    r = analysis.encoder_decoder_rollout([enc], [dec], [cross])
    assert torch.allclose(r, torch.tensor([[0.25, 0.25]]))
    # Two decoder layers: the second copies the first's rows through its self-attention
    # and adds another .5 C R_enc: R_de = .5 [.25, .25] + .5 [.5, .5] = [.375, .375].
    r2 = analysis.encoder_decoder_rollout([enc], [dec, dec], [cross, cross])
    assert torch.allclose(r2, torch.tensor([[0.375, 0.375]]))
    with pytest.raises(ValueError, match="cross-attention"):
        analysis.encoder_decoder_rollout([enc], [dec, dec], [cross])


# --------------------------------------------------------------------------------------------
# Maps from tiny models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["t5", "llama", "gpt2"])
def test_maps_per_word_have_the_grid_shape(family: str) -> None:
    p = _predictor(family)
    p.set_image(_image(80, 64))
    caption = p.caption()
    assert caption.words  # min_new_tokens: a random model still says something
    attn_impl = p.model.language_model._base().config._attn_implementation
    for layers in ("rollout", "mean", "last", 1):
        for heads in analysis.HEADS:
            maps = analysis.word_attention(p, layers=layers, heads=heads)
            # The same words and points as the caption: the pass reproduces the decode.
            assert maps.words == caption.words
            assert np.allclose(maps.points, caption.points, atol=1e-4)
            n = len(caption.words)
            assert maps.maps.shape == (n, 8, 8)                 # the 8 x 8 grid of the preset
            # 80 x 64 image: rows cover 64 / 80 of the padded square, ceil(6.4) = 7 rows.
            assert maps.image_maps().shape == (n, 7, 8)
            assert ((maps.peaks() >= 0) & (maps.peaks() <= [80, 64])).all()
            assert (maps.maps >= 0).all()
            assert np.allclose(maps.maps.sum((1, 2)), maps.visual_share, atol=1e-5)
            assert ((maps.grid_share > 0) & (maps.grid_share <= maps.visual_share + 1e-6)).all()
    # Eager attention was for the pass only.
    assert p.model.language_model._base().config._attn_implementation == attn_impl


def test_maps_without_grid_tokens_come_through_the_queries() -> None:
    p = _predictor("t5", **{"extractor.image_tokens": False})
    p.set_image(_image())
    maps = analysis.word_attention(p, text="a red circle", layers="mean")
    assert maps.words == ["a", "red", "circle"]
    assert maps.maps.shape == (3, 8, 8)
    assert np.allclose(maps.grid_share, 0.0)
    # Each query map sums to 1 over the grid, so a word's map sums to its visual share.
    assert np.allclose(maps.maps.sum((1, 2)), maps.visual_share, atol=1e-5)


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("layers", ["rollout", "mean"])
def test_attention_put_on_one_cell_peaks_there(family: str, layers: str, monkeypatch) -> None:
    """A model that can see one grid token only (every other prefix position masked): all of
    its attention to the image is on that cell, so the map peaks there."""
    p = _predictor(family)
    model = p.model
    Q = model.extractor.num_queries
    row, col = 2, 5
    prefix = model.prefix

    def one_cell(visual, prompt_ids=None, prompt_mask=None):
        embeds, mask = prefix(visual, prompt_ids, prompt_mask)
        only = torch.zeros_like(mask)
        only[:, Q + row * 8 + col] = 1
        return embeds, only

    monkeypatch.setattr(model, "prefix", one_cell)
    p.set_image(_image())
    maps = analysis.word_attention(p, text="a red circle and a blue square", layers=layers)
    heat = maps.image_maps()
    assert heat.reshape(len(heat), -1).argmax(1).tolist() == [row * 8 + col] * len(heat)
    assert np.allclose(maps.peaks(), [(col + 0.5) * 8, (row + 0.5) * 8])
    assert np.allclose(maps.grid_share, maps.visual_share)  # all of it on the grid token


def test_a_query_reaches_the_image_through_the_extractor(monkeypatch) -> None:
    """Only query 3 visible: the word's map is query 3's extractor attention map."""
    p = _predictor("t5")
    model = p.model
    prefix = model.prefix

    def one_query(visual, prompt_ids=None, prompt_mask=None):
        embeds, mask = prefix(visual, prompt_ids, prompt_mask)
        only = torch.zeros_like(mask)
        only[:, 3] = 1
        return embeds, only

    monkeypatch.setattr(model, "prefix", one_query)
    p.set_image(_image())
    row = p._prompt_row(p.image, None, None, None, None)
    batch, features, _ = p.collate_rows([p.image], [row])
    run = analysis.attention_pass(model, features, batch)
    expected = run.query_image[0, 3].numpy().reshape(8, 8)
    maps = analysis.word_attention(p, text="a red circle", layers="mean")
    for m in maps.maps:
        assert np.allclose(m / m.sum(), expected / expected.sum(), atol=1e-5)
    assert np.allclose(maps.grid_share, 0.0, atol=1e-6)


def test_read_emit_takes_the_state_before_the_word() -> None:
    p = _predictor("t5")
    p.set_image(_image())
    at_input = analysis.word_attention(p, text="a red circle", layers="last", read="input")
    at_emit = analysis.word_attention(p, text="a red circle", layers="last", read="emit")
    # The state that emits word k is the one whose input is word k - 1.
    assert np.allclose(at_emit.maps[1:], at_input.maps[:-1], atol=1e-6)
    with pytest.raises(ValueError, match="read must be"):
        analysis.word_attention(p, read="output")


# --------------------------------------------------------------------------------------------
# Logit lens
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["t5", "llama", "gpt2"])
def test_logit_lens_last_layer_is_the_vocabulary_heads_output(family: str) -> None:
    p = _predictor(family)
    p.set_image(_image())
    lens = analysis.logit_lens(p, top_k=3)
    model, lm = p.model, p.model.language_model
    N = model.extractor.num_queries + 64
    assert lens.top_ids.shape == (3, N, 3)  # the input and the 2 layers of each tiny LM
    row = p._prompt_row(p.image, None, None, None, None)
    batch, features, _ = p.collate_rows([p.image], [row])
    with torch.no_grad():
        visual = model.visual_tokens(features, batch["boxes"], image_index=batch["image_index"])
        prefix, mask = model.prefix(visual, batch["prompt_ids"], batch["prompt_mask"])
        base = lm._base()
        if family == "t5":
            # What the decoder reads (the encoder's output), through the vocabulary head.
            enc = base.get_encoder()(inputs_embeds=prefix, attention_mask=mask)
            logits = lm.vocab_logits(enc.last_hidden_state)
        else:
            # The causal LM's own logits at the visual positions.
            logits = base(inputs_embeds=prefix, attention_mask=mask).logits
    probs = logits[0, :N].float().softmax(-1)
    top = probs.topk(3)
    # The lens's words have the head's probabilities, and they are the head's top 3 (a
    # random model's near-ties may come in another order, hence the probabilities).
    assert np.allclose(np.take_along_axis(probs.numpy(), lens.top_ids[-1], 1),
                       lens.top_probs[-1], atol=1e-5)
    assert np.allclose(lens.top_probs[-1], top.values.numpy(), atol=1e-5)
    grid = lens.grid_words(lens.num_layers)
    assert len(grid) == 8 and all(len(r) == 8 for r in grid)
    assert grid[0][0] == p.tokenizer.decode([int(top.indices[model.extractor.num_queries, 0])]).strip()
    assert len(lens.query_words(0)) == model.extractor.num_queries


def test_logit_lens_without_grid_tokens_has_no_grid() -> None:
    p = _predictor("t5", **{"extractor.image_tokens": False})
    p.set_image(_image())
    lens = analysis.logit_lens(p, top_k=1)
    assert lens.top_ids.shape[1] == p.model.extractor.num_queries
    with pytest.raises(ValueError, match="queries only"):
        lens.grid_ids(0)


# --------------------------------------------------------------------------------------------
# Attention as prompts
# --------------------------------------------------------------------------------------------


def _hand_maps(heat: np.ndarray, size=(64, 64)) -> analysis.WordMaps:
    from pixelkit.predictor import CaptionResult

    caption = CaptionResult(text="red", words=["red"], points=[(20.0, 30.0)],
                            boxes=[(18.0, 28.0, 22.0, 32.0)])
    return analysis.WordMaps(caption=caption, maps=heat[None], visual_share=np.ones(1),
                             grid_share=np.ones(1), image_size=size)


def test_attention_prompts_peak_positive_and_spread_negatives() -> None:
    heat = np.full((8, 8), 0.5)
    heat[3, 4] = 1.0                      # the peak: cell (3, 4), centre (36, 28)
    heat[0, 0], heat[0, 1], heat[7, 7] = 0.0, 0.01, 0.02   # lowest cells; (0, 1) is next to (0, 0)
    points, labels = analysis.attention_prompts(_hand_maps(heat), 0, n_positive=1, n_negative=2)
    assert labels.tolist() == [1, 0, 0]
    # Positive at the peak; negatives at the lowest cell and at the lowest one at least two
    # cells from it: (0, 1) is skipped for (7, 7).
    assert np.allclose(points, [(36, 28), (4, 4), (60, 60)])
    with pytest.raises(IndexError):
        analysis.attention_prompts(_hand_maps(heat), 1)


def test_attention_to_points_to_tiny_sam_gives_a_mask_of_the_image_size(tiny_sam) -> None:
    p = _predictor("t5", sam=tiny_sam)
    p.set_image(_image(90, 50))
    maps = analysis.word_attention(p)
    masks = analysis.word_masks(p, maps, 0, n_negative=2)
    assert set(masks) == {"attention", "point head"}
    for m in masks.values():
        assert m.mask.shape == (50, 90) and m.mask.dtype == bool
        assert ((m.points >= 0) & (m.points <= [90, 50])).all()
    assert masks["attention"].labels.tolist() == [1, 0, 0]
    assert np.allclose(masks["point head"].points, maps.points[:1])
    # The point prompt goes through SAM's own decoder: the same as asking it directly.
    direct = p.mask_from_points(masks["attention"].points, masks["attention"].labels)
    assert np.array_equal(direct, masks["attention"].mask)
    without = _predictor("t5")
    without.set_image(_image(90, 50))
    with pytest.raises(RuntimeError, match="SAM"):
        without.mask_from_points([(10, 10)])
    with pytest.raises(ValueError, match="outside"):
        p.mask_from_points([(95, 10)])


# --------------------------------------------------------------------------------------------
# The shapes-world experiments and the pictures
# --------------------------------------------------------------------------------------------


def test_pointing_hits_per_word() -> None:
    objects = [((0, 0, 10, 10), {"red", "circle", "small"}), ((20, 20, 40, 40), {"blue", "square"})]
    words = ["a", "red", "circle", "blue", "▁Square,"]
    points = [(5, 5), (5, 5), (30, 30), (30, 30), (5, 5)]
    assert pointing_hits(words, points, objects) == [None, True, False, True, False]
    assert pointing_counts(words, points, objects) == (2, 4)
    assert analysis.object_word_indices(words) == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    from pixelkit.data.synth import synthesize

    root = tmp_path_factory.mktemp("world")
    synthesize(root, num_images=10, image_size=64, seed=3, val_fraction=0.5, progress=False)
    return root


@pytest.mark.parametrize("text", analysis.TEXTS)
def test_agreement_on_a_tiny_world(tiny_world: Path, text: str) -> None:
    p = _predictor("t5")
    result = analysis.agreement(p, tiny_world, limit=3, text=text)
    assert result.images == 3 and result.text == text
    summary = result.summary()
    assert [r["method"] for r in summary] == list(analysis.DEFAULT_METHODS)
    for r in summary:
        if text != "generated":  # ground-truth texts always name colours and shapes
            assert r["words"] >= 6
        for key in ("attention peak in box", "point head in box", "chance (cells)",
                    "chance (area)"):
            assert r["words"] == 0 or 0.0 <= r[key] <= 1.0
    for rec in result.records:
        assert rec["word"] in {"red", "green", "blue", "yellow", "purple", "orange", "circle",
                               "square", "triangle"}
        # A generated word may name a colour the image lacks: no object, chance 0, a miss.
        assert (0 < rec["area_chance"] < 1) if text != "generated" else rec["area_chance"] < 1
    with pytest.raises(ValueError, match="text must be"):
        analysis.agreement(p, tiny_world, text="narratives")


def test_lens_share_on_a_tiny_world(tiny_world: Path) -> None:
    p = _predictor("t5")
    share = analysis.lens_share(p, tiny_world, limit=3)
    assert share.images == 3 and share.cells > 0 and share.background_cells > 0
    assert len(share.match) == 3  # the input and the encoder's 2 layers
    for m, c, s, a in zip(share.match, share.colour, share.shape, share.any_attribute):
        assert 0 <= c <= m <= min(a, c + s + 1e-9) and s <= m and a <= 1
    assert all(0 <= v <= 1 for v in share.location)
    assert [r["layer"] for r in share.table()] == [0, 1, 2]
    # Location words from the box centre, as the world's narratives say them (64 px side).
    assert analysis.location_words((0, 0, 10, 10), (64, 64)) == {"left", "top"}
    assert analysis.location_words((50, 27, 60, 37), (64, 64)) == {"right"}
    assert analysis.location_words((27, 27, 37, 37), (64, 64)) == {"center"}


def test_pictures(tiny_sam, tmp_path) -> None:
    p = _predictor("t5", sam=tiny_sam)
    image = Image.fromarray(_image(80, 64))
    p.set_image(image)
    maps = analysis.word_attention(p)
    grid = viz.draw_word_maps(image, maps.words, maps.image_maps(), maps.points, maps.peaks(),
                              cols=4, size=96)
    assert grid.width > 4 * 96
    one = viz.draw_word_map(image, maps.image_maps()[0], (255, 0, 0), point=maps.points[0],
                            peak=maps.peaks()[0], min_side=128, title="a")
    assert one.size == (160, 128)
    assert viz.draw_word_maps(image, [], []).size[0] > 0
    lens = analysis.logit_lens(p)
    words = lens.image_words(1)
    assert len(words) == 7 and all(len(r) == 8 for r in words)  # 80 x 64: 7 rows cover it
    assert viz.draw_lens_grid(image, words, title="layer 1").size == (560, 448)
    masks = analysis.word_masks(p, maps, 0)
    m = masks["attention"]
    assert viz.draw_prompted_mask(image, m.mask, m.points, m.labels).size == (320, 256)
    out = viz.line_plot({"a": [0.1, 0.2, 0.3]}, tmp_path / "curve.png", xlabel="layer",
                        ylabel="share", hlines={"chance": 0.1})
    assert Image.open(out).size[0] > 100
