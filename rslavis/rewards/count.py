"""Count error between the generated caption and the references.

Definition: over the objects that both the generated caption and the references count
(an exact count on both sides, after synonym and fuzzy matching), the mean absolute
error ``mean |n_gen - n_ref|`` and the mean signed error ``mean (n_gen - n_ref)``
(positive: the caption over-counts). Worked example: "There are four planes and three
buildings." against "There are five planes and one building." gives
``(|4-5| + |3-1|) / 2 = 1.5`` absolute and ``((4-5) + (3-1)) / 2 = 0.5`` signed.

As a reward (``mode``): ``abs`` (default) is ``-abs_error``; ``squared`` is
``-mean squared error``; ``relative`` is ``-mean |n_gen - n_ref| / n_ref``; ``exact`` is
the share of compared objects with the exact count; all multiplied by ``scale``.

Objects the references count but the caption does not (``missing``): with ``zero``
(the default) such an object is compared as if the caption had said 0, so leaving a
count out costs as much as saying "none". Without it, omitting every count would score
the best possible value and SCST learns exactly that (``bench/scst_gain.py`` showed it:
with ``missing: ignore`` the policy stopped stating counts). ``ignore`` compares only the
objects counted on both sides, as the metric does. A caption with nothing to compare
gets ``empty_value`` (0.0).
"""

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.rewards._objects import ObjectRewardMixin
from rslavis.rewards.base_reward import BaseReward

MODES = ("abs", "squared", "relative", "exact")
MISSING = ("zero", "ignore")


def count_pairs(generated_objects, reference_counts, match):
    """``[(n_gen, n_ref)]`` for the objects counted on both sides."""
    pairs = []
    for obj, n_ref in reference_counts.items():
        if n_ref is None:
            continue
        h = match(obj, generated_objects)
        if h is not None and generated_objects.get(h) is not None:
            pairs.append((int(generated_objects[h]), int(n_ref)))
    return pairs


def reward_pairs(generated_objects, reference_counts, match):
    """``[(n_gen, n_ref)]`` for every object the references count; 0 where the caption gives no count."""
    pairs = []
    for obj, n_ref in reference_counts.items():
        if n_ref is None:
            continue
        h = match(obj, generated_objects)
        n_gen = generated_objects.get(h) if h is not None else None
        pairs.append((int(n_gen) if n_gen is not None else 0, int(n_ref)))
    return pairs


def count_errors(generated_objects, reference_counts, match):
    """``(abs_error, signed_error, exact_share, n_compared)``; errors are None when nothing is compared."""
    pairs = count_pairs(generated_objects, reference_counts, match)
    if not pairs:
        return None, None, None, 0
    n = len(pairs)
    return (sum(abs(g - r) for g, r in pairs) / n, sum(g - r for g, r in pairs) / n,
            sum(1 for g, r in pairs if g == r) / n, n)


@registry.register_reward("count")
class CountReward(ObjectRewardMixin, BaseReward):
    """Count reward (see module docstring). Config: ``mode`` (abs), ``scale`` (1.0),
    ``missing`` (zero), ``empty_value`` (0.0), ``parser``. ``extra``: ``count_dicts``."""

    def __init__(self, mode="abs", scale=1.0, empty_value=0.0, missing="zero", parser=None, cache_size=100000):
        if mode not in MODES:
            raise ConfigError(f"count reward: mode={mode!r} is invalid; valid modes: {', '.join(MODES)}.")
        if missing not in MISSING:
            raise ConfigError(f"count reward: missing={missing!r} is invalid; valid: {', '.join(MISSING)}.")
        self.missing = missing
        self._init_objects(parser, cache_size)
        self.mode = mode
        self.scale = float(scale)
        self.empty_value = float(empty_value)

    def errors(self, generated, references, count_dicts=None):
        """``[(abs, signed, exact_share, n_compared)]`` per caption."""
        gt = self.reference_counts(references, count_dicts)
        gen = self.parser.parse_batch(list(generated))
        return [count_errors(g, r, self.match) for g, r in zip(gen, gt)]

    def _value(self, g, r):
        pairs = (reward_pairs if self.missing == "zero" else count_pairs)(g, r, self.match)
        if not pairs:
            return self.empty_value
        n = len(pairs)
        if self.mode == "abs":
            v = -sum(abs(a - b) for a, b in pairs) / n
        elif self.mode == "squared":
            v = -sum((a - b) ** 2 for a, b in pairs) / n
        elif self.mode == "relative":
            v = -sum(abs(a - b) / max(b, 1) for a, b in pairs) / n
        else:
            v = sum(1 for a, b in pairs if a == b) / n
        return v * self.scale

    def _abs_zero(self, g, r):
        """``_value`` for ``mode: abs``, ``missing: zero``: :func:`reward_pairs` and the mean in one loop,
        :meth:`match` inlined (``tests/test_rewards.py`` compares it with the pairs on real captions)."""
        first_same = self.table.first_same
        total = 0
        n = 0
        for obj, n_ref in r.items():
            if n_ref is None:
                continue
            n += 1
            if obj in g:
                n_gen = g[obj]
            else:
                h = first_same(obj, g) if g else None
                n_gen = None if h is None else g[h]
            total += abs((0 if n_gen is None else int(n_gen)) - int(n_ref))
        if not n:
            return self.empty_value
        return -total / n * self.scale

    def __call__(self, generated, references, **extra):
        gt = self.reference_counts(references, extra.get("count_dicts"))
        gen = self.parser.parse_batch(list(generated))
        # the default (abs, missing zero): one pass per caption, no pair list
        value = self._abs_zero if self.mode == "abs" and self.missing == "zero" and self._plain_match else self._value
        return self.as_tensor([value(g, r) for g, r in zip(gen, gt)])
