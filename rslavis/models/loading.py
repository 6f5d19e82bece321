"""Loading models from what runs and ``save_pretrained`` write; the one loader of runner checkpoints.

- :func:`load_weights`: the weights of a runner checkpoint (``checkpoint_*.pth``, or a
  ``.safetensors`` file) into a built model. Every path that reads runner checkpoints
  into a model goes through it (``model.finetuned``, RS-MoE's ``init_from``,
  ``--checkpoint`` of the CLIs, scorer run folders).
- :func:`build_finetuned`: the model of a config whose ``model.finetuned`` is set.
- :func:`load_model`: a model from a ``save_pretrained`` folder, a run folder or a
  checkpoint file in one, rebuilt from what the run saved.
"""

import json
import logging
from pathlib import Path

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry

logger = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("checkpoint_best.pth", "checkpoint_latest.pth")


def load_weights(model, path, option="model.finetuned"):
    """Load the ``model`` state of the runner checkpoint ``path`` into ``model``; a trained-only
    checkpoint goes on top of the model's own base weights
    (:func:`rslavis.common.checkpoint.load_model_state`); a mismatch is a :class:`ConfigError`
    naming ``option`` and ``path``."""
    from rslavis.common.checkpoint import load_checkpoint, load_model_state

    return load_model_state(model, load_checkpoint(path), f"{option} {path}")


def _plain(cfg):
    from rslavis.common.config import to_plain

    return dict(to_plain(cfg) or {})


def build_finetuned(model_cfg, option="model.finetuned"):
    """The model of ``model_cfg`` with the weights of ``model_cfg.finetuned``: a ``save_pretrained``
    directory (loaded as saved), or a runner checkpoint (the model is built from this config; when
    ``tokenizer_path`` is unset, the ``tokenizer/`` beside the checkpoint is used and written into
    ``model_cfg``, so the new run's ``config.yaml`` records it)."""
    path = Path(str(model_cfg.get("finetuned"))).expanduser()
    model_cls = registry.get_model_class(model_cfg.get("arch"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{option} {path}: a directory without config.json; give a save_pretrained directory or a checkpoint file.")
        return model_cls.from_pretrained(path)
    if not path.is_file():
        raise ConfigError(f"{option} {path}: no such checkpoint file or save_pretrained directory.")
    tok_dir = path.parent / "tokenizer"
    if "tokenizer_path" in model_cfg and not model_cfg.get("tokenizer_path") and tok_dir.is_dir():
        model_cfg["tokenizer_path"] = str(tok_dir)  # the runner saves a fitted tokenizer beside its checkpoints
    model = model_cls.from_config(model_cfg)
    load_weights(model, path, option)
    logger.info("%s: loaded %s", option, path)
    return model


def run_checkpoint(path, option="--checkpoint"):
    """``(run folder, checkpoint file)`` of a run folder or a checkpoint file in one."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p.parent, p
    ckpt = next((p / n for n in CHECKPOINT_NAMES if (p / n).is_file()), None)
    if ckpt is None:
        raise ConfigError(f"{option} {p}: a run folder without checkpoint_best.pth or checkpoint_latest.pth; has training finished?")
    return p, ckpt


def load_model(path, option="--checkpoint", arch=None):
    """``(model, run config or None, folder)`` from a ``save_pretrained`` folder (``config.json``), a run
    folder (``config.yaml`` and ``checkpoint_best.pth``/``checkpoint_latest.pth``) or a checkpoint
    file in one. ``arch``: refuse anything that is not that registered model. The model is not moved
    and keeps the train/eval mode it was built in."""
    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        saved = json.loads((p / "config.json").read_text()).get("arch")
        if not saved:
            raise ConfigError(f"{p / 'config.json'}: no 'arch' key; it was not written by a model's save_pretrained.")
        if arch is not None and saved != arch:
            raise ConfigError(f"{option} {p}: a saved {saved!r} model, not {arch}.")
        return registry.get_model_class(saved).from_pretrained(p), None, p
    run_dir = p.parent if p.is_file() else p
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{option} {p}: not found, or neither a save_pretrained directory (config.json) nor a run folder (config.yaml + checkpoint_best.pth).")
    run_dir, ckpt = run_checkpoint(p, option)
    from omegaconf import OmegaConf

    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    mcfg = _plain(OmegaConf.to_container(run_cfg.get("model") or {}, resolve=True))
    if arch is not None and mcfg.get("arch") != arch:
        raise ConfigError(f"{option} {run_dir}: config.yaml trains model.arch {mcfg.get('arch')!r}, not {arch}.")
    model_cls = registry.get_model_class(mcfg["arch"])
    mcfg.pop("finetuned", None)  # the checkpoint holds the weights
    model = model_cls.from_run_folder(run_dir, mcfg)
    load_weights(model, ckpt, option)
    model.load_extras(run_dir)
    logger.info("loaded %s from %s", type(model).__name__, ckpt)
    return model, run_cfg, run_dir
