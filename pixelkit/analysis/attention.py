"""Where the language model looks when it says a word: one attention map per generated word.

PixelLLM's LM never sees pixels. It reads a prefix of visual tokens, then the text prompt:

::

    prefix = [Q learnable queries ; h*w grid tokens (extractor.image_tokens) ; text prompt]

and each kind of visual token is mapped back to the image grid (h x w cells of the image
encoder) its own way:

* a **grid token** is one cell (tiny preset: the 8 x 8 conv grid);
* a **query** mixes cells through the extractor's final query -> image attention
  (:attr:`PromptFeatureExtractor.final_attn`, averaged over its heads), the attention that
  produced the query's last update before it was projected to the LM.

A word's attention over the prefix, ``a`` (P,), becomes the image map
``m = sum_q a_q E_q + a_grid`` (h*w,), where ``E_q`` is query q's map.

**Reading ``a``.** The attention weights are those ``transformers`` returns
(``output_attentions=True``):

* encoder-decoder (T5): the decoder's cross-attention from the word's state to the encoder
  positions. Encoder position i holds prefix token i after the encoder's self-attention
  has mixed it with the others; ``layers="rollout"`` follows that mixing back to the
  prefix tokens, the other choices read the encoder positions as the tokens;
* causal LM: the self-attention from the word's position to the prefix positions.

The word's state is the one whose *input* is the word's locating token (``read="input"``,
the state the point head reads, :func:`pixelkit.predictor.group_words`); ``read="emit"``
takes the state that emits the token instead (it has not seen the word yet).

**Heads** (``heads``): ``"mean"``, or ``"mean-max"`` (VL-SAM, Lin et al. 2024): head h of
a layer is weighted by the mean over its queries of each query's largest attention weight
(:func:`head_weights`), so a head that attends sharply counts more than one that spreads
its attention. The weights are normalised over the heads of a layer (a weighted mean), so
every row stays a distribution.

**Layers** (``layers``): ``"mean"`` over layers, ``"last"``, one layer by index, or
``"rollout"`` (Abnar & Zuidema 2020, the product VL-SAM takes): the head-combined maps
with the residual path added, ``A' = (1 - r) A + r I`` (r = ``residual``, 0.5), multiplied
bottom up, ``R = A'_L ... A'_1`` (:func:`rollout`). For an encoder-decoder the decoder's
rows are rolled out through the encoder's (:func:`encoder_decoder_rollout`, the
attention-only form of Chefer et al. 2021's rules): a word's row then says how much of its
state comes from each prefix token, the rest coming from the decoder's own tokens.

**What it costs.** ``transformers`` returns attention weights only from its eager
attention (``sdpa`` returns none and warns), so :func:`eager_attention` switches the LM to
eager for the pass and back after it. ``pixelkit bench --only attention`` times one
teacher-forced pass (whole-image prompt, 25-token target) with eager attention returning
every weight against the usual sdpa pass, on one core, in 30 interleaved rounds. Two runs
on this kit's 2-core CPU box: the tiny preset (81 prefix positions) 6.8 -> 7.3 ms and
7.8 -> 8.3 ms, +7.8 % and +7.3 %; a Flan-T5-base shaped LM (tiny image side, 32 queries,
97 positions, random weights) 394 ms either way (+0.2 %, -0.1 %: the feed-forward layers
and the 32k-word head dominate, attention at this length is a small share). The returned
weights are 0.3 MB (tiny) and 7.3 MB (Flan-T5-base: 12 layers x 12 heads x (97^2 encoder +
26^2 decoder + 26 x 97 cross, the target with its EOS) float32); a causal LM keeps ``(P + L)^2`` per head and
layer. Decoding (:meth:`Predictor.caption`) is not affected: the maps come from one extra
teacher-forced pass over the generated tokens, which gives the decode's own states (the
same words and points, up to float rounding).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

__all__ = [
    "HEADS",
    "LAYERS",
    "AttentionPass",
    "WordMaps",
    "attention_pass",
    "cell_centres",
    "combine_heads",
    "eager_attention",
    "encoder_decoder_rollout",
    "head_weights",
    "rollout",
    "visible_cells",
    "word_attention",
    "word_attention_methods",
]

#: How heads are combined: a plain mean, or VL-SAM's mean-max weights.
HEADS = ("mean", "mean-max")
#: How layers are combined (or an int: that layer only).
LAYERS = ("rollout", "mean", "last")

# Switching the attention implementation changes a shared model: one switch at a time
# (the demo serves several users from worker threads).
_EAGER_LOCK = threading.RLock()


# --------------------------------------------------------------------------------------------
# Aggregation over heads and layers (pure tensor functions)
# --------------------------------------------------------------------------------------------


def head_weights(attn: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """VL-SAM's head weights: the mean over queries of each query's largest weight.

    Args:
        attn: ``(..., H, Nq, Nk)`` attention weights (rows sum to 1).
        query_mask: ``(..., Nq)`` 1 for queries that count (padding excluded), or None.

    Returns:
        ``(..., H)`` weights in ``[1 / Nk, 1]``: 1 for a head whose every query puts all
        of its attention on one key, ``1 / Nk`` for a head that attends uniformly.
    """
    peak = attn.amax(-1)                                            # (..., H, Nq)
    if query_mask is None:
        return peak.mean(-1)
    m = query_mask.to(peak.dtype).unsqueeze(-2)                     # (..., 1, Nq)
    return (peak * m).sum(-1) / m.sum(-1).clamp(min=1)


def combine_heads(attn: torch.Tensor, heads: str = "mean",
                  query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One map per layer from its heads.

    Args:
        attn: ``(..., H, Nq, Nk)``.
        heads: ``"mean"`` or ``"mean-max"`` (:func:`head_weights`, normalised over heads).
        query_mask: see :func:`head_weights`.

    Returns:
        ``(..., Nq, Nk)``; rows still sum to 1.
    """
    if heads == "mean":
        return attn.mean(-3)
    if heads != "mean-max":
        raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
    w = head_weights(attn, query_mask)
    w = w / w.sum(-1, keepdim=True)
    return (attn * w[..., :, None, None]).sum(-3)


