"""``run.distributed_strategy: fsdp``: parameters, gradients and optimizer state sharded over
the ranks with ``torch.distributed.fsdp.fully_shard`` (FSDP2), for models that do not fit DDP.

Sharding units: the largest submodules whose parameters share one dtype and one
``requires_grad`` (a frozen bfloat16 LLM and a trained float32 Q-Former are separate units,
as FSDP gathers a unit's parameters into one buffer), and inside them every block of a
``ModuleList`` (transformer layers: one layer is gathered at a time); the model itself is the
root unit. Under ``run.amp`` a ``MixedPrecisionPolicy`` computes in the amp dtype and reduces
gradients in float32. Checkpoints are full state dicts gathered on rank 0 (the format DDP
runs write, read by the same resume path); the optimizer state is keyed by parameter name.
Evaluation gathers the full parameters on every rank (``dist_utils.full_parameters``) for
the task's ``generate``/``sample`` calls, then shards them again.
"""

import torch
from torch import nn


def _has_params(m):
    return any(True for _ in m.parameters())


def _uniform(module):
    return len({(p.dtype, p.requires_grad) for p in module.parameters()}) == 1


def sharding_units(model):
    """Submodules to wrap, in the order to wrap them (inner before outer; see module docstring)."""
    units = []

    def visit(m):
        for child in m.children():
            if not _has_params(child):
                continue
            if _uniform(child):
                units.append(child)
                units.extend(b for sub in child.modules() if isinstance(sub, nn.ModuleList) for b in sub if _has_params(b))
            else:
                visit(child)

    visit(model)
    seen, ordered = set(), []
    for u in reversed(units):  # pre-order reversed: blocks before the module holding them
        if id(u) not in seen:
            seen.add(id(u))
            ordered.append(u)
    return ordered


def shard(model, amp_dtype=None):
    """Apply ``fully_shard`` to the units and the root; returns the (same, now sharded) model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    import torch.distributed as dist

    with torch.no_grad():  # every rank starts from rank 0's weights (random parts are seeded per rank), as DDP does
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) if amp_dtype is not None else MixedPrecisionPolicy()
    for unit in sharding_units(model):
        fully_shard(unit, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def full_model_state(model):
    """The full (unsharded) state dict on CPU, on rank 0 (other ranks get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(model, state):
    """A full (possibly trained-only) state dict into the sharded model; keys absent keep their values."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(model, optimizer, state):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
