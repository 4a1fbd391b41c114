"""Decoding with per-token points: greedy and beam search, with or without a key/value cache.

The loop is our own, over :meth:`LanguageModel.start` / :meth:`LanguageModel.step`, rather
than ``transformers``' ``generate``: ``generate`` would have to be taught to run the point
head on every state and to carry the points through its beam bookkeeping, while the
manual loop keeps tokens, points and beams in one place. Both LM families (T5-style
encoder-decoder and decoder-only causal LMs) decode through the same loop; beam search
reorders the key/value cache with :meth:`DecodeState.reorder` (``Cache.reorder_cache``,
checked for T5's ``EncoderDecoderCache`` and the causal ``DynamicCache``).

**Point convention** (DESIGN.md section 1). At each step the LM's final hidden state emits
the next token; the point head reads the *same* state, whose input is the previous token.
So the location of generated token ``y_t`` is the point of step ``t + 1`` (the state that
has seen ``y_t``), and the step that emits EOS gives the location of the last word, which
is also the referring box. A row that reaches ``max_new_tokens`` without EOS is fed its
last token once more so that this token gets its location too (with ``with_points=False``
that extra step is skipped). The point head never feeds back into the tokens, so the
decoding states are kept (per beam, reordered with the beams) and the point head runs once
on all of them at the end: one batched MLP call instead of one small call per step.

**Uncached decoding** (``use_cache=False``) recomputes the whole sequence at every step
with the teacher-forced :meth:`LanguageModel.forward` and reads its last position: the
same numbers as the cached path up to float rounding. It exists to check the cache
(tests) and to measure it (``pixelkit bench``).

**Batching.** Rows are independent prompts (e.g. many boxes of one image, whose image
features were computed once, see :class:`~pixelkit.predictor.Predictor`). Greedy decoding
drops rows from the batch (and from the cache) as soon as they emit EOS, so a batch costs
what its longest row costs, not ``rows x max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pixelkit.modeling.language_model import LanguageModel
from pixelkit.modeling.pixel_llm import PixelLLM

__all__ = [
    "DecodeOptions",
    "Generation",
    "beam_search",
    "decode",
    "greedy_decode",
]


@dataclass
class Generation:
    """Decoded rows (B of them).

    Attributes:
        tokens: (B, T) generated ids, EOS excluded, padded with the pad id
            (``T = max_new_tokens``).
        lengths: (B,) number of generated tokens before EOS.
        points: (B, T, 4) location (x0, y0, x1, y1, normalised model frame) of each
            generated token; rows past ``lengths`` are 0. None when points were not
            requested.
        eos_points: (B, 4) the point of the step that emitted EOS (the referring box; for
            a row cut at ``max_new_tokens``, the point of its last token), or None.
        scores: (B,) sum of token log-probabilities (EOS included when emitted).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    points: torch.Tensor | None
    eos_points: torch.Tensor | None
    scores: torch.Tensor


@dataclass
class DecodeOptions:
    """How to decode.

    Attributes:
        max_new_tokens: longest output, EOS excluded.
        min_new_tokens: EOS is forbidden before this many tokens (``min_new_tokens =
            max_new_tokens`` decodes exactly that many, as the benches do).
        num_beams: 1 for greedy decoding, more for beam search.
        length_penalty: beam search ranks finished hypotheses by
            ``sum log p / length ** length_penalty`` (length counts EOS): > 0 favours
            longer outputs, 0 is the plain sum. Greedy decoding ignores it.
        use_cache: decode with the key/value cache (False: recompute every step).
        with_points: run the point head.
    """

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    use_cache: bool = True
    with_points: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"DecodeOptions.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"DecodeOptions.min_new_tokens must be in [0, max_new_tokens="
                             f"{self.max_new_tokens}], got {self.min_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"DecodeOptions.num_beams must be >= 1, got {self.num_beams}")


# --------------------------------------------------------------------------------------------
# Steppers: one decoding step, cached or not
# --------------------------------------------------------------------------------------------


class _Stepper(Protocol):
    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, V) and hidden (N, D) of the state after the start token."""

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed (N,) tokens; logits (N, V) and hidden (N, D) of the new state."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep / repeat rows ``index`` (N',): beam reordering and finished rows."""