def _with_residual(attn: torch.Tensor, residual: float) -> torch.Tensor:
    """``(1 - r) A + r I`` for ``(..., N, N)``: the residual path as attention to oneself."""
    eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
    return (1.0 - residual) * attn + residual * eye


def rollout(layers: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout: ``R = A'_L ... A'_1`` with ``A' = (1 - r) A + r I``.

    Args:
        layers: per layer, bottom first, ``(..., N, N)`` head-combined self-attention.
        residual: r, the weight of the residual path.

    Returns:
        ``(..., N, N)``: row i says how much of token i's top state comes from each input
        token (rows sum to 1).
    """
    if not layers:
        raise ValueError("rollout needs at least one layer")
    out = _with_residual(layers[0], residual)
    for attn in layers[1:]:
        out = _with_residual(attn, residual) @ out
    return out


def encoder_decoder_rollout(encoder: Sequence[torch.Tensor], decoder: Sequence[torch.Tensor],
                            cross: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Rollout of an encoder-decoder's decoder rows onto the encoder's *input* tokens.

    The encoder is rolled out on its own, ``R_enc`` (P, P). Each decoder layer then updates
    ``R_dd`` (L, L, from decoder inputs) and ``R_de`` (L, P, from encoder inputs): its
    self-attention ``S' = (1 - r) S + r I`` mixes the decoder rows,
    ``R_dd <- S' R_dd``, ``R_de <- S' R_de``; its cross-attention C adds what it reads from
    the encoder, ``R_de <- r R_de + (1 - r) C R_enc``, ``R_dd <- r R_dd``. The rows of
    ``[R_dd | R_de]`` keep summing to 1.

    Args:
        encoder: per encoder layer ``(..., P, P)``, bottom first.
        decoder: per decoder layer ``(..., L, L)`` self-attention.
        cross: per decoder layer ``(..., L, P)`` cross-attention.
        residual: r.

    Returns:
        ``R_de`` ``(..., L, P)``: row t's share of decoder state t from each encoder input.
    """
    if len(decoder) != len(cross):
        raise ValueError(f"{len(decoder)} decoder self-attention layers but {len(cross)} "
                         "cross-attention layers")
    r_enc = rollout(encoder, residual)                                   # (..., P, P)
    L = decoder[0].shape[-1]
    r_dd = torch.eye(L, dtype=r_enc.dtype, device=r_enc.device).expand(
        *r_enc.shape[:-2], L, L)
    r_de = r_enc.new_zeros(*r_enc.shape[:-2], L, r_enc.shape[-1])
    for self_attn, cross_attn in zip(decoder, cross):
        s = _with_residual(self_attn, residual)
        r_dd, r_de = s @ r_dd, s @ r_de
        r_de = residual * r_de + (1.0 - residual) * cross_attn @ r_enc
        r_dd = residual * r_dd
    return r_de


# --------------------------------------------------------------------------------------------
# One pass with every attention map
# --------------------------------------------------------------------------------------------


def _set_attention(model: Any, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:  # older transformers: the config field every attention layer reads
        model.config._attn_implementation = implementation


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run the PixelLLM's LM with eager attention inside the block (the only implementation
    whose attention weights ``transformers`` returns), then restore the one it had.

    Args:
        model: a :class:`~pixelkit.PixelLLM`.
    """
    base = model.language_model._base()
    with _EAGER_LOCK:
        before = base.config._attn_implementation
        if before != "eager":
            _set_attention(base, "eager")
        try:
            yield
        finally:
            if before != "eager":
                _set_attention(base, before)


@dataclass
class AttentionPass:
    """The attention maps of one teacher-forced pass over B rows.

    Attributes:
        encoder_decoder: the LM is an encoder-decoder (T5) rather than a causal LM.
        self_attentions: per LM layer, ``(B, H, N, N)``: the decoder's self-attention
            (encoder-decoder, N = L) or the causal LM's (N = P + L, prefix first).
        encoder_attentions: per encoder layer ``(B, H, P, P)``, or None (causal).
        cross_attentions: per decoder layer ``(B, H, L, P)``, or None (causal).
        query_image: ``(B, Q, h*w)``: each query's map over the grid (the extractor's final
            query -> image attention, mean over its heads).
        prefix_mask: ``(B, P)`` 1 at real prefix positions.
        target_mask: ``(B, L)`` 1 at real target positions.
        points: ``(B, L, 4)`` the point head's output at each target position.
        num_queries: Q.
        grid: ``(h, w)`` of the image encoder's grid.
        image_tokens: whether the grid tokens are in the prefix (after the queries).
    """

    encoder_decoder: bool
    self_attentions: list[torch.Tensor]
    encoder_attentions: list[torch.Tensor] | None
    cross_attentions: list[torch.Tensor] | None
    query_image: torch.Tensor
    prefix_mask: torch.Tensor
    target_mask: torch.Tensor
    points: torch.Tensor
    num_queries: int
    grid: tuple[int, int]
    image_tokens: bool

    @property
    def num_visual(self) -> int:
        """Visual tokens at the start of the prefix: Q (+ h*w grid tokens)."""
        h, w = self.grid
        return self.num_queries + (h * w if self.image_tokens else 0)

    def prefix_attention(self, row: int, positions: Sequence[int], layers: str | int = "rollout",
                         heads: str = "mean-max", residual: float = 0.5) -> torch.Tensor:
        """Attention from target positions of one row to the prefix positions.

        Args:
            row: the batch row.
            positions: target positions p (0..L-1), e.g. the states of a caption's words.
            layers: :data:`LAYERS` or a layer index.
            heads: :data:`HEADS`.
            residual: the rollout's residual weight.

        Returns:
            ``(len(positions), P)``.
        """
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
        if not (isinstance(layers, int) or layers in LAYERS):
            raise ValueError(f"layers must be one of {LAYERS} or a layer index, got {layers!r}")
        pmask, tmask = self.prefix_mask[row], self.target_mask[row]
        P = pmask.shape[0]
        pos = torch.as_tensor(list(positions), dtype=torch.long)
        if self.encoder_decoder:
            cross = [combine_heads(a[row].float(), heads, tmask) for a in self.cross_attentions]
            if layers == "rollout":
                enc = [combine_heads(a[row].float(), heads, pmask)
                       for a in self.encoder_attentions]
                dec = [combine_heads(a[row].float(), heads, tmask) for a in self.self_attentions]
                return encoder_decoder_rollout(enc, dec, cross, residual)[pos]
            return _pick_layers(cross, layers)[pos]
        seq_mask = torch.cat([pmask, tmask])
        full = [combine_heads(a[row].float(), heads, seq_mask) for a in self.self_attentions]
        rows = pos + P  # target position p is sequence position P + p
        if layers == "rollout":
            return rollout(full, residual)[rows, :P]
        return _pick_layers(full, layers)[rows, :P]

    def image_maps(self, row: int, prefix_attention: torch.Tensor) -> torch.Tensor:
        """Prefix attention ``(n, P)`` as maps over the image grid ``(n, h, w)``."""
        Q, (h, w) = self.num_queries, self.grid
        maps = prefix_attention[:, :Q] @ self.query_image[row].float()         # (n, h*w)
        if self.image_tokens:
            maps = maps + prefix_attention[:, Q:Q + h * w]
        return maps.view(-1, h, w)


def _pick_layers(maps: list[torch.Tensor], layers: str | int) -> torch.Tensor:
    if layers == "mean":
        return torch.stack(maps).mean(0)
    if layers == "last":
        return maps[-1]
    try:
        return maps[int(layers)]
    except IndexError:
        raise ValueError(f"layer {layers} does not exist: the LM has {len(maps)} layers") from None


@torch.no_grad()
def attention_pass(model: Any, features: torch.Tensor, batch: dict[str, Any]) -> AttentionPass:
    """One teacher-forced pass of the model that keeps every attention map.

    Args:
        model: a :class:`~pixelkit.PixelLLM`.
        features: ``(B_img, C, h, w)`` image features.
        batch: collated rows (:func:`pixelkit.data.encoding.collate`): ``image_index``,
            ``boxes``, ``points``, ``point_labels``, ``prompt_ids``, ``prompt_mask``,
            ``labels``.

    Returns:
        :class:`AttentionPass`.
    """
    extractor = model.extractor
    captured: dict[str, torch.Tensor] = {}

    def keep_weights(module: Any, args: tuple, output: Any) -> None:
        q, k, _ = args
        captured["weights"] = module.attention_weights(q, k)   # (B, heads, P_prompt+Q, hw)

    handle = extractor.final_attn.register_forward_hook(keep_weights)
    try:
        with eager_attention(model):
            visual = model.visual_tokens(features, batch["boxes"], batch["points"],
                                         batch["point_labels"], batch["image_index"])
            prefix, mask = model.prefix(visual, batch["prompt_ids"], batch["prompt_mask"])
            labels = batch["labels"]
            out = model.language_model.teacher_forced(prefix, mask, labels,
                                                      output_attentions=True)
    finally:
        handle.remove()
    L = labels.shape[1]
    lm = model.language_model
    if lm.is_encoder_decoder:
        hidden = out.decoder_hidden_states[-1]
        self_attn, enc, cross = (list(out.decoder_attentions), list(out.encoder_attentions),
                                 list(out.cross_attentions))
    else:
        hidden = out.hidden_states[-1][:, -L:]
        self_attn, enc, cross = list(out.attentions), None, None
    if not self_attn:
        raise RuntimeError("the language model returned no attention weights even with eager "
                           f"attention ({type(lm._base()).__name__})")
    Q = extractor.num_queries
    return AttentionPass(
        encoder_decoder=lm.is_encoder_decoder, self_attentions=self_attn,
        encoder_attentions=enc, cross_attentions=cross,
        query_image=captured["weights"][:, :, -Q:].mean(1), prefix_mask=mask,
        target_mask=(labels != -100).long(), points=model.point_head(hidden),
        num_queries=Q, grid=tuple(features.shape[-2:]), image_tokens=extractor.image_tokens)


# --------------------------------------------------------------------------------------------
# The grid over the image
# --------------------------------------------------------------------------------------------


def visible_cells(grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of an ``(h, w)`` grid over the model's padded square that cover the
    image (the image sits top-left, the rest is padding)."""
    h, w = grid
    W, H = image_size
    side = max(W, H)
    return max(1, int(np.ceil(h * H / side - 1e-9))), max(1, int(np.ceil(w * W / side - 1e-9)))


