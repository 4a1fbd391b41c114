"""Decoding: cached = uncached, beam 1 = greedy, batched = one by one, per-token points.

Models are tiny and briefly fitted to four captions of different lengths, so rows end
with EOS at different steps (the paths that drop finished rows and close beams run).
"""

from __future__ import annotations

import pytest
import torch
from test_modeling import GPT2, LLAMA, tiny_config

from pixelkit import PixelLLM
from pixelkit.decoding import DecodeOptions, beam_search, decode, greedy_decode

FAMILIES = {"t5": ("seq2seq", None), "llama": ("causal", LLAMA), "gpt2": ("causal", GPT2)}
LENGTHS = [2, 4, 5, 7]  # target tokens per image (EOS after them)
ATOL = 1e-5



def _fitted(family: str, arch: dict | None) -> tuple[PixelLLM, torch.Tensor, torch.Tensor]:
    """A tiny model fitted for 30 steps to ragged captions; its (prefix, mask) for 4 prompts
    with text prompts of different lengths (padded)."""
    torch.manual_seed(0)
    model = PixelLLM(tiny_config(family, arch))
    images = torch.rand(4, 3, 64, 64)
    labels = torch.full((4, 8), -100)
    for i, n in enumerate(LENGTHS):
        labels[i, :n] = torch.randint(3, 30, (n,))
        labels[i, n] = 1  # EOS
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        model(images, labels=labels).loss.backward()
        opt.step()
    model.eval()
    prompt = torch.tensor([[34, 30, 5], [34, 30, 0], [34, 0, 0], [5, 6, 7]])
    with torch.no_grad():
        visual = model.visual_tokens(model.encode_image(images))
        prefix, mask = model.prefix(visual, prompt, (prompt != 0).long())
    return model, prefix, mask


@pytest.fixture(scope="module", params=list(FAMILIES))
def fitted(request):
    return _fitted(*FAMILIES[request.param])


def _same(a, b, atol: float = ATOL) -> None:
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.points, b.points, atol=atol, rtol=0)
    torch.testing.assert_close(a.eos_points, b.eos_points, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)


def test_rows_end_at_different_steps(fitted) -> None:
    model, prefix, mask = fitted
    g = greedy_decode(model, prefix, mask, max_new_tokens=10)
    assert len(set(g.lengths.tolist())) > 1  # the fixture does what it promises
    assert (g.lengths < 10).any()


def test_cached_equals_uncached(fitted) -> None:
    model, prefix, mask = fitted
    _same(greedy_decode(model, prefix, mask, 10),
          greedy_decode(model, prefix, mask, 10, use_cache=False))
    _same(beam_search(model, prefix, mask, 3, 10),
          beam_search(model, prefix, mask, 3, 10, use_cache=False))


def test_beam_size_one_is_greedy(fitted) -> None:
    model, prefix, mask = fitted
    _same(beam_search(model, prefix, mask, num_beams=1, max_new_tokens=10),
          greedy_decode(model, prefix, mask, 10))


def test_batched_equals_one_by_one(fitted) -> None:
    model, prefix, mask = fitted
    for opts in (DecodeOptions(max_new_tokens=10), DecodeOptions(max_new_tokens=10, num_beams=3)):
        batched = decode(model, prefix, mask, opts)
        for i in range(len(prefix)):
            one = decode(model, prefix[i:i + 1], mask[i:i + 1], opts)
            assert torch.equal(one.tokens[0], batched.tokens[i])
            torch.testing.assert_close(one.points[0], batched.points[i], atol=ATOL, rtol=0)
            torch.testing.assert_close(one.eos_points[0], batched.eos_points[i], atol=ATOL, rtol=0)


def test_points_follow_the_convention(fitted) -> None:
    """Token t's point is the point head on the state whose input is token t; the EOS point
    is the state that emits EOS: check both against a teacher-forced pass."""
    model, prefix, mask = fitted
    g = greedy_decode(model, prefix, mask, 10)
    lm = model.language_model
    for i in range(len(prefix)):
        n = int(g.lengths[i])
        # [tokens, EOS]: the last position's input is the last token whether or not the
        # row ended with EOS (its label is never an input).
        labels = torch.cat([g.tokens[i, :n], torch.tensor([lm.eos_id])])[None]
        with torch.no_grad():
            _, hidden = lm(prefix[i:i + 1], mask[i:i + 1], labels)
            pts = model.point_head(hidden)[0]                    # (n + 1, 4): pts[p] locates p - 1
        torch.testing.assert_close(g.points[i, :n], pts[1:], atol=ATOL, rtol=0)
        # EOS emitted by the state that has read the last token (a row cut at the maximum
        # length: that same state stands in).
        torch.testing.assert_close(g.eos_points[i], pts[n], atol=ATOL, rtol=0)
        assert (g.points[i, n:] == 0).all()


