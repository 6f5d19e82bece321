"""Build a configured model on the meta device: shapes and dtypes, no storage, no weights read.

``--dry-run`` uses this to show what a run will cost before anything is loaded. Inside
:func:`meta_build`:

- every tensor is created on ``torch.device("meta")``;
- ``transformers``' ``from_pretrained`` reads ``config.json`` only and builds the model
  from it (``_from_config``, with the requested ``dtype``), so weight files are never opened;
- open_clip builds its architecture without its checkpoint file;
- :func:`on_meta` is true, for the few places that read tensors by hand.

Models whose parameters appear only once a tokenizer is fitted on the training captions
(the tiny types) are built on a stand-in vocabulary of ``model.tokenizer_vocab_size``
words (:func:`build_model_on_meta`).
"""

import contextlib
import threading

import torch

_state = threading.local()


def on_meta():
    """True inside :func:`meta_build`."""
    return getattr(_state, "depth", 0) > 0


# loading options of from_pretrained that are not config attributes
_LOAD_ONLY = {
    "local_files_only", "cache_dir", "force_download", "proxies", "revision", "token", "trust_remote_code", "low_cpu_mem_usage",
    "device_map", "attn_implementation", "subfolder", "use_safetensors", "weights_only", "quantization_config", "variant",
}


def _config_only_from_pretrained(cls, path, *args, config=None, dtype=None, torch_dtype=None, **kwargs):
    """``cls.from_pretrained`` that reads ``config.json`` only (no weight file) and builds from it."""
    attn = kwargs.get("attn_implementation")
    extra = {k: v for k, v in kwargs.items() if k not in _LOAD_ONLY}
    if config is None:
        config = cls.config_class.from_pretrained(str(path), local_files_only=True, **extra)
    else:
        for k, v in extra.items():
            setattr(config, k, v)
    build = {"dtype": dtype or torch_dtype} if (dtype or torch_dtype) is not None else {}
    if attn:
        build["attn_implementation"] = attn
    return cls._from_config(config, **build)


@contextlib.contextmanager
def meta_build():
    """Context in which models build on the meta device and read no weights (see module docstring)."""
    from transformers import PreTrainedModel

    patches = [(PreTrainedModel, "from_pretrained", classmethod(_config_only_from_pretrained))]
    try:
        import open_clip

        create = open_clip.create_model
        patches.append((open_clip, "create_model", lambda name, *a, pretrained=None, **kw: create(name, *a, pretrained=None, **kw)))
    except ImportError:
        pass
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        with torch.device("meta"):
            yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)
        _state.depth -= 1


class StandInCaptions:
    """A stand-in training split whose captions are ``n`` distinct words: a fitted tokenizer then has ``n`` + specials tokens."""

    def __init__(self, n, prompt=""):
        self.captions = [f"w{i}" for i in range(max(0, n - 4))]  # 4 special tokens
        self.prompt = prompt
        self.records = []

    def all_captions(self):
        return list(self.captions)


def build_model_on_meta(cfg):
    """``(model, notes)``: the model of config section ``cfg.model`` built on the meta device.

    ``model.finetuned`` is not read (it changes values, not sizes). Lazily built models
    (tokenizer fitted on the training text) get a vocabulary of ``tokenizer_vocab_size``.
    """
    from rslavis.common.registry import registry

    mcfg = cfg.model
    notes = []
    if mcfg.get("finetuned"):
        notes.append(f"model.finetuned {mcfg.get('finetuned')} is not read (values only; sizes come from the config).")
    model_cls = registry.get_model_class(mcfg.arch)
    with meta_build():
        model = model_cls.from_config(mcfg)
        if not any(True for _ in model.parameters()) or _lazy(model):
            vocab = int(mcfg.get("tokenizer_vocab_size", 2000) or 2000)
            model.build_for_dry_run({"__dry_run__": {"train": StandInCaptions(vocab, prompt=str(mcfg.get("prompt") or ""))}})
            notes.append(f"vocabulary: {vocab} tokens stand in for the tokenizer fitted on the training captions (model.tokenizer_vocab_size).")
    return model, notes


def _lazy(model):
    """Models with a ``tokenizer`` attribute still None build their text side in prepare_for_training."""
    return hasattr(model, "tokenizer") and getattr(model, "tokenizer") is None