def cell_centres(grid: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """``(h', w', 2)``: the ``(x, y)`` pixel centre of each visible cell's part inside the
    image (a cell cut by the image border: the centre of what is left of it)."""
    h, w = grid
    rows, cols = visible_cells(grid, image_size)
    W, H = image_size
    side = float(max(W, H))

    def centres(n: int, cells: int, limit: float) -> np.ndarray:
        start = np.arange(n) * side / cells
        return (start + np.minimum(start + side / cells, limit)) / 2

    return np.stack(np.meshgrid(centres(cols, w, W), centres(rows, h, H)), -1)


# --------------------------------------------------------------------------------------------
# Per word, from a Predictor
# --------------------------------------------------------------------------------------------


@dataclass
class WordMaps:
    """A caption's words with where the LM looked for each, and where the point head points.

    Attributes:
        caption: the words with the point head's point and box per word (pixels), as
            :meth:`Predictor.caption` gives them.
        maps: ``(n_words, h, w)`` attention mass per cell of the image encoder's grid,
            over the model's padded square (:meth:`image_maps` crops it to the image).
        visual_share: ``(n_words,)`` the share of the word's attention on visual tokens
            (the rest goes to the text prompt and, with rollout, to the decoder's tokens).
        grid_share: ``(n_words,)`` the part of ``visual_share`` on grid tokens (0 without
            them); the rest reached the image through the queries.
        image_size: ``(W, H)`` of the original image.
        layers, heads, read: how the maps were made (see the module docstring).
    """

    caption: Any
    maps: np.ndarray
    visual_share: np.ndarray
    grid_share: np.ndarray
    image_size: tuple[int, int]
    layers: str | int = "rollout"
    heads: str = "mean-max"
    read: str = "input"

    @property
    def words(self) -> list[str]:
        return list(self.caption.words)

    @property
    def points(self) -> np.ndarray:
        """``(n_words, 2)`` the point head's point per word, pixels."""
        return np.asarray(self.caption.points, np.float64).reshape(-1, 2)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.maps.shape[1:])

    def image_maps(self) -> np.ndarray:
        """``(n_words, h', w')``: the maps cropped to the cells that cover the image."""
        rows, cols = visible_cells(self.grid, self.image_size)
        return self.maps[:, :rows, :cols]

    def cell_centres(self) -> np.ndarray:
        """``(h', w', 2)`` pixel centres of the visible cells (:func:`cell_centres`)."""
        return cell_centres(self.grid, self.image_size)

    def peaks(self) -> np.ndarray:
        """``(n_words, 2)`` the pixel centre of each word's highest cell."""
        maps = self.image_maps()
        flat = maps.reshape(len(maps), -1).argmax(1) if len(maps) else np.zeros(0, int)
        return self.cell_centres().reshape(-1, 2)[flat]


