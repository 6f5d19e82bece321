"""Mixed precision by config: ``run.amp``.

``run.amp`` values: ``false`` (float32), ``true`` (LAVIS's meaning: float16 autocast with a
GradScaler), ``fp16`` / ``float16`` (the same), ``bf16`` / ``bfloat16`` (bfloat16 autocast,
no GradScaler: bfloat16 has float32's exponent range). Under amp the trained parameters,
their gradients and the optimizer state stay float32; frozen parts keep the dtype the
model stored them in (``model.dtype``, ``model.vit_precision``). On CPU a run stays
float32 and says so once.
"""

import logging

import torch

from rslavis.common.errors import ConfigError

logger = logging.getLogger(__name__)

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_NAMES = {
    "true": "fp16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "false": None, "none": None, "null": None, "fp32": None, "float32": None, "no": None, "": None,
}


def amp_mode(value):
    """``None``, ``"fp16"`` or ``"bf16"`` for a ``run.amp`` value; anything else is a one-line error."""
    if value is None or value is False:
        return None
    if value is True:
        return "fp16"
    key = str(value).strip().lower()
    if key not in _NAMES:
        raise ConfigError(f"run.amp: {value!r} is not valid; valid: false, true (float16 with a GradScaler, as in LAVIS), fp16, bf16.")
    return _NAMES[key]


def resolve_amp(value, device):
    """The amp mode a run on ``device`` uses: CPU runs stay float32 (one warning when amp was asked for)."""
    mode = amp_mode(value)
    if mode and device.type != "cuda":
        logger.warning("run.amp=%s is ignored on %s: the run stays float32 (mixed precision needs CUDA).", value, device.type)
        return None
    return mode


def trained_to_float32(model):
    """Trained parameters in float32 (master weights for amp); frozen ones keep their dtype. Returns the count cast."""
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32 and p.is_floating_point():
            p.data = p.data.float()
            n += 1
    return n
