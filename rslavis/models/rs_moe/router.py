"""RS-MoE's Instruction Router, the fusion of the experts' next-token distributions, and
the load-balancing loss.

The router reads the Q-Former's query outputs (which already depend on the image *and*
the instruction, as in InstructBLIP) pooled over the queries, and gives

- ``gates`` (B, K): a softmax over the K experts (optionally kept to the ``top_k``
  largest and renormalised); the gate is per sequence, not per token;
- ``probs`` (B, K): the full softmax, which the load-balancing loss reads;
- ``prompts`` (B, K, P, D): per expert, P soft prompt vectors in the LLM's embedding
  space: a learned per-expert base plus an image-conditioned shift.

Prompt modes: ``add`` (P = num_query_tokens) adds expert k's prompt to its visual tokens
through a zero-initialised gate ``tanh(scale_k)``, so a freshly built mixture of identical
experts is exactly the dense model (the sparsity-safe start of stage 1); ``prepend``
inserts the P prompt vectors as extra tokens after the visual ones (experts differ from
the first step, the mixture does not start equal to the dense model).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from rslavis.common.errors import ConfigError

PROMPT_MODES = ("add", "prepend")
FUSION_RULES = ("prob", "logit")


class InstructionRouter(nn.Module):
    def __init__(self, query_dim, llm_dim, num_experts, num_prompt_tokens, prompt_mode="add", top_k=None, temperature=1.0, init_std=0.02):
        super().__init__()
        if prompt_mode not in PROMPT_MODES:
            raise ConfigError(f"model.prompt_mode: {prompt_mode!r} is unknown; valid: {', '.join(PROMPT_MODES)}.")
        if top_k is not None and not 1 <= int(top_k) <= num_experts:
            raise ConfigError(f"model.top_k: {top_k} must be between 1 and num_experts={num_experts} (null: every expert).")
        if temperature <= 0:
            raise ConfigError(f"model.gate_temperature: {temperature} must be > 0.")
        self.num_experts, self.num_prompt_tokens, self.prompt_mode = int(num_experts), int(num_prompt_tokens), prompt_mode
        self.top_k = None if top_k is None else int(top_k)
        self.temperature = float(temperature)
        self.norm = nn.LayerNorm(query_dim)
        self.gate = nn.Linear(query_dim, num_experts)
        nn.init.zeros_(self.gate.weight)  # uniform gates at the start: no expert is favoured before training
        nn.init.zeros_(self.gate.bias)
        # distinct random bases: the experts' prompts differ as soon as they are let through
        self.prompt_base = nn.Parameter(torch.randn(num_experts, num_prompt_tokens, llm_dim) * init_std)
        self.prompt_cond = nn.Linear(query_dim, num_experts * llm_dim)
        nn.init.normal_(self.prompt_cond.weight, std=init_std / math.sqrt(query_dim))
        nn.init.zeros_(self.prompt_cond.bias)
        if prompt_mode == "add":
            self.prompt_scale = nn.Parameter(torch.zeros(num_experts))

    def forward(self, query):
        """``query`` (B, Q, Hq) -> ``(gates, probs, prompts)`` (see module docstring)."""
        pooled = self.norm(query.float().mean(1))
        probs = F.softmax(self.gate(pooled) / self.temperature, -1)
        gates = probs
        if self.top_k is not None and self.top_k < self.num_experts:
            top = probs.topk(self.top_k, -1)
            kept = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
            gates = kept / kept.sum(-1, keepdim=True)
        b, k = probs.shape
        prompts = self.prompt_base[None] + self.prompt_cond(pooled).view(b, k, 1, -1)
        if self.prompt_mode == "add":
            prompts = prompts * torch.tanh(self.prompt_scale).view(1, k, 1, 1)
        return gates, probs, prompts


def load_balancing_loss(probs):
    """``K * sum_k mean_b(probs[b, k])**2``: 1 when the batch's routing mass is spread evenly
    over the K experts (its minimum, by Cauchy-Schwarz), K when one expert takes all of it.
    The soft counterpart of Switch Transformer's ``K * sum_k f_k P_k`` with ``f = P``."""
    mean = probs.float().mean(0)
    return probs.shape[-1] * (mean * mean).sum()


def fuse(logits, gates, rule="prob"):
    """Next-token log-probabilities of the mixture.

    ``logits``: K tensors (R, ..., V) from the experts; ``gates`` (R, K). Rules:

    - ``prob``: ``log sum_k g_k softmax(z_k)``, a gated mixture of distributions;
    - ``logit``: ``log_softmax(sum_k g_k z_k)``, a gated product of experts.

    Both equal ``log_softmax(z)`` when every expert gives the same ``z``. Experts with gate
    0 (top-k routing) contribute nothing, without NaN gradients.
    """
    if rule not in FUSION_RULES:
        raise ConfigError(f"model.fusion: {rule!r} is unknown; valid: {', '.join(FUSION_RULES)}.")
    g = gates.float().t()  # (K, R)
    shape = (g.shape[0], g.shape[1]) + (1,) * (logits[0].dim() - 1)
    g = g.reshape(shape)
    if rule == "logit":
        return F.log_softmax((torch.stack([z.float() for z in logits]) * g).sum(0), -1)
    logp = torch.stack([F.log_softmax(z.float(), -1) for z in logits])
    log_g = torch.log(g.clamp_min(1e-30)).masked_fill(g <= 0, float("-inf"))
    return torch.logsumexp(logp + log_g, 0)
