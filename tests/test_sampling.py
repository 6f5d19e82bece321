"""Autoregressive sampling helper and SmallCap.sample: the right distribution, masks after EOS,
log-probs equal to a teacher-forced recomputation, greedy equal to generate()."""

import pytest
import torch

from rslavis.models.decoding import sample_tokens

EOS, PAD = 0, 4


def _markov_step(table):
    """Step function of a first-order Markov chain: next logits depend on the last token only."""

    def step(tokens, state):
        return table[tokens], state + 1

    return step


def test_frequencies_match_the_distribution_at_each_temperature():
    torch.manual_seed(0)
    first = torch.tensor([-5.0, 1.0, 0.0, -1.0, -9.0])  # EOS almost never first
    table = torch.tensor([[0.0] * 5, [2.0, -1.0, 0.5, 0.0, -9.0], [0.0, 1.0, -1.0, 0.0, -9.0], [1.0, 1.0, 1.0, -2.0, -9.0], [0.0] * 5])
    rows = 40000
    for temp in (1.0, 0.7, 2.0):
        g = torch.Generator().manual_seed(1)
        res = sample_tokens(_markov_step(table), first.expand(rows, 5), 0, max_len=2, eos_token_id=EOS, pad_token_id=PAD,
                            temperature=temp, generator=g)
        p1 = torch.softmax(first / temp, -1)
        f1 = torch.bincount(res.token_ids[:, 0], minlength=5).float() / rows
        assert torch.allclose(f1, p1, atol=0.01), (temp, f1, p1)
        # second token, conditioned on the first: the step's state was used
        for prev in (1, 2):
            sel = res.token_ids[:, 0] == prev
            f2 = torch.bincount(res.token_ids[sel, 1], minlength=5).float() / sel.sum()
            assert torch.allclose(f2, torch.softmax(table[prev] / temp, -1), atol=0.02), (temp, prev)
        # not the argmax: the second most likely first token is drawn about as often as it should be
        assert f1[2] > 0.1


def test_mask_logprobs_and_padding_after_eos():
    torch.manual_seed(0)
    first = torch.tensor([1.0, 1.0, 1.0, 1.0, -9.0])
    table = torch.tensor([[0.5, 0.2, 0.1, 0.0, -9.0]] * 5)
    res = sample_tokens(_markov_step(table), first.expand(500, 5), 0, max_len=6, eos_token_id=EOS, pad_token_id=PAD, return_logits=True)
    ids, lp, mask = res.token_ids, res.logprobs, res.mask
    for r in range(len(ids)):
        hits = (ids[r] == EOS).nonzero()
        end = int(hits[0]) + 1 if len(hits) else ids.shape[1]
        assert mask[r, :end].eq(1).all() and mask[r, end:].eq(0).all()  # EOS itself is inside the mask
        assert ids[r, end:].eq(PAD).all() and lp[r, end:].eq(0).all()
        assert (lp[r, :end] < 0).all()
    assert (mask[:, -1] == 1).any() and (mask[:, -1] == 0).any()  # some rows ran to max_len, some stopped
    # log-probs are those of the returned (temperature-scaled) logits at the sampled tokens
    again = torch.log_softmax(res.logits, -1).gather(2, ids[..., None]).squeeze(-1) * mask
    assert torch.allclose(again, lp)


def test_min_len_blocks_eos_and_bad_arguments():
    first = torch.tensor([5.0, 0.0, 0.0, 0.0, -9.0])  # EOS is very likely
    table = torch.tensor([[5.0, 0.0, 0.0, 0.0, -9.0]] * 5)
    res = sample_tokens(_markov_step(table), first.expand(200, 5), 0, max_len=5, eos_token_id=EOS, pad_token_id=PAD, min_len=2)
    assert (res.token_ids[:, :2] != EOS).all()
    assert (res.token_ids[:, 2] == EOS).float().mean() > 0.9
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(_markov_step(table), first[None], 0, max_len=3, eos_token_id=EOS, pad_token_id=PAD, temperature=0)


