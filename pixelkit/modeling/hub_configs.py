"""Architectures of the hub models the presets name, so they build with no network.

``pixelkit info --preset paper`` builds the paper's model on the meta device to count its
parameters; with no network, ``AutoConfig.from_pretrained("google/flan-t5-xl")`` cannot run,
so the architecture fields of the preset models are kept here (copied from each model's
``config.json`` on the hub). With network or a local directory, the hub's own config is
used and this table is not consulted.
"""

from __future__ import annotations

from typing import Any

_T5_COMMON: dict[str, Any] = {
    "model_type": "t5",
    "vocab_size": 32128,
    "d_kv": 64,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "google/flan-t5-small": {**_T5_COMMON, "d_model": 512, "d_ff": 1024, "num_heads": 6,
                             "num_layers": 8, "num_decoder_layers": 8},
    "google/flan-t5-base": {**_T5_COMMON, "d_model": 768, "d_ff": 2048, "num_heads": 12,
                            "num_layers": 12, "num_decoder_layers": 12},
    "google/flan-t5-large": {**_T5_COMMON, "d_model": 1024, "d_ff": 2816, "num_heads": 16,
                             "num_layers": 24, "num_decoder_layers": 24},
    "google/flan-t5-xl": {**_T5_COMMON, "d_model": 2048, "d_ff": 5120, "num_heads": 32,
                          "num_layers": 24, "num_decoder_layers": 24},
    # SAM: only the vision encoder is used as a backbone.
    "facebook/sam-vit-huge": {"vision_config": {
        "hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
        "mlp_dim": 5120, "global_attn_indexes": [7, 15, 23, 31], "output_channels": 256,
        "image_size": 1024, "patch_size": 16, "window_size": 14, "qkv_bias": True,
        "use_rel_pos": True, "use_abs_pos": True, "layer_norm_eps": 1e-6}},
    "facebook/sam-vit-large": {"vision_config": {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "mlp_dim": 4096, "global_attn_indexes": [5, 11, 17, 23], "output_channels": 256,
        "image_size": 1024, "patch_size": 16, "window_size": 14}},
    "facebook/sam-vit-base": {"vision_config": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "mlp_dim": 3072, "global_attn_indexes": [2, 5, 8, 11], "output_channels": 256,
        "image_size": 1024, "patch_size": 16, "window_size": 14}},
}


def known_config(name: str, section: str | None = None) -> dict[str, Any] | None:
    """The stored architecture of a hub model (or one ``section`` of it), else ``None``."""
    cfg = KNOWN_CONFIGS.get(name)
    if cfg is None:
        return None
    return dict(cfg[section]) if section else dict(cfg)
