"""Token attention and the causal-intervention block, on encoder tokens ``(B, N, D)``.

:class:`TokenAttention` gates the tokens by channel (CBAM's channel attention: a shared
MLP over the token-mean and token-max, sigmoid) and by position (a per-token sigmoid
score), so the decoder can down-weight uninformative patches and channels.

:class:`CausalBlock` separates each token into an *object* and a *context* part and
adds an intervention on the context, the backdoor-adjustment idea behind causal
captioners: a caption model that has learned "apron => plane" from co-occurrence should
see object evidence paired with contexts of *other* images.

- An attention MLP gives every token two weights (softmax): object and context.
- Each branch has its own projection: ``obj = W_o(a_o * x)``, ``ctx = W_c(a_c * x)``.
- Counterfactual: ``cf = obj + ctx[perm]`` with ``perm`` a random permutation of the
  batch (training). In eval the shuffled context is replaced by its expectation, a
  running mean of the context features kept like BatchNorm's statistics, so a caption
  does not depend on which other images share its batch and eval is deterministic.
- Output: ``w_ctx * ctx + w_obj * obj + w_cf * cf`` (0.3, 0.3, 0.4 by default).
"""

import torch
from torch import nn


class TokenAttention(nn.Module):
    """Channel then spatial (per-token) sigmoid gates over ``(B, N, D)`` tokens."""

    def __init__(self, dim, reduction=4):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.spatial = nn.Linear(2 * dim, 1)

    def forward(self, x):
        gate_c = torch.sigmoid(self.channel_mlp(x.mean(1)) + self.channel_mlp(x.amax(1)))  # (B, D)
        x = x * gate_c.unsqueeze(1)
        # a token's score sees the token and the image's mean token (its context)
        ctx = x.mean(1, keepdim=True).expand_as(x)
        gate_s = torch.sigmoid(self.spatial(torch.cat([x, ctx], dim=-1)))  # (B, N, 1)
        return x * gate_s


class CausalBlock(nn.Module):
    """Object/context split with a batch-permuted context intervention (module docstring)."""

    def __init__(self, dim, hidden=None, weights=(0.3, 0.3, 0.4), momentum=0.1):
        super().__init__()
        hidden = hidden or max(1, dim // 2)
        self.weight_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 2))
        self.object_proj = nn.Linear(dim, dim)
        self.context_proj = nn.Linear(dim, dim)
        w = [float(v) for v in weights]
        if len(w) != 3:
            raise ValueError(f"causal block weights must be three numbers (context, object, counterfactual), got {weights!r}")
        self.w_ctx, self.w_obj, self.w_cf = w
        self.momentum = float(momentum)
        self.register_buffer("context_mean", torch.zeros(dim))
        self.last_permutation = None  # the permutation of the last training forward (tests, debugging)

    def split(self, x):
        """``(object, context)`` features of ``x`` (B, N, D)."""
        a = torch.softmax(self.weight_mlp(x), dim=-1)
        return self.object_proj(a[..., :1] * x), self.context_proj(a[..., 1:] * x)

    def forward(self, x, permutation=None):
        obj, ctx = self.split(x)
        if self.training:
            perm = permutation if permutation is not None else torch.randperm(x.shape[0], device=x.device)
            self.last_permutation = perm
            other = ctx[perm]
            with torch.no_grad():
                self.context_mean.lerp_(ctx.detach().mean((0, 1)).to(self.context_mean.dtype), self.momentum)
        else:
            other = self.context_mean.to(ctx.dtype).expand_as(ctx)
        cf = obj + other
        return self.w_ctx * ctx + self.w_obj * obj + self.w_cf * cf
