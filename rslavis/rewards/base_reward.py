"""Interface every reward implements (see ``registry.register_reward``)."""

import torch


class BaseReward:
    """A reward scores generated captions against references, one float per caption.

    ``reward(generated, references, **extra)`` returns a float tensor of shape (batch,).
    A NaN or inf in it is reported by :class:`~rslavis.rewards.combine.CombinedReward`
    (an error naming the reward and caption, or a skipped sample: ``run.nonfinite_rewards``). ``extra`` may carry ``count_dicts``, ``logprobs``, ``image_ids``;
    a reward ignores the keys it does not use. Loss terms (``is_loss_term = True``) are
    called with the policy's log-probabilities and a mask instead and return a scalar.
    """

    is_loss_term = False

    @classmethod
    def from_config(cls, cfg=None):
        """Build from a mapping of constructor keyword arguments (may be None or empty)."""
        kwargs = dict(cfg or {})
        return cls(**kwargs)

    def __call__(self, generated, references, **extra):
        raise NotImplementedError

    def state_dict(self):
        """State that changes during training (e.g. a window of recent tokens), for checkpoints.

        Tensors and plain Python values only (checkpoints load with ``weights_only=True``);
        a reward without such state returns ``{}``.
        """
        return {}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned."""

    @staticmethod
    def as_tensor(values):
        """Float tensor of ``values``. NaN and inf are kept: replacing them by 0 here would train on
        a silent 0 (CombinedReward reports them instead)."""
        return torch.as_tensor(values, dtype=torch.float32)
