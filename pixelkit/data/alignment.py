"""Trace-to-token alignment for Localized Narratives (LN).

A Localized Narrative is a spoken caption with a mouse trace. PixelLLM turns it into one
location target per caption token in two steps, both reproduced here from the official code
(google-research/scenic, ``projects/pixel_llm``):

**Step 1: a location per utterance** (official: ``tools/build_ln_tfrecord.py``,
``trace2coord`` and ``process_record``; :func:`utterance_locations` here).

1. Join all trace segments of the record into one list of points and sort it by ``t``.
   A record with fewer than 2 points in total has no location for any utterance (the official
   builder skips such a record with "no traces"; here every utterance gets ``None``).
2. For every utterance, sample ``num_samples = 16`` times (the ``num_samples_per_trace`` flag)
   with ``np.linspace(start_time, end_time, 16)`` (both ends included) and interpolate x and y
   there with ``scipy.interpolate.interp1d(t, x, fill_value='extrapolate')``: piecewise-linear
   between trace points and **linearly extrapolated** from the first / last two points outside
   the trace's time range (this is *not* ``np.interp``, which would clamp).
3. ``box`` = (min x, min y, max x, max y) of the 16 samples. ``mean`` = the time average of the
   samples by the trapezoid rule, ``np.trapz(v, t) / (t[-1] - t[0])``, which for evenly spaced
   samples is ``(sum(v) - (v[0] + v[-1]) / 2) / 15``; when ``end_time - start_time < 1e-5``
   (zero duration, or end before start) it is the plain mean of the 16 samples instead.
   A zero-duration utterance therefore still gets a location: the trace point at that time
   with a zero-size box. Nothing is clipped: LN coordinates may fall slightly outside [0, 1]
   and so may the locations (the official code clips later, in step 2).

**Step 2: a location per token** (official: ``io/ops.py``,
``DecodeLocalizedNarrativesAnnotations``; :func:`align_caption` with ``method="official"``).

1. Utterances are stripped; an utterance is *valid* when its text is non-empty and both
   coordinates of its mean are ``> 1e-5`` (so a mean left of or above the image counts as
   invalid -- a quirk of the official test ``center > 1e-5``). Let ``N`` be the number of
   valid utterances; the ``k``-th valid one (1-based) gets position ``k / N``.
2. The caption (the record's ``caption`` string, not the utterances) is tokenised; the ``j``-th
   of its ``T`` non-special tokens (1-based) gets position ``j / T``, rescaled to the
   utterances' range: ``1/N + (j/T) * (1 - 1/N)``. (Officially ``T`` counts only the tokens
   kept after truncation to ``max_text_tokens = 128`` including BOS; pass ``max_tokens=127``
   to reproduce that.)
3. Token ``j`` takes the valid utterance with the nearest position (squared distance, ties to
   the lower index, as ``tf.argmin``), i.e. utterance ``1 + round_half_down((j/T) * (N-1))``.
   Every token gets a target whenever ``N >= 1``; the token's target box is its utterance's
   box (officially clipped to [0, 1] and used as the two target points ``(x0, y0), (x1, y1)``).

The official step 2 is *shifted*: both position sequences start at ``1/T`` and ``1/N`` instead
of at a bin centre, so even when every token is exactly one utterance (``T == N``) token ``j``
maps to utterance ``j + 1`` for the first half of the caption (``j / N < 1/2``). Two better
mappings are offered and measured against it (:func:`compare_methods`, ``pixelkit bench``):

- ``method="relative"``: the same idea without the shift, token ``j`` (0-based) -> valid
  utterance ``floor((j + 0.5) * N / T)``; needs nothing but counts.
- ``method="text"``: each utterance is located in the caption text (in order, case-insensitive,
  at word boundaries) and each token goes to the utterance whose character span holds the
  token's first non-space character (via the fast tokenizer's offsets, so "Ġred" and a lone
  "Ġ" before "red" both go to "red"; slow tokenizers are run piece by piece over the spans).
  Tokens between spans (punctuation, words missing from the timed caption) take the
  preceding utterance. A token whose utterance has no location gets no target. On the shapes
  world (one utterance per word) this is exact.

Measured on shapes-world narratives (``pixelkit bench --only data``), against ``text``: the
official mapping gives 47% of the tokens another utterance with a word-level tokenizer
(the shift) and 76% with a small byte-level BPE (the shift plus words of different token
counts); ``relative`` fixes the first (0%) but not the second (79%).

Deliberate deviations from the official code, all for inputs on which it breaks:
  - ``N == 0`` valid utterances: officially the token positions become ``inf``/``nan`` and the
    targets garbage; here no token gets a target (``utterance_index == -1``, NaN rows).
  - two trace points with the same ``t`` at an end of the trace: ``interp1d`` divides by zero
    when it extrapolates from them (NaN/inf targets); here the slope is taken as 0 there.
  - ties in ``t`` are sorted stably (the official ``np.argsort`` is not stable).
  - missing ``traces`` is treated as an empty trace (the official ``LocalizedNarrative(**json)``
    raises on any missing field); missing ``timed_caption`` means no utterances.

Agreement: against the official ``trace2coord`` run verbatim (scipy ``interp1d`` and
``np.trapz``) on 600 shapes-world and random records (15,694 utterances), boxes are
bit-identical and means agree to 1e-12 (summation order).

Speed: one record is a handful of vectorised numpy calls (one ``searchsorted`` over all
utterances' samples at once; every utterance has 16 samples so min/max/mean are reductions
over a ``(U, 16)`` array). ``pixelkit bench --only data`` measures the full path.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from pixelkit.data.schema import DataFormatError

#: Official ``num_samples_per_trace`` (tools/build_ln_tfrecord.py).
NUM_SAMPLES_PER_UTTERANCE = 16
#: Below this duration (seconds) the official code averages samples instead of integrating.
MIN_DURATION = 1e-5
#: Official validity threshold on an utterance's mean point (``center > 1e-5``, io/ops.py).
VALID_CENTER_EPS = 1e-5

_XYT = itemgetter("x", "y", "t")
_START_END = itemgetter("start_time", "end_time")

Method = Literal["official", "relative", "text"]
METHODS: tuple[str, ...] = ("official", "relative", "text")


@dataclass(frozen=True)
class UtteranceLocation:
    """Where the mouse was while one utterance was spoken, normalised as the trace.

    Attributes:
        mean: ``(x, y)``, time average of the interpolated trace over the utterance.
        box: ``(x0, y0, x1, y1)``, min / max of the interpolated trace samples.
    """

    mean: tuple[float, float]
    box: tuple[float, float, float, float]


@dataclass
class AlignedCaption:
    """A caption's tokens with one location target per token.

    Attributes:
        input_ids: the caption's ``T`` non-special token ids (no BOS / EOS / padding).
        boxes: ``(T, 4)`` float32 xyxy target per token, in the frame of the locations given;
            NaN rows where a token has no target.
        points: ``(T, 2)`` float32 mean point of the token's utterance; NaN where none.
        utterance_index: ``(T,)`` int64, the utterance whose location is the token's target,
            ``-1`` where none.
        method: the mapping used (``"official"``, ``"relative"`` or ``"text"``).
    """

    input_ids: list[int]
    boxes: np.ndarray
    points: np.ndarray
    utterance_index: np.ndarray
    method: str = "official"

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def has_target(self) -> np.ndarray:
        """``(T,)`` bool, True where the token has a location target."""
        return self.utterance_index >= 0


# --------------------------------------------------------------------------------------------
# Step 1: utterance locations
# --------------------------------------------------------------------------------------------


def _trace_array(traces: Any, source: str) -> np.ndarray:
    """All points of all segments as a ``(P, 3)`` float64 array of (x, y, t), unsorted."""
    if traces is None:
        return np.zeros((0, 3))
    if not isinstance(traces, list):
        raise DataFormatError(f"{source}: field 'traces' must be a list of segments")
    try:
        # np.fromiter over chained itemgetters is the fastest way from dicts to numpy here
        # (a flat list or a list of tuples through np.array is ~1.5x slower); this is most of
        # the cost of a real record, whose trace has hundreds of points.
        flat = chain.from_iterable(map(_XYT, chain.from_iterable(traces)))
        return np.fromiter(flat, dtype=np.float64).reshape(-1, 3)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise DataFormatError(
            f"{source}: field 'traces' needs segments of {{x, y, t}} numbers ({err!r})"
        ) from None


def _utterance_times(timed_caption: Any, source: str) -> np.ndarray:
    """``(U, 2)`` float64 start / end times."""
    if timed_caption is None:
        return np.zeros((0, 2))
    if not isinstance(timed_caption, list):
        raise DataFormatError(f"{source}: field 'timed_caption' must be a list")
    try:
        flat = chain.from_iterable(map(_START_END, timed_caption))
        return np.fromiter(flat, dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise DataFormatError(
            f"{source}: field 'timed_caption' needs {{utterance, start_time, end_time}} "
            f"entries ({err!r})"
        ) from None


def interpolate_trace(t: np.ndarray, values: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation with linear extrapolation, as ``interp1d(..., 'extrapolate')``.

    Same arithmetic as scipy's ``interp1d._call_linear``: the bracket is found with
    ``searchsorted(side='left')`` clipped to ``[1, P-1]``, so outside ``[t[0], t[-1]]`` the first
    (last) segment is extended.

    Args:
        t: ``(P,)`` sorted times, ``P >= 2``.
        values: ``(P, C)`` values at ``t``.
        t_new: ``(M,)`` query times.

    Returns:
        ``(M, C)`` interpolated values. Where a bracket has zero width (duplicate times at an
        end of the trace) the slope is taken as 0 (scipy would return NaN / inf there).
    """
    hi = np.searchsorted(t, t_new, side="left")
    np.clip(hi, 1, len(t) - 1, out=hi)
    lo = hi - 1
    t_lo = t[lo]
    dt = t[hi] - t_lo
    v_lo = values[lo]
    dv = values[hi] - v_lo
    if not dt.all():
        zero = dt == 0
        dt[zero] = 1.0
        dv[zero] = 0.0
    # Same operation order as scipy (slope first) so results agree to the last bit.
    slope = dv / dt[:, None]
    return slope * (t_new - t_lo)[:, None] + v_lo


