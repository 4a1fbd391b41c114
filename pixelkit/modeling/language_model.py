"""Language-model adapter over Hugging Face ``transformers`` (T5 family and causal LMs).

PixelLLM feeds the LM a *prefix* of embeddings -- the visual tokens f_l followed by the
embedded text prompt -- and teacher-forces (or generates) the target text. This adapter
hides the two families behind one interface that returns, for every target position p,
the logits that predict ``labels[p]`` and the final hidden state h_p that emits it:

* ``seq2seq`` (``AutoModelForSeq2SeqLM``): the prefix is the encoder's ``inputs_embeds``;
  the decoder input is ``[start, labels[:-1]]``.
* ``causal`` (``AutoModelForCausalLM``): the sequence is ``[prefix, start, labels[:-1]]``,
  with padded prompt positions masked out and position ids counted over real tokens only.

So in both, h_p has *input* ``labels[p-1]`` (the start token for p = 0): the point head
reads the location of word ``labels[p-1]`` from h_p (DESIGN.md section 1).

**Incremental decoding** (:meth:`LanguageModel.start` / :meth:`LanguageModel.step`) keeps a
``transformers`` key/value cache. For T5 (``T5ForConditionalGeneration``, sdpa or eager
attention) a step calls the decoder's ``T5Block`` modules directly instead of the whole
``model(...)`` forward: with one new token and a cache, about 40 % of a step's time on
the tiny preset was that forward's fixed overhead (argument handling, causal and
cross-attention mask building, the relative position bias recomputed every step, output
capture hooks for ``output_hidden_states``, output dataclasses). The direct step builds the
cross-attention mask once per decode, slices the relative position bias from a table
computed once, and returns the final hidden state directly; the blocks, the attention and
the ``EncoderDecoderCache`` (whose cross-attention keys/values are computed on the first
step and reused after) are ``transformers``' own, so the numbers are the generic path's
(tests check both). Other seq2seq models and causal LMs step through ``model(...)``.

**Fused GELU.** T5 v1.1 / Flan-T5 (``gated-gelu``) use ``transformers``' ``NewGELUActivation``,
the tanh GELU written as six element-wise tensor ops. :func:`fuse_gelu` swaps it for
``transformers``' own ``GELUTanh`` (``F.gelu(approximate="tanh")``, one kernel): the same
function to float rounding (max difference 2.4e-7 on N(0, 1) inputs) and about 5x faster,
which on the tiny preset takes about 10 % off a batched caption call (``pixelkit bench``).

LoRA comes from ``peft.get_peft_model`` with a ``peft.LoraConfig``; the base weights are
frozen when ``freeze_base`` is set. Weights load with ``from_pretrained`` (hub id or local
directory) or are built from the architecture with random values.

**Added tokens** (``location.format: tokens``, task identifiers, a word-level tokenizer's
number words): ``new_token_ids`` are the ids a location tokenizer added
(:func:`pixelkit.modeling.tokenizer.add_location_tokens`). The embeddings grow to hold them
(:func:`resize_vocab`, ``resize_token_embeddings``; a random build is simply made that
large). With a frozen base their rows would never train, so they train through peft's
trainable tokens: ``trainable_token_indices`` of the ``LoraConfig`` under LoRA, a
``TrainableTokensConfig`` without it (:func:`token_training_targets`), on the input
embedding and, when it is not tied to it, the output head (a new token must be both read
and written). peft wraps only the module it finds by name; T5's encoder and decoder hold
the same embedding under other names and would keep reading the unwrapped rows, so
:func:`share_wrapped_embeddings` points them at the wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Block, T5ForConditionalGeneration

from pixelkit.config import LanguageModelConfig
from pixelkit.modeling.hub_configs import known_config

IGNORE_INDEX = -100

# T5Block's cache argument across the supported transformers versions: 5.0 takes
# ``past_key_values`` and ``cache_position`` (and computes the cross-attention query length
# from the latter); later 5.x take ``cache`` (``past_key_values`` still accepted, deprecated).
_T5_BLOCK_PARAMS = inspect.signature(T5Block.forward).parameters
_T5_BLOCK_CACHE_ARG = "cache" if "cache" in _T5_BLOCK_PARAMS else "past_key_values"
_T5_BLOCK_TAKES_CACHE_POSITION = "cache_position" in _T5_BLOCK_PARAMS


def resolve_lm_config(cfg: LanguageModelConfig, vocab_size: int | None = None) -> PretrainedConfig:
    """The Hugging Face config of the LM: ``arch`` if given, else the built-in table, else
    ``AutoConfig.from_pretrained(name)`` (hub or local directory)."""
    arch = dict(cfg.arch) or known_config(cfg.name)
    if arch is None:
        return AutoConfig.from_pretrained(cfg.name, revision=cfg.revision)
    if "vocab_size" not in arch:
        if vocab_size is None:
            from pixelkit.modeling.tokenizer import load_tokenizer

            vocab_size = len(load_tokenizer(cfg.tokenizer or cfg.name))
        arch["vocab_size"] = vocab_size
    if cfg.tokenizer == "shapes":
        # The shapes tokenizer uses T5's ids: <pad> 0 (= decoder start), </s> 1.
        for key, value in (("pad_token_id", 0), ("eos_token_id", 1), ("bos_token_id", 1),
                           ("decoder_start_token_id", 0)):
            arch.setdefault(key, value)
    model_type = arch.pop("model_type")
    return AutoConfig.for_model(model_type, **arch)


def load_language_model(cfg: LanguageModelConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """The bare HF model: ``from_pretrained(cfg.name)`` when ``pretrained``, else random
    weights from :func:`resolve_lm_config`. ``cfg.name`` may be a hub id or a directory."""
    auto = AutoModelForSeq2SeqLM if cfg.family == "seq2seq" else AutoModelForCausalLM
    if cfg.pretrained:
        try:
            return auto.from_pretrained(cfg.name, revision=cfg.revision)
        except ValueError as err:
            if "Unrecognized configuration class" not in str(err):
                raise
            other = "decoder-only (causal)" if cfg.family == "seq2seq" else "encoder-decoder"
            raise ValueError(f"LanguageModelConfig.family={cfg.family!r} does not fit "
                             f"{cfg.name!r}, which looks {other}; set family accordingly") from None
    model = auto.from_config(resolve_lm_config(cfg, vocab_size))
    arch = cfg.arch or known_config(cfg.name) or {}
    head = model.get_output_embeddings()
    if arch.get("tie_word_embeddings") is False and head is not None:
        # transformers 5 builds T5 with the LM head tied to the input embedding even when
        # the architecture (T5 v1.1 / Flan-T5) has a separate one; from_pretrained unties it
        # when the checkpoint has both. Untie here too, so a random build has the real
        # model's parameters (Flan-T5-XL: 2.85 B, not 2.78 B).
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        # T5's init gives an untied head std 1 (logits ~sqrt(d) large, initial CE ~50);
        # use a Linear-like std so a random model starts near log(V).
        with torch.no_grad():
            head.weight.normal_(0.0, model.config.get_text_config().hidden_size ** -0.5)
    return model


def resize_vocab(model: PreTrainedModel, size: int) -> bool:
    """Grow the input embedding (and an untied output head) to ``size`` rows.

    Uses ``resize_token_embeddings`` (new rows drawn around the mean of the old ones, so a
    pretrained LM does not start with outliers); a model that already has ``size`` rows or
    more is left as it is (T5 checkpoints carry 28 spare rows past their tokenizer).

    Returns:
        Whether the model was resized.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if size <= rows:
        return False
    model.resize_token_embeddings(size)
    return True


