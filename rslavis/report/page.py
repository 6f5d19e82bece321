"""The single-run report page (see :func:`rslavis.report.write_report`)."""

import datetime
import logging
import platform
import sys

from rslavis.report import html as H
from rslavis.report.analysis import analyse_captions, select_gallery, stable_order, vqa_accuracy_by_type
from rslavis.report.plots import eval_curves, train_curves

logger = logging.getLogger(__name__)

CAPTION_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
OBJECT_KEYS = ("SDE", "oversight_rate", "hallucination_rate", "count_abs_error", "count_signed_error", "count_exact")
HIDDEN = {"epoch", "n_images", "n_gt_objects", "n_mentioned", "n_counted"}
KEY_CONFIG = (
    "model.arch", "model.model_type", "model.finetuned", "model.vision.type", "model.vision.arch",
    "run.task", "run.runner", "run.lr_sched", "run.init_lr", "run.min_lr", "run.warmup_lr", "run.warmup_steps",
    "run.weight_decay", "run.max_epoch", "run.iters_per_epoch", "run.batch_size_train", "run.accum_grad_iters",
    "run.batch_size_eval", "run.val_freq", "run.seed", "run.amp", "run.device", "run.max_len", "run.min_len",
    "run.num_beams", "run.train_splits", "run.valid_splits", "run.test_splits", "run.skip_metrics", "run.eval_rewards",
    "run.rewards", "run.scst_start_epoch", "run.scst_num_samples", "run.scst_temperature", "run.scst_baseline",
)


def environment(device=None):
    """Versions and device of the process writing the report."""
    env = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for mod in ("torch", "transformers", "rslavis"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:
                m = None
        env[mod] = getattr(m, "__version__", "not installed") if m is not None else "not installed"
    if device is None:
        torch = sys.modules.get("torch")
        device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    env["device"] = str(device)
    return env


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _short(value):
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, default=str)
    return value


def config_section(run, env):
    cfg = run.config
    rows = [(k, _short(v)) for k in KEY_CONFIG if (v := _get(cfg, k)) is not None]
    for name, d in (cfg.get("datasets") or {}).items():
        d = d or {}
        info = d.get("build_info") or {}
        bits = [f"type {d.get('type', 'default')}"]
        if info.get("sizes"):
            bits.append("sizes " + ", ".join(f"{k} {v}" for k, v in info["sizes"].items()))
        rows.insert(0, (f"datasets.{name}", "; ".join(bits)))
    out = '<h2 id="config">Config</h2>' + H.table(["key", "value"], rows, cls="kv")
    try:
        text = (run.run_dir / "config.yaml").read_text(encoding="utf-8")
        out += f"<details><summary>full config.yaml</summary><pre>{H.esc(text)}</pre></details>"
    except OSError:
        pass
    out += '<h2 id="env">Environment</h2><p class="sub">of the process that wrote this report (at the end of training, the run\'s own)</p>'
    out += H.table(["", ""], list(env.items()), cls="kv")
    return out


def _metric_order(keys):
    keys = [k for k in keys if k not in HIDDEN]
    first = [k for k in (*CAPTION_KEYS, *OBJECT_KEYS) if k in keys]
    return first + sorted(k for k in keys if k not in first)


class _Split:
    """What the report knows of one evaluated split."""

    def __init__(self, name, metrics, results, dataset):
        self.name, self.metrics, self.results, self.dataset = name, dict(metrics or {}), results, dataset
        self.analysis = None
        self.refs = None  # {str image id: [references]} once analysed
        self.vqa_acc = None
        self.vqa_correct = None

    @property
    def is_vqa(self):
        return bool(self.results) and "question_id" in self.results[0] and "caption" not in self.results[0]

    def predictions(self):
        """``{str(image_id): caption}``: ids are compared as strings (JSON may turn 12 into "12")."""
        return {str(r["image_id"]): str(r.get("caption") or "") for r in self.results if "image_id" in r}


def analyse_split(split, parser=None):
    """Fill ``split`` with object metrics / per-image analysis or VQA accuracy (needs its dataset)."""
    ds = split.dataset
    if ds is None or not split.results:
        return
    if split.is_vqa:
        if hasattr(ds, "answers"):
            split.vqa_acc, split.vqa_correct = vqa_accuracy_by_type(split.results, ds.answers(), ds.question_types())
        return
    if not hasattr(ds, "references"):
        return
    from rslavis.metrics.object_metrics import object_metrics

    refs = {str(k): list(v) for k, v in ds.references().items()}
    preds = split.predictions()
    if not any(i in refs for i in preds):
        return
    om = object_metrics(refs, preds, parser=parser)
    for k in OBJECT_KEYS:
        split.metrics.setdefault(k, om[k])
    split.analysis = analyse_captions(refs, preds, parser=parser)
    split.refs = refs


