"""Base class of every registered model.

A model maps ``model_type`` to a default YAML (``PRETRAINED_MODEL_CONFIG_DICT``),
builds itself from its config section (``from_config``), trains through
``forward(samples) -> {"loss": ...}`` and captions through ``generate``. Models that
also implement ``sample`` can be trained with SCST.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from rslavis.common.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SampleOutput:
    """What ``BaseModel.sample`` returns for SCST; rows are ``n`` samples per image, image-major.

    - ``token_ids`` (B*n, T): sampled tokens, padded after EOS.
    - ``logprobs`` (B*n, T): log-probability of each sampled token under the policy, with
      grad; zero where ``mask`` is 0.
    - ``mask`` (B*n, T): 1 up to and including the first EOS, 0 after it.
    - ``captions``: B*n decoded strings.
    - ``logits`` (B*n, T, V), optional: the policy's logits at the generated positions
      (for the entropy/varentropy loss term).
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor
    captions: List[str]
    logits: Optional[torch.Tensor] = None


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
        """Build from the ``model`` config section; the default passes it to the constructor."""
        return cls(cfg, **kwargs)

    @property
    def device(self):
        # models built lazily (parts created in prepare_for_training) keep a buffer anchor
        anchor = getattr(self, "_device_anchor", None)
        return anchor.device if anchor is not None else next(self.parameters()).device

    def forward(self, samples):
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, **kwargs):
        raise NotImplementedError

    def sample(self, samples, n=1, temperature=1.0, max_len=30, **kwargs) -> SampleOutput:
        """Sample ``n`` captions per image autoregressively from the model's distribution."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample(); it cannot be trained with SCST.")

    def prepare_for_training(self, datasets, output_dir):
        """Hook run once before training (e.g. fit a tokenizer on the training captions)."""

    def build_for_dry_run(self, datasets):
        """Build parts that wait for the training data (``--dry-run``, on the meta device); ``datasets`` holds a stand-in split."""
        self.prepare_for_training(datasets, None)

    def base_weight_sources(self):
        """``{state_dict key prefix: local path}`` of the weights this model reads from files.

        Frozen tensors under these prefixes are left out of runner checkpoints (they are
        read again from the files on resume); a model that declares none keeps everything.
        """
        return {}

    def count_parameters(self):
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable
