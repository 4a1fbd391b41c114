"""Every PixelLLM component and the whole model, with tiny configs on the CPU.

Shapes are stated in each test; B = prompts, L = target length, V = vocabulary.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch
from transformers.activations import GELUTanh, NewGELUActivation

from pixelkit import PixelLLM, PixelLLMConfig
from pixelkit.config import BackboneConfig, ImageEncoderConfig, LanguageModelConfig
from pixelkit.decoding import greedy_decode
from pixelkit.modeling.image_encoder import ImageEncoder
from pixelkit.modeling.language_model import LanguageModel, fuse_gelu
from pixelkit.modeling.losses import centernet_focal, point_l1, text_loss
from pixelkit.modeling.prompt_encoder import PAD, PromptEncoder, pack_prompts
from pixelkit.modeling.prompt_feature_extractor import PromptFeatureExtractor
from pixelkit.modeling.proposal_head import ProposalHead
from pixelkit.modeling.trainable import parameter_summary, set_trainable

S = 64  # tiny preset input side

# Tiny decoder-only LMs on the shapes tokenizer (39 ids).
LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}


def tiny_config(family: str = "seq2seq", arch: dict | None = None, **overrides) -> PixelLLMConfig:
    """The tiny preset, optionally with a causal LM."""
    if family == "causal":
        overrides["language_model.family"] = "causal"
        overrides["language_model.name"] = "tiny-causal"
        overrides["language_model.arch"] = arch or LLAMA
        overrides["language_model.lora"] = {"r": 0}
    return PixelLLMConfig.from_name("tiny", **overrides)


def batch(B: int = 3, L: int = 6, V: int = 39) -> dict[str, torch.Tensor]:
    """Random targets with ragged lengths (padding at the end of rows 1 and 2)."""
    labels = torch.randint(3, V, (B, L))
    lengths = torch.tensor([L, L - 2, L - 3])[:B]
    for b, n in enumerate(lengths):
        labels[b, n - 1] = 1  # EOS
        labels[b, n:] = -100
    mask = (labels != -100).long()
    mask[:, 0] = 0  # position 0's input is the start token: no location
    return {"labels": labels, "point_targets": torch.rand(B, L, 4), "point_mask": mask}


# --------------------------------------------------------------------------- configs
def test_presets_build_tiny_quickly() -> None:
    t = time.perf_counter()
    model = PixelLLM(PixelLLMConfig.from_name("tiny"))
    assert time.perf_counter() - t < 5.0  # < 1 s on an idle core; slack for a busy CI box
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


@pytest.mark.parametrize("name", ["tiny", "base", "paper"])
def test_preset_configs_round_trip(name: str) -> None:
    cfg = PixelLLMConfig.from_name(name)
    assert PixelLLMConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.name == name


def test_paper_preset_matches_the_paper() -> None:
    cfg = PixelLLMConfig.from_name("paper")
    sam, eva = cfg.image_encoder.backbones
    assert (sam.kind, sam.name, sam.frozen) == ("sam", "facebook/sam-vit-huge", True)
    assert eva.name.startswith("eva02_large_patch14_448") and not eva.frozen
    assert cfg.image_size == 384 and cfg.extractor.num_queries == 32
    assert cfg.language_model.name == "google/flan-t5-xl"
    assert cfg.language_model.lora.r == 32 and cfg.language_model.lora.target_modules == ["q", "v"]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: PixelLLMConfig.from_name("huge"), ["unknown preset", "'tiny'", "'paper'"]),
        (lambda: BackboneConfig(name="vit_nonexistent_patch99"), ["BackboneConfig.name", "timm"]),
        (lambda: PixelLLMConfig.from_name("tiny", **{"prompt_encoder.embed_dim": 96}),
         ["PromptEncoderConfig.embed_dim=96", "ExtractorConfig.width=128"]),
        (lambda: PixelLLMConfig.from_name("tiny", **{"extractor.num_heads": 3}),
         ["ExtractorConfig.num_heads=3", "width=128"]),
        (lambda: LanguageModelConfig(family="rnn"), ["LanguageModelConfig.family", "seq2seq"]),
        (lambda: PixelLLMConfig.from_name("tiny", **{"proposal_head.scales": [3.0]}),
         ["ProposalHeadConfig.scales", "power of two"]),
        (lambda: PixelLLMConfig.from_dict({"image_sise": 64}), ["unknown field", "image_sise"]),
        (lambda: PixelLLMConfig.from_name("tiny", **{"nope.depth": 2}), ["nope"]),
    ],
)
def test_bad_configs_name_the_field(make, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        make()
    for w in words:
        assert w in str(err.value)


# --------------------------------------------------------------------------- components
def test_timm_encoder_grid_and_backward() -> None:
    enc = ImageEncoder(PixelLLMConfig.from_name("tiny").image_encoder, S)
    f = enc(torch.rand(2, 3, S, S))
    assert f.shape == (2, 96, 8, 8)  # (B, C, 64/8, 64/8): test_resnet at output stride 8
    f.mean().backward()
    assert all(p.grad is not None for p in enc.parameters())  # no unused head/norm


def test_frozen_batchnorm_backbone_keeps_its_statistics() -> None:
    """A new frozen backbone is in eval mode from the start: its BatchNorm running statistics
    are the source's, not drifted by the batches of a training run (Lightning does not call
    .train() at fit start, and a new module is in train mode)."""
    cfg = PixelLLMConfig.from_name("tiny").image_encoder
    cfg = ImageEncoderConfig(backbones=[dataclasses.replace(cfg.backbones[0], frozen=True)])
    enc = ImageEncoder(cfg, S)
    assert not enc.backbones[0].training
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc(torch.rand(2, 3, S, S))
    assert any("running_mean" in k for k in before)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())


def test_two_backbones_resized_and_concatenated(tiny_sam_vision: dict) -> None:
    cfg = ImageEncoderConfig(backbones=[
        BackboneConfig(kind="sam", name="tiny-sam", kwargs=tiny_sam_vision, frozen=True),
        BackboneConfig(name="convnext_atto", kwargs={"dims": (8, 16, 24, 32)}),
    ])
    enc = ImageEncoder(cfg, S)
    assert enc.grid_size == 4  # SAM patch 16 at 64 px
    f = enc(torch.rand(2, 3, S, S))
    assert f.shape == (2, 16 + 32, 4, 4)  # SAM neck channels + ConvNeXt last stage
    enc.train()
    assert enc.training and not enc.backbones[0].training  # frozen SAM stays in eval mode
    assert enc.backbones[1].training
    f.sum().backward()
    assert all(p.grad is None for p in enc.backbones[0].parameters())


def test_prompt_encoder_boxes_points_and_default() -> None:
    pe = PromptEncoder(32)
    # box for sample 0; two clicks (one negative) for sample 1; nothing for sample 2
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [float("nan")] * 4, [float("nan")] * 4])
    points = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.3, 0.3], [0.7, 0.2]], [[0.0, 0.0]] * 2])
    labels = torch.tensor([[PAD, PAD], [1, 0], [PAD, PAD]])
    coords, plabels = pack_prompts(3, boxes, points, labels)
    assert coords.shape == (3, 6, 2) and plabels.shape == (3, 6)  # 2 box + 2 points + 2 default
    assert plabels[0].tolist() == [2, 3, PAD, PAD, PAD, PAD]
    assert plabels[1].tolist() == [PAD, PAD, 1, 0, PAD, PAD]
    assert plabels[2].tolist() == [PAD, PAD, PAD, PAD, 2, 3]  # whole-image box
    assert coords[2, 4:].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    tokens = pe(coords, plabels)
    assert tokens.shape == (3, 6, 32)
    assert torch.equal(tokens[0, 2], pe.not_a_point.detach()) or torch.allclose(
        tokens[0, 2], pe.not_a_point)
    tokens.sum().backward()
    assert pe.type_embed.weight.grad is not None
    coords, plabels = pack_prompts(2)  # no prompt at all
    assert plabels.tolist() == [[2, 3], [2, 3]]


def test_extractor_shapes() -> None:
    cfg = copy.deepcopy(PixelLLMConfig.from_name("tiny").extractor)
    cfg.image_tokens = False
    ext = PromptFeatureExtractor(cfg, in_channels=48, lm_width=96)
    pe = PromptEncoder(cfg.width)
    f = torch.rand(2, 48, 8, 8)
    tokens = pe(*pack_prompts(2))
    v = ext(f, tokens, pe.dense_pe(8, 8))
    assert v.shape == (2, cfg.num_queries, 96)  # (B, Q, D_lm)
    v.sum().backward()
    assert ext.queries.grad is not None
    cfg2 = copy.deepcopy(cfg)
    cfg2.image_tokens = True
    v2 = PromptFeatureExtractor(cfg2, 48, 96)(f, tokens, pe.dense_pe(8, 8))
    assert v2.shape == (2, cfg.num_queries + 64, 96)  # + h*w grid tokens


def test_visual_tokens_with_image_index_equal_per_prompt_features() -> None:
    """Five prompts over two images: projecting each image once, then indexing, gives the
    tokens of features copied per prompt (and the gradient reaches the same weights)."""
    model = PixelLLM(tiny_config()).eval()
    feats = model.encode_image(torch.rand(2, 3, S, S))                    # (2, C, h, w)
    index = torch.tensor([0, 1, 1, 0, 1])
    boxes = torch.rand(5, 4).sort(dim=1).values[:, [0, 1, 2, 3]]
    boxes[2] = float("nan")                                              # no box on row 2
    with torch.no_grad():
        per_prompt = model.visual_tokens(feats[index], boxes)
        shared = model.visual_tokens(feats, boxes, image_index=index)
    assert shared.shape == per_prompt.shape
    torch.testing.assert_close(shared, per_prompt, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,arch", [("seq2seq", None), ("causal", LLAMA), ("causal", GPT2)])
def test_lm_adapter_forward_and_cached_steps_agree(family: str, arch: dict | None) -> None:
    lm_cfg = tiny_config(family, arch).language_model
    lm = LanguageModel(lm_cfg).eval()
    D = lm.hidden_size
    prefix = torch.randn(2, 5, D)
    prefix_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # row 1: 2 padded positions
    labels = torch.tensor([[5, 6, 7, 1], [8, 9, 1, -100]])
    logits, hidden = lm(prefix, prefix_mask, labels)
    assert logits.shape == (2, 4, lm.vocab_size) and hidden.shape == (2, 4, D)
    # Incremental decoding with a KV cache reproduces the teacher-forced states.
    with torch.no_grad():
        l0, h0, state = lm.start(prefix, prefix_mask)
        torch.testing.assert_close(l0, logits[:, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(h0, hidden[:, 0], atol=1e-4, rtol=1e-4)
        for t in range(2):
            lt, ht = lm.step(state, labels[:, t])
            torch.testing.assert_close(lt, logits[:, t + 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ht, hidden[:, t + 1], atol=1e-4, rtol=1e-4)


def test_fused_gelu_matches_transformers_new_gelu() -> None:
    """LanguageModel swaps T5's NewGELUActivation for GELUTanh: same outputs as the HF model
    as transformers builds it (the two activations differ by float rounding only)."""
    lm = LanguageModel(tiny_config().language_model).eval()
    assert not any(isinstance(m, NewGELUActivation) for m in lm.modules())
    assert any(isinstance(m, GELUTanh) for m in lm.modules())
    reference = copy.deepcopy(lm)
    blocks = [*reference.model.encoder.block, *reference.model.decoder.block]
    for block in blocks:
        block.layer[-1].DenseReluDense.act = NewGELUActivation()  # transformers' own choice
    prefix, mask = torch.randn(2, 5, lm.hidden_size), torch.ones(2, 5, dtype=torch.long)
    labels = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 1]])
    with torch.no_grad():
        for a, b in zip(lm(prefix, mask, labels), reference(prefix, mask, labels)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fuse_gelu(reference) == len(blocks)


def test_point_head_range_and_losses() -> None:
    model = PixelLLM(tiny_config())
    pts = model.point_head(torch.randn(4, 7, model.language_model.hidden_size) * 100)
    assert pts.shape == (4, 7, 4) and pts.min() >= 0 and pts.max() <= 1
    # losses on hand-checked values
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    assert text_loss(logits, torch.tensor([[0, -100]]), 0.0).item() == pytest.approx(
        torch.log(1 + torch.exp(torch.tensor(-2.0))).item())
    pred = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    tgt = torch.tensor([[[0.25, 0.5, 0.75, 0.5], [float("nan")] * 4]])
    assert point_l1(pred, tgt, torch.tensor([[1, 0]])).item() == pytest.approx(0.125)  # (.25+.25)/4
    # "row": row 0 has one position with error 0.125, row 1 three positions with error 0.5
    # -> token mean (0.125 + 3 * 0.5) / 4 = 0.40625, row mean (0.125 + 0.5) / 2 = 0.3125
    pred2 = torch.cat([pred, torch.full((1, 2, 4), 0.5)], 0)
    pred2 = torch.cat([pred2, torch.full((2, 2, 4), 0.5)], 1)          # (2, 4, 4)
    tgt2 = torch.zeros(2, 4, 4)
    tgt2[0, 0] = torch.tensor([0.25, 0.5, 0.75, 0.5])
    mask2 = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    assert point_l1(pred2, tgt2, mask2).item() == pytest.approx(0.40625)
    assert point_l1(pred2, tgt2, mask2, "row").item() == pytest.approx(0.3125)
    heat = torch.full((1, 4, 4), -10.0)
    heat[0, 1, 1] = 10.0
    target = torch.zeros(1, 4, 4)
    target[0, 1, 1] = 1.0
    assert centernet_focal(heat, target, 1).item() < 1e-3  # confident and right


def test_proposal_head_train_and_decode() -> None:
    cfg = PixelLLMConfig.from_name("tiny").proposal_head
    head = ProposalHead(128, cfg)
    f = torch.rand(2, 128, 8, 8)
    outs = head(f)
    assert [o["heatmap"].shape[-1] for o in outs] == [16, 8, 4]  # scales 2, 1, 0.5
    assert outs[0]["boxes"].shape == (2, 16, 16, 4)
    gt = [torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.05, 0.05, 0.95, 0.95]]), torch.zeros(0, 4)]
    losses = head.loss(outs, gt)
    assert set(losses) == {"heatmap", "box_l1", "giou"}
    sum(losses.values()).backward()
    dets = head.decode(head(f), score_threshold=0.0, max_detections=5)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4 and len(dets[0]["boxes"]) <= 5
    assert (dets[0]["scores"][:-1] >= dets[0]["scores"][1:]).all()
    # side 0.2 spans 3.2 / 1.6 / 0.8 cells at 16 / 8 / 4 -> closest to 4 cells on level 0;
    # side 0.9 spans 14.4 / 7.2 / 3.6 cells -> level 2
    assert head.assign_level(gt[0], [16, 8, 4]).tolist() == [0, 2]


def test_proposal_head_learns_one_scene() -> None:
    """A few dozen steps on one image: the top proposal lands on the object."""
    torch.manual_seed(0)
    cfg = PixelLLMConfig.from_name("tiny").proposal_head
    head = ProposalHead(8, cfg)
    f = torch.zeros(1, 8, 8, 8)
    f[0, :, 2:4, 2:4] = 1.0  # the "object" occupies cells 2-3
    gt = [torch.tensor([[0.25, 0.25, 0.5, 0.5]])]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = sum(head.loss(head(f), gt).values())
        loss.backward()
        opt.step()
    from torchvision.ops import box_iou

    top = head.decode(head(f), score_threshold=0.0)[0]["boxes"][:1]
    assert box_iou(top, gt[0]).item() > 0.5


# --------------------------------------------------------------------------- whole model
PROMPTS = {
    "box": lambda B: {"boxes": torch.tensor([[0.1, 0.1, 0.6, 0.5]]).repeat(B, 1)},
    "points": lambda B: {"points": torch.rand(B, 2, 2),
                         "point_labels": torch.tensor([[1, 0]]).repeat(B, 1)},
    "none": lambda B: {},
}


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
@pytest.mark.parametrize("prompt", ["box", "points", "none"])
def test_whole_model_forward_backward(family: str, prompt: str) -> None:
    model = PixelLLM(tiny_config(family))
    B, L = 3, 6
    images = torch.rand(2, 3, S, S)
    image_index = torch.tensor([0, 1, 1])  # three prompts over two images
    prompt_ids = torch.tensor([[34, 30, 5], [34, 30, 0], [34, 0, 0]])
    out = model(images, image_index=image_index, prompt_ids=prompt_ids,
                prompt_mask=(prompt_ids != 0).long(), **PROMPTS[prompt](B), **batch(B, L),
                gt_boxes=[torch.tensor([[0.1, 0.1, 0.4, 0.4]]), torch.zeros(0, 4)])
    V = model.language_model.vocab_size
    assert out.logits.shape == (B, L, V)
    assert out.points.shape == (B, L, 4)
    assert out.points.min() >= 0 and out.points.max() <= 1
    assert set(out.losses) == {"text", "point", "heatmap", "box_l1", "giou"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_padding_does_not_change_losses(family: str) -> None:
    model = PixelLLM(tiny_config(family)).eval()
    images = torch.rand(3, 3, S, S)
    b = batch()
    ref = model(images, **b)
    # 1) garbage in padded / masked slots
    b2 = {k: v.clone() for k, v in b.items()}
    b2["point_targets"][b["point_mask"] == 0] = 123.0
    out2 = model(images, **b2)
    # 2) extra padding columns
    b3 = {"labels": torch.cat([b["labels"], torch.full((3, 4), -100)], 1),
          "point_targets": torch.cat([b["point_targets"], torch.rand(3, 4, 4)], 1),
          "point_mask": torch.cat([b["point_mask"], torch.zeros(3, 4, dtype=torch.long)], 1)}
    out3 = model(images, **b3)
    # 3) a padded text prompt vs the same prompt without padding (row 0 only)
    p1 = model(images[:1], prompt_ids=torch.tensor([[34, 30]]), **{k: v[:1] for k, v in b.items()})
    p2 = model(images[:1], prompt_ids=torch.tensor([[34, 30, 0, 0]]),
               prompt_mask=torch.tensor([[1, 1, 0, 0]]), **{k: v[:1] for k, v in b.items()})
    for name in ("text", "point"):
        torch.testing.assert_close(out2.losses[name], ref.losses[name])
        torch.testing.assert_close(out3.losses[name], ref.losses[name])
        torch.testing.assert_close(p1.losses[name], p2.losses[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_point_head_does_not_change_generated_text(family: str) -> None:
    model = PixelLLM(tiny_config(family)).eval()
    # A few steps on a fixed caption so decoding produces real words, not one id.
    images = torch.rand(2, 3, S, S)
    labels = torch.tensor([[21, 3, 9, 32, 21, 5, 10, 33, 1], [21, 4, 11, 33, 1] + [-100] * 4])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        model(images, labels=labels).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pre, mask = model.prefix(model.visual_tokens(model.encode_image(images)))
        with_pts = greedy_decode(model, pre, mask, max_new_tokens=12, with_points=True)
        without = greedy_decode(model, pre, mask, max_new_tokens=12, with_points=False)
    assert torch.equal(with_pts.tokens, without.tokens)
    assert torch.equal(with_pts.lengths, without.lengths)
    assert with_pts.points.shape == (2, 12, 4) and without.points is None
    assert len(set(with_pts.tokens[0, : with_pts.lengths[0]].tolist())) > 1


def test_paper_style_lora_freezes_the_base_lm() -> None:
    cfg = tiny_config(**{
        "language_model.freeze_base": True,
        "language_model.lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "v"]},
        "image_encoder.backbones": [{**PixelLLMConfig.from_name("tiny").image_encoder
                                     .backbones[0].__dict__, "frozen": True}],
    })
    model = PixelLLM(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert ("lora_" in name or name.startswith(("extractor.", "point_head.", "proposal_head.",
                                                     "prompt_encoder."))), name
    assert any("lora_A" in n for n in trainable) and any(n.startswith("extractor.") for n in trainable)
    base = {n: p.detach().clone() for n, p in model.language_model.named_parameters()
            if "lora_" not in n}
    enc = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(torch.rand(2, 3, S, S), **batch(2))
    out.loss.backward()
    opt.step()
    for n, p in model.language_model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), f"base LM weight {n} changed"
    for n, p in model.image_encoder.named_parameters():
        assert torch.equal(p, enc[n])
    rows = {r.component: r for r in parameter_summary(model)}
    assert rows["language_model"].trainable > 0 and rows["language_model"].frozen > 0
    assert rows["image_encoder"].trainable == 0


def test_set_trainable_patterns() -> None:
    model = PixelLLM(tiny_config())
    set_trainable(model, trainable=["extractor.*", "point_head.*"], frozen=["extractor.to_lm.*"])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("extractor.", "point_head.")) for n in names)
    assert not any(n.startswith("extractor.to_lm") for n in names)
    with pytest.raises(ValueError, match="matches no parameter"):
        set_trainable(model, trainable=["extracter.*"])
