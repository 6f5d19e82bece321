"""Weighted sums of registered rewards, built from a YAML ``rewards:`` mapping.

::

    rewards:
      cider: 1.0                       # name: weight
      sde: 0.5
      count: {weight: 0.2, mode: abs}  # name: {weight, normalize, **reward options}
      varentropy: {weight: 1.0, lam: 1.0e-4}   # loss term: kept apart from the sum

``build_reward(mapping, corpus=..., parser=...)`` returns a :class:`CombinedReward`.
Calling it returns ``total`` (float tensor (batch,)) = ``sum_k weight_k * r_k``;
:meth:`CombinedReward.compute` returns ``(total, {name: r_k})`` with each component
(after normalisation, before weighting) for logging. Loss terms (``is_loss_term``,
e.g. ``varentropy``) are not part of the sum: :meth:`CombinedReward.loss_term` gives
``(weight * term summed, stats)`` for the task's loss.

Shared options given to ``build_reward`` (``corpus``, ``parser``) reach every reward
that accepts them unless its own entry sets them: one corpus for ``cider`` and ``nkl``,
one parser (and parse cache) for ``sde`` and ``count``.

Running normalisation (``normalize: true`` on an entry, or ``normalize=True`` for all):
each component becomes ``(r - mean) / (std + 1e-8)`` with an exponential moving mean and
variance (``momentum`` 0.01) updated from every batch before normalising (the first batch
initialises them). Pass ``update_stats=False`` in ``extra`` for a batch that must not
move the statistics (e.g. the greedy baseline); it reaches every component as
``update_window=False``, so windowed rewards (``nkl``) leave such captions out too. An unknown name raises
:class:`~rslavis.common.errors.RegistryKeyError` listing the registered rewards and the
closest match.
"""

import inspect

import torch

from rslavis.common.errors import ConfigError, RegistryKeyError, RslavisError
from rslavis.common.registry import registry

SHARED_KEYS = ("corpus", "parser")
ENTRY_KEYS = ("weight", "normalize", "momentum")


class RunningNorm:
    """Exponential moving mean and variance of a reward, for z-scoring."""

    def __init__(self, momentum=0.01, eps=1e-8):
        self.momentum = float(momentum)
        self.eps = eps
        self.mean = None
        self.var = None

    def state_dict(self):
        return {"mean": self.mean, "var": self.var}

    def load_state_dict(self, state):
        self.mean, self.var = state.get("mean"), state.get("var")

    def __call__(self, values, update=True):
        x = values.double()
        finite = torch.isfinite(x)
        if update and not bool(finite.all()):  # never absorb NaN/inf: one would poison every later batch
            x = x[finite]
        if update and x.numel():
            m, v = float(x.mean()), float(x.var(unbiased=False)) if x.numel() > 1 else 0.0
            if self.mean is None:
                self.mean, self.var = m, v
            else:
                k = self.momentum
                self.var = (1 - k) * self.var + k * v + k * (1 - k) * (m - self.mean) ** 2
                self.mean = (1 - k) * self.mean + k * m
        if self.mean is None:
            return values
        return ((values.double() - self.mean) / (self.var**0.5 + self.eps)).to(values.dtype)


NONFINITE = ("error", "skip")


class NonFiniteRewardError(RslavisError):
    """A reward returned NaN or inf (``run.nonfinite_rewards: error``, the default)."""


