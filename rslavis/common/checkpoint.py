"""Atomic checkpoint and result writes, and the RNG state that exact resume needs.

Every file is written to a temporary file in the same folder, flushed to disk and
renamed over the target, so a crash at any moment leaves either the old file or the
new one, never a torn one.
"""

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from rslavis.common.errors import RslavisError


def _atomic_write(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RslavisError(f"cannot load checkpoint {path}: {exc}") from None
