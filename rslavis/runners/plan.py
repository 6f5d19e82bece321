"""What a run will cost, from a model built on the meta device (``python -m rslavis.train --dry-run``).

Per top-level module: total and trained parameters and the memory of weights, gradients
and AdamW state at the dtypes the run uses (under ``run.amp`` trained parameters are
float32 master weights, frozen ones keep ``model.dtype``); and the size of a checkpoint
as the runner writes it (trained parameters, buffers and frozen tensors no file
provides, plus optimizer state; ``run.save_full: true`` keeps everything).
Activations depend on batch and sequence lengths and are not estimated.
"""

import torch

from rslavis.common.checkpoint import omitted_keys
from rslavis.runners.precision import amp_mode

_BYTES = {}


def _nbytes(dtype):
    if dtype not in _BYTES:
        _BYTES[dtype] = torch.empty((), dtype=dtype).element_size()
    return _BYTES[dtype]


def _top_modules(model):
    """``[(name, module or parameter)]``: descend through wrappers that hold every parameter in one child."""
    node, prefix = model, ""
    while True:
        own = list(node.named_parameters(recurse=False))
        children = [(n, c) for n, c in node.named_children() if any(True for _ in c.parameters())]
        if len(children) == 1 and not own:
            name, node = children[0]
            prefix += name + "."
            continue
        return [(prefix + n, p) for n, p in own] + [(prefix + n, c) for n, c in children]


def memory_plan(model, run_cfg):
    """A dict: ``rows`` (one per top-level module and ``total``), ``checkpoint`` sizes, ``amp`` and ``notes``."""
    amp = amp_mode(run_cfg.get("amp"))
    optim = 2  # AdamW: exp_avg and exp_avg_sq, each the size and dtype of the parameter

    def row(name, params):
        total = trained = weights = grads = 0
        for p in params:
            n = p.numel()
            total += n
            if p.requires_grad:
                dt = torch.float32 if amp and p.is_floating_point() else p.dtype
                trained += n
                weights += n * _nbytes(dt)
                grads += n * _nbytes(dt)
            else:
                weights += n * _nbytes(p.dtype)
        return {"module": name, "params": total, "trained": trained, "weights_bytes": weights, "grads_bytes": grads, "adamw_bytes": optim * grads}

    rows = []
    for name, part in _top_modules(model):
        params = [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
        rows.append(row(name, params))
    rows.append(row("total", list(model.parameters())))
    total = rows[-1]
    sources = model.base_weight_sources() if hasattr(model, "base_weight_sources") else {}
    omitted = omitted_keys(model, sources)
    state = model.state_dict(keep_vars=True)
    trained_dt = {k: (torch.float32 if amp and p.requires_grad and p.is_floating_point() else p.dtype) for k, p in model.named_parameters()}
    unique = {}  # tied weights appear under several keys but are saved once
    for k, t in state.items():
        unique.setdefault(id(t), (k, t))
    full_model = sum(t.numel() * _nbytes(trained_dt.get(k, t.dtype)) for k, t in unique.values())
    kept_model = sum(t.numel() * _nbytes(trained_dt.get(k, t.dtype)) for k, t in unique.values() if k not in omitted)
    opt_bytes = total["adamw_bytes"]
    return {
        "model": type(model).__name__,
        "amp": amp or "off (float32)",
        "rows": rows,
        "checkpoint": {
            "trained_only_bytes": kept_model + opt_bytes,
            "trained_only_model_bytes": kept_model,
            "full_bytes": full_model + opt_bytes,
            "full_model_bytes": full_model,
            "optimizer_bytes": opt_bytes,
            "save_full": bool(run_cfg.get("save_full")),
            "base_sources": dict(sources),
        },
    }


def human(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0


def _count(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def format_plan(plan, notes=()):
    lines = [f"dry run: {plan['model']} on the meta device (no weights read); amp: {plan['amp']}", ""]
    head = ("module", "params", "trained", "weights", "grads", "AdamW")
    table = [head] + [
        (r["module"], _count(r["params"]), _count(r["trained"]), human(r["weights_bytes"]), human(r["grads_bytes"]), human(r["adamw_bytes"]))
        for r in plan["rows"]
    ]
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    for i, t in enumerate(table):
        if i == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(t, widths))))
    c = plan["checkpoint"]
    t = plan["rows"][-1]
    lines += [
        "",
        f"weights + grads + AdamW: {human(t['weights_bytes'] + t['grads_bytes'] + t['adamw_bytes'])} (activations not included)",
        f"checkpoints ({'run.save_full: true' if c['save_full'] else 'trained tensors only, the default'}): "
        f"checkpoint_best.pth {human(c['full_model_bytes'] if c['save_full'] else c['trained_only_model_bytes'])} (model), "
        f"checkpoint_latest.pth {human(c['full_bytes'] if c['save_full'] else c['trained_only_bytes'])} (model + AdamW state, for resume); "
        f"{'default' if c['save_full'] else 'with run.save_full: true'}: "
        f"{human(c['trained_only_model_bytes'] if c['save_full'] else c['full_model_bytes'])} / {human(c['trained_only_bytes'] if c['save_full'] else c['full_bytes'])}",
    ]
    if c["base_sources"]:
        lines.append("frozen weights read again from: " + ", ".join(f"{k}* <- {v}" for k, v in c["base_sources"].items()))
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
