"""Distributed helpers that make no collective call unless a process group exists."""

import contextlib
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)
_warned = set()


def _warn_once(msg, *args):
    # train.py and the runner both resolve the device; the user needs to read it once
    key = msg % args
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process():
    return get_rank() == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) >= 1


def resolve_device(requested):
    """The device to run on: a CUDA request without CUDA falls back to CPU with one warning."""
    requested = str(requested or "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        _warn_once("run.device is %r but CUDA is not available: running on CPU.", requested)
        return torch.device("cpu")
    if requested.startswith("cuda") and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(requested)


def init_distributed_mode(run_cfg, device):
    """Start a process group when launched by torchrun; otherwise run one process.

    Returns True when distributed. ``distributed: True`` without a launcher gives one
    process and one warning, so LAVIS project files run unchanged.
    """
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        if not is_dist_avail_and_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend, init_method=run_cfg.get("dist_url") or "env://")
        return True
    if run_cfg.get("distributed"):
        _warn_once("run.distributed is true but the run was not launched by torchrun: running one process.")
    return False


def barrier():
    if is_dist_avail_and_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. writes a cache), the others after it; no-op alone."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def destroy():
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def all_gather_object(obj):
    """``[obj from each rank]``; ``[obj]`` when not distributed."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    if not is_dist_avail_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def full_parameters(model):
    """Under FSDP (``fully_shard``), every rank holds the full parameters inside the block (calls
    other than ``forward``, e.g. ``generate``, do not trigger FSDP's gathering), sharded again after
    it; a no-op for any other model."""
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True)