# ---------------------------------------------------------------------------- SmallCap

CAPTIONS = ["two planes on a concrete area", "a ship in the sea", "three trees in farmland", "a building near a tree"] * 3


@pytest.fixture(scope="module")
def smallcap():
    from rslavis.models.smallcap.model import SmallCap
    from rslavis.models.tokenization import train_caption_tokenizer

    torch.manual_seed(0)
    cfg = {
        "vision": {"type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "decoder": {"n_positions": 48, "n_embd": 32, "n_layer": 2, "n_head": 2, "dropout": 0.1},
        "max_txt_len": 20,
    }
    model = SmallCap(cfg, tokenizer=train_caption_tokenizer(CAPTIONS, vocab_size=100))
    # a peaked, image-dependent output so that argmax and sampling differ visibly
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(20.0)
    return model.eval()


def _samples(n_images, prompts=None):
    g = torch.Generator().manual_seed(5)
    s = {"image": torch.rand(n_images, 3, 32, 32, generator=g)}
    if prompts is not None:
        s["text_input"] = prompts
    return s


def _teacher_forced_logprobs(model, samples, out, n, temperature):
    """Recompute the sampled tokens' log-probs with one full decoder pass."""
    enc = model.encode_image(samples["image"]).repeat_interleave(n, 0)
    ids, attn = model._left_padded_prompts(samples, len(samples["image"]))
    ids, attn = ids.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)
    width = ids.shape[1]
    full = torch.cat([ids, out.token_ids], 1)
    full_attn = torch.cat([attn, torch.ones_like(out.token_ids)], 1)
    pos = (full_attn.cumsum(-1) - 1).clamp_min(0)
    logits = model.decoder(input_ids=full, attention_mask=full_attn, position_ids=pos, encoder_hidden_states=enc).logits
    logp = torch.log_softmax(logits[:, width - 1 : -1] / temperature, -1)
    return logp.gather(2, out.token_ids[..., None]).squeeze(-1) * out.mask


@pytest.mark.parametrize("prompts", [None, ["", "an aerial image of"]])
def test_smallcap_logprobs_equal_teacher_forcing(smallcap, prompts):
    torch.manual_seed(1)
    samples = _samples(2, prompts)
    out = smallcap.sample(samples, n=3, temperature=0.8, max_len=10, return_logits=True)
    assert out.token_ids.shape[0] == 6 and len(out.captions) == 6
    assert out.logprobs.requires_grad and out.logits.shape[:2] == out.token_ids.shape
    recomputed = _teacher_forced_logprobs(smallcap, samples, out, 3, 0.8)
    assert torch.allclose(out.logprobs, recomputed, atol=1e-4)
    assert (out.logprobs[out.mask == 0] == 0).all()
    # gradients reach the encoder and the decoder
    (out.logprobs * out.mask).sum().backward()
    assert smallcap.visual_encoder.parameters().__next__().grad is not None
    assert smallcap.decoder.lm_head.weight.grad is not None
    smallcap.zero_grad(set_to_none=True)


def test_smallcap_greedy_sampling_equals_generate(smallcap):
    samples = _samples(3, ["", "an aerial image of", "two"])
    with torch.no_grad():
        greedy = smallcap.sample(samples, n=1, max_len=8, min_len=1, greedy=True)
    assert greedy.captions == smallcap.generate(samples, max_len=8, min_len=1)


def test_smallcap_samples_follow_the_model_not_its_argmax(smallcap):
    torch.manual_seed(2)
    samples = _samples(1)
    n = 3000
    with torch.no_grad():
        out = smallcap.sample(samples, n=n, max_len=1, temperature=8.0, return_logits=True)
        p = torch.softmax(out.logits[0, 0], -1)
    freq = torch.bincount(out.token_ids[:, 0], minlength=len(p)).float() / n
    assert p.max() < 0.9  # the test is meaningful: more than one likely token
    tv = 0.5 * (freq - p).abs().sum()
    assert tv < 0.08, tv  # an argmax decoder would sit near 1 - p.max()