def token_training_targets(model: PreTrainedModel, ids: Sequence[int]) -> dict[str, list[int]]:
    """peft ``trainable_token_indices``: the module names of the input embedding and, when
    untied, the output head, each with ``ids``."""
    ids = sorted({int(i) for i in ids})
    names = {id(m): n for n, m in model.named_modules()}
    targets = {names[id(model.get_input_embeddings())]: ids}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        targets[names[id(head)]] = ids
    return targets


def share_wrapped_embeddings(model: nn.Module) -> int:
    """Point every other holder of the input embedding at peft's wrapper of it.

    T5 keeps one embedding matrix as ``shared``, ``encoder.embed_tokens`` and
    ``decoder.embed_tokens`` (the same module, or in transformers 5 modules sharing one
    weight); peft's trainable tokens wrap ``shared`` only, so the decoder would read the new
    tokens' rows without their trained delta. Every other module holding the same weight is
    replaced by the wrapper. Returns how many were replaced (0 when nothing is wrapped).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    wrapper = base.get_input_embeddings()
    if hasattr(wrapper, "token_adapter"):  # LoRA's trainable_token_indices
        original = wrapper.token_adapter.base_layer
    elif hasattr(wrapper, "trainable_tokens_delta"):  # a TrainableTokensConfig layer
        original = wrapper.base_layer
    else:
        return 0
    inside = {id(m) for m in wrapper.modules()}
    changed = 0
    for module in list(base.modules()):
        if id(module) in inside:
            continue
        for name, child in list(module.named_children()):
            if child is original or (isinstance(child, nn.Embedding)
                                     and child.weight is original.weight):
                setattr(module, name, wrapper)
                changed += 1
    return changed


def fuse_gelu(model: nn.Module) -> int:
    """Replace every ``NewGELUActivation`` in ``model`` by ``GELUTanh`` (same function, one
    fused kernel; see the module docstring). Neither has weights, so checkpoints are
    unaffected.

    Returns:
        How many activations were replaced.
    """
    swaps = [(parent, name) for parent in model.modules()
             for name, child in parent.named_children() if isinstance(child, NewGELUActivation)]
    for parent, name in swaps:
        setattr(parent, name, GELUTanh())
    return len(swaps)


@dataclass
class DecodeState:
    """Key/value cache and masks of an incremental decode (batch of B rows).

    ``cross_bias``, ``self_bias`` and ``length`` belong to the direct T5 step
    (:meth:`LanguageModel.step`); ``cross_bias`` is None on the generic path.
    """

    cache: Any
    attention_mask: torch.Tensor            # (B, prefix) seq2seq; (B, seen) causal
    encoder_outputs: Any = None             # seq2seq only
    next_position: torch.Tensor | None = None  # (B,) causal only
    # Additive cross-attention mask, (B or 1, heads, 1, prefix): 0 at real prefix positions,
    # the dtype's minimum at padding (what transformers builds from the mask every step).
    cross_bias: torch.Tensor | None = None
    # Decoder relative position bias for query / key positions 0..n-1, (1, heads, n, n).
    self_bias: torch.Tensor | None = None
    length: int = 0                         # decoder tokens in the cache (direct T5 step)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search / finished rows): (B',)."""
        self.cache.reorder_cache(index)
        self.attention_mask = self.attention_mask[index]
        if self.encoder_outputs is not None:
            self.encoder_outputs.last_hidden_state = self.encoder_outputs.last_hidden_state[index]
        if self.next_position is not None:
            self.next_position = self.next_position[index]
        if self.cross_bias is not None and self.cross_bias.shape[0] > 1:
            self.cross_bias = self.cross_bias[index]