def test_beams_carry_their_points(fitted) -> None:
    """The returned beam's points equal a teacher-forced pass over the returned tokens."""
    model, prefix, mask = fitted
    b = beam_search(model, prefix, mask, num_beams=3, max_new_tokens=10, length_penalty=0.5)
    lm = model.language_model
    for i in range(len(prefix)):
        n = int(b.lengths[i])
        labels = torch.cat([b.tokens[i, :n], torch.tensor([lm.eos_id])])[None]
        with torch.no_grad():
            logits, hidden = lm(prefix[i:i + 1], mask[i:i + 1], labels)
        pts = model.point_head(hidden)[0]
        torch.testing.assert_close(b.points[i, :n], pts[1:], atol=ATOL, rtol=0)
        torch.testing.assert_close(b.eos_points[i], pts[n], atol=ATOL, rtol=0)
        logp = torch.log_softmax(logits[0].float(), -1).gather(1, labels[0, :, None])[:, 0]
        # The score sums the tokens' log-probabilities, and EOS's when the beam ended with it.
        expected = logp.sum() if n < 10 else logp[:n].sum()
        torch.testing.assert_close(b.scores[i], expected, atol=1e-4, rtol=1e-5)


def test_forced_length_and_no_points(fitted) -> None:
    model, prefix, mask = fitted
    forced = greedy_decode(model, prefix, mask, 6, min_new_tokens=6)
    assert forced.lengths.tolist() == [6] * len(prefix)
    assert (forced.tokens != model.language_model.eos_id).all()
    torch.testing.assert_close(forced.eos_points, forced.points[:, -1])  # no EOS: last token
    bare = greedy_decode(model, prefix, mask, 6, with_points=False, min_new_tokens=6)
    assert torch.equal(bare.tokens, forced.tokens) and bare.points is None
    with pytest.raises(ValueError, match="min_new_tokens"):
        DecodeOptions(max_new_tokens=4, min_new_tokens=5)


@pytest.fixture(scope="module")
def t5():
    return _fitted(*FAMILIES["t5"])


def test_direct_t5_steps_equal_the_model_forward(t5) -> None:
    """T5 steps through its decoder blocks (no ``model(...)`` per step): the same logits and
    states as the generic ``model(...)`` step, with padded prompts, a row reorder and more
    steps than the relative-position-bias table first holds (64)."""
    model, prefix, mask = t5
    lm = model.language_model
    assert lm._direct_t5() and not bool(mask.bool().all())  # padded prompts in the fixture
    steps, index = 70, torch.tensor([3, 1, 1, 0])
    ids = torch.randint(3, 30, (len(prefix), steps))

    def run() -> tuple[list[torch.Tensor], list[torch.Tensor], object]:
        logits, hidden, state = lm.start(prefix, mask)
        ls, hs = [logits], [hidden]
        for t in range(steps):
            if t == 5:
                state.reorder(index)
            tok = ids[:, t] if t < 5 else ids[index, t]
            logits, hidden = lm.step(state, tok)
            ls.append(logits)
            hs.append(hidden)
        return ls, hs, state

    with torch.no_grad():
        lm.direct_t5_steps = False
        try:
            ref_l, ref_h, ref_state = run()
        finally:
            lm.direct_t5_steps = True
        new_l, new_h, new_state = run()
    assert ref_state.cross_bias is None and new_state.cross_bias is not None
    assert new_state.self_bias.shape[-1] > steps
    for a, b in zip(new_l + new_h, ref_l + ref_h):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # Decoding (greedy and beams) through either step.
    lm.direct_t5_steps = False
    try:
        ref = [greedy_decode(model, prefix, mask, 10), beam_search(model, prefix, mask, 3, 10)]
    finally:
        lm.direct_t5_steps = True
    _same(greedy_decode(model, prefix, mask, 10), ref[0], atol=1e-6)
    _same(beam_search(model, prefix, mask, 3, 10), ref[1], atol=1e-6)