def utterance_location_arrays(
    record: Mapping[str, Any],
    num_samples: int = NUM_SAMPLES_PER_UTTERANCE,
    source: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 of the module docstring as arrays: mean point and box of every utterance.

    Args:
        record: one Localized Narratives record (``timed_caption``, ``traces``; other fields
            are ignored). A missing ``traces`` counts as no trace, a missing ``timed_caption``
            as no utterances.
        num_samples: samples per utterance (official: 16).
        source: ``"file:line"`` for error messages.

    Returns:
        ``(means (U, 2), boxes (U, 4))`` float64, normalised as the trace (not clipped); all
        rows NaN when the record has fewer than 2 trace points.

    Raises:
        DataFormatError: a field of the wrong type or an entry without its numbers.
    """
    times = _utterance_times(record.get("timed_caption"), source)
    trace = _trace_array(record.get("traces"), source)
    return locations_from_arrays(times, trace, num_samples)


def locations_from_arrays(
    times: np.ndarray, trace: np.ndarray, num_samples: int = NUM_SAMPLES_PER_UTTERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`utterance_location_arrays` on arrays already taken out of a record.

    Args:
        times: ``(U, 2)`` float64 start / end time of each utterance.
        trace: ``(P, 3)`` float64 trace points ``(x, y, t)`` of all segments, in any order.
        num_samples: samples per utterance (official: 16).

    Returns:
        ``(means (U, 2), boxes (U, 4))`` float64, as :func:`utterance_location_arrays`.
    """
    num_utt = len(times)
    if num_utt == 0 or len(trace) < 2:
        return np.full((num_utt, 2), np.nan), np.full((num_utt, 4), np.nan)
    # Stable sort so that points with equal t keep their recorded order.
    trace = trace[np.argsort(trace[:, 2], kind="stable")]

    start, end = times[:, 0], times[:, 1]
    duration = end - start
    # np.linspace(start, end, n) row by row: start + i * step, last sample set to end exactly.
    steps = np.arange(num_samples, dtype=np.float64)
    sample_t = steps * (duration / max(num_samples - 1, 1))[:, None]
    sample_t += start[:, None]
    sample_t[:, -1] = end
    xy = interpolate_trace(trace[:, 2], trace[:, :2], sample_t.ravel())
    xy = xy.reshape(num_utt, num_samples, 2)

    boxes = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)
    # Trapezoid time average, np.trapz(v, t) / (t[-1] - t[0]) with np.trapz's operation
    # order; the plain mean where the utterance lasts < 1e-5 s (including end < start),
    # exactly as the official builder.
    if num_samples > 1:
        d = np.diff(sample_t, axis=1)[:, :, None]
        area = (d * (xy[:, 1:] + xy[:, :-1]) / 2.0).sum(axis=1)
        short = duration < MIN_DURATION
        with np.errstate(divide="ignore", invalid="ignore"):
            means = area / duration[:, None]
        if short.any():
            means[short] = xy[short].mean(axis=1)
    else:
        means = xy.mean(axis=1)
    return means, boxes