class LanguageModel(nn.Module):
    """A Hugging Face LM behind PixelLLM's prefix / targets interface.

    Args:
        cfg: the LM config.
        vocab_size: vocabulary size when the architecture does not fix it.
        new_token_ids: ids a location tokenizer added (see the module docstring): the
            embeddings grow to hold them and, with a frozen base, they train through peft's
            trainable tokens. Empty (default): the model as configured.
    """

    def __init__(self, cfg: LanguageModelConfig, vocab_size: int | None = None,
                 new_token_ids: Sequence[int] = ()) -> None:
        super().__init__()
        model = load_language_model(cfg, vocab_size)
        new_ids = sorted({int(i) for i in new_token_ids})
        if new_ids:
            resize_vocab(model, max(vocab_size or 0, new_ids[-1] + 1))
        fuse_gelu(model)
        hf = model.config
        self.is_encoder_decoder = bool(hf.is_encoder_decoder)
        if self.is_encoder_decoder != (cfg.family == "seq2seq"):
            raise ValueError(f"LanguageModelConfig.family={cfg.family!r} but {cfg.name!r} is "
                             f"{'an encoder-decoder' if hf.is_encoder_decoder else 'decoder-only'}")
        self.hidden_size = int(getattr(hf, "d_model", None) or hf.hidden_size)
        self.vocab_size = int(hf.vocab_size)
        self.pad_id = int(hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id)
        self.eos_id = int(hf.eos_token_id)
        if self.is_encoder_decoder:
            self.start_id = int(hf.decoder_start_token_id)
        else:
            self.start_id = int(hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id)
        if cfg.freeze_base:
            model.requires_grad_(False)
        # New rows of a frozen base train through peft's trainable tokens; an unfrozen
        # embedding trains them anyway.
        tokens = token_training_targets(model, new_ids) if new_ids and cfg.freeze_base else None
        if cfg.lora.r > 0:
            from peft import LoraConfig, get_peft_model

            extra = {"trainable_token_indices": tokens} if tokens else {}
            lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                              lora_dropout=cfg.lora.dropout,
                              target_modules=list(cfg.lora.target_modules), **extra)
            model = get_peft_model(model, lora)
            if not cfg.freeze_base:  # peft freezes the base; honour the config
                for name, p in model.named_parameters():
                    if "lora_" not in name:
                        p.requires_grad_(True)
        elif tokens:
            from peft import TrainableTokensConfig, get_peft_model

            model = get_peft_model(model, TrainableTokensConfig(
                target_modules=list(tokens), token_indices=new_ids))
        if tokens:
            share_wrapped_embeddings(model)
        self.model = model
        self._keep_arg = self._logits_to_keep_arg()
        #: Step T5 through its decoder blocks (see the module docstring); False: always
        #: through ``model(...)`` (the tests compare the two).
        self.direct_t5_steps = True

    def _logits_to_keep_arg(self) -> str | None:
        params = inspect.signature(self._base().forward).parameters
        return next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)

    def _base(self) -> PreTrainedModel:
        """The underlying transformers model (unwrapping peft)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def transformer_blocks(self) -> list[nn.Module]:
        """The LM's layers: the modules of the classes its ``transformers`` model names in
        ``_no_split_modules`` (``T5Block`` for T5: encoder and decoder blocks)."""
        names = set(getattr(self._base(), "_no_split_modules", None) or [])
        return [m for m in self.model.modules() if type(m).__name__ in names]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> input embeddings (B, T, D)."""
        return self.model.get_input_embeddings()(ids)

    # ------------------------------------------------------------------ training
    def forward(self, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass.

        Args:
            prefix: (B, P, D) visual tokens + embedded text prompt.
            prefix_mask: (B, P) 1 for real positions.
            labels: (B, L) target ids, ``-100`` at padding.

        Returns:
            logits (B, L, V) predicting ``labels``; hidden (B, L, D), where
            ``hidden[:, p]`` is the state that emits ``labels[:, p]``.
        """
        L = labels.shape[1]
        out = self.teacher_forced(prefix, prefix_mask, labels)
        if self.is_encoder_decoder:
            return out.logits, out.decoder_hidden_states[-1]
        return out.logits[:, -L:], out.hidden_states[-1][:, -L:]

    def teacher_forced(self, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                       labels: torch.Tensor, **outputs: Any) -> Any:
        """The ``transformers`` output of the teacher-forced pass (what :meth:`forward` reads).

        Args:
            prefix, prefix_mask, labels: as :meth:`forward`.
            **outputs: more output flags for the model call, e.g. ``output_attentions=True``
                (which needs eager attention: :mod:`pixelkit.analysis`).

        Returns:
            The model's output. Seq2seq: the decoder runs over ``[start, labels[:-1]]``
            (L positions; ``decoder_hidden_states``, ``cross_attentions`` ...). Causal: the
            sequence is ``[prefix (P), start, labels[:-1]]`` and target position p is
            sequence position ``P + p``; ``logits`` cover the last L positions only.
        """
        B, L = labels.shape
        targets = labels.masked_fill(labels == IGNORE_INDEX, self.pad_id)
        start = torch.full((B, 1), self.start_id, dtype=labels.dtype, device=labels.device)
        dec_ids = torch.cat([start, targets[:, :-1]], dim=1)                     # (B, L)
        if self.is_encoder_decoder:
            return self.model(inputs_embeds=prefix, attention_mask=prefix_mask,
                              decoder_input_ids=dec_ids, output_hidden_states=True,
                              use_cache=False, **outputs)
        dec_mask = torch.cat([torch.ones_like(start), (labels[:, :-1] != IGNORE_INDEX).long()], 1)
        embeds = torch.cat([prefix, self.embed(dec_ids).to(prefix.dtype)], dim=1)
        mask = torch.cat([prefix_mask.long(), dec_mask], dim=1)                  # (B, P+L)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        extra = {self._keep_arg: L} if self._keep_arg else {}
        return self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                          output_hidden_states=True, use_cache=False, **extra, **outputs)

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vocabulary head on final hidden states: (..., D) -> (..., V).

        T5 scales its final decoder state by ``d_model ** -0.5`` before the head when the
        config says so (``scale_decoder_outputs``); other models apply the head as it is.
        """
        base = self._base()
        if self.is_encoder_decoder and getattr(base.config, "scale_decoder_outputs", False):
            hidden = hidden * base.model_dim ** -0.5
        return base.get_output_embeddings()(hidden)

    # ------------------------------------------------------------------ decoding
    def _direct_t5(self) -> bool:
        """Whether :meth:`step` can call the T5 decoder blocks directly."""
        if not (self.direct_t5_steps and self.is_encoder_decoder):
            return False
        base = self._base()
        return (isinstance(base, T5ForConditionalGeneration)
                and base.decoder.config._attn_implementation in ("sdpa", "eager")
                and all(isinstance(b, T5Block) for b in base.decoder.block))

    def start(self, prefix: torch.Tensor, prefix_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, DecodeState]:
        """First decoding step from the start token, with a key/value cache.

        Returns: logits (B, V), hidden (B, D) of the state that emits the first token, and
        the state to pass to :meth:`step`.
        """
        B = prefix.shape[0]
        start = torch.full((B, 1), self.start_id, dtype=torch.long, device=prefix.device)
        if self.is_encoder_decoder:
            enc = self.model.get_encoder()(inputs_embeds=prefix, attention_mask=prefix_mask)
            if self._direct_t5():
                dec = self._base().decoder
                memory = enc.last_hidden_state
                heads, P = dec.config.num_heads, memory.shape[1]
                if bool(prefix_mask.bool().all()):
                    # No padding: only T5's zero cross-attention bias, as transformers adds.
                    cross = memory.new_zeros(1, heads, 1, P)
                else:
                    keep = prefix_mask.bool()[:, None, None, :]
                    cross = torch.where(keep, 0.0, torch.finfo(memory.dtype).min)
                    cross = cross.to(memory.dtype).expand(B, heads, 1, P).contiguous()
                cache = EncoderDecoderCache(DynamicCache(config=dec.config),
                                            DynamicCache(config=dec.config))
                state = DecodeState(cache, prefix_mask, encoder_outputs=enc, cross_bias=cross)
                logits, hidden = self._t5_step(state, start)
                return logits, hidden, state
            out = self.model(encoder_outputs=enc, attention_mask=prefix_mask,
                             decoder_input_ids=start, use_cache=True, output_hidden_states=True)
            state = DecodeState(out.past_key_values, prefix_mask, encoder_outputs=enc)
            return out.logits[:, -1], out.decoder_hidden_states[-1][:, -1], state
        embeds = torch.cat([prefix, self.embed(start).to(prefix.dtype)], dim=1)
        mask = torch.cat([prefix_mask.long(), torch.ones_like(start)], dim=1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        extra = {self._keep_arg: 1} if self._keep_arg else {}
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                         use_cache=True, output_hidden_states=True, **extra)
        state = DecodeState(out.past_key_values, mask, next_position=position_ids[:, -1] + 1)
        return out.logits[:, -1], out.hidden_states[-1][:, -1], state

    def _t5_step(self, state: DecodeState, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One T5 decoder step through the blocks: what ``T5Stack.forward`` and
        ``T5ForConditionalGeneration.forward`` do for one new token per row with a cache,
        without their per-call overhead.

        The self-attention mask is None: one query that sees every cached token (the decoder
        input has no padding), which is also what transformers passes then. The relative
        position bias of query position t is row t of a table computed once (the bias
        depends only on key - query), and the cross-attention mask is ``state.cross_bias``.
        """
        base = self._base()
        dec = base.decoder
        t = state.length
        if state.self_bias is None or state.self_bias.shape[-1] <= t:
            n = max(64, 2 * (t + 1))
            attn = dec.block[0].layer[0].SelfAttention
            state.self_bias = attn.compute_bias(n, n, device=ids.device)
        # (1, H, 1, t+1), contiguous once here rather than in every layer's attention.
        self_bias = state.self_bias[:, :, t:t + 1, :t + 1].contiguous()
        memory = state.encoder_outputs.last_hidden_state
        hidden = dec.dropout(dec.embed_tokens(ids))
        cache = {_T5_BLOCK_CACHE_ARG: state.cache}
        if _T5_BLOCK_TAKES_CACHE_POSITION:  # transformers < 5.x reads the query length from it
            cache["cache_position"] = torch.tensor([t], device=ids.device)
        for block in dec.block:
            hidden = block(hidden, None, self_bias, memory, None, state.cross_bias, **cache)[0]
        hidden = dec.dropout(dec.final_layer_norm(hidden))
        state.length = t + 1
        return self.vocab_logits(hidden)[:, -1], hidden[:, -1]

    def step(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one token per row (B,) and return the next logits (B, V), hidden (B, D)."""
        ids = tokens[:, None]
        if self.is_encoder_decoder:
            if state.cross_bias is not None:
                return self._t5_step(state, ids)
            out = self.model(encoder_outputs=state.encoder_outputs,
                             attention_mask=state.attention_mask, decoder_input_ids=ids,
                             past_key_values=state.cache, use_cache=True,
                             output_hidden_states=True)
            state.cache = out.past_key_values
            return out.logits[:, -1], out.decoder_hidden_states[-1][:, -1]
        state.attention_mask = torch.cat([state.attention_mask, torch.ones_like(ids)], dim=1)
        out = self.model(input_ids=ids, attention_mask=state.attention_mask,
                         position_ids=state.next_position[:, None], past_key_values=state.cache,
                         use_cache=True, output_hidden_states=True)
        state.cache = out.past_key_values
        state.next_position = state.next_position + 1
        return out.logits[:, -1], out.hidden_states[-1][:, -1]