def word_attention(predictor: Any, image: Any = None, *, text: str | None = None,
                   task: str | None = None, box: Sequence[float] | None = None,
                   points: Sequence[Sequence[float]] | None = None,
                   labels: Sequence[int] | None = None, layers: str | int = "rollout",
                   heads: str = "mean-max", residual: float = 0.5,
                   read: str = "input") -> WordMaps:
    """Caption an image (or read a given text) and map each word's attention onto the image.

    Args:
        predictor: a :class:`~pixelkit.Predictor`.
        image: an :class:`~pixelkit.predictor.EncodedImage` (default: the predictor's
            current image, :meth:`Predictor.set_image`).
        text: None: generate, as :meth:`Predictor.caption` does with the same prompt (the
            same words and points); a string: teacher-force this text instead (e.g. the
            ground-truth caption, so several models are compared on the same words).
        task, box, points, labels: the prompt, as :meth:`Predictor.caption`.
        layers: :data:`LAYERS` or a layer index.
        heads: :data:`HEADS`.
        residual: the rollout's residual weight.
        read: ``"input"``: the state whose input is the word (the point head's state);
            ``"emit"``: the state that emits it.

    Returns:
        :class:`WordMaps`.
    """
    return word_attention_methods(predictor, {"maps": (layers, heads)}, image, text=text,
                                  task=task, box=box, points=points, labels=labels,
                                  residual=residual, read=read)["maps"]


