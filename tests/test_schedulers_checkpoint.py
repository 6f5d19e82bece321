"""Learning-rate schedules and atomic checkpoint writes."""

import math
import os

import pytest
import torch

from rslavis.common.checkpoint import atomic_torch_save, load_checkpoint
from rslavis.common.errors import RslavisError
from rslavis.common.registry import registry


def _opt():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_cosine_warmup_then_decay_to_min():
    cls = registry.get_lr_scheduler_class("linear_warmup_cosine_lr")
    s = cls(_opt(), max_epoch=2, iters_per_epoch=10, init_lr=1.0, min_lr=0.1, warmup_lr=0.0, warmup_steps=4)
    assert s.lr_at(0, 0) == 0.0
    assert s.lr_at(0, 2) == pytest.approx(0.5)
    lrs = [s.lr_at(e, i) for e in range(2) for i in range(10)][4:]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after warm-up
    assert s.lr_at(1, 10) == pytest.approx(0.1)  # the end reaches min_lr
    expected_mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 20))
    assert s.lr_at(1, 0) == pytest.approx(expected_mid)


def test_step_and_constant():
    step = registry.get_lr_scheduler_class("linear_warmup_step_lr")(_opt(), 5, 10, init_lr=1.0, min_lr=0.2, lr_decay_rate=0.5)
    assert [step.lr_at(e, 0) for e in range(4)] == [1.0, 0.5, 0.25, 0.2]
    const = registry.get_lr_scheduler_class("constant_lr")(_opt(), 5, 10, init_lr=0.3, warmup_lr=0.1, warmup_steps=2)
    assert const.lr_at(0, 1) == pytest.approx(0.2) and const.lr_at(3, 5) == 0.3


def test_scheduler_sets_optimizer_lr():
    opt = _opt()
    s = registry.get_lr_scheduler_class("constant_lr")(opt, 1, 1, init_lr=0.25)
    s.step(0, 0)
    assert opt.param_groups[0]["lr"] == 0.25


def test_atomic_write_keeps_old_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"model": {"w": torch.ones(2)}}, path)

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        atomic_torch_save({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary left behind


def test_load_checkpoint_is_weights_only_and_errors_clearly(tmp_path):
    with pytest.raises(RslavisError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(RslavisError, match="cannot load checkpoint"):
        load_checkpoint(bad)
