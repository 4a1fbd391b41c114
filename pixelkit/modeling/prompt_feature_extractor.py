"""Prompt feature extractor: a SAM-style two-way transformer with learnable queries.

Queries are [prompt tokens (P); Q learnable tokens]; keys / values are the image grid
(h * w tokens) with its positional encoding. Each block: self-attention on the queries,
queries -> image cross-attention, an MLP, image -> queries cross-attention (the image
tokens are updated too, hence "two-way"); a final queries -> image attention ends it. The Q
learnable token outputs, projected to the LM width, are the visual tokens f_l (B, Q, D_lm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixelkit.config import ExtractorConfig


class Attention(nn.Module):
    """Multi-head attention whose inner width may be downsampled (SAM)."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q, self.k, self.v = (nn.Linear(dim, inner) for _ in range(3))
        self.out = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, inner) -> (B, heads, N, inner / heads)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, D), k/v (B, Nk, D) -> (B, Nq, D)."""
        B, Nq, _ = q.shape
        o = F.scaled_dot_product_attention(self._heads(self.q(q)), self._heads(self.k(k)),
                                           self._heads(self.v(v)))
        return self.out(o.transpose(1, 2).reshape(B, Nq, -1))

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The softmax weights :meth:`forward` uses (its fused kernel does not return them).

        Args:
            q: (B, Nq, D) the queries as :meth:`forward` receives them.
            k: (B, Nk, D) the keys.

        Returns:
            (B, heads, Nq, Nk), each row summing to 1.
        """
        qh, kh = self._heads(self.q(q)), self._heads(self.k(k))
        scores = qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5  # SDPA's default scale
        return scores.softmax(-1)


class TwoWayBlock(nn.Module):
    """One two-way block (SAM's TwoWayAttentionBlock)."""

    def __init__(self, cfg: ExtractorConfig, skip_first_pe: bool) -> None:
        super().__init__()
        d, h, r = cfg.width, cfg.num_heads, cfg.attention_downsample_rate
        self.self_attn = Attention(d, h)
        self.token_to_image = Attention(d, h, r)
        self.image_to_token = Attention(d, h, r)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))
        self.skip_first_pe = skip_first_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_pe:  # the first block's queries are the raw tokens
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norms[0](queries)
        queries = queries + self.token_to_image(queries + query_pe, keys + key_pe, keys)
        queries = self.norms[1](queries)
        queries = self.norms[2](queries + self.mlp(queries))
        keys = keys + self.image_to_token(keys + key_pe, queries + query_pe, queries)
        keys = self.norms[3](keys)
        return queries, keys


class PromptFeatureExtractor(nn.Module):
    """(image features, prompt tokens) -> visual tokens for the LM.

    Args:
        cfg: extractor config.
        in_channels: channels C of the image encoder's grid.
        lm_width: the language model's hidden size D_lm.
    """

    def __init__(self, cfg: ExtractorConfig, in_channels: int, lm_width: int) -> None:
        super().__init__()
        d = cfg.width
        # 1x1 conv + norm brings any backbone (or concatenation) to the extractor width.
        self.input_proj = nn.Sequential(nn.Conv2d(in_channels, d, 1), nn.GroupNorm(1, d))
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, d) * 0.02)
        self.blocks = nn.ModuleList(TwoWayBlock(cfg, skip_first_pe=(i == 0))
                                    for i in range(cfg.depth))
        self.final_attn = Attention(d, cfg.num_heads, cfg.attention_downsample_rate)
        self.final_norm = nn.LayerNorm(d)
        self.to_lm = nn.Linear(d, lm_width)
        self.image_tokens = cfg.image_tokens
        if cfg.image_tokens:
            self.image_to_lm = nn.Linear(d, lm_width)
        self.num_queries = cfg.num_queries

    def transformer_blocks(self) -> list[nn.Module]:
        """The two-way blocks."""
        return list(self.blocks)

    def forward(self, features: torch.Tensor, prompt_tokens: torch.Tensor,
                dense_pe: torch.Tensor, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Extract visual tokens.

        Args:
            features: (B, C, h, w) image features, one row per prompt; or (B_img, C, h, w)
                with ``image_index``.
            prompt_tokens: (B, P, D) from the prompt encoder.
            dense_pe: (h * w, D) positional encoding of the grid.
            image_index: (B,) image of each prompt: the input projection then runs once per
                image, not once per prompt.

        Returns:
            (B, Q, D_lm) visual tokens, or (B, Q + h * w, D_lm) with ``image_tokens``.
        """
        # contiguous once, per image: as a transposed view, the profiler showed the two-way
        # blocks copying it per prompt row (~20 strided copies a call); wall time moved
        # within noise on the tiny preset.
        keys = self.input_proj(features).flatten(2).transpose(1, 2).contiguous()  # (B_img, hw, D)
        if image_index is not None:
            keys = keys[image_index]                                          # (B, hw, D)
        B = keys.shape[0]
        key_pe = dense_pe.to(keys.dtype).expand(B, -1, -1)                    # (B, hw, D)
        queries = torch.cat([prompt_tokens.to(keys.dtype),
                             self.queries.to(keys.dtype).expand(B, -1, -1)], dim=1)
        query_pe = queries                                                    # (B, P+Q, D)
        for block in self.blocks:
            queries, keys = block(queries, keys, query_pe, key_pe)
        queries = self.final_norm(queries + self.final_attn(queries + query_pe, keys + key_pe, keys))
        visual = self.to_lm(queries[:, -self.num_queries:])                   # (B, Q, D_lm)
        if self.image_tokens:
            visual = torch.cat([visual, self.image_to_lm(keys + key_pe)], dim=1)
        return visual
