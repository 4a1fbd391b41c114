"""Decoding with per-token points.

Greedy decoding over a key/value cache (:meth:`LanguageModel.start` / ``step``). At each
step the LM's final hidden state emits the next token; the point head reads the *same*
state, which has as input the previous token -- so the location of generated token
``y_t`` is the point of step ``t + 1`` (DESIGN.md section 1), and the step that emits EOS
gives the location of the last word, which is also the referring box. The point head never
feeds back into the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pixelkit.modeling.pixel_llm import PixelLLM


@dataclass
class Generation:
    """Decoded rows (B of them).

    Attributes:
        tokens: (B, T) generated ids, EOS excluded, padded with the pad id.
        lengths: (B,) number of generated tokens before EOS.
        points: (B, T, 4) location of each generated token (rows past ``lengths`` are 0),
            or None when points were not requested.
        eos_points: (B, 4) the point of the step that emitted EOS (the referring box).
        scores: (B,) sum of token log-probabilities (EOS included).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    points: torch.Tensor | None
    eos_points: torch.Tensor | None
    scores: torch.Tensor


@torch.no_grad()
def greedy_decode(model: PixelLLM, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                  max_new_tokens: int = 32, with_points: bool = True) -> Generation:
    """Greedy decoding with a key/value cache.

    Args:
        model: the PixelLLM.
        prefix: (B, P, D) visual tokens + embedded text prompt (:meth:`PixelLLM.prefix`).
        prefix_mask: (B, P).
        max_new_tokens: longest output (EOS excluded).
        with_points: run the point head (it never changes the tokens).

    Returns:
        :class:`Generation`.
    """
    lm = model.language_model
    B, device = prefix.shape[0], prefix.device
    logits, hidden, state = lm.start(prefix, prefix_mask)
    tokens = torch.full((B, max_new_tokens), lm.pad_id, dtype=torch.long, device=device)
    points = torch.zeros(B, max_new_tokens, 4, device=device) if with_points else None
    eos_points = torch.zeros(B, 4, device=device) if with_points else None
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    scores = torch.zeros(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens + 1):
        if with_points and t > 0:
            # This state's input is token t-1: its location.
            p = model.point_head(hidden)
            points[:, t - 1] = torch.where(done[:, None], points[:, t - 1], p)
        if t == max_new_tokens:
            break
        logp = torch.log_softmax(logits.float(), dim=-1)
        nxt = logp.argmax(dim=-1)
        scores = scores + torch.where(done, 0.0, logp.gather(1, nxt[:, None])[:, 0])
        is_eos = (nxt == lm.eos_id) & ~done
        if with_points and is_eos.any():
            eos_points[is_eos] = model.point_head(hidden[is_eos])
        lengths = torch.where(is_eos, torch.full_like(lengths, t), lengths)
        done = done | is_eos
        tokens[:, t] = torch.where(done, torch.full_like(nxt, lm.pad_id), nxt)
        if done.all():
            break
        logits, hidden = lm.step(state, tokens[:, t])
    if with_points:
        # Rows that hit max length without EOS: the last state stands in for the EOS step.
        no_eos = lengths == max_new_tokens
        eos_points[no_eos] = points[no_eos, max_new_tokens - 1]
        valid = torch.arange(max_new_tokens, device=device)[None] < lengths[:, None]
        points = points * valid[..., None]
    return Generation(tokens, lengths, points, eos_points, scores)
