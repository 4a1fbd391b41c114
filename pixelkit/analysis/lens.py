"""A logit lens over the visual tokens: which words the image's tokens already "mean".

Each visual token's hidden state at each layer of the stack it goes through is decoded by
the LM's vocabulary head (nostalgebraist 2020, the "logit lens"): the final norm of that
stack, then the head, ``lens_l(x) = head(norm(h_l(x)))``.

* **causal LM** (LLaVA-style): the visual tokens are the first positions of the LM's own
  sequence; the norm is the LM's final norm and the head is its output head, so at the
  last layer the lens *is* the model's output at those positions. The prefix alone is run
  (a causal model's prefix states do not depend on what follows).
* **encoder-decoder (T5)**: the visual tokens go through the *encoder*; the norm is the
  encoder's final norm and the last layer is the encoder's output (what the decoder's
  cross-attention reads), decoded by the decoder's vocabulary head (with T5's output
  scaling, :meth:`LanguageModel.vocab_logits`). Nothing in training asks encoder states
  to be readable by that head, so the lens asks a sharper question here: does the
  encoder's output already sit in the head's word space?

``transformers`` returns ``L + 1`` hidden states: the embeddings (layer 0: the visual
tokens as the extractor made them), then each layer's output, the last one already
normed; the lens applies the final norm to all but that last one. Models with extra
output scaling (Gemma's soft-capping, Cohere's logit scale) are decoded without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["LogitLens", "final_norm", "logit_lens"]

#: Attribute names of the final norm of common ``transformers`` decoder stacks.
_NORM_NAMES = ("norm", "final_layer_norm", "final_layernorm", "ln_f", "final_norm")


def final_norm(lm: Any) -> torch.nn.Module:
    """The final norm of the stack the visual tokens go through.

    Args:
        lm: a :class:`~pixelkit.modeling.language_model.LanguageModel`.

    Returns:
        The encoder's final norm (encoder-decoder) or the LM's final norm (causal).

    Raises:
        ValueError: no final norm under a known name (``norm``, ``ln_f``, ...).
    """
    base = lm._base()
    stack = base.get_encoder() if lm.is_encoder_decoder else base.base_model
    for name in _NORM_NAMES:
        module = getattr(stack, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"no final norm found on {type(stack).__name__} (looked for "
                     f"{', '.join(_NORM_NAMES)}): the logit lens does not know this model")


@dataclass
class LogitLens:
    """The vocabulary head's reading of every visual token at every layer.

    Attributes:
        top_ids: ``(L + 1, N, k)`` the k most likely token ids per layer and visual token
            (layer 0: the visual tokens as they enter the LM), most likely first.
        top_probs: ``(L + 1, N, k)`` their softmax probabilities.
        top_words: the same as strings (``tokenizer.decode`` of each id, stripped).
        num_queries: Q: visual tokens ``[:Q]`` are the queries, the rest the grid tokens.
        grid: ``(h, w)`` of the image encoder's grid.
        image_size: ``(W, H)`` of the original image.
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    top_words: list[list[list[str]]]
    num_queries: int
    grid: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def num_layers(self) -> int:
        """L: the lens has L + 1 readings (the input, then each layer)."""
        return self.top_ids.shape[0] - 1

    @property
    def has_grid_tokens(self) -> bool:
        h, w = self.grid
        return self.top_ids.shape[1] == self.num_queries + h * w

    def grid_ids(self, layer: int) -> np.ndarray:
        """``(h, w)`` the top token id of each grid cell's token at ``layer``.

        Raises:
            ValueError: the model has no grid tokens (queries only).
        """
        if not self.has_grid_tokens:
            raise ValueError("this model's visual tokens are queries only "
                             "(ExtractorConfig.image_tokens is off): there is no grid to draw")
        return self.top_ids[layer, self.num_queries:, 0].reshape(self.grid)

    def grid_words(self, layer: int) -> list[list[str]]:
        """``h`` rows of ``w`` words: the top word of each grid cell at ``layer``."""
        h, w = self.grid
        flat = [self.top_words[layer][self.num_queries + i][0] for i in range(h * w)]
        return [flat[r * w:(r + 1) * w] for r in range(h)]

    def image_words(self, layer: int) -> list[list[str]]:
        """:meth:`grid_words` cropped to the cells that cover the image (a non-square image
        leaves the grid's last rows or columns on padding)."""
        from pixelkit.analysis.attention import visible_cells

        rows, cols = visible_cells(self.grid, self.image_size)
        return [row[:cols] for row in self.grid_words(layer)[:rows]]

    def query_words(self, layer: int) -> list[list[str]]:
        """Per query, its top-k words at ``layer``."""
        return [self.top_words[layer][q] for q in range(self.num_queries)]


@torch.no_grad()
def logit_lens(predictor: Any, image: Any = None, *, task: str | None = None,
               box: Sequence[float] | None = None,
               points: Sequence[Sequence[float]] | None = None,
               labels: Sequence[int] | None = None, top_k: int = 5) -> LogitLens:
    """The logit lens over the visual tokens of one prompt.

    Args:
        predictor: a :class:`~pixelkit.Predictor`.
        image: an :class:`~pixelkit.predictor.EncodedImage` (default: the current one).
        task, box, points, labels: the prompt, as :meth:`Predictor.caption` (the text
            prompt is part of the prefix: T5's encoder states depend on it).
        top_k: words kept per token and layer.

    Returns:
        :class:`LogitLens`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    image = predictor.image if image is None else image
    model = predictor.model
    lm = model.language_model
    row = predictor._prompt_row(image, task, box, points, labels)
    batch, features, _ = predictor.collate_rows([image], [row])
    visual = model.visual_tokens(features, batch["boxes"], batch["points"],
                                 batch["point_labels"], batch["image_index"])
    prefix, mask = model.prefix(visual, batch["prompt_ids"], batch["prompt_mask"])
    base = lm._base()
    if lm.is_encoder_decoder:
        out = base.get_encoder()(inputs_embeds=prefix, attention_mask=mask,
                                 output_hidden_states=True)
    else:
        out = base.base_model(inputs_embeds=prefix, attention_mask=mask,
                              position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                              output_hidden_states=True, use_cache=False)
    states = out.hidden_states                                  # L + 1 of (1, P, D)
    norm = final_norm(lm)
    N = visual.shape[1]
    ids, probs = [], []
    for layer, h in enumerate(states):
        h = h[0, :N]
        if layer < len(states) - 1:  # the last state is already normed by transformers
            h = norm(h)
        p = lm.vocab_logits(h).float().softmax(-1)               # (N, V)
        top = p.topk(min(top_k, p.shape[-1]), dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    top_ids = torch.stack(ids).cpu().numpy()
    tok = predictor.tokenizer
    vocab = {int(i): tok.decode([int(i)]).strip() for i in np.unique(top_ids)}
    words = [[[vocab[int(i)] for i in tokens] for tokens in layer] for layer in top_ids]
    return LogitLens(top_ids=top_ids, top_probs=torch.stack(probs).cpu().numpy(),
                     top_words=words, num_queries=model.extractor.num_queries,
                     grid=tuple(features.shape[-2:]), image_size=image.size)
