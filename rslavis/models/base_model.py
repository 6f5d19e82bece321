"""Base class of every registered model.

A model maps ``model_type`` to a default YAML (``PRETRAINED_MODEL_CONFIG_DICT``),
builds itself from its config section (``from_config``), trains through
``forward(samples) -> {"loss": ...}`` and captions through ``generate``. Models that
also implement ``sample`` can be trained with SCST.
"""

from pathlib import Path

import torch
from torch import nn

from rslavis.common.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class BaseModel(nn.Module):
    PRETRAINED_MODEL_CONFIG_DICT = {}
    DEFAULT_MODEL_TYPE = None

    @classmethod
    def default_config_path(cls, model_type, source="config"):
        """Absolute path of the default YAML of ``model_type``; unknown types list the valid ones."""
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            valid = ", ".join(sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)) or "(none)"
            raise ConfigError(f"{source}: model.model_type {model_type!r} is unknown for {cls.__name__}; valid: {valid}.")
        return PACKAGE_ROOT / cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def from_config(cls, cfg, **kwargs):
        raise NotImplementedError

    @property
    def device(self):
        return next(self.parameters()).device

    def forward(self, samples):
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, **kwargs):
        raise NotImplementedError

    def prepare_for_training(self, datasets, output_dir):
        """Hook run once before training (e.g. fit a tokenizer on the training captions)."""

    def count_parameters(self):
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable
