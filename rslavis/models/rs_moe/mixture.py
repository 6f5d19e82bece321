"""RS-MoE's mixture: the gated combination of the experts' next-token distributions in teacher
forcing (training, answer ranking) and in decoding (greedy/beam and SCST sampling, through
:mod:`rslavis.models.decoding`). See :mod:`rslavis.models.rs_moe.model`.
"""

from dataclasses import dataclass
from typing import List

import torch

from rslavis.models.rs_moe.router import fuse


@dataclass
class Encoded:
    """What the experts condition on, per row: instructions, gates and each expert's visual/prompt tokens."""

    prompts: List[str]
    gates: torch.Tensor  # (R, K) fusion weights
    probs: torch.Tensor  # (R, K) full softmax (load balancing)
    features: List[torch.Tensor]  # K x (R, S, D): what fills the image slots of expert k

    def repeat_interleave(self, n):
        if n == 1:
            return self
        return Encoded(
            [p for p in self.prompts for _ in range(n)], self.gates.repeat_interleave(n, 0), self.probs.repeat_interleave(n, 0),
            [f.repeat_interleave(n, 0) for f in self.features],
        )


class MixtureDecoding:
    """The mixture half of :class:`~rslavis.models.rs_moe.model.RSMoE` (a mixin over its ``experts``,
    ``prefix_ids``, ``_embed``, ``_active`` and ``fusion``)."""

    def expert_target_logits(self, enc, targets, target_mask, experts=None):
        """Per expert, logits (R, T, V) predicting ``targets`` (R, T) after its prefix.

        With ``top_k`` routing only the rows routed to expert k go through it (the other
        rows get zero logits, which their gate of 0 removes from the mixture)."""
        out = {}
        for k in experts if experts is not None else self._active(enc.gates):
            rows = (enc.gates[:, k] > 0).nonzero().flatten()
            part = len(rows) < len(enc.prompts)
            pick = (lambda t: t[rows]) if part else (lambda t: t)  # noqa: E731
            ids, mask = self.prefix_ids(k, [enc.prompts[i] for i in rows.tolist()] if part else enc.prompts)
            expert = self.experts[k]
            emb = torch.cat([self._embed(k, ids, pick(enc.features[k])), expert.get_input_embeddings()(pick(targets))], 1)
            full = torch.cat([mask, pick(target_mask)], 1)
            width = ids.shape[1]
            logits = expert(inputs_embeds=emb, attention_mask=full, position_ids=self._position_ids(full)).logits
            logits = logits[:, width - 1 : width - 1 + targets.shape[1]]
            if part:
                logits = logits.new_zeros(len(enc.prompts), *logits.shape[1:]).index_copy(0, rows, logits)
            out[k] = logits
        return out

    def target_logprobs(self, enc, targets, target_mask):
        """Mixture log-probabilities (R, T, V) of the next token at each target position."""
        per = self.expert_target_logits(enc, targets, target_mask)
        ks = sorted(per)
        return fuse([per[k] for k in ks], enc.gates[:, ks], self.fusion)

    def _start(self, enc):
        """First mixture log-probs (R, V) after every active expert's prefix, and the decoding state."""
        ks = self._active(enc.gates)
        logits, caches = [], {}
        for k in ks:
            ids, mask = self.prefix_ids(k, enc.prompts)
            pos = self._position_ids(mask)
            o = self.experts[k](inputs_embeds=self._embed(k, ids, enc.features[k]), attention_mask=mask, position_ids=pos, use_cache=True)
            logits.append(o.logits[:, -1])
            caches[k] = (mask, pos[:, -1:], o.past_key_values)
        gates = enc.gates[:, ks]
        return fuse(logits, gates, self.fusion), (caches, gates)

    def _step(self, tokens, state):
        caches, gates = state
        logits, new = [], {}
        for k, (mask, last, cache) in caches.items():
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            last = last + 1
            o = self.experts[k](input_ids=tokens[:, None], attention_mask=mask, position_ids=last, past_key_values=cache, use_cache=True)
            logits.append(o.logits[:, -1])
            new[k] = (mask, last, o.past_key_values)
        return fuse(logits, gates, self.fusion), (new, gates)

    def sample(self, samples, n=1, temperature=1.0, max_len=30, min_len=0, return_logits=False, greedy=False, generator=None, **kwargs):
        """``n`` captions per image (image-major rows) sampled from the mixture with
        :func:`rslavis.models.decoding.sample_tokens`; ``logprobs``/``logits`` are those of the
        mixture (scaled by ``temperature``), with gradients to the router, the projections,
        the trainable front and the LoRA adapters."""
        from rslavis.models.decoding import sample_tokens

        enc = self.encode(samples).repeat_interleave(n)
        first, state = self._start(enc)
        tok = self.tokenizer
        res = sample_tokens(
            self._step, first, state, max_len=int(max_len), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            temperature=float(temperature), min_len=int(min_len), return_logits=return_logits, greedy=greedy, generator=generator,
        )
        return res.to_sample_output(self._decode(res.token_ids))

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        """Beam search over the mixture's log-probabilities (``num_beams=1``: greedy), with
        :func:`rslavis.models.decoding.beam_search` (finished beams kept at no cost, best final
        beam by ``sum log p / length**length_penalty``)."""
        from rslavis.models.decoding import beam_search

        enc = self.encode(samples)
        b, nb = len(enc.prompts), max(1, int(num_beams))
        logp, state = self._start(enc.repeat_interleave(nb))
        tok = self.tokenizer
        out = beam_search(
            self._step, logp, state, batch_size=b, num_beams=nb, max_len=int(max_len), eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, min_len=int(min_len), repetition_penalty=float(repetition_penalty),
            length_penalty=float(length_penalty), logprobs=True,
        )
        return self._decode(out)

    # ------------------------------------------------------------------ ranking (InstructBlipBase.rank_answers)
    def answer_context(self, samples):
        enc = self.encode(samples)
        return enc, len(enc.prompts)

    def candidate_logprobs(self, enc, targets, target_mask, c):
        logp = self.target_logprobs(enc.repeat_interleave(c), targets, target_mask)
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
