"""Base class of every registered model.

A model maps ``model_type`` to a default YAML (``PRETRAINED_MODEL_CONFIG_DICT``),
builds itself from its config section (``from_config``), trains through
``forward(samples) -> {"loss": ...}`` and captions through ``generate``. Models that
also implement ``sample`` can be trained with SCST.

Persistence is written once here: ``save_pretrained(dir)`` writes ``config.json`` (the
registry name as ``arch`` and the model config, local paths cleared), ``hf_config.json``
(the transformers config, for models that have one), ``tokenizer/`` and
``model.safetensors``; ``from_pretrained(dir)`` reads them back. A model overrides only
what it adds: :attr:`LOCAL_PATH_KEYS`, :meth:`hf_config_to_save`, :meth:`save_tokenizers` and
:meth:`tokenizer_parts` (writing and reading its tokenizers), :meth:`saved_parts` (what the
constructor gets back: by default ``tokenizer`` and ``hf_config``), :meth:`save_extras`/:meth:`load_extras`.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from rslavis.common.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = "tokenizer"  # where save_pretrained and runs keep a model's (fitted) tokenizers

MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_pretrained_dir(pretrained, hint, what=None):
    """``model.pretrained`` as a local directory; a missing one is a one-line error saying what to put
    there (``what``, by default the Hub name ``hint``)."""
    p = Path(str(pretrained)).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"model.pretrained: directory not found: {p}. Put {what or hint} there (Hugging Face layout, e.g. "
            f"`huggingface-cli download {hint} --local-dir {p}` on a machine with internet); nothing is downloaded."
        )
    return p


def model_dtype(cfg):
    """The torch dtype of ``model.dtype`` (default float32); an unknown name is a one-line error."""
    dtype = MODEL_DTYPES.get(str(cfg.get("dtype") or "float32"))
    if dtype is None:
        raise ConfigError(f"model.dtype: {cfg.get('dtype')!r} is unknown; valid: {', '.join(MODEL_DTYPES)}.")
    return dtype


def read_hf_config(path):
    """The transformers config saved as JSON at ``path`` (its class from its ``model_type``)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**json.loads(Path(path).read_text()))


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
    # config keys naming local files the saved folder replaces (cleared in config.json)
    LOCAL_PATH_KEYS = ("tokenizer_path",)
    SAVED_FILES = ("config.json",)  # what from_pretrained requires in a saved folder

    def __init__(self, cfg=None, lazy=False):
        """``cfg``: the ``model`` section, kept as a plain dict in ``self.cfg``. ``lazy``: parts are
        built later (in prepare_for_training); a buffer then tracks ``.to(device)`` until they exist."""
        super().__init__()
        if cfg is not None:
            from rslavis.common.config import to_plain

            self.cfg = dict(to_plain(cfg) or {})
        if lazy:
            self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

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

    # ------------------------------------------------------------------ decoding over one step
    STEP_LOGPROBS = False  # True: decoding_start/step give normalised log-probabilities (a mixture), not logits

    def decoding_start(self, samples, n):
        """``(first (B*n, V), state)``: next-token logits after each sample's prompt, every sample's
        row repeated ``n`` times (image-major), and the state :meth:`step` continues from."""
        raise NotImplementedError(f"{type(self).__name__} defines neither generate() nor decoding_start()/step().")

    def step(self, tokens, state):
        """``(logits (R, V), state)``: feed the tokens just chosen (R,), return the next position's logits."""
        raise NotImplementedError(f"{type(self).__name__} defines no step().")

    @classmethod
    def can_sample(cls):
        """Whether :meth:`sample` works: the model's own, or the default over :meth:`step`."""
        return cls.sample is not BaseModel.sample or cls.step is not BaseModel.step

    def _special_ids(self):
        """``eos_token_id``/``pad_token_id`` of decoding (the tokenizer's by default)."""
        return dict(eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        """Captions by beam search over :meth:`step` (``num_beams=1``: greedy), with
        :func:`rslavis.models.decoding.beam_search`; models on transformers' ``generate`` override it."""
        from rslavis.models.decoding import beam_search

        nb = max(1, int(num_beams))
        first, state = self.decoding_start(samples, nb)
        ids = beam_search(
            self.step, first, state, batch_size=len(first) // nb, num_beams=nb, max_len=int(max_len), min_len=int(min_len),
            repetition_penalty=float(repetition_penalty), length_penalty=float(length_penalty), logprobs=self.STEP_LOGPROBS,
            **self._special_ids(),
        )
        return self._decode(ids)

    def sample(self, samples, n=1, temperature=1.0, max_len=30, min_len=0, return_logits=False, greedy=False, generator=None, **kwargs) -> SampleOutput:
        """``n`` captions per image (rows image-major) sampled over :meth:`step` with
        :func:`rslavis.models.decoding.sample_tokens` (its conventions: ``softmax(logits /
        temperature)`` over the full vocabulary, per-token log-probs with grad, mask up to and
        including EOS); SCST and best-of-N call it."""
        if type(self).step is BaseModel.step:
            raise NotImplementedError(f"{type(self).__name__} does not implement sample() or step(); it cannot be trained with SCST.")
        from rslavis.models.decoding import sample_tokens

        first, state = self.decoding_start(samples, n)
        res = sample_tokens(
            self.step, first, state, max_len=int(max_len), temperature=float(temperature), min_len=int(min_len),
            return_logits=return_logits, greedy=greedy, generator=generator, **self._special_ids(),
        )
        return res.to_sample_output(self._decode(res.token_ids))

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

    # ------------------------------------------------------------------ text helpers
    def instructions(self, samples, n):
        """Each sample's instruction (``text_input``); ``self.prompt`` where it is missing or blank."""
        prompts = samples.get("text_input")
        if prompts is None:
            return [self.prompt] * n
        return [p if (p and str(p).strip()) else self.prompt for p in prompts]

    def _decode(self, ids):
        return [c.strip() for c in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def save_run_tokenizers(self, output_dir):
        """Tokenizers fitted in ``prepare_for_training`` to ``<output_dir>/tokenizer`` (main process only),
        where :meth:`from_run_folder` and ``model.finetuned`` find them beside the checkpoints."""
        if output_dir is None:
            return
        from rslavis.common.dist_utils import is_main_process

        if is_main_process():
            self.save_tokenizers(Path(output_dir) / TOKENIZER_DIR)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def registry_name(cls):
        """The name this class is registered under (the ``arch`` of its saved folders)."""
        from rslavis.common.registry import registry

        for name, klass in registry.registered("model").items():
            if klass is cls:
                return name
        raise ConfigError(f"{cls.__name__} is not a registered model; register it with @registry.register_model(name) to save it.")

    def check_built(self):
        """Raise when the model cannot be saved or run yet (parts are built in prepare_for_training)."""

    def portable_config(self):
        """The config written to ``config.json``: local paths cleared (the saved folder holds their content)."""
        return {**dict(getattr(self, "cfg", {}) or {}), **{k: None for k in self.LOCAL_PATH_KEYS}}

    def hf_config_to_save(self):
        """A transformers config written as ``hf_config.json`` (None: the model has none)."""
        return None

    def save_tokenizers(self, directory):
        """Write the model's tokenizer(s) to ``directory`` (nothing when it has none)."""
        tok = getattr(self, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(str(directory))

    def save_extras(self, directory):
        """Anything else a saved folder needs (e.g. a retrieval datastore)."""

    def load_extras(self, directory):
        """Read back what :meth:`save_extras` wrote (also called on a run folder when loading a checkpoint)."""

    def save_pretrained(self, directory):
        """``config.json``, ``hf_config.json`` (if any), ``tokenizer/`` and ``model.safetensors`` in ``directory``."""
        from safetensors.torch import save_model

        from rslavis.common.checkpoint import atomic_write_json, atomic_write_text

        self.check_built()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json({"arch": self.registry_name(), **self.portable_config()}, d / "config.json", indent=2)
        hf_config = self.hf_config_to_save()
        if hf_config is not None:
            atomic_write_text(hf_config.to_json_string(), d / "hf_config.json")
        self.save_tokenizers(d / TOKENIZER_DIR)
        self.save_extras(d)
        tmp = d / ".model.safetensors.tmp"
        save_model(self, str(tmp))  # handles tied weights (GPT-2's input/output embeddings)
        os.replace(tmp, d / "model.safetensors")

    @classmethod
    def tokenizer_parts(cls, directory, option):
        """Constructor keyword arguments of the tokenizer(s) :meth:`save_tokenizers` wrote to ``directory``."""
        from rslavis.models.tokenization import load_tokenizer

        return {"tokenizer": load_tokenizer(directory, option=option)}

    @classmethod
    def saved_parts(cls, directory, cfg):
        """Constructor keyword arguments rebuilt from a saved folder: its tokenizer(s) (:meth:`tokenizer_parts`)
        and ``hf_config`` (when :meth:`hf_config_to_save` wrote one)."""
        d = Path(directory)
        tok_dir = d / TOKENIZER_DIR
        parts = cls.tokenizer_parts(tok_dir, str(tok_dir)) if tok_dir.is_dir() else {}
        if (d / "hf_config.json").is_file():
            parts["hf_config"] = read_hf_config(d / "hf_config.json")
        return parts

    @classmethod
    def from_pretrained(cls, directory):
        """The model saved by :meth:`save_pretrained` in ``directory``."""
        d = Path(directory)
        name = cls.registry_name()
        missing = [f for f in cls.SAVED_FILES if not (d / f).is_file()]
        if missing:
            raise ConfigError(f"{d}: not a saved {name} model ({'/'.join(missing)} missing); write one with save_pretrained.")
        from safetensors.torch import load_model

        cfg = json.loads((d / "config.json").read_text())
        arch = cfg.pop("arch", name)
        if arch != name:
            raise ConfigError(f"{d}: config.json is a saved {arch!r} model, not a {name} one; load it with that model's from_pretrained.")
        model = cls(cfg, **cls.saved_parts(d, cfg))
        load_model(model, str(d / "model.safetensors"))
        model.load_extras(d)
        return model

    @classmethod
    def from_run_folder(cls, run_dir, cfg):
        """An unloaded model of a run: ``cfg`` (its ``model`` section, a dict) completed with what the
        run wrote beside its checkpoints (the fitted ``tokenizer/``); the runner checkpoint's weights
        are loaded afterwards by :func:`rslavis.models.loading.load_weights`."""
        cfg = dict(cfg)
        tok_dir = Path(run_dir) / TOKENIZER_DIR
        if not cfg.get("tokenizer_path") and tok_dir.is_dir():
            cfg["tokenizer_path"] = str(tok_dir)
        return cls.from_config(cfg)
