"""Length reward: the number of words of the generated caption.

Definition: ``scale * n_words`` with ``n_words`` from
:func:`rslavis.text.tokenize.simple_tokenize` (punctuation is not a word), clipped to
``max_words`` when given. A negative ``scale`` penalises length. With ``target`` set the
reward is ``-scale * |n_words - target|`` instead (closest to the target length wins).
"""

from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward
from rslavis.text.tokenize import tokenize_batch


@registry.register_reward("length")
class LengthReward(BaseReward):
    """Length reward (see module docstring). Config: ``scale`` (1.0), ``max_words``, ``target``."""

    def __init__(self, scale=1.0, max_words=None, target=None):
        self.scale = float(scale)
        self.max_words = None if max_words is None else int(max_words)
        self.target = None if target is None else float(target)

    def __call__(self, generated, references=None, **extra):
        n = [len(t) for t in tokenize_batch(list(generated))]
        if self.max_words is not None:
            n = [min(x, self.max_words) for x in n]
        if self.target is not None:
            return self.as_tensor([-self.scale * abs(x - self.target) for x in n])
        return self.as_tensor([self.scale * x for x in n])
