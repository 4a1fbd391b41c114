"""Pretrained-weight loading: tiny models saved to a temp dir and loaded back through the
exact function a user calls with a hub name; and `pixelkit info` counts on the meta device."""

from __future__ import annotations

import pytest
import torch

from pixelkit.cli import main
from pixelkit.config import BackboneConfig, LanguageModelConfig, PixelLLMConfig
from pixelkit.modeling.image_encoder import build_backbone, save_timm_weights
from pixelkit.modeling.language_model import LanguageModel, load_language_model
from pixelkit.modeling.tokenizer import load_tokenizer, shapes_tokenizer


def test_t5_saved_and_loaded_by_path(tmp_path) -> None:
    cfg = PixelLLMConfig.from_name("tiny").language_model
    model = load_language_model(cfg)
    model.save_pretrained(tmp_path / "t5")
    shapes_tokenizer().save_pretrained(tmp_path / "t5")
    user = LanguageModelConfig(family="seq2seq", name=str(tmp_path / "t5"), pretrained=True)
    loaded = load_language_model(user)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    # ... and through the adapter with LoRA, the way the presets use it
    lm = LanguageModel(LanguageModelConfig(family="seq2seq", name=str(tmp_path / "t5"),
                                           pretrained=True, lora={"r": 4, "target_modules": ["q", "v"]}))
    assert lm.vocab_size == len(shapes_tokenizer())
    tok = load_tokenizer(str(tmp_path / "t5"))
    assert tok("a red circle").input_ids == shapes_tokenizer()("a red circle").input_ids


@pytest.mark.parametrize("arch", [
    {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2},
    {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
     "num_attention_heads": 2, "num_key_value_heads": 1},
])
def test_causal_lm_saved_and_loaded_by_path(tmp_path, arch) -> None:
    cfg = LanguageModelConfig(family="causal", name="x", arch=arch, tokenizer="shapes", lora={"r": 0})
    model = load_language_model(cfg)
    model.save_pretrained(tmp_path / "lm")
    loaded = LanguageModel(LanguageModelConfig(family="causal", name=str(tmp_path / "lm"),
                                               pretrained=True, freeze_base=True))
    assert loaded.is_encoder_decoder is False
    ref = model.state_dict()
    for n, p in loaded.model.state_dict().items():
        assert torch.equal(p, ref[n]), n
    assert not any(p.requires_grad for p in loaded.parameters())  # base frozen, no LoRA


def test_family_mismatch_is_reported(tmp_path) -> None:
    cfg = LanguageModelConfig(family="causal", name="x", arch={"model_type": "gpt2", "n_embd": 32,
                              "n_layer": 1, "n_head": 2}, tokenizer="shapes")
    load_language_model(cfg).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="decoder-only"):
        LanguageModel(LanguageModelConfig(family="seq2seq", name=str(tmp_path / "lm"), pretrained=True))


def test_sam_saved_and_loaded_by_path(tmp_path, tiny_sam_vision) -> None:
    from transformers import SamConfig, SamModel

    sam = SamModel(SamConfig(vision_config=tiny_sam_vision,
                             prompt_encoder_config={"hidden_size": 16, "image_size": 64,
                                                    "patch_size": 16},
                             mask_decoder_config={"hidden_size": 16, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "mlp_dim": 32,
                                                  "iou_head_hidden_dim": 16}))
    sam.save_pretrained(tmp_path / "sam")
    backbone = build_backbone(BackboneConfig(kind="sam", name=str(tmp_path / "sam"),
                                             pretrained=True), image_size=64).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = sam.vision_encoder(pixel_values=(x - backbone.mean) / backbone.std).last_hidden_state
        torch.testing.assert_close(backbone(x), expected)
    # At another input size the position tables are resized, not re-initialised.
    bigger = build_backbone(BackboneConfig(kind="sam", name=str(tmp_path / "sam"), pretrained=True,
                                           image_size=96), image_size=64).eval()
    assert bigger(torch.rand(1, 3, 64, 64)).shape == (1, 16, 6, 6)
    torch.testing.assert_close(bigger.encoder.patch_embed.projection.weight,
                               sam.vision_encoder.patch_embed.projection.weight)


def test_timm_weights_saved_and_loaded_from_file(tmp_path) -> None:
    cfg = PixelLLMConfig.from_name("tiny").image_encoder.backbones[0]
    first = build_backbone(cfg, 64).eval()
    path = save_timm_weights(first, tmp_path / "vit.safetensors")
    again = build_backbone(BackboneConfig(kind="timm", name=cfg.name, kwargs=cfg.kwargs,
                                          weights=str(path)), 64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), first(x))
    fresh = build_backbone(cfg, 64).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), first(x))  # the load really happened


def test_info_paper_counts_on_meta(capsys) -> None:
    assert main(["info", "--preset", "paper", "--depth", "3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert "built on meta" in out

    def billions(text: str) -> float:
        return float(text[:-1]) * {"B": 1.0, "M": 1e-3, "K": 1e-6}[text[-1]]

    sam_line = next(line for line in out.splitlines() if "(SamBackbone)" in line)
    eva_line = next(line for line in out.splitlines() if "(TimmBackbone)" in line)
    assert abs(billions(sam_line.split()[2]) - 0.63) < 0.01      # SAM ViT-H image encoder
    assert abs(billions(eva_line.split()[2]) - 0.30) < 0.01      # EVA02-L
    lm = rows["language_model"]                                   # trainable / frozen / total
    assert abs(billions(lm[2]) - 2.85) < 0.01                     # frozen = Flan-T5-XL
    assert abs(billions(lm[1]) - 0.0189) < 0.001                  # LoRA r=32 on q, v


def test_info_tiny_and_help(capsys) -> None:
    assert main(["info", "--preset", "tiny", "--materialize"]) == 0
    assert "prompt_encoder" in capsys.readouterr().out
    assert main([]) == 0
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