def utterance_locations(
    record: Mapping[str, Any],
    num_samples: int = NUM_SAMPLES_PER_UTTERANCE,
    source: str = "",
) -> list[UtteranceLocation | None]:
    """The location of every utterance of one Localized Narratives record (official algorithm).

    See the module docstring, step 1.

    Args:
        record: one LN record as read from the jsonl (``caption``, ``timed_caption``
            ``[{utterance, start_time, end_time}]``, ``traces`` ``[[{x, y, t}]]``).
        num_samples: samples per utterance (official: 16).
        source: ``"file:line"`` for error messages.

    Returns:
        One entry per ``timed_caption`` entry, in order: an :class:`UtteranceLocation`
        (normalised as the trace, not clipped), or ``None`` for every utterance when the
        record has fewer than 2 trace points.

    Raises:
        DataFormatError: a field of the wrong type or an entry without its numbers.
    """
    means, boxes = utterance_location_arrays(record, num_samples, source)
    if len(means) == 0 or np.isnan(means[0, 0]):
        return [None] * len(means)
    return [
        UtteranceLocation((m[0], m[1]), (b[0], b[1], b[2], b[3]))
        for m, b in zip(means.tolist(), boxes.tolist())
    ]


def locations_to_arrays(
    locations: Sequence[UtteranceLocation | None],
) -> tuple[np.ndarray, np.ndarray]:
    """``(means (U, 2), boxes (U, 4))`` float64 with NaN rows for ``None``."""
    nan2, nan4 = (np.nan,) * 2, (np.nan,) * 4
    means = np.array([nan2 if loc is None else loc.mean for loc in locations], np.float64)
    boxes = np.array([nan4 if loc is None else loc.box for loc in locations], np.float64)
    return means.reshape(-1, 2), boxes.reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# Step 2: tokens -> utterances
