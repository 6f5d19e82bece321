"""Training curves as PNG bytes (matplotlib, Agg backend, imported on first use).

Every numeric key of the training records is plotted against ``step``; keys the SCST
task logs (:mod:`rslavis.tasks.scst`) are grouped: reward components
(``scst/reward/<name>``), sample vs greedy reward (``scst/reward``,
``scst/reward_greedy``), entropy and varentropy, caption length. Evaluation records are
plotted by epoch, one line per split.
"""

import io
import math

NOT_PLOTTED = {"epoch", "step", "seconds", "split"}
EVAL_ORDER = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "SPICE", "agg_metrics", "Bleu_1", "Bleu_2", "Bleu_3")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _numeric(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(records, key, x="step"):
    pts = [(r[x], r[key]) for r in records if _numeric(r.get(key)) and _numeric(r.get(x))]
    return [p[0] for p in pts], [p[1] for p in pts]


def group_train_keys(records):
    """``[(panel title, [keys])]`` for the numeric keys of the training records."""
    keys = []
    for r in records:
        for k, v in r.items():
            if k not in NOT_PLOTTED and _numeric(v) and k not in keys:
                keys.append(k)
    groups = [("loss", [k for k in keys if k == "loss"]), ("learning rate", [k for k in keys if k == "lr"])]
    scst = [k for k in keys if k.startswith("scst/")]
    groups += [
        ("SCST reward components (sample mean, unweighted)", [k for k in scst if k.startswith("scst/reward/")]),
        ("SCST sample vs greedy reward", [k for k in scst if k in ("scst/reward", "scst/reward_greedy")]),
        ("SCST entropy", [k for k in scst if k == "scst/entropy"]),
        ("SCST varentropy", [k for k in scst if k.startswith("scst/varentropy")]),
        ("SCST caption length (words)", [k for k in scst if k == "scst/caption_len"]),
    ]
    used = {k for _, ks in groups for k in ks}
    # skipped_images is only interesting when something was skipped
    rest = [k for k in keys if k not in used and not (k == "skipped_images" and not any(r.get(k) for r in records))]
    for k in rest:
        groups.append((k, [k]))
    return [(t, ks) for t, ks in groups if ks]


def _figure_png(plt, fig):
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _grid(plt, n, width=4.2, height=2.8):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _smooth(ys, n):
    if len(ys) < 4 * n or n < 2:
        return None
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= n:
            acc -= ys[i - n]
        out.append(acc / min(i + 1, n))
    return out


def train_curves(records, runs=None):
    """``[(title, png bytes)]``: one figure of training panels (see module docstring).

    ``runs``: ``{label: records}`` to overlay several runs (the comparison page); ``records``
    is then ignored.
    """
    runs = runs or {"": records}
    groups = []
    for recs in runs.values():
        for title, keys in group_train_keys(recs):
            for t, ks in groups:
                if t == title:
                    ks.extend(k for k in keys if k not in ks)
                    break
            else:
                groups.append((title, list(keys)))
    if not groups:
        return []
    plt = _pyplot()
    out = []
    core = [g for g in groups if not g[0].startswith("SCST")]
    scst = [g for g in groups if g[0].startswith("SCST")]
    for name, part in (("Training by step", core), ("SCST by step", scst)):
        if not part:
            continue
        fig, axes = _grid(plt, len(part))
        for ax, (title, keys) in zip(axes, part):
            for label, recs in runs.items():
                for k in keys:
                    xs, ys = _series(recs, k)
                    if not xs:
                        continue
                    short = k.split("/")[-1] if len(keys) > 1 else ""
                    line_label = " ".join(p for p in (label, short) if p)
                    sm = _smooth(ys, max(2, len(ys) // 30))
                    if sm is not None:
                        base = ax.plot(xs, ys, alpha=0.3, lw=0.8)[0]
                        ax.plot(xs, sm, color=base.get_color(), lw=1.5, label=line_label or None)
                    else:
                        ax.plot(xs, ys, lw=1.2, marker="." if len(xs) < 30 else None, label=line_label or None)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if title == "learning rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=7)
        out.append((name, _figure_png(plt, fig)))
    return out


def eval_curves(records, runs=None):
    """``[(title, png bytes)]``: evaluation metrics by epoch, one line per split (and run)."""
    runs = runs or {"": records}
    keys = []
    for recs in runs.values():
        for r in recs:
            for k, v in r.items():
                if k not in NOT_PLOTTED and _numeric(v) and k not in keys:
                    keys.append(k)
    keys = [k for k in EVAL_ORDER if k in keys] + [k for k in keys if k not in EVAL_ORDER]
    keys = keys[:12]  # the page stays readable; every value is also in the metrics table
    if not keys:
        return []
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(plt, len(keys), width=3.6, height=2.5)
    for ax, k in zip(axes, keys):
        for label, recs in runs.items():
            splits = list(dict.fromkeys(r["split"] for r in recs if "split" in r))
            for split in splits:
                xs, ys = _series([r for r in recs if r.get("split") == split], k, x="epoch")
                if xs:
                    ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=" ".join(p for p in (label, split) if p))
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    return [("Evaluation metrics by epoch", _figure_png(plt, fig))]