def word_attention_methods(predictor: Any, methods: dict[str, tuple[str | int, str]],
                           image: Any = None, *, text: str | None = None,
                           task: str | None = None, box: Sequence[float] | None = None,
                           points: Sequence[Sequence[float]] | None = None,
                           labels: Sequence[int] | None = None, residual: float = 0.5,
                           read: str = "input") -> dict[str, WordMaps]:
    """:func:`word_attention` for several ``(layers, heads)`` choices from one pass.

    Args:
        predictor, image, text, task, box, points, labels, residual, read: as
            :func:`word_attention`.
        methods: name -> ``(layers, heads)``, e.g. ``{"VL-SAM": ("rollout", "mean-max"),
            "plain": ("mean", "mean")}``.

    Returns:
        name -> :class:`WordMaps` (the same caption in each).
    """
    from pixelkit.data.encoding import encode_text
    from pixelkit.predictor import caption_result, group_words

    if read not in ("input", "emit"):
        raise ValueError(f"read must be 'input' or 'emit', got {read!r}")
    image = predictor.image if image is None else image
    row = predictor._prompt_row(image, task, box, points, labels)
    if text is None:
        gen = predictor.generate([image], [row], with_points=False)
        ids = gen.tokens[0, : int(gen.lengths[0])].tolist()
    else:
        ids = encode_text(predictor.tokenizer, text)[: predictor.max_text_length - 1]
    eos = int(predictor.model.language_model.eos_id)
    row = replace(row, labels=ids + [eos],
                  point_targets=np.full((len(ids) + 1, 4), np.nan, np.float32))
    batch, features, _ = predictor.collate_rows([image], [row])
    run = attention_pass(predictor.model, features, batch)
    # The location of token k is read from position k + 1 (its input is token k).
    result = caption_result(predictor.tokenizer, ids, run.points[0, 1:len(ids) + 1], image.size)
    _, _, locating = group_words(predictor.tokenizer, ids)
    positions = [k + 1 if read == "input" else k for k in locating]
    out = {}
    for name, (layers, heads) in methods.items():
        if positions:
            attn = run.prefix_attention(0, positions, layers, heads, residual)  # (n, P)
            maps = run.image_maps(0, attn).cpu().numpy()
            visual = attn[:, :run.num_visual].sum(1).cpu().numpy()
            grid = attn[:, run.num_queries:run.num_visual].sum(1).cpu().numpy()
        else:
            maps, visual, grid = np.zeros((0, *run.grid)), np.zeros(0), np.zeros(0)
        out[name] = WordMaps(caption=result, maps=np.asarray(maps, np.float64),
                             visual_share=np.asarray(visual, np.float64),
                             grid_share=np.asarray(grid, np.float64), image_size=image.size,
                             layers=layers, heads=heads, read=read)
    return out
