"""Autoregressive decoding over one ``step(tokens, state)`` interface: greedy, sampling, beam search.

A model that does not delegate to transformers' ``generate`` supplies only

- ``first`` (R, V): next-token logits (or log-probabilities) after the prompt, and
- ``step(tokens, state) -> (logits (R, V), state)``: feed the tokens just chosen (R,) and
  return the next position's logits; ``state`` is whatever the model carries (KV cache,
  attention mask, positions).

:func:`sample_tokens` samples (or takes the argmax, ``greedy=True``) with per-token
log-probabilities for SCST and best-of-N; :func:`beam_search` keeps ``num_beams``
hypotheses per input and reorders ``state`` with :func:`reorder_state` (tensors are
indexed, transformers caches reordered in place) or the model's own ``reorder``.
A model supplies them as :meth:`~rslavis.models.base_model.BaseModel.decoding_start` and
:meth:`~rslavis.models.base_model.BaseModel.step`; ``BaseModel.generate`` (beam search) and
``BaseModel.sample`` then need nothing else::

    def decoding_start(self, samples, n):
        enc = self.encode_image(samples["image"]).repeat_interleave(n, 0)   # image-major rows
        ids, attn = <prompt ids of each image>.repeat_interleave(n, 0)      # left-padded
        out = self.decoder(input_ids=ids, attention_mask=attn, encoder_hidden_states=enc, use_cache=True)
        return out.logits[:, -1], (attn, out.past_key_values, enc)

    def step(self, tokens, state):
        attn, cache, enc = state
        attn = torch.cat([attn, attn.new_ones(len(attn), 1)], 1)
        o = self.decoder(input_ids=tokens[:, None], attention_mask=attn, past_key_values=cache, encoder_hidden_states=enc, ...)
        return o.logits[:, -1], (attn, o.past_key_values, enc)

Run it with grad enabled (the SCST loss backpropagates through ``logprobs`` and
``logits``); it is also correct under ``torch.no_grad()``. Decoder-only LLMs with
left-padded prompts must pass ``position_ids`` in ``step`` (count of attended positions).

Sampling conventions (shared with :class:`rslavis.models.base_model.SampleOutput`):

- tokens are drawn from ``softmax(logits / temperature)`` and ``logprobs`` are the log
  of that same distribution at the drawn token (what the REINFORCE gradient needs);
  ``logits`` are ``logits / temperature`` with EOS at ``-inf`` before ``min_len``.
- ``mask`` is 1 up to and including the first EOS, 0 after it; after EOS the row holds
  ``pad_token_id`` and a log-prob of exactly 0. Rows without EOS run to ``max_len``.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rslavis.models.base_model import SampleOutput


@dataclass
class SampledTokens:
    token_ids: torch.Tensor  # (R, T) long
    logprobs: torch.Tensor  # (R, T), grad
    mask: torch.Tensor  # (R, T) float
    logits: Optional[torch.Tensor] = None  # (R, T, V), grad

    def to_sample_output(self, captions):
        return SampleOutput(self.token_ids, self.logprobs, self.mask, list(captions), self.logits)


def sample_tokens(
    step: Callable,
    first_logits: torch.Tensor,
    state,
    max_len: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    min_len: int = 0,
    return_logits: bool = False,
    greedy: bool = False,
    generator: Optional[torch.Generator] = None,
) -> SampledTokens:
    """Sample one sequence per row (see module docstring); ``greedy=True`` takes the argmax.

    Finished rows keep being fed ``pad_token_id`` so the batch stays rectangular; the loop
    stops as soon as every row has emitted EOS, or after ``max_len`` tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use greedy=True for argmax decoding.")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    rows = first_logits.shape[0]
    device = first_logits.device
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens, logps, masks, kept = [], [], [], []
    logits = first_logits
    for t in range(max_len):
        scaled = logits.float() / temperature
        if t < min_len:
            scaled = scaled.clone()
            scaled[:, eos_token_id] = float("-inf")
        logp = torch.log_softmax(scaled, dim=-1)
        with torch.no_grad():
            if greedy:
                nxt = logp.argmax(-1)
            else:
                nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        alive = ~finished
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_token_id))
        tok_logp = logp.gather(1, nxt[:, None]).squeeze(1)
        tokens.append(nxt)
        logps.append(torch.where(alive, tok_logp, torch.zeros_like(tok_logp)))
        masks.append(alive.float())
        if return_logits:
            kept.append(scaled)
        finished = finished | (nxt == eos_token_id)
        if bool(finished.all()) or t == max_len - 1:
            break
        logits, state = step(nxt, state)
    return SampledTokens(
        token_ids=torch.stack(tokens, 1),
        logprobs=torch.stack(logps, 1),
        mask=torch.stack(masks, 1),
        logits=torch.stack(kept, 1) if return_logits else None,
    )