def test_smallcap_causal_inherits_a_consistent_sample():
    """``smallcap_causal`` (a SmallCap subclass with its own encoder path and prompts) samples through the same code."""
    from rslavis.common.registry import registry
    from rslavis.models.tokenization import train_caption_tokenizer

    torch.manual_seed(0)
    cls = registry.get_model_class("smallcap_causal")
    cfg = {
        "vision": {"type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "decoder": {"n_positions": 64, "n_embd": 32, "n_layer": 1, "n_head": 2},
        "disable_rag": True, "contrastive": {"enabled": False}, "max_txt_len": 40,
    }
    model = cls(cfg, tokenizer=train_caption_tokenizer(CAPTIONS + ["this image shows"], vocab_size=100)).eval()
    samples = _samples(2)
    out = model.sample(samples, n=2, temperature=1.0, max_len=6)
    assert torch.allclose(out.logprobs, _teacher_forced_logprobs(model, samples, out, 2, 1.0), atol=1e-4)
    with torch.no_grad():
        assert model.sample(samples, max_len=6, min_len=1, greedy=True).captions == model.generate(samples, max_len=6, min_len=1)


def _exhaustive_best(first, table, max_len, length_penalty=1.0, min_len=0):
    """Reference for beam search: the best of every sequence of up to ``max_len`` tokens (ending at
    EOS or at ``max_len``) by ``sum log p / length**length_penalty``."""
    import itertools

    lp_first, lp_table = torch.log_softmax(first, -1), torch.log_softmax(table, -1)
    best, best_seq = -float("inf"), None
    vocab = [t for t in range(first.shape[0]) if t != PAD]
    for n in range(1, max_len + 1):
        for seq in itertools.product(vocab, repeat=n):
            if EOS in seq[:-1] or (seq[-1] != EOS and n < max_len) or (EOS in seq and seq.index(EOS) < min_len):
                continue
            score = float(lp_first[seq[0]]) + sum(float(lp_table[a, b]) for a, b in zip(seq, seq[1:]))
            score /= n ** length_penalty
            if score > best:
                best, best_seq = score, list(seq)
    return best_seq


@pytest.mark.parametrize("length_penalty, min_len", [(1.0, 0), (0.0, 0), (2.0, 0), (1.0, 2)])
def test_beam_search_finds_the_exhaustive_best(length_penalty, min_len):
    from rslavis.models.decoding import beam_search, greedy_tokens, reorder_state

    g = torch.Generator().manual_seed(3)
    first = torch.randn(5, generator=g) * 2
    table = torch.randn(5, 5, generator=g) * 2
    first[PAD] = table[:, PAD] = -30.0  # the pad token is never chosen
    b, nb, max_len = 2, 25, 4  # wide enough to keep every prefix: beam search is then exact
    state = torch.arange(b * nb)  # a per-row state: reordered with the beams
    out = beam_search(lambda tok, st: (table[tok], st), first.expand(b * nb, 5), state, batch_size=b, num_beams=nb,
                      max_len=max_len, eos_token_id=EOS, pad_token_id=PAD, min_len=min_len, length_penalty=length_penalty)
    want = _exhaustive_best(first, table, max_len, length_penalty, min_len)
    for row in out.tolist():
        assert row[: len(want)] == want and all(t == PAD for t in row[len(want):])
    # one beam is greedy decoding
    one = beam_search(lambda tok, st: (table[tok], st), first.expand(b, 5), None, batch_size=b, num_beams=1, max_len=max_len,
                      eos_token_id=EOS, pad_token_id=PAD, min_len=min_len)
    greedy = greedy_tokens(lambda tok, st: (table[tok], st), first.expand(b, 5), None, max_len, EOS, PAD, min_len=min_len)
    assert one.tolist() == greedy.tolist()
    mask, rest, tag = reorder_state((torch.tensor([5, 6]), {"k": [torch.tensor([1, 2])]}, "x"), torch.tensor([1, 1]))
    assert mask.tolist() == [6, 6] and rest["k"][0].tolist() == [2, 2] and tag == "x"
