"""Atomic checkpoint and result writes, and the RNG state that exact resume needs.

Every file is written to a temporary file in the same folder, flushed to disk and
renamed over the target, so a crash at any moment leaves either the old file or the
new one, never a torn one.
"""

import json
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from rslavis.common.errors import ConfigError, RslavisError


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def file_mode():
    """The mode ``open()`` would give a new file under the user's umask (mkstemp's is 0600)."""
    return 0o666 & ~_umask()


def make_shared_tempdir(prefix, dir):
    """``tempfile.mkdtemp`` with the mode ``mkdir`` would give (mkdtemp's is 0700), for folders renamed into place."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=dir)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _atomic_write(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # a colleague's group/world read access follows the umask, as for any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj, path, indent=None):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode("utf-8")))


def atomic_write_text(text, path):
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """Every RNG a training step may draw from, for exact resume."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(_to_python_state(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(s):
    # plain Python types load under weights_only=True without allow-listing numpy
    name, keys, pos, has_gauss, cached = s
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _to_python_state(s):
    # weights_only loading returns lists where random.getstate() produced tuples
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def load_checkpoint(path):
    """Load a checkpoint written by the runner, with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise RslavisError(f"checkpoint not found: {path} (run.resume_ckpt_path / --resume / model.finetuned).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"model": load_file(str(path))}
    if path.stat().st_size == 0:
        raise RslavisError(f"cannot load checkpoint {path}: the file is empty (an interrupted copy?); use another checkpoint.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False, which would run code from the file: never advise it
        glob = next((l.split("GLOBAL", 1)[1].split()[0] for l in str(exc).splitlines() if "Unsupported global: GLOBAL" in l), None)
        if glob:
            raise RslavisError(
                f"cannot load checkpoint {path}: it holds a {glob} object, not only tensors and plain values, and rslavis "
                "does not unpickle (loading them could run code); re-save it as {'model': model.state_dict()} or as .safetensors."
            ) from None
        raise RslavisError(f"cannot load checkpoint {path}: not a PyTorch checkpoint (corrupt or another format); use another file.") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RslavisError(f"cannot load checkpoint {path}: the file is truncated or not a PyTorch checkpoint ({reason}); use another file.") from None


# ---------------------------------------------------------------------- model state in runner checkpoints
# A runner checkpoint keeps the trained parameters and the buffers of the model (and any
# frozen tensor no file provides); frozen tensors the model reads from its pretrained files
# (``model.base_weight_sources()``) are left out and read again from those files on resume.
# ``model_info`` records what the checkpoint was made on top of, so loading it on other
# base weights, another architecture or a model that trains keys it lacks is refused.

def omitted_keys(model, sources):
    """State-dict keys (aliases of tied weights included) of frozen parameters under a base-weight prefix."""
    prefixes = tuple(sources)
    if not prefixes:
        return set()
    frozen = {id(p) for k, p in model.named_parameters() if not p.requires_grad and k.startswith(prefixes)}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in frozen}


def _digest(parts):
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def base_identity(model, keys=None):
    """What a trained-only checkpoint of ``model`` rests on: ``sources`` (prefix -> path), ``architecture``
    (digest of every state key and shape), the left-out ``omitted`` keys (``keys``, or the frozen base
    weights) and ``probe``: a digest of 16 values of each of them (different base weights differ there)."""
    sources = dict(model.base_weight_sources()) if hasattr(model, "base_weight_sources") else {}
    state = model.state_dict(keep_vars=True)
    omitted = set(keys) if keys is not None else omitted_keys(model, sources)
    probe = []
    for k in sorted(omitted):
        if k not in state:
            probe += [k, b"absent"]
            continue
        flat = state[k].detach().reshape(-1)
        if flat.is_meta or flat.numel() == 0:
            continue
        idx = torch.linspace(0, flat.numel() - 1, steps=min(16, flat.numel()), device=flat.device).long()
        probe += [k, flat[idx].float().cpu().numpy().tobytes()]
    return {
        "sources": sources,
        "architecture": _digest(f"{k}{tuple(t.shape)}" for k, t in sorted(state.items())),
        "probe": _digest(probe),
        "omitted": omitted,
    }


def config_fingerprint(model_cfg):
    """Digest of the model config section (recorded beside the base identity, for the reader)."""
    return _digest([json.dumps(model_cfg, sort_keys=True, default=str)])


def model_checkpoint(model, full=False, identity=None, model_cfg=None, state=None):
    """``(state, info)`` for a runner checkpoint: every tensor with ``full``, else all but the frozen base weights.
    ``state``: the model's full state dict when it was gathered elsewhere (FSDP)."""
    identity = identity or base_identity(model)
    omitted = set() if full else identity["omitted"]
    state = model.state_dict() if state is None else state
    state = {k: v.detach().cpu() for k, v in state.items() if k not in omitted}
    info = {
        "full": not omitted,
        "omitted_tensors": len(omitted),
        "base_sources": identity["sources"],
        "architecture": identity["architecture"],
        "base_probe": identity["probe"],
        "omitted_keys": sorted(omitted),
        "config_fingerprint": config_fingerprint(model_cfg) if model_cfg is not None else None,
    }
    return state, info


def load_model_state(model, ckpt, source):
    """Load the model part of a checkpoint (``load_checkpoint``'s dict) into ``model``.

    A trained-only checkpoint goes on top of the model's own (pretrained) weights and is
    refused, in one line naming ``source``, when it was made for another architecture or
    other base weights, or lacks a tensor the model trains.
    """
    state = ckpt.get("model", ckpt)
    info = ckpt.get("model_info") or {}
    if info and not info.get("full", True):
        left_out = set(info.get("omitted_keys") or ())
        ident = base_identity(model, keys=left_out)
        if info.get("architecture") != ident["architecture"]:
            raise ConfigError(f"{source}: the checkpoint was made for another architecture than the configured model (fingerprint {info.get('architecture')} vs {ident['architecture']}); use the model config it was trained with.")
        trained = [k for k, p in model.named_parameters() if p.requires_grad and k not in state]
        if trained:
            raise ConfigError(f"{source}: {len(trained)} tensors this model trains are not in the checkpoint (first: {trained[0]}); was it trained with the same freeze_*/lora settings?")
        if info.get("base_probe") != ident["probe"]:
            raise ConfigError(
                f"{source}: a trained-only checkpoint made on other base weights (saved on top of {info.get('base_sources')}, "
                f"this model reads {ident['sources']}); build the model from the weights it was trained on, or train with run.save_full: true."
            )
        missing, unexpected = model.load_state_dict(state, strict=False)
        extra = [k for k in missing if k not in left_out] + list(unexpected)
        if extra:
            raise ConfigError(f"{source}: the checkpoint does not fit this model ({len(extra)} keys differ, first: {extra[0]}).")
        return model
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:3])[:300]
        raise ConfigError(f"{source}: the checkpoint does not fit this model ({first}); was it trained with the same model config (and tokenizer: model.tokenizer_path)?") from None
    return model