class _CachedStepper:
    """Incremental decoding over the LM's key/value cache."""

    def __init__(self, lm: LanguageModel, prefix: torch.Tensor, prefix_mask: torch.Tensor) -> None:
        self.lm, self.prefix, self.prefix_mask = lm, prefix, prefix_mask
        self.state = None

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden, self.state = self.lm.start(self.prefix, self.prefix_mask)
        return logits, hidden

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm.step(self.state, tokens)

    def reorder(self, index: torch.Tensor) -> None:
        self.state.reorder(index)


class _UncachedStepper:
    """Recomputes the whole sequence each step with the teacher-forced forward pass."""

    def __init__(self, lm: LanguageModel, prefix: torch.Tensor, prefix_mask: torch.Tensor) -> None:
        self.lm, self.prefix, self.prefix_mask = lm, prefix, prefix_mask
        self.ids = torch.zeros(prefix.shape[0], 0, dtype=torch.long, device=prefix.device)

    def _last(self) -> tuple[torch.Tensor, torch.Tensor]:
        # labels = [y_0 .. y_{t-1}, filler]: the decoder input is [start, y_0 .. y_{t-1}], so
        # the last position is the state whose input is y_{t-1}. The filler is never an input.
        filler = torch.full_like(self.ids[:, :1], self.lm.pad_id)
        labels = torch.cat([self.ids, filler], dim=1)
        logits, hidden = self.lm(self.prefix, self.prefix_mask, labels)
        return logits[:, -1], hidden[:, -1]

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._last()

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        return self._last()

    def reorder(self, index: torch.Tensor) -> None:
        self.prefix, self.prefix_mask = self.prefix[index], self.prefix_mask[index]
        self.ids = self.ids[index]


def _stepper(model: PixelLLM, prefix: torch.Tensor, prefix_mask: torch.Tensor,
             use_cache: bool) -> _Stepper:
    cls = _CachedStepper if use_cache else _UncachedStepper
    return cls(model.language_model, prefix, prefix_mask)


def _log_probs(logits: torch.Tensor, eos_id: int, allow_eos: bool) -> torch.Tensor:
    """(N, V) logits -> float32 log-probabilities, EOS masked out while too short."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if not allow_eos:
        logp[:, eos_id] = float("-inf")
    return logp


# --------------------------------------------------------------------------------------------
# Greedy
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_decode(model: PixelLLM, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                  max_new_tokens: int = 32, with_points: bool = True, *,
                  min_new_tokens: int = 0, use_cache: bool = True) -> Generation:
    """Greedy decoding with per-token points.

    Args:
        model: the PixelLLM.
        prefix: (B, P, D) visual tokens + embedded text prompt (:meth:`PixelLLM.prefix`).
        prefix_mask: (B, P).
        max_new_tokens: longest output (EOS excluded).
        with_points: run the point head (it never changes the tokens).
        min_new_tokens: EOS is not allowed before this many tokens.
        use_cache: key/value cache (False: recompute the sequence every step).

    Returns:
        :class:`Generation`.
    """
    lm = model.language_model
    B, T, device = prefix.shape[0], max_new_tokens, prefix.device
    tokens = torch.full((B, T), lm.pad_id, dtype=torch.long, device=device)
    lengths = torch.full((B,), T, dtype=torch.long, device=device)
    scores = torch.zeros(B, device=device)
    rows = torch.arange(B, device=device)  # original row of each still-decoding slot
    stepper = _stepper(model, prefix, prefix_mask, use_cache)
    logits, hidden = stepper.start()
    # The state after t generated tokens (the one emitting token t) of the live rows, kept
    # for one point-head call at the end.
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t in range(T + 1):
        if with_points:
            kept.append((rows, hidden))
        if t == T:
            break
        logp = _log_probs(logits, lm.eos_id, allow_eos=t >= min_new_tokens)
        best, nxt = logp.max(dim=-1)
        scores[rows] += best
        is_eos = nxt == lm.eos_id
        tokens[rows, t] = torch.where(is_eos, lm.pad_id, nxt)
        if is_eos.any():
            lengths[rows[is_eos]] = t
            keep = (~is_eos).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            # Finished rows leave the batch (and the cache): later steps cost only live rows.
            stepper.reorder(keep)
            rows, nxt = rows[keep], nxt[keep]
        if t == T - 1 and not with_points:
            break  # the extra step only gives the last token its location
        logits, hidden = stepper.step(nxt)
    states = None
    if with_points:
        if all(len(r) == B for r, _ in kept):  # no row ended early: one stack
            states = torch.stack([h for _, h in kept], dim=1)
        else:
            states = hidden.new_zeros(B, len(kept), hidden.shape[-1])
            for t, (r, h) in enumerate(kept):
                states[r, t] = h
    points, eos_points = _points(model, states, lengths, T)
    return Generation(tokens, lengths, points, eos_points, scores)


def _points(model: PixelLLM, states: torch.Tensor | None, lengths: torch.Tensor,
            max_new_tokens: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One point-head call over all decoding states.

    Args:
        states: (B, S, D) with S <= max_new_tokens + 1: ``states[:, t]`` is the state whose
            input is token t - 1 (t = 0: the start token); or None (no points wanted).
        lengths: (B,) generated tokens per row (< S).
        max_new_tokens: T, the width of the returned points.

    Returns:
        points (B, T, 4): ``points[:, t]`` from ``states[:, t + 1]``, zero from ``lengths``
        on; eos_points (B, 4): from ``states[:, lengths]``, the state that emitted EOS (for a
        row cut at the maximum length, the state after its last token).
    """
    if states is None:
        return None, None
    B, S = states.shape[:2]
    # The point head never feeds back into decoding, so running it once on all states is
    # exact, and much cheaper than one small call per step.
    p = model.point_head(states)                                                # (B, S, 4)
    points = p.new_zeros(B, max_new_tokens, 4)
    valid = torch.arange(S - 1, device=p.device)[None] < lengths[:, None]
    points[:, : S - 1] = p[:, 1:] * valid[..., None]
    eos_points = p[torch.arange(B, device=p.device), lengths]
    return points, eos_points


