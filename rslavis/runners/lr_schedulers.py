"""Learning-rate schedulers (registered), stepped every iteration as in LAVIS.

A scheduler computes the learning rate from ``(epoch, step within epoch)`` alone, so a
resumed run gets exactly the rate an uninterrupted run would; ``state_dict`` only
records the last values for the log.
"""

import math

from rslavis.common.registry import registry


class BaseLRScheduler:
    def __init__(self, optimizer, max_epoch, iters_per_epoch, init_lr, min_lr=0.0, warmup_lr=0.0, warmup_steps=0, lr_decay_rate=0.9, **_):
        self.optimizer = optimizer
        self.max_epoch = max_epoch
        self.iters_per_epoch = max(1, iters_per_epoch)
        self.init_lr = init_lr
        self.min_lr = min_lr
        self.warmup_lr = warmup_lr if warmup_lr is not None else init_lr
        self.warmup_steps = warmup_steps or 0
        self.lr_decay_rate = lr_decay_rate
        self.last_lr = None

    @classmethod
    def from_config(cls, optimizer, run_cfg, iters_per_epoch):
        keys = ("init_lr", "min_lr", "warmup_lr", "warmup_steps", "lr_decay_rate")
        return cls(optimizer, run_cfg.max_epoch, iters_per_epoch, **{k: run_cfg.get(k) for k in keys if run_cfg.get(k) is not None})

    def lr_at(self, epoch, step):
        raise NotImplementedError

    def _warmup(self, global_step):
        """Linear warm-up over the first ``warmup_steps`` global steps, or None after it."""
        if global_step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * global_step / max(1, self.warmup_steps)
        return None

    def step(self, epoch, step):
        lr = self.lr_at(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_lr = lr
        return lr

    def state_dict(self):
        return {"last_lr": self.last_lr}

    def load_state_dict(self, state):
        self.last_lr = state.get("last_lr")


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(BaseLRScheduler):
    """Linear warm-up, then cosine decay from ``init_lr`` to ``min_lr`` over all iterations."""

    def lr_at(self, epoch, step):
        global_step = epoch * self.iters_per_epoch + step
        warm = self._warmup(global_step)
        if warm is not None:
            return warm
        total = self.max_epoch * self.iters_per_epoch
        progress = min(1.0, global_step / max(1, total))
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(BaseLRScheduler):
    """Linear warm-up, then ``init_lr * lr_decay_rate ** epoch``, never below ``min_lr``."""

    def lr_at(self, epoch, step):
        warm = self._warmup(epoch * self.iters_per_epoch + step)
        if warm is not None:
            return warm
        return max(self.min_lr, self.init_lr * self.lr_decay_rate**epoch)


@registry.register_lr_scheduler("constant_lr")
class ConstantLRScheduler(BaseLRScheduler):
    """Linear warm-up, then ``init_lr``."""

    def lr_at(self, epoch, step):
        warm = self._warmup(epoch * self.iters_per_epoch + step)
        return self.init_lr if warm is None else warm