def metrics_section(splits):
    names = [s.name for s in splits if s.metrics]
    if not names:
        return '<h2 id="metrics">Metrics</h2><p class="sub">No metrics_&lt;split&gt;.json in the run folder.</p>'
    keys = _metric_order(dict.fromkeys(k for s in splits for k in s.metrics))
    by = {s.name: s.metrics for s in splits}
    rows = [[k, *[by[n].get(k, "") for n in names]] for k in keys]
    epochs = ", ".join(f"{n}: epoch {by[n]['epoch']}" for n in names if "epoch" in by[n])
    out = '<h2 id="metrics">Metrics</h2>' + H.table(["metric", *names], rows, num_cols=range(1, len(names) + 1))
    scored = [(n, by[n]["n_scored"], by[n]["n_expected"]) for n in names if "n_scored" in by[n] and "n_expected" in by[n]]
    if scored:  # a split scored on part of its items must not read as the split's result
        partial = any(k < m for _, k, m in scored)
        out += (f'<p class="{"warn" if partial else "sub"}">Scored: '
                + H.esc(", ".join(f"{n}: {k} of {m} items" for n, k, m in scored))
                + (" (partial: the other items had unreadable images)." if partial else ".") + "</p>")
    out += (f'<p class="sub">{H.esc(epochs)}. SDE, oversight/hallucination rates and count errors come from '
            "<code>rslavis.metrics.object_metrics</code> on the split's predictions when the run did not log them.</p>")
    for s in splits:
        if s.vqa_acc:
            out += f"<h3>VQA accuracy by question type: {H.esc(s.name)}</h3>"
            out += H.table(["question type", "accuracy"], list(s.vqa_acc.items()), num_cols=[1])
    return out


def curves_section(run):
    figs = []
    try:
        figs += train_curves(run.train_records)
        figs += eval_curves(run.eval_records)
    except ImportError as exc:
        return f'<h2 id="curves">Training curves</h2><p class="warn">matplotlib is not installed ({H.esc(exc)}).</p>'
    if not figs:
        return '<h2 id="curves">Training curves</h2><p class="sub">No training or evaluation records in log.jsonl.</p>'
    return '<h2 id="curves">Training curves</h2>' + H.plots(figs)


def _image_paths(dataset):
    paths = {}
    for r in getattr(dataset, "records", None) or []:
        if isinstance(r, dict) and "image_id" in r and "image" in r:
            paths.setdefault(str(r["image_id"]), r["image"])
    return paths


def caption_gallery(split, cap):
    a = split.analysis
    refs = split.refs
    preds = split.predictions()
    ids, reasons = select_gallery(a, cap)
    paths = _image_paths(split.dataset)
    cards = []
    for order, i in enumerate(ids):
        x = a[i]
        uri = H.thumbnail_uri(paths[i]) if i in paths else None
        img = f'<img src="{uri}" alt="{H.esc(i)}">' if uri else '<div class="noimg">image not available</div>'
        sde = "" if x["sde"] is None else f"{x['sde']:.3f}"
        cnt = sum(abs(p - r) for _, p, r in x["count_errors"])
        meta = f"{H.esc(i)} &middot; SDE {sde or 'n/a'}" + (f" &middot; {H.esc(reasons[i])}" if reasons.get(i) else "")
        ref_list = "".join(f"<li>{H.esc(r)}</li>" for r in refs[i])
        cards.append(
            f'<div class="card" data-order="{order}" data-sde="{sde}" data-hall="{len(x["hallucinated"])}" '
            f'data-miss="{len(x["missed"])}" data-cnt="{cnt}">{img}<div><div class="meta">{meta}</div>'
            f'<div class="gen"><b>Generated:</b> {H.esc(preds[i])}</div>{H.objects_html(x)}'
            f'<details><summary>references ({len(refs[i])})</summary><ol class="refs">{ref_list}</ol></details></div></div>'
        )
    n = len(a)
    how = (f"all {n} images" if len(ids) == n else
           f"{len(ids)} of {n} images: the {cap // 4} with the lowest SDE, up to {cap // 4} with the most "
           "hallucinated objects, the rest chosen by a fixed hash of the image id")
    ctl = H.controls(
        [("order", "sample order"), ("sde", "lowest SDE first"), ("hall", "most hallucinations first"),
         ("miss", "most missed objects first"), ("cnt", "largest count error first")],
        [("hall", "only with hallucinations"), ("miss", "only with missed objects"), ("cnt", "only with count errors")],
    )
    return (f'<h2 id="gallery-{H.esc(split.name)}">Gallery: {H.esc(split.name)}</h2><p class="sub">{H.esc(how)}.</p>'
            + H.LEGEND + ctl + '<div class="gallery" id="gallery">' + "".join(cards) + "</div>")


