"""Tokenizers: a hub / local Hugging Face tokenizer, or the built-in shapes-world one.

The shapes world has a closed vocabulary of a few dozen words, so the ``tiny`` preset uses
a word-level :class:`transformers.PreTrainedTokenizerFast` built in memory from it (no
download, ~50 ids): a small softmax learns in a few hundred steps on a CPU. Its special
ids follow T5 (``<pad>`` = 0 = decoder start, ``</s>`` = 1, ``<unk>`` = 2), so the T5 and
the causal paths treat it exactly like a real tokenizer. Unknown words map to ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

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


def tokenizer_for(config: "PixelLLMConfig") -> PreTrainedTokenizerBase:  # noqa: F821
    """The tokenizer of a model config (``language_model.tokenizer`` or its ``name``)."""
    lm = config.language_model
    return load_tokenizer(lm.tokenizer or lm.name)
