"""``run.amp``: values, CPU fallback, float32 master weights."""

import logging

import pytest
import torch

from rslavis.common.errors import ConfigError
from rslavis.runners.precision import amp_mode, resolve_amp, trained_to_float32


def test_amp_values():
    assert amp_mode(True) == "fp16"  # LAVIS's True: float16 autocast with a GradScaler
    assert amp_mode("True") == "fp16"
    assert [amp_mode(v) for v in ("bf16", "bfloat16", "fp16", "float16")] == ["bf16", "bf16", "fp16", "fp16"]
    assert [amp_mode(v) for v in (False, None, "false", "fp32")] == [None] * 4
    with pytest.raises(ConfigError, match=r"run.amp: 'int8' is not valid; valid: false, true .*fp16, bf16"):
        amp_mode("int8")


def test_cpu_stays_float32_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_amp("bf16", torch.device("cpu")) is None
    assert sum("ignored on cpu" in r.getMessage() for r in caplog.records) == 1
    if torch.cuda.is_available():
        assert resolve_amp("bf16", torch.device("cuda")) == "bf16"


def test_trained_parameters_become_float32_frozen_keep_dtype():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    for p in m[0].parameters():
        p.requires_grad = False
    assert trained_to_float32(m) == 2
    assert {p.dtype for p in m[0].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m[1].parameters()} == {torch.float32}
