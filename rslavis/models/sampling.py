"""Autoregressive sampling with per-token log-probabilities, for SCST (``BaseModel.sample``).

:func:`sample_tokens` runs the decoding loop for any model that can give next-token
logits one step at a time; the model supplies only a ``step`` function (usually a
decoder call with a KV cache). How to implement ``sample`` on a new model::

    def sample(self, samples, n=1, temperature=1.0, max_len=30, min_len=0, return_logits=False, **kw):
        enc = self.encode_image(samples["image"]).repeat_interleave(n, 0)   # image-major rows
        ids, attn = <prompt ids of each image>.repeat_interleave(n, 0)      # left-padded
        out = self.decoder(input_ids=ids, attention_mask=attn, encoder_hidden_states=enc, use_cache=True)

        def step(tokens, state):                      # tokens: (R,) just sampled
            attn, cache = state
            attn = torch.cat([attn, attn.new_ones(len(attn), 1)], 1)
            o = self.decoder(input_ids=tokens[:, None], attention_mask=attn, past_key_values=cache, ...)
            return o.logits[:, -1], (attn, o.past_key_values)

        res = sample_tokens(step, out.logits[:, -1], (attn, out.past_key_values), max_len=max_len,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                            temperature=temperature, min_len=min_len, return_logits=return_logits)
        captions = tok.batch_decode(res.token_ids, skip_special_tokens=True)
        return res.to_sample_output([c.strip() for c in captions])

Run it with grad enabled (the SCST loss backpropagates through ``logprobs`` and
``logits``); it is also correct under ``torch.no_grad()``. Decoder-only LLMs with
left-padded prompts must pass ``position_ids`` in ``step`` (count of attended
positions), as :mod:`rslavis.models.smallcap.model` does; an encoder-decoder (T5) passes
``decoder_input_ids`` and the encoder outputs instead.

Conventions (shared with :class:`rslavis.models.base_model.SampleOutput`):

- tokens are drawn from ``softmax(logits / temperature)`` and ``logprobs`` are the log
  of that same distribution at the drawn token (the distribution sampled from, which is
  what the REINFORCE gradient needs; equal to the model's own at temperature 1);
  ``logits`` are ``logits / temperature`` with EOS at ``-inf`` before ``min_len``.
- ``mask`` is 1 up to and including the first EOS, 0 after it; after EOS the row holds
  ``pad_token_id`` and a log-prob of exactly 0. Rows without EOS run to ``max_len``.
- ``greedy=True`` takes the argmax instead of sampling (used to check that a model's
  ``step`` reproduces its ``generate``).
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
    """Sample one sequence per row (see module docstring).

    ``first_logits`` (R, V): next-token logits after the prompt. ``step(tokens, state) ->
    (logits (R, V), state)`` feeds the tokens just chosen (R,) and returns the logits of
    the next position; ``state`` is whatever the model carries (KV cache, attention
    mask). Finished rows keep being fed ``pad_token_id`` so the batch stays rectangular;
    the loop stops as soon as every row has emitted EOS, or after ``max_len`` tokens.
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