def vqa_gallery(split, cap):
    answers = split.dataset.answers()
    types = split.dataset.question_types()
    paths = _image_paths(split.dataset)
    answers = {str(k): v for k, v in answers.items()}
    types = {str(k): v for k, v in types.items()}
    by_q = {str(r["question_id"]): r for r in split.results if str(r.get("question_id")) in answers}
    wrong = [q for q in stable_order(by_q) if not split.vqa_correct.get(q)]
    right = [q for q in stable_order(by_q) if split.vqa_correct.get(q)]
    ids = wrong[: cap // 2]
    ids += right[: cap - len(ids)]
    ids += wrong[cap // 2: cap // 2 + cap - len(ids)]
    cards = []
    for order, q in enumerate(stable_order(ids)):
        r = by_q[q]
        uri = H.thumbnail_uri(paths[str(r.get("image_id"))]) if str(r.get("image_id")) in paths else None
        img = f'<img src="{uri}" alt="{H.esc(r.get("image_id"))}">' if uri else '<div class="noimg">image not available</div>'
        ok = split.vqa_correct.get(q)
        mark = '<span class="obj ok">correct</span>' if ok else '<span class="obj hall">wrong</span>'
        cards.append(
            f'<div class="card" data-order="{order}" data-wrong="{0 if ok else 1}">{img}<div>'
            f'<div class="meta">{H.esc(q)} &middot; {H.esc(types.get(q) or "")}</div>'
            f'<div class="gen"><b>Q:</b> {H.esc(r.get("question", ""))}</div>'
            f'<div class="gen"><b>Answer:</b> {H.esc(r.get("answer", ""))} {mark}</div>'
            f'<div class="sub">accepted: {H.esc(" | ".join(map(str, answers[q])))}</div></div></div>'
        )
    ctl = H.controls([("order", "sample order")], [("wrong", "only wrong answers")])
    how = f"{len(cards)} of {len(by_q)} questions, at most half of them wrong, chosen by a fixed hash of the question id"
    return (f'<h2 id="gallery-{H.esc(split.name)}">Gallery: {H.esc(split.name)}</h2><p class="sub">{H.esc(how)}.</p>'
            + ctl + '<div class="gallery" id="gallery">' + "".join(cards) + "</div>")


def build_splits(run, datasets=None, parser=None):
    """``[_Split]`` for every split of the run, analysed when its dataset is available."""
    names = run.splits()
    need_data = any(run.results(n) for n in names)
    eval_ds = run.eval_datasets(datasets) if need_data else {}
    splits = []
    for n in names:
        s = _Split(n, run.metrics.get(n), run.results(n), eval_ds.get(n))
        try:
            analyse_split(s, parser=parser)
        except Exception as exc:  # the parser or a broken record must not cost the rest of the page
            run.warn(f"split {n}: object analysis failed ({type(exc).__name__}: {exc}).")
        splits.append(s)
    return splits


def gallery_split(run, splits):
    """The split shown in the gallery: the first test split with an analysis, else the last analysed."""
    usable = [s for s in splits if s.analysis or s.vqa_correct]
    tests = set(run.test_split_names())
    for s in usable:
        if s.name in tests:
            return s
    return usable[-1] if usable else None


def render(run, datasets=None, parser=None, max_images=48, device=None):
    """The report page (HTML text) of ``run`` (a :class:`~rslavis.report.run.RunData`)."""
    splits = build_splits(run, datasets, parser)
    g = gallery_split(run, splits)
    if g is None:
        gallery = '<h2 id="gallery">Gallery</h2><p class="sub">No gallery: the predictions or the dataset (references, images) are not available.</p>'
    elif g.is_vqa:
        gallery = vqa_gallery(g, max_images)
    else:
        gallery = caption_gallery(g, max_images)
    body = config_section(run, environment(device)) + metrics_section(splits) + curves_section(run) + gallery
    warnings = "".join(f'<div class="warn">{H.esc(w)}</div>' for w in run.warnings)
    nav = '<nav><a href="#config">config</a><a href="#env">environment</a><a href="#metrics">metrics</a><a href="#curves">curves</a>'
    if g is not None:
        nav += f'<a href="#gallery-{H.esc(g.name)}">gallery</a>'
    nav += "</nav>"
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = f"{H.esc(run.run_dir)} &middot; written {when}"
    return H.page(f"rslavis run report: {run.name}", warnings + nav + body, subtitle=sub)
