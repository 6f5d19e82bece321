"""SDE: scene description exhaustiveness.

Definition: the share of ground-truth objects that the generated caption mentions,
``|{o in GT : o mentioned}| / |GT|``, where GT is the set of objects of the image's
count dictionary (the fused parses of its references, or ``count_dicts`` supplied by the
dataset), and an object is mentioned when the caption's parse holds the same canonical
name, a synonym, a fuzzy match (typos) or the bare head of a compound ("tank" for
"storage tank"). Counts are ignored. Worked example: "There is a forest." against
"There is a forest and a river." and "There is a forest, a river and a road." gives
GT = {forest, river, road}, mentioned = {forest}: SDE = 1/3. An image whose references
name no object scores ``empty_value`` (0.0).
"""

from rslavis.common.registry import registry
from rslavis.rewards._objects import ObjectRewardMixin
from rslavis.rewards.base_reward import BaseReward


def sde_value(generated_objects, gt_objects, match, empty_value=0.0):
    """SDE of one caption: ``match(gt, generated_objects)`` says whether a GT object is mentioned."""
    gt = list(gt_objects)
    if not gt:
        return float(empty_value)
    return sum(1 for g in gt if match(g, generated_objects) is not None) / len(gt)


@registry.register_reward("sde")
class SDEReward(ObjectRewardMixin, BaseReward):
    """SDE per caption (see module docstring). Config: ``parser`` (name or mapping, default
    ``hybrid``), ``scale`` (1.0), ``empty_value`` (0.0). ``extra``: ``count_dicts``."""

    def __init__(self, parser=None, scale=1.0, empty_value=0.0, cache_size=100000):
        self._init_objects(parser, cache_size)
        self.scale = float(scale)
        self.empty_value = float(empty_value)

    def score(self, generated, references, count_dicts=None):
        gt = self.reference_counts(references, count_dicts)
        gen = self.parser.parse_batch(list(generated))
        if not self._plain_match:
            return [sde_value(g, r, self.match, self.empty_value) for g, r in zip(gen, gt)]
        first_same, empty = self.table.first_same, float(self.empty_value)
        out = []
        for g, r in zip(gen, gt):  # sde_value with self.match inlined (tests/test_rewards.py compares them)
            if not r:
                out.append(empty)
                continue
            found = 0
            for name in r:
                if name in g or (g and first_same(name, g) is not None):
                    found += 1
            out.append(found / len(r))
        return out

    def __call__(self, generated, references, **extra):
        vals = self.score(generated, references, extra.get("count_dicts"))
        return self.as_tensor([v * self.scale for v in vals])
