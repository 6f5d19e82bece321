"""Varentropy loss term: penalise uncertain-and-erratic token distributions.

Definition, at each generated position ``t`` with token distribution ``p_t``:
entropy ``H_t = -sum_v p_t(v) log p_t(v)`` and varentropy
``V_t = sum_v p_t(v) (log p_t(v) + H_t)^2`` (the variance of the surprisal). Over the
positions of the mask, ``H`` and ``V`` are the means, and the term added to the loss is
``lambda * V / (H + eps)`` (``lambda`` 1e-4, ``eps`` 1e-6). It is differentiable with
respect to the logits.

Call: ``term(logits_or_logprobs, mask=None) -> (loss_term, stats)``. The first argument
is ``(batch, steps, vocab)`` logits or log-probabilities (``log_softmax`` is applied,
which leaves log-probabilities unchanged). Given only the ``(batch, steps)``
log-probabilities of the sampled tokens, it uses the Monte-Carlo estimates
``H ~ mean(-log p)`` and ``V ~ var(-log p)`` over the masked positions. ``mask`` is
``(batch, steps)``, true/1 at generated positions. ``stats`` holds floats ``entropy``,
``varentropy`` and ``varentropy_term`` for logging.
"""

import torch

from rslavis.common.errors import DataError
from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward


@registry.register_reward("varentropy")
class VarentropyTerm(BaseReward):
    """Varentropy loss term (see module docstring). Config: ``lam`` (alias ``lambda``, 1e-4), ``eps`` (1e-6)."""

    is_loss_term = True

    def __init__(self, lam=1e-4, eps=1e-6, **kwargs):
        if "lambda" in kwargs:
            lam = kwargs.pop("lambda")
        if kwargs:
            from rslavis.common.errors import ConfigError

            raise ConfigError(f"varentropy: unknown option(s) {sorted(kwargs)}; valid: lam (or lambda), eps.")
        self.lam = float(lam)
        self.eps = float(eps)

    def __call__(self, logits_or_logprobs, mask=None, **extra):
        x = torch.as_tensor(logits_or_logprobs)
        if not torch.is_floating_point(x):
            x = x.float()
        if x.dim() not in (2, 3):
            raise DataError(
                f"varentropy: expected (batch, steps, vocab) logits or (batch, steps) log-probs, got shape {tuple(x.shape)}."
            )
        if mask is None:
            m = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        else:
            m = torch.as_tensor(mask, device=x.device).to(x.dtype)
            if m.shape != x.shape[:2]:
                raise DataError(f"varentropy: mask shape {tuple(m.shape)} must equal {tuple(x.shape[:2])}.")
        n = m.sum().clamp_min(1.0)
        if x.dim() == 3:
            logp = torch.log_softmax(x, dim=-1)
            p = logp.exp()
            finite = torch.isfinite(logp)
            safe = torch.where(finite, logp, torch.zeros_like(logp))
            h_t = -(p * safe).sum(-1)
            v_t = (p * (safe + h_t.unsqueeze(-1)) ** 2).sum(-1)
            h = (h_t * m).sum() / n
            v = (v_t * m).sum() / n
        else:
            s = torch.where(torch.isfinite(x), -x, torch.zeros_like(x))
            h = (s * m).sum() / n
            v = (((s - h) ** 2) * m).sum() / n
        h = torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
        v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
        term = self.lam * v / (h + self.eps)
        term = torch.nan_to_num(term, nan=0.0, posinf=0.0, neginf=0.0)
        stats = {"entropy": float(h.detach()), "varentropy": float(v.detach()), "varentropy_term": float(term.detach())}
        return term, stats

    term = __call__