# --------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------


@dataclass
class _Hypothesis:
    """A finished beam: its tokens (n,), its states (n + 1, D) for the point head, scores."""

    score: float          # length-normalised, for ranking
    logprob: float        # sum of token log-probabilities
    tokens: torch.Tensor
    states: torch.Tensor | None


@torch.no_grad()
def beam_search(model: PixelLLM, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                num_beams: int = 4, max_new_tokens: int = 32, with_points: bool = True, *,
                length_penalty: float = 1.0, min_new_tokens: int = 0,
                use_cache: bool = True) -> Generation:
    """Beam search with per-token points carried through every beam reordering.

    Each row keeps ``num_beams`` live beams. At every step the ``2 * num_beams`` best
    continuations are ranked by summed log-probability; an EOS among the best
    ``num_beams`` closes a hypothesis (its EOS point is the point of the state that
    emitted EOS), the others refill the beams. Hypotheses are ranked by
    ``sum log p / length ** length_penalty`` (length counts EOS). A row stops, as in
    ``transformers``' default (``early_stopping=False``), once it holds ``num_beams``
    hypotheses and the best live beam, scored at its current length, cannot beat the
    worst of them; at ``max_new_tokens`` its live beams become hypotheses without EOS.
    With ``num_beams=1`` this is exactly greedy decoding.

    Args:
        model: the PixelLLM.
        prefix: (B, P, D) visual tokens + embedded text prompt.
        prefix_mask: (B, P).
        num_beams: beams per row (K).
        max_new_tokens: longest output (EOS excluded).
        with_points: run the point head.
        length_penalty: exponent of the length normalisation.
        min_new_tokens: EOS is not allowed before this many tokens.
        use_cache: key/value cache (False: recompute the sequence every step).

    Returns:
        :class:`Generation` with the best hypothesis of each row.
    """
    lm = model.language_model
    B, K, T, device = prefix.shape[0], num_beams, max_new_tokens, prefix.device
    stepper = _stepper(model, prefix, prefix_mask, use_cache)
    logits, hidden = stepper.start()
    # Beams of row b live in slots b*K .. b*K+K-1. The prefix is encoded once per row and
    # the cache expanded, rather than encoding K copies.
    expand = torch.arange(B, device=device).repeat_interleave(K)
    stepper.reorder(expand)
    logits, hidden = logits[expand], hidden[expand]
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = float("-inf")  # K identical beams at first: let only one expand
    seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    # Each beam's decoding states (the point head runs once at the end, on the winners);
    # reordered with the beams, so every beam keeps its own points.
    states = hidden.new_zeros(B * K, 0, hidden.shape[-1]) if with_points else None
    finished: list[list[_Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B

    def close(b: int, slot: int, logprob: float, n: int, with_eos: bool) -> None:
        length = n + int(with_eos)
        norm = logprob / (max(length, 1) ** length_penalty)
        hyps = finished[b]
        if len(hyps) == K and norm <= hyps[-1].score:
            return
        hyps.append(_Hypothesis(norm, logprob, seqs[slot].clone(),
                                states[slot].clone() if states is not None else None))
        hyps.sort(key=lambda h: -h.score)  # best first; keep the best K
        del hyps[K:]

    for t in range(T + 1):
        if states is not None:  # the state whose input is each beam's token t-1
            states = torch.cat([states, hidden[:, None]], dim=1)
        if t == T:
            flat = beam_scores.view(-1).tolist()
            for b in range(B):
                if not done[b]:
                    for k in range(K):
                        if flat[b * K + k] > float("-inf"):
                            close(b, b * K + k, flat[b * K + k], T, with_eos=False)
            break
        logp = _log_probs(logits, lm.eos_id, allow_eos=t >= min_new_tokens)
        V = logp.shape[-1]
        cand = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_s, top_i = cand.topk(min(2 * K, K * V), dim=1)
        top_s_l, beam_l, tok_l = top_s.tolist(), (top_i // V).tolist(), (top_i % V).tolist()
        next_slot: list[int] = []
        next_tok: list[int] = []
        next_score: list[float] = []
        for b in range(B):
            chosen = 0
            if not done[b]:
                for j, (s, k, tok) in enumerate(zip(top_s_l[b], beam_l[b], tok_l[b])):
                    if s == float("-inf"):
                        break
                    slot = b * K + k
                    if tok == lm.eos_id:
                        if j < K:  # as transformers: only an EOS among the best K counts
                            close(b, slot, s, t, with_eos=True)
                        continue
                    next_slot.append(slot)
                    next_tok.append(tok)
                    next_score.append(s)
                    chosen += 1
                    if chosen == K:
                        break
                # transformers' heuristic: the best live beam, scored at its current length
                # (t + 1 tokens), against the worst kept hypothesis.
                if len(finished[b]) == K and (not chosen or finished[b][-1].score >=
                                              next_score[-chosen] / (t + 1) ** length_penalty):
                    done[b] = True
            # Finished rows (and rows short of candidates) keep dead placeholder beams so the
            # batch stays rectangular.
            for _ in range(K - chosen):
                next_slot.append(b * K)
                next_tok.append(lm.pad_id)
                next_score.append(float("-inf"))
            if done[b] and chosen:
                next_score[-K:] = [float("-inf")] * K
        if all(done):
            break
        index = torch.tensor(next_slot, device=device)
        stepper.reorder(index)
        seqs = torch.cat([seqs[index], torch.tensor(next_tok, device=device)[:, None]], dim=1)
        if states is not None:
            states = states[index]
        beam_scores = torch.tensor(next_score, device=device).view(B, K)
        logits, hidden = stepper.step(seqs[:, -1])

    tokens = torch.full((B, T), lm.pad_id, dtype=torch.long, device=device)
    best_states = hidden.new_zeros(B, T + 1, hidden.shape[-1]) if with_points else None
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    scores = torch.zeros(B, device=device)
    for b, hyps in enumerate(finished):
        best = hyps[0]
        n = len(best.tokens)
        tokens[b, :n] = best.tokens
        lengths[b], scores[b] = n, best.logprob
        if best_states is not None:
            best_states[b, : n + 1] = best.states
    points, eos_points = _points(model, best_states, lengths, T)
    return Generation(tokens, lengths, points, eos_points, scores)


def decode(model: PixelLLM, prefix: torch.Tensor, prefix_mask: torch.Tensor,
           options: DecodeOptions | None = None) -> Generation:
    """Greedy decoding or beam search, as ``options.num_beams`` says.

    Args:
        model: the PixelLLM.
        prefix: (B, P, D) visual tokens + embedded text prompt.
        prefix_mask: (B, P).
        options: :class:`DecodeOptions` (default: greedy, 32 tokens, cached, with points).

    Returns:
        :class:`Generation`.
    """
    o = options or DecodeOptions()
    if o.num_beams == 1:
        return greedy_decode(model, prefix, prefix_mask, o.max_new_tokens, o.with_points,
                             min_new_tokens=o.min_new_tokens, use_cache=o.use_cache)
    return beam_search(model, prefix, prefix_mask, o.num_beams, o.max_new_tokens, o.with_points,
                       length_penalty=o.length_penalty, min_new_tokens=o.min_new_tokens,
                       use_cache=o.use_cache)
