"""Tokenizers: a hub / local Hugging Face tokenizer, or the built-in shapes-world one.

The shapes world has a closed vocabulary of a few dozen words, so the ``tiny`` preset uses
a word-level :class:`transformers.PreTrainedTokenizerFast` built in memory from it (no
download, ~50 ids): a small softmax learns in a few hundred steps on a CPU. Its special
ids follow T5 (``<pad>`` = 0 = decoder start, ``</s>`` = 1, ``<unk>`` = 2), so the T5 and
the causal paths treat it exactly like a real tokenizer. Unknown words map to ``<unk>``.

**Location tokens** (:func:`add_location_tokens`, for ``location.format`` ``text`` /
``tokens`` and ``location.task_tokens``): a *copy* of the tokenizer with the codec's
tokens added after the existing ids (the shapes tokenizer is cached and shared, so it is
never changed in place). ``<loc_i>`` and the ``<p>``/``<box>`` markup are ordinary added
tokens (kept by ``decode(skip_special_tokens=True)``); task identifiers are special.
A subword tokenizer writes ``[12,40,33,61]`` with its own digits and punctuation. A
word-level one (the shapes tokenizer) cannot: ``12`` is one word it does not know, so its
vocabulary gets one word per grid integer (``0`` ... ``bins-1``) and ``[``, ``]``, which
makes every coordinate one token (nine tokens per box, as short as the ``axis`` token
style), and its decoder glues digits, ``]`` and the markup to what precedes them, so a
box decodes back to exactly ``[12,40,33,61]`` and a phrase to
``<p>a red circle</p><box><loc_a><loc_b></box>`` (the parsers also accept spaces).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from pixelkit.config import LocationConfig, PixelLLMConfig
    from pixelkit.modeling.location import LocationCodec

#: Words of every text the shapes world writes, plus the task prompts' words.
SHAPES_WORDS: tuple[str, ...] = (
    # objects
    "red", "green", "blue", "yellow", "purple", "orange",
    "circle", "square", "triangle", "small", "large", "object",
    # location phrases
    "in", "on", "at", "the", "top", "bottom", "left", "right", "center",
    # captions and narratives
    "a", "an", "and", "this", "image", "there", "is", "are", ",", ".",
    # task prompts
    "where", "describe", "region", "what", "caption",
)
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")


@lru_cache(maxsize=1)
def shapes_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the shapes world (built in memory, cached).

    Returns:
        :func:`word_tokenizer` of :data:`SHAPES_WORDS`.
    """
    return word_tokenizer(SHAPES_WORDS)


def word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer of a closed vocabulary, with T5's special ids.

    Args:
        words: the vocabulary (lower-case words and punctuation; repeats are dropped).

    Returns:
        A fast tokenizer: lower-cases, splits on whitespace and punctuation, appends
        ``</s>`` to every encoded text, and decodes with spaces between words. Ids follow
        :data:`SPECIAL_TOKENS` then ``words`` in order, so it fits any T5 architecture
        whose vocabulary is at least that large (``save_pretrained`` it to point
        ``language_model.tokenizer`` at it with no download).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys((*SPECIAL_TOKENS, *words)))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A tokenizer by name: ``"shapes"``, a hub id or a local directory.

    Args:
        name: ``"shapes"`` for the built-in one; otherwise passed to
            ``AutoTokenizer.from_pretrained`` (works offline for a local directory).
    """
    if name == "shapes":
        return shapes_tokenizer()
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:  # GPT-2 / Llama style tokenizers have no pad token
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_for(config: PixelLLMConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of a model config (``language_model.tokenizer`` or its ``name``), with
    the location tokens its ``location`` adds (:func:`add_location_tokens`)."""
    lm = config.language_model
    return location_tokenizer(lm.tokenizer or lm.name, config.location)


def location_tokenizer(name: str, location: LocationConfig | dict | None
                       ) -> PreTrainedTokenizerBase:
    """The tokenizer ``name`` (:func:`load_tokenizer`) with the tokens a ``location`` config
    adds (:func:`add_location_tokens`; none for the default ``regression``)."""
    from pixelkit.modeling.location import LocationCodec

    tok = load_tokenizer(name)
    codec = LocationCodec(location)
    return add_location_tokens(tok, codec) if codec.changes_rows else tok


def _backend_json(tokenizer: PreTrainedTokenizerBase) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else json.loads(backend.to_str())