# --------------------------------------------------------------------------------------------


def _encode(
    tokenizer: Any, text: str, want_offsets: bool
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids (no special tokens) and, when available, character offsets of ``text``.

    Works with ``tokenizers.Tokenizer`` and any Hugging Face tokenizer. A fast HF tokenizer
    that does not override ``_encode_plus`` is called through its Rust backend directly: the
    same ids and offsets as ``tokenizer(text, add_special_tokens=False)``, without the
    Python-side ``BatchEncoding`` overhead (a third of the per-record cost).
    """
    backend = _backend_of(tokenizer)
    if backend is not None:
        enc = backend.encode(text, add_special_tokens=False)
        return enc.ids, (enc.offsets if want_offsets else None)
    if getattr(tokenizer, "is_fast", False) and want_offsets:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [int(i) for i in enc["input_ids"]], [tuple(o) for o in enc["offset_mapping"]]
    enc = tokenizer(text, add_special_tokens=False)
    return [int(i) for i in enc["input_ids"]], None


_BACKEND_CACHE: dict[type, bool] = {}


def _backend_of(tokenizer: Any) -> Any:
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - tokenizers is a dependency
        return None
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer
    if not getattr(tokenizer, "is_fast", False):
        return None
    cls = type(tokenizer)
    ok = _BACKEND_CACHE.get(cls)
    if ok is None:
        ok = False
        try:
            from transformers.tokenization_utils_tokenizers import TokenizersBackend

            ok = getattr(cls, "_encode_plus", None) is TokenizersBackend._encode_plus
        except ImportError:  # older transformers: PreTrainedTokenizerFast
            try:
                from transformers import PreTrainedTokenizerFast

                ok = getattr(cls, "_encode_plus", None) is PreTrainedTokenizerFast._encode_plus
            except ImportError:
                ok = False
        _BACKEND_CACHE[cls] = ok
    return getattr(tokenizer, "backend_tokenizer", None) if ok else None


def official_token_to_utterance(valid: np.ndarray, num_tokens: int) -> np.ndarray:
    """The official relative-position mapping (module docstring, step 2), verbatim.

    Args:
        valid: ``(U,)`` bool, which utterances are valid.
        num_tokens: ``T``, the number of non-special caption tokens.

    Returns:
        ``(T,)`` int64 utterance index per token; ``-1`` everywhere when no utterance is valid.
    """
    valid_idx = np.flatnonzero(valid)
    n_valid = len(valid_idx)
    if num_tokens == 0:
        return np.zeros(0, np.int64)
    if n_valid == 0:
        return np.full(num_tokens, -1, np.int64)
    # Same float64 operations as the TF code (int32 / int32 -> float64 there), so that exact
    # ties (e.g. T == 4, N == 4, token 2) resolve the same way. The k-th valid utterance sits
    # at cumsum / N = k / N; the smallest valid position is exactly 1 / N and the largest
    # exactly N / N = 1. Invalid utterances sit at -1 and can never be the nearest (every
    # token position is >= 1 / N), so the argmin runs over the valid ones only; it returns
    # the first index on ties, as tf.argmin.
    utt_pos = np.arange(1, n_valid + 1) / n_valid
    start = 1 / n_valid
    token_pos = np.arange(1, num_tokens + 1) / num_tokens
    token_pos = start + token_pos * (1.0 - start)
    dist = np.subtract.outer(token_pos, utt_pos)
    dist *= dist
    return valid_idx[dist.argmin(axis=1)]


def relative_token_to_utterance(valid: np.ndarray, num_tokens: int) -> np.ndarray:
    """Unshifted relative position: token ``j`` -> valid utterance ``floor((j + .5) N / T)``.

    Args:
        valid: ``(U,)`` bool, which utterances are valid.
        num_tokens: ``T``.

    Returns:
        ``(T,)`` int64 utterance index per token, ``-1`` when no utterance is valid.
    """
    valid_idx = np.flatnonzero(valid)
    if len(valid_idx) == 0:
        return np.full(num_tokens, -1, np.int64)
    k = np.floor((np.arange(num_tokens) + 0.5) * (len(valid_idx) / max(num_tokens, 1)))
    return valid_idx[k.astype(np.int64).clip(0, len(valid_idx) - 1)]


_WORD_CHAR = re.compile(r"\w")


def utterance_spans(caption: str, utterances: Sequence[str]) -> list[tuple[int, int] | None]:
    """Character span of every utterance in ``caption``, searched in order.

    Each stripped utterance is looked for case-insensitively from the end of the previous match,
    at word boundaries (so "a" does not match inside "image"); when that fails, the utterance
    with its leading / trailing punctuation removed is tried. An utterance not found (or empty)
    gets ``None`` and the search goes on from where it was.

    Args:
        caption: the caption text.
        utterances: the timed utterances, in spoken order.

    Returns:
        One ``(start, end)`` (end exclusive) or ``None`` per utterance.
    """
    low = caption.lower()
    if len(low) != len(caption):  # a few Unicode letters change length when lowered
        low = caption
    n = len(low)
    cursor = 0
    spans: list[tuple[int, int] | None] = []
    for utt in utterances:
        span = None
        needle = utt.strip().lower()
        for cand in (needle, needle.strip(".,;:!?\"'()[]")):
            if not cand:
                continue
            pos = low.find(cand, cursor)
            while pos >= 0:
                end = pos + len(cand)
                # Word boundary only where the needle itself starts / ends with a word character.
                ok_left = (
                    pos == 0 or not _WORD_CHAR.match(cand[0]) or not _WORD_CHAR.match(low[pos - 1])
                )
                ok_right = (
                    end == n or not _WORD_CHAR.match(cand[-1]) or not _WORD_CHAR.match(low[end])
                )
                if ok_left and ok_right:
                    span = (pos, end)
                    break
                pos = low.find(cand, pos + 1)
            if span is not None:
                break
        if span is not None:
            cursor = span[1]
        spans.append(span)
    return spans


def _text_token_to_utterance(
    caption: str,
    utterances: Sequence[str],
    tokenizer: Any,
    max_tokens: int | None,
) -> tuple[list[int], np.ndarray]:
    """Token ids and token -> utterance (ignoring validity) for the ``text`` method."""
    spans = utterance_spans(caption, utterances)
    matched = [(s, i) for i, s in enumerate(spans) if s is not None]
    ids, offsets = _encode(tokenizer, caption, want_offsets=True)
    if offsets is None:
        # Slow tokenizer: tokenise the caption piece by piece at span boundaries, so every
        # token belongs to exactly one piece. Each piece keeps its leading whitespace so that
        # tokenizers that mark word starts (GPT-2's "Ġ", SentencePiece's "▁") see it.
        ids, owner = [], []
        cursor = 0
        prev_utt = -1
        for (s, e), i in matched:
            if s > cursor and caption[cursor:s].strip():
                gap_ids = _encode(tokenizer, caption[cursor:s], False)[0]
                ids += gap_ids
                owner += [prev_utt] * len(gap_ids)
                cursor = s
            piece_ids = _encode(tokenizer, caption[cursor:e], False)[0]
            ids += piece_ids
            owner += [i] * len(piece_ids)
            cursor = e
            prev_utt = i
        if caption[cursor:].strip():
            tail = _encode(tokenizer, caption[cursor:], False)[0]
            ids += tail
            owner += [prev_utt] * len(tail)
        token_utt = np.asarray(owner, np.int64)
        if len(token_utt) and matched:
            # Leading gap tokens (before the first matched utterance) take the first one.
            token_utt[token_utt < 0] = matched[0][1]
    else:
        if max_tokens is not None:
            ids, offsets = ids[:max_tokens], offsets[:max_tokens]
        if not matched:
            return ids, np.full(len(ids), -1, np.int64)
        starts = [s for (s, _), _ in matched]
        n_chars = len(caption)
        # A token's anchor is its first non-space character, looking past the token's end
        # if it has none: byte-level BPE / SentencePiece tokens carry the space before a word
        # ("Ġred", "▁red") or are that space alone ("Ġ" then "red"), and both belong to the
        # word that follows.
        token_utt = np.empty(len(ids), np.int64)
        for k, (a, b) in enumerate(offsets):
            anchor = a
            while anchor < n_chars and caption[anchor].isspace():
                anchor += 1
            m = bisect.bisect_right(starts, anchor) - 1
            token_utt[k] = matched[max(m, 0)][1]
    if max_tokens is not None:
        ids, token_utt = ids[:max_tokens], token_utt[:max_tokens]
    if not matched:
        token_utt = np.full(len(ids), -1, np.int64)
    return ids, token_utt


def align_caption(
    utterances: Sequence[str],
    locations: Sequence[UtteranceLocation | None] | np.ndarray,
    tokenizer: Any,
    *,
    points: np.ndarray | None = None,
    caption: str | None = None,
    method: Method = "official",
    max_tokens: int | None = None,
) -> AlignedCaption:
    """Tokenise a narrative's caption and give every token its utterance's location.

    Args:
        utterances: the ``U`` timed utterances, in order.
        locations: per utterance an :class:`UtteranceLocation` or ``None``; or a ``(U, 4)``
            array of xyxy boxes with NaN rows (then pass ``points`` too, else box centres
            stand in for the mean points).
        tokenizer: any Hugging Face tokenizer (``PreTrainedTokenizerBase``, word-level or
            subword, fast or slow) or a ``tokenizers.Tokenizer``.
        points: ``(U, 2)`` mean points when ``locations`` is an array.
        caption: the text to tokenise (LN's ``caption``); default: the stripped utterances
            joined by single spaces.
        method: ``"official"`` (relative position, exactly as the official code),
            ``"relative"`` (relative position without the official off-by-one shift) or
            ``"text"`` (token -> utterance whose text holds it). See the module docstring.
        max_tokens: keep only the first ``max_tokens`` non-special tokens *before* mapping
            (``127`` reproduces the official truncation for ``max_text_tokens=128``). Default:
            map over the whole caption and let the caller truncate, which keeps the targets
            of the kept tokens correct.

    Returns:
        An :class:`AlignedCaption` with ``T`` tokens. Boxes and points are in the frame of
        ``locations`` and are not clipped here (the official code clips to the image; the
        transforms in :mod:`pixelkit.data.transforms` clip to the visible image).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(locations, np.ndarray):
        boxes = np.asarray(locations, np.float64).reshape(-1, 4)
        if points is None:
            means = (boxes[:, :2] + boxes[:, 2:]) / 2
        else:
            means = np.asarray(points, np.float64).reshape(-1, 2)
    else:
        means, boxes = locations_to_arrays(locations)
    if not (len(boxes) == len(means) == len(utterances)):
        raise ValueError(
            f"{len(utterances)} utterances but {len(boxes)} locations / {len(means)} points"
        )
    stripped = [u.strip() for u in utterances]
    if caption is None:
        caption = " ".join(u for u in stripped if u)
    has_loc = np.isfinite(boxes).all(axis=1) & np.isfinite(means).all(axis=1)

    if method == "text":
        ids, token_utt = _text_token_to_utterance(caption, stripped, tokenizer, max_tokens)
        if len(token_utt) and len(has_loc):
            # The token's own utterance has no location: no target (rather than a neighbour's).
            token_utt = np.where(has_loc[token_utt.clip(0)] & (token_utt >= 0), token_utt, -1)
    else:
        ids = _encode(tokenizer, caption, want_offsets=False)[0]
        if max_tokens is not None:
            ids = ids[:max_tokens]
        valid = has_loc & np.array([bool(u) for u in stripped], bool).reshape(-1)
        if method == "official":
            valid &= (means > VALID_CENTER_EPS).all(axis=1)
            token_utt = official_token_to_utterance(valid, len(ids))
        else:
            token_utt = relative_token_to_utterance(valid, len(ids))

    if len(token_utt) and token_utt.min() >= 0:  # the usual case: every token has a target
        tok_boxes = boxes[token_utt].astype(np.float32)
        tok_points = means[token_utt].astype(np.float32)
    else:
        has = token_utt >= 0
        tok_boxes = np.full((len(token_utt), 4), np.nan, np.float32)
        tok_points = np.full((len(token_utt), 2), np.nan, np.float32)
        tok_boxes[has] = boxes[token_utt[has]]
        tok_points[has] = means[token_utt[has]]
    return AlignedCaption(
        input_ids=ids,
        boxes=tok_boxes,
        points=tok_points,
        utterance_index=token_utt.astype(np.int64),
        method=method,
    )


def align_record(
    record: Mapping[str, Any],
    tokenizer: Any,
    *,
    method: Method = "official",
    max_tokens: int | None = None,
    source: str = "",
) -> AlignedCaption:
    """The full per-record path: :func:`utterance_locations` then :func:`align_caption`.

    Locations stay normalised as the trace. (The datamodule instead goes through a
    :class:`~pixelkit.data.schema.Sample` and the transforms, so that targets are in the
    model frame; this function is the reference path and what ``pixelkit bench`` times.)

    Args:
        record: one LN record.
        tokenizer: see :func:`align_caption`.
        method: see :func:`align_caption`.
        max_tokens: see :func:`align_caption`.
        source: ``"file:line"`` for error messages.

    Returns:
        The aligned caption of the record's ``caption``.
    """
    timed = record.get("timed_caption") or []
    try:
        utterances = [str(u["utterance"]) for u in timed]
    except (KeyError, TypeError):
        raise DataFormatError(f"{source}: every timed_caption entry needs 'utterance'") from None
    means, boxes = utterance_location_arrays(record, source=source)
    return align_caption(
        utterances,
        boxes,
        tokenizer,
        points=means,
        caption=record.get("caption"),
        method=method,
        max_tokens=max_tokens,
    )


def compare_methods(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    reference: Method = "text",
    others: Sequence[Method] = ("official", "relative"),
) -> dict[str, float]:
    """How often each mapping gives a token another utterance than ``reference``.

    Only tokens that have a target under the reference are counted; a token that gets the
    wrong utterance *or* no target under another method counts as wrong. Token sequences are
    compared only for records where both methods tokenised identically (true for fast
    tokenizers; slow ones may differ in the ``text`` method).

    Args:
        records: LN records.
        tokenizer: see :func:`align_caption`.
        reference: the mapping taken as truth (``"text"``: exact on the shapes world).
        others: the mappings to score.

    Returns:
        ``{f"{m}_token_error_rate": ..., f"{m}_box_l1": ...}`` per other method (box L1 =
        mean absolute difference of the target box coordinates, in the trace's units, over
        the reference's tokens), and ``"tokens"``: tokens counted.
    """
    wrong = {m: 0 for m in others}
    l1 = {m: 0.0 for m in others}
    counted = 0
    for rec in records:
        ref = align_record(rec, tokenizer, method=reference)
        mask = ref.has_target
        n = int(mask.sum())
        if n == 0:
            continue
        alts = {m: align_record(rec, tokenizer, method=m) for m in others}
        if any(a.input_ids != ref.input_ids for a in alts.values()):
            continue
        counted += n
        for m, alt in alts.items():
            wrong[m] += int((alt.utterance_index[mask] != ref.utterance_index[mask]).sum())
            diff = np.abs(alt.boxes[mask] - ref.boxes[mask])
            # A token with no target under `alt` counts the full box (|NaN| -> reference box).
            diff = np.where(np.isnan(diff), np.abs(ref.boxes[mask]), diff)
            l1[m] += float(diff.mean(axis=1).sum())
    out: dict[str, float] = {"tokens": float(counted)}
    for m in others:
        out[f"{m}_token_error_rate"] = wrong[m] / counted if counted else float("nan")
        out[f"{m}_box_l1"] = l1[m] / counted if counted else float("nan")
    return out
