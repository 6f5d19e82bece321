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

    # ------------------------------------------------------------------ decoding (BaseModel.generate/sample over step)
    STEP_LOGPROBS = True  # the mixture's normalised log-probabilities, not logits

    def decoding_start(self, samples, n):
        """First mixture log-probs (R, V) after every active expert's prefix (each sample ``n``
        times), and the decoding state; ``BaseModel.sample`` draws from the mixture (logprobs
        with gradients to the router, the projections, the trainable front and the LoRA
        adapters), ``BaseModel.generate`` beam-searches it."""
        enc = self.encode(samples).repeat_interleave(n)
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

    def step(self, tokens, state):
        caches, gates = state
        logits, new = [], {}
        for k, (mask, last, cache) in caches.items():
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            last = last + 1
            o = self.experts[k](input_ids=tokens[:, None], attention_mask=mask, position_ids=last, past_key_values=cache, use_cache=True)
            logits.append(o.logits[:, -1])
            new[k] = (mask, last, o.past_key_values)
        return fuse(logits, gates, self.fusion), (new, gates)

    # ------------------------------------------------------------------ ranking (InstructBlipBase.rank_answers)
    def answer_context(self, samples):
        enc = self.encode(samples)
        return enc, len(enc.prompts)

    def candidate_logprobs(self, enc, targets, target_mask, c):
        logp = self.target_logprobs(enc.repeat_interleave(c), targets, target_mask)
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