class CombinedReward:
    """Weighted sum of rewards (see module docstring).

    ``nonfinite``: what a NaN or inf from a component does. ``error`` (default) raises
    :class:`NonFiniteRewardError` naming the reward and the caption; ``skip`` sets the
    sample's total to 0 and marks it in :attr:`last_valid` (a bool tensor), so the caller
    drops it from the loss and counts it. Running statistics never see such a value.
    """

    is_loss_term = False

    def __init__(self, components, loss_terms=None, nonfinite="error"):
        if nonfinite not in NONFINITE:
            raise ConfigError(f"run.nonfinite_rewards {nonfinite!r} is invalid; valid: {', '.join(NONFINITE)}.")
        self.components = components  # name -> (weight, reward, RunningNorm or None)
        self.loss_terms = loss_terms or {}  # name -> (weight, term)
        self.nonfinite = nonfinite
        self.last_components = {}
        self.last_valid = None

    def state_dict(self):
        """Each component's own state and its running normalisation statistics (exact resume)."""
        out = {}
        for name, (_, reward, norm) in self.components.items():
            out[name] = {"reward": reward.state_dict() if hasattr(reward, "state_dict") else {},
                         "norm": norm.state_dict() if norm is not None else None}
        for name, (_, term) in self.loss_terms.items():
            out[name] = {"reward": term.state_dict() if hasattr(term, "state_dict") else {}, "norm": None}
        return out

    def load_state_dict(self, state):
        for name, s in state.items():
            if name in self.components:
                _, reward, norm = self.components[name]
            elif name in self.loss_terms:
                reward, norm = self.loss_terms[name][1], None
            else:
                raise ConfigError(f"the checkpoint holds the state of reward {name!r}, which run.rewards no longer has; "
                                  "resume with the same rewards or start a new run.")
            if s.get("reward") and hasattr(reward, "load_state_dict"):
                reward.load_state_dict(s["reward"])
            if norm is not None and s.get("norm") is not None:
                norm.load_state_dict(s["norm"])

    @property
    def names(self):
        return list(self.components)

    def compute(self, generated, references, **extra):
        """``(total, {name: component})``: float tensors of shape (batch,)."""
        update = extra.pop("update_stats", True)
        extra["update_window"] = update  # windowed rewards (nkl) must not see baseline captions either
        b = len(generated)
        total = torch.zeros(b)
        parts = {}
        valid = torch.ones(b, dtype=torch.bool)
        for name, (w, reward, norm) in self.components.items():
            r = torch.as_tensor(reward(generated, references, **extra), dtype=torch.float32).reshape(-1)
            if r.numel() != b:
                raise ConfigError(f"reward {name!r} returned {r.numel()} values for {b} captions.")
            finite = torch.isfinite(r)
            if not bool(finite.all()):
                i = int((~finite).nonzero()[0])
                if self.nonfinite == "error":
                    raise NonFiniteRewardError(
                        f"reward {name!r} returned {float(r[i])} for caption {str(generated[i])[:120]!r} "
                        f"({int((~finite).sum())} of {b} values not finite); fix the reward, or set "
                        "run.nonfinite_rewards: skip to drop such samples from the loss (they are counted in the log)."
                    )
                valid &= finite
            if norm is not None:
                r = norm(r, update=update)
            r = torch.where(finite, r, torch.zeros_like(r))
            parts[name] = r
            total = total + w * r
        total = torch.where(valid, total, torch.zeros_like(total))
        self.last_components = parts
        self.last_valid = valid
        return total, parts

    def __call__(self, generated, references, **extra):
        return self.compute(generated, references, **extra)[0]

    def loss_term(self, logits_or_logprobs, mask=None):
        """``(sum of weight * term, stats)`` over the loss terms; ``(0.0 tensor, {})`` when none."""
        total = torch.zeros(())
        stats = {}
        for name, (w, term) in self.loss_terms.items():
            value, s = term(logits_or_logprobs, mask)
            total = total + w * value
            for k, v in s.items():
                stats[k if k not in stats else f"{name}/{k}"] = v
        return total, stats


def _parse_entry(name, spec):
    if spec is None:
        return 1.0, {}
    if isinstance(spec, bool):
        raise ConfigError(f"rewards.{name}: give a weight or a mapping with 'weight', got {spec!r}.")
    if isinstance(spec, (int, float)):
        return float(spec), {}
    try:
        opts = dict(spec)
    except (TypeError, ValueError):
        raise ConfigError(
            f"rewards.{name}: expected a number (weight) or a mapping {{weight, normalize, ...options}}, got {spec!r:.100}."
        ) from None
    try:
        w = float(opts.pop("weight", 1.0))
    except (TypeError, ValueError):
        raise ConfigError(f"rewards.{name}.weight must be a number.") from None
    return w, opts


def shared_options(cls, shared):
    """The options of ``shared`` (not None) that reward class ``cls`` takes (``corpus``, ``parser``...)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in shared.items() if v is not None and k in params}


def build_reward(mapping, normalize=False, momentum=0.01, reg=None, nonfinite="error", **shared):
    """:class:`CombinedReward` from a ``rewards:`` mapping (see module docstring).

    ``shared``: ``corpus`` (reference lists or caption file, for ``cider``/``nkl``) and
    ``parser`` (name or mapping, for ``sde``/``count``); ``reg`` is the registry to use.
    """
    reg = reg or registry
    if mapping is None or (hasattr(mapping, "__len__") and len(mapping) == 0):
        raise ConfigError("rewards: the mapping is empty; give e.g. {cider: 1.0}. Registered rewards: "
                          f"{', '.join(reg.list_rewards())}.")
    try:
        items = list(dict(mapping).items())
    except (TypeError, ValueError):
        raise ConfigError(f"rewards must be a mapping name: weight, got {mapping!r:.100}.") from None
    unknown_shared = set(shared) - set(SHARED_KEYS)
    if unknown_shared:
        raise ConfigError(f"build_reward: unknown shared option(s) {sorted(unknown_shared)}; valid: {', '.join(SHARED_KEYS)}.")
    components, loss_terms = {}, {}
    for name, spec in items:
        w, opts = _parse_entry(name, spec)
        norm_flag = bool(opts.pop("normalize", normalize))
        mom = float(opts.pop("momentum", momentum))
        try:
            cls = reg.get_reward_class(name)
        except RegistryKeyError as exc:
            raise RegistryKeyError(f"rewards: {exc}") from None
        opts = {**shared_options(cls, shared), **opts}
        try:
            reward = cls.from_config(opts)
        except TypeError as exc:
            raise ConfigError(f"rewards.{name}: bad option ({exc}).") from None
        if getattr(reward, "is_loss_term", False):
            loss_terms[name] = (w, reward)
        else:
            components[name] = (w, reward, RunningNorm(mom) if norm_flag else None)
    return CombinedReward(components, loss_terms, nonfinite=nonfinite)
