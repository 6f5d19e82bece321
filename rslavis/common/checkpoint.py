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

from rslavis.common.errors import RslavisError


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