def _extend_word_level(tokenizer: PreTrainedTokenizerFast, words: Iterable[str],
                       glue_markup: bool) -> PreTrainedTokenizerFast:
    """A copy of a word-level fast tokenizer with ``words`` appended to its vocabulary and a
    decoder that writes boxes and markup without inner spaces (see the module docstring).

    The existing ids are unchanged; the tokenizer must have no added tokens yet beyond its
    special ones (the new words take the ids after the vocabulary).
    """
    from tokenizers import Regex, Tokenizer, decoders
    from tokenizers.models import WordLevel

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    data = json.loads(backend.to_str())
    vocab = dict(data["model"]["vocab"])
    extra = [t["content"] for t in data.get("added_tokens") or [] if t["content"] not in vocab]
    if extra:
        raise ValueError(f"cannot extend a word-level vocabulary that already has added "
                         f"tokens {extra[:5]}: extend it first, then add tokens")
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend.model = WordLevel(vocab=vocab, unk_token=data["model"]["unk_token"])
    decoder = data.get("decoder") or {}
    if decoder.get("type") == "WordPiece":
        # WordPiece decoding joins pieces with spaces except those starting with its prefix:
        # give that prefix to digits, ']', location tokens and closing markup so they join
        # what precedes them ("[" "12" "," "40" ... "]" -> "[12,40,...]"; cleanup already
        # joins " ,"). After Fuse (one string), "<p> " and "</p> <box>" lose their
        # spaces. Only texts holding digits, ']' or markup decode differently; the shapes
        # words have none.
        prefix = decoder.get("prefix", "##")
        glue = r"^(?=\d|\]$" + (r"|</p>|</box>|<loc_" if glue_markup else "") + ")"
        # WordPiece keeps the prefix of a text's first token: drop it once fused.
        steps = [decoders.Replace(Regex(glue), prefix), backend.decoder, decoders.Fuse(),
                 decoders.Replace(Regex("^" + re.escape(prefix)), "")]
        if glue_markup:  # "<box>" joins a phrase's "</p>", not a prompt's "region"
            steps += [decoders.Replace("<p> ", "<p>"),
                      decoders.Replace("</p> <box>", "</p><box>")]
        backend.decoder = decoders.Sequence(steps)
    special = {k: getattr(tokenizer, k) for k in ("pad_token", "eos_token", "unk_token",
                                                   "bos_token") if getattr(tokenizer, k, None)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def add_location_tokens(tokenizer: PreTrainedTokenizerBase,
                        codec: LocationCodec) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` that can write ``codec``'s locations.

    Adds (after every existing id, so the base model's ids keep their meaning): the
    ``<loc_i>`` tokens and ``<p>``, ``</p>``, ``<box>``, ``</box>`` of the ``tokens`` format
    as ordinary tokens, and the task identifiers as special tokens. A word-level tokenizer
    also gets the grid's integers and brackets as words when boxes are written as text.

    Args:
        tokenizer: the LM's tokenizer (not modified).
        codec: the location codec of the model config.

    Returns:
        The new tokenizer; the ids of what was added are
        ``tokenizer.convert_tokens_to_ids(...)`` of :func:`location_token_strings`.
    """
    import copy

    from tokenizers import AddedToken

    data = _backend_json(tokenizer)
    if data is not None and data["model"]["type"] == "WordLevel" and (
            codec.uses_numbers or codec.num_loc_tokens):
        tok = _extend_word_level(tokenizer, codec.number_words(),
                                 glue_markup=bool(codec.num_loc_tokens))
    else:
        tok = copy.deepcopy(tokenizer)
    # normalized=False: matched in the raw text, so a lower-casing normaliser or a
    # sentencepiece '▁' never changes them.
    plain = [AddedToken(t, normalized=False, special=False) for t in codec.added_tokens()]
    if plain:
        tok.add_tokens(plain)
    special = [AddedToken(t, normalized=False, special=True) for t in codec.special_tokens()]
    if special:
        tok.add_tokens(special, special_tokens=True)
    return tok


def location_token_strings(codec: LocationCodec) -> list[str]:
    """Every token :func:`add_location_tokens` adds as a token (not the word-level words)."""
    return [*codec.added_tokens(), *codec.special_tokens()]


def new_token_ids(base: PreTrainedTokenizerBase, extended: PreTrainedTokenizerBase) -> list[int]:
    """Ids ``extended`` has that ``base`` has not (the rows an LM must add and train)."""
    return list(range(len(base), len(extended)))
