"""Two runs side by side (see :func:`rslavis.report.write_comparison`)."""

import datetime
import difflib
import json

from rslavis.report import html as H
from rslavis.report.analysis import stable_order
from rslavis.report.page import _image_paths, _metric_order, build_splits, gallery_split
from rslavis.report.plots import eval_curves, train_curves
from rslavis.report.run import flatten

LOWER_IS_BETTER = {"oversight_rate", "hallucination_rate", "count_abs_error"}
ABS_LOWER_IS_BETTER = {"count_signed_error"}


def config_diff(a, b):
    """``[(key, value in a, value in b)]`` for every dotted key whose values differ ("" = absent)."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k, ""), fb.get(k, "")
        if va != vb:
            rows.append((k, va, vb))
    return rows


def caption_change(a, b):
    """1 - word-level similarity of two captions (0: identical, 1: nothing in common)."""
    return 1.0 - difflib.SequenceMatcher(None, str(a).lower().split(), str(b).lower().split()).ratio()


def _delta_cell(key, va, vb):
    if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
        return ""
    d = vb - va
    if d == 0:
        return ("html", "0")
    if key in LOWER_IS_BETTER:
        good = d < 0
    elif key in ABS_LOWER_IS_BETTER:
        good = abs(vb) < abs(va)
    else:
        good = d > 0
    return ("html", f'<span class="{"better" if good else "worse"}">{"+" if d > 0 else ""}{H.esc(H.fmt(d))}</span>')


def metrics_diff_section(splits_a, splits_b, la, lb):
    by_a = {s.name: s.metrics for s in splits_a}
    by_b = {s.name: s.metrics for s in splits_b}
    common = [n for n in by_a if n in by_b and by_a[n] and by_b[n]]
    out = '<h2 id="metrics">Metric differences</h2>'
    if not common:
        return out + '<p class="sub">The runs have no evaluated split in common.</p>'
    for n in common:
        keys = _metric_order(dict.fromkeys([*by_a[n], *by_b[n]]))
        rows = [[k, by_a[n].get(k, ""), by_b[n].get(k, ""), _delta_cell(k, by_a[n].get(k), by_b[n].get(k))] for k in keys]
        out += f"<h3>{H.esc(n)}</h3>" + H.table(["metric", la, lb, f"{lb} - {la}"], rows, num_cols=[1, 2, 3])
    return out


def _stats(x):
    if x is None:
        return ""
    sde = "n/a" if x["sde"] is None else f"{x['sde']:.2f}"
    return f" (SDE {sde}, {len(x['hallucinated'])} hallucinated)"


def changed_section(sa, sb, la, lb, cap):
    pa, pb = sa.predictions(), sb.predictions()
    common = [i for i in stable_order(pa) if i in pb]
    changes = {i: caption_change(pa[i], pb[i]) for i in common}
    changed = sorted((i for i in common if changes[i] > 0), key=lambda i: -changes[i])[:cap]
    head = f'<h2 id="changed">Captions that changed most: {H.esc(sa.name)}</h2>'
    if not common:
        return head + '<p class="sub">No image has a prediction in both runs.</p>'
    n_changed = sum(1 for i in common if changes[i] > 0)
    head += (f'<p class="sub">{n_changed} of {len(common)} captions differ; the {len(changed)} that changed most '
             "(1 - word-level similarity) are shown.</p>")
    ds = sa.dataset if sa.dataset is not None else sb.dataset
    paths = _image_paths(ds) if ds is not None else {}
    refs = sa.refs or sb.refs or ({str(k): v for k, v in ds.references().items()} if ds is not None and hasattr(ds, "references") else {})
    cards = []
    for order, i in enumerate(changed):
        uri = H.thumbnail_uri(paths[i]) if i in paths else None
        img = f'<img src="{uri}" alt="{H.esc(i)}">' if uri else '<div class="noimg">image not available</div>'
        xa = (sa.analysis or {}).get(i)
        xb = (sb.analysis or {}).get(i)
        body = f'<div class="meta">{H.esc(i)} &middot; change {changes[i]:.2f}</div>'
        body += f'<div class="gen"><b>{H.esc(la)}:</b> {H.esc(pa[i])}{H.esc(_stats(xa))}</div>' + (H.objects_html(xa) if xa else "")
        body += f'<div class="cap2"><b>{H.esc(lb)}:</b> {H.esc(pb[i])}{H.esc(_stats(xb))}</div>' + (H.objects_html(xb) if xb else "")
        if refs.get(i):
            body += f'<details><summary>references ({len(refs[i])})</summary><ol class="refs">' + "".join(f"<li>{H.esc(r)}</li>" for r in refs[i]) + "</ol></details>"
        hall = len(xb["hallucinated"]) if xb else 0
        cards.append(f'<div class="card" data-order="{order}" data-change="{changes[i]:.4f}" data-hall="{hall}">{img}<div>{body}</div></div>')
    ctl = H.controls([("change", "most changed first"), ("hall", f"most hallucinations in {lb} first")], [("hall", f"only with hallucinations in {lb}")])
    return head + (H.LEGEND if sa.analysis else "") + ctl + '<div class="gallery" id="gallery">' + "".join(cards) + "</div>"


def render(run_a, run_b, parser=None, max_images=48):
    la, lb = f"A: {run_a.name}", f"B: {run_b.name}"
    if la == lb:
        la, lb = f"A: {run_a.run_dir}", f"B: {run_b.run_dir}"
    ds_a = None
    if any(run_a.results(n) for n in run_a.splits()):
        ds_a = run_a.build_datasets()
    same_data = json.dumps(run_a.config.get("datasets"), sort_keys=True, default=str) == json.dumps(run_b.config.get("datasets"), sort_keys=True, default=str)
    splits_a = build_splits(run_a, ds_a or {}, parser)
    # the same datasets section: reuse A's datasets instead of building them twice
    splits_b = build_splits(run_b, (ds_a or {}) if same_data else None, parser)

    rows = config_diff(run_a.config, run_b.config)
    out = '<h2 id="config">Config differences</h2>'
    out += H.table(["key", la, lb], [(k, H.fmt(a) if not isinstance(a, (list, dict)) else json.dumps(a), H.fmt(b) if not isinstance(b, (list, dict)) else json.dumps(b)) for k, a, b in rows]) if rows else '<p class="sub">The configs are identical.</p>'
    out += metrics_diff_section(splits_a, splits_b, la, lb)

    figs = []
    try:
        figs += train_curves(None, runs={la: run_a.train_records, lb: run_b.train_records})
        figs += eval_curves(None, runs={la: run_a.eval_records, lb: run_b.eval_records})
    except ImportError as exc:
        out += f'<p class="warn">matplotlib is not installed ({H.esc(exc)}).</p>'
    if figs:
        out += '<h2 id="curves">Training curves</h2>' + H.plots(figs)

    ga = gallery_split(run_a, splits_a)
    names_b = {s.name: s for s in splits_b}
    cand = [ga] if ga is not None else []
    cand += [s for s in splits_a if s is not ga and s.results and not s.is_vqa]
    pair = next(((s, names_b[s.name]) for s in cand if s.name in names_b and names_b[s.name].results and not s.is_vqa), None)
    if pair:
        out += changed_section(pair[0], pair[1], la, lb, max_images)
    else:
        out += '<h2 id="changed">Changed captions</h2><p class="sub">No caption split with predictions in both runs.</p>'

    warnings = "".join(f'<div class="warn">{H.esc(label)}: {H.esc(w)}</div>' for label, run in ((la, run_a), (lb, run_b)) for w in run.warnings)
    nav = '<nav><a href="#config">config</a><a href="#metrics">metrics</a><a href="#curves">curves</a><a href="#changed">changed captions</a></nav>'
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = f"{H.esc(la)} ({H.esc(run_a.run_dir)}) vs {H.esc(lb)} ({H.esc(run_b.run_dir)}) &middot; written {when}"
    return H.page(f"rslavis run comparison: {run_a.name} vs {run_b.name}", warnings + nav + out, subtitle=sub)