@torch.no_grad()
def greedy_tokens(step, first_logits, state, max_len, eos_token_id, pad_token_id, min_len=0):
    """Argmax decoding: token ids (R, T), ``pad_token_id`` after each row's EOS."""
    return sample_tokens(step, first_logits, state, max_len, eos_token_id, pad_token_id, min_len=min_len, greedy=True).token_ids


def reorder_state(state, index):
    """``state`` with its rows taken at ``index``: tensors indexed, transformers caches reordered in
    place (``reorder_cache``), tuples/lists/dicts recursed, anything else kept."""
    if isinstance(state, torch.Tensor):
        return state[index]
    if hasattr(state, "reorder_cache"):
        state.reorder_cache(index)
        return state
    if isinstance(state, dict):
        return {k: reorder_state(v, index) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(reorder_state(v, index) for v in state)
    return state


@torch.no_grad()
def beam_search(
    step: Callable,
    first: torch.Tensor,
    state,
    batch_size: int,
    num_beams: int,
    max_len: int,
    eos_token_id: int,
    pad_token_id: int,
    min_len: int = 0,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
    logprobs: bool = False,
    reorder: Callable = reorder_state,
) -> torch.Tensor:
    """The best of ``num_beams`` hypotheses per input: token ids (batch_size, T), padded after EOS.

    Rows of ``first`` and ``state`` are ``batch_size * num_beams``, input-major (each input
    repeated ``num_beams`` times). ``logprobs=True``: ``step`` already returns normalised
    log-probabilities (a mixture), else logits (log-softmaxed here). Finished beams stay in
    the beam set, extended by padding at no cost; the best final beam maximises
    ``sum log p / length**length_penalty``. ``repetition_penalty`` multiplies the (negative)
    log-probability of tokens already in the beam, then renormalises. ``num_beams=1`` is greedy.
    """
    b, nb = int(batch_size), max(1, int(num_beams))
    rows = b * nb
    if first.shape[0] != rows:
        raise ValueError(f"beam_search: {first.shape[0]} rows for batch_size {b} x num_beams {nb}.")
    device = first.device
    scores = torch.zeros(b, nb, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    seqs = torch.zeros(rows, 0, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    out = first
    for t in range(int(max_len)):
        logp = out.float().clone() if logprobs else torch.log_softmax(out.float(), -1)
        if repetition_penalty != 1.0 and seqs.shape[1]:
            seen = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, seqs, True)
            logp = torch.log_softmax(torch.where(seen, logp * float(repetition_penalty), logp), -1)
        if t < int(min_len):
            logp[:, eos_token_id] = float("-inf")
        logp[finished] = float("-inf")
        logp[finished, pad_token_id] = 0.0
        vocab = logp.shape[1]
        top, idx = (scores.reshape(rows, 1) + logp).view(b, nb * vocab).topk(nb, 1)
        src = (torch.arange(b, device=device)[:, None] * nb + idx // vocab).reshape(-1)
        token = (idx % vocab).reshape(-1)
        seqs = torch.cat([seqs[src], token[:, None]], 1)
        finished = finished[src] | (token == eos_token_id)
        scores = top
        if bool(finished.all()) or t == int(max_len) - 1:
            break
        out, state = step(token, reorder(state, src))
    is_eos = seqs == eos_token_id
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # positions after the first EOS
    lengths = (~after).sum(1).clamp(min=1).float()
    final = scores.reshape(-1) / lengths.pow(float(length_penalty))
    best = final.view(b, nb).argmax(1) + torch.arange(b, device=device) * nb
    return seqs[best].masked_fill(after[best], pad_token_id)


def generate_kwargs(max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0):
    """transformers ``generate`` keyword arguments of the generation settings a task passes to
    ``model.generate`` (greedy or beam search), for the models that delegate decoding to it."""
    return dict(
        max_new_tokens=int(max_len), min_new_tokens=int(min_len), num_beams=int(num_beams),
        repetition_penalty=float(repetition_penalty), length_penalty=float(length_penalty), do_sample=False,
    )
