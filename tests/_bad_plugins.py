"""Rewards that misbehave on purpose, for tests/test_bad_inputs.py (``plugins: [tests._bad_plugins]``)."""

import torch

from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward


class _FirstValueReward(BaseReward):
    """0.5 for every caption except the first of each call, which gets ``VALUE``."""

    VALUE = float("nan")

    def __call__(self, generated, references, **extra):
        out = torch.full((len(generated),), 0.5)
        if len(generated):
            out[0] = self.VALUE
        return out


@registry.register_reward("nan_first", force=True)
class NanFirst(_FirstValueReward):
    VALUE = float("nan")


@registry.register_reward("inf_first", force=True)
class InfFirst(_FirstValueReward):
    VALUE = float("inf")
