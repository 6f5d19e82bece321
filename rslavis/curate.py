"""Curate a caption dataset with a learned scorer: keep the best-scored (image, caption) pairs.

    python -m rslavis.curate --cfg-path projects/smallcap/synthetic_demo.yaml \\
        --scorer output/score_model_synthetic_clip/<job> --keep 0.7 --out curated/

Every (image, caption) of the curated splits (``--splits``, default ``run.train_splits``)
is scored by the scorer (a ``score_model`` run folder or ``save_pretrained``
directory); the top ``--keep`` share of each split is kept (``--select random`` keeps a
random share instead, the control; ``bottom`` the worst). Images left without a caption
are dropped; other splits are copied unchanged. Written to ``--out``:

- the kept subset in the dataset's own format, which its builder reads unchanged:
  Karpathy ``dataset.json`` (``ucm_caption``, ``rsicd_caption``, ``sydney_caption``),
  per-split COCO caption files (``coco_caption_format``), or ``rs_synthetic``'s
  ``annotations.json`` in a cache folder (``rs_synthetic/<settings hash>/``, images
  linked to the original ones);
- ``curated.yaml``: the project with its dataset entries pointing at those files;
- ``scores.jsonl`` (one line per pair: dataset, split, image_id, caption index,
  caption, score, kept), ``counts.json`` (pairs, images, kept, threshold, mean scores
  per split) and ``histogram_<dataset>_<split>.png`` (matplotlib, kept vs dropped).
"""

import argparse
import json
import logging
import math
import os
import random
import sys
from pathlib import Path

from rslavis.common.errors import ConfigError

logger = logging.getLogger("rslavis.curate")

SELECT = ("top", "random", "bottom")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m rslavis.curate", description=__doc__.split("\n")[0])
    p.add_argument("--cfg-path", required=True, help="project YAML whose datasets are curated")
    p.add_argument("--scorer", required=True, help="score_model run folder or save_pretrained directory")
    p.add_argument("--keep", type=float, default=0.7, help="share of (image, caption) pairs kept per split (0, 1]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--splits", nargs="+", default=None, help="splits to curate (default: run.train_splits)")
    p.add_argument("--select", choices=SELECT, default="top", help="top (default), random (control) or bottom")
    p.add_argument("--seed", type=int, default=0, help="seed of --select random")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- scoring and selection
def score_records(scorer, records, vis_processor, text_processor=None, image_options=None, batch_size=64, device="cpu"):
    """``[(record index, caption index, score)]`` for every caption of ``records``."""
    import torch

    from rslavis.datasets.image_io import load_image

    text_processor = text_processor or (lambda s: s)
    out, imgs, texts, keys = [], [], [], []

    def flush():
        if not texts:
            return
        scores = scorer.score(torch.stack(imgs).to(device), texts, batch_size=batch_size)
        out.extend((ri, ci, float(s)) for (ri, ci), s in zip(keys, scores.tolist()))
        imgs.clear(), texts.clear(), keys.clear()

    for ri, r in enumerate(records):
        image = vis_processor(load_image(r["image"], **(image_options or {})))
        for ci, c in enumerate(r["captions"]):
            imgs.append(image)
            texts.append(text_processor(c))
            keys.append((ri, ci))
        if len(texts) >= batch_size:
            flush()
    flush()
    return out


def select_pairs(scored, keep, select="top", seed=0):
    """The kept ``(record index, caption index)`` set and the score threshold (None for random)."""
    if not 0 < keep <= 1:
        raise ConfigError(f"--keep must be in (0, 1], got {keep}.")
    n_keep = max(1, math.ceil(keep * len(scored) - 1e-9)) if scored else 0
    if select == "random":
        chosen = random.Random(seed).sample(scored, n_keep)
        return {(a, b) for a, b, _ in chosen}, None
    # stable order: equal scores keep annotation order
    order = sorted(range(len(scored)), key=lambda i: -scored[i][2] if select == "top" else scored[i][2])
    kept = [scored[i] for i in order[:n_keep]]
    return {(a, b) for a, b, _ in kept}, (kept[-1][2] if kept else None)


# ---------------------------------------------------------------------- writers (one per format)
def _kept_indices(kept, records):
    """``{image_id: [kept caption indices]}``."""
    by = {}
    for ri, ci in sorted(kept):
        by.setdefault(records[ri]["image_id"], []).append(ci)
    return by


def write_karpathy(builder, kept_by_split, records_by_split, out):
    from rslavis.datasets.readers import load_json

    src = builder.require_path("annotation", kind="file")
    data = load_json(src)
    split_map = {"restval": "train", **dict(builder.info("split_map") or {})}
    keep = {s: _kept_indices(k, records_by_split[s]) for s, k in kept_by_split.items()}
    images = []
    for n, im in enumerate(data["images"]):
        split = split_map.get(im.get("split", "train"), im.get("split", "train"))
        if split not in keep:
            images.append(im)
            continue
        idx = keep[split].get(im.get("imgid", im.get("cocoid", n)))
        if not idx:
            continue
        im = dict(im, sentences=[im["sentences"][j] for j in idx])
        if "sentids" in im:
            im["sentids"] = [s.get("sentid") for s in im["sentences"] if "sentid" in s] or im["sentids"][: len(idx)]
        images.append(im)
    target = Path(out) / f"{builder.name}_dataset.json"
    target.write_text(json.dumps(dict(data, images=images)))
    return {"build_info": {"annotation": str(target.resolve()), "images": str(Path(builder.require_path("images", kind="dir")).resolve())}}


def write_coco(builder, kept_by_split, records_by_split, out):
    from rslavis.datasets.readers import load_json

    entry = {}
    for split, kept in kept_by_split.items():
        src = builder.require_path("splits", split, "annotation", kind="file")
        data = load_json(src)
        idx = {k: set(v) for k, v in _kept_indices(kept, records_by_split[split]).items()}
        seen, anns = {}, []
        for a in data["annotations"]:
            j = seen.get(a["image_id"], 0)
            seen[a["image_id"]] = j + 1
            if j in idx.get(a["image_id"], ()):
                anns.append(a)
        images = [im for im in data.get("images", []) if idx.get(im["id"])]
        target = Path(out) / f"{builder.name}_{split}.json"
        target.write_text(json.dumps(dict(data, images=images, annotations=anns)))
        images_dir = str(Path(builder.require_path("splits", split, "images", kind="dir")).resolve())
        entry.setdefault("build_info", {}).setdefault("splits", {})[split] = {"annotation": str(target.resolve()), "images": images_dir}
    return entry


def write_synthetic(builder, kept_by_split, records_by_split, out):
    """``annotations.json`` under ``<out>/rs_synthetic/<hash>/``: the builder finds it as its cache."""
    from rslavis.datasets.builders.base_builder import _get
    from rslavis.datasets.builders.synthetic import materialise

    confounded = _get(builder.config, "type", "default") == "confounded"
    src = materialise(builder.build_info, confounded=confounded)
    data = json.loads((src / "annotations.json").read_text())
    target = Path(out) / "rs_synthetic" / src.name
    target.mkdir(parents=True, exist_ok=True)
    for split, kept in kept_by_split.items():
        idx = _kept_indices(kept, records_by_split[split])
        data["splits"][split] = [dict(r, captions=[r["captions"][j] for j in idx[r["image_id"]]]) for r in data["splits"][split] if idx.get(r["image_id"])]
    link = target / "images"
    if not link.exists():
        try:
            os.symlink((src / "images").resolve(), link, target_is_directory=True)
        except OSError:  # no symlinks (some file systems): copy
            import shutil

            shutil.copytree(src / "images", link)
    (target / "annotations.json").write_text(json.dumps(data))
    return {"build_info": {"cache_dir": str(target.parent.resolve())}}


def writer_for(builder):
    from rslavis.datasets.builders.caption_builders import COCOFormatCaptionBuilder, KarpathyCaptionBuilder
    from rslavis.datasets.builders.synthetic import SyntheticSceneBuilder

    if isinstance(builder, KarpathyCaptionBuilder):
        return write_karpathy
    if isinstance(builder, COCOFormatCaptionBuilder):
        return write_coco
    if isinstance(builder, SyntheticSceneBuilder):
        return write_synthetic
    raise ConfigError(
        f"datasets.{builder.name}: curation writes the Karpathy (ucm/rsicd/sydney_caption), COCO-format "
        f"(coco_caption_format) and rs_synthetic formats; {type(builder).__name__} is not one of them."
    )


def write_histogram(scores, kept_flags, threshold, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    kept = [s for s, k in zip(scores, kept_flags) if k]
    dropped = [s for s, k in zip(scores, kept_flags) if not k]
    bins = 40
    ax.hist([kept, dropped], bins=bins, stacked=True, color=["tab:green", "tab:red"], label=[f"kept ({len(kept)})", f"dropped ({len(dropped)})"])
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("scorer score")
    ax.set_ylabel("(image, caption) pairs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- driver
def curate(cfg, scorer_path, keep, out, splits=None, select="top", seed=0, batch_size=64, device="cpu", cfg_path=None, options=None):
    """Curate every dataset of ``cfg`` (a :class:`rslavis.common.config.Config`); returns the counts dict."""
    from omegaconf import OmegaConf

    from rslavis.common.registry import registry
    from rslavis.models.score_model import load_scorer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = load_scorer(scorer_path, device=device)
    splits = list(splits or cfg.run.get("train_splits") or ["train"])
    counts, entries = {}, {}
    with open(out / "scores.jsonl", "w") as lines:
        for name, dcfg in cfg.datasets.items():
            builder = registry.get_builder_class(name)(dcfg, name)
            writer = writer_for(builder)
            datasets = builder.build_datasets()
            vis = builder.vis_processors.get("eval")
            text = builder.text_processors.get("eval")
            if vis is None:
                raise ConfigError(f"datasets.{name}.vis_processor.eval is not set; the scorer needs evaluation-processed images.")
            kept_by_split, records_by_split = {}, {}
            for split in splits:
                ds = datasets.get(split)
                if ds is None:
                    logger.warning("datasets.%s has no split %r; not curated", name, split)
                    continue
                records = ds.records
                scored = score_records(scorer, records, vis, text, ds.image_options, batch_size, device)
                kept, threshold = select_pairs(scored, keep, select, seed)
                kept_by_split[split], records_by_split[split] = kept, records
                flags = [(a, b) in kept for a, b, _ in scored]
                for (ri, ci, s), k in zip(scored, flags):
                    r = records[ri]
                    lines.write(json.dumps({"dataset": name, "split": split, "image_id": r["image_id"], "caption_index": ci,
                                            "caption": r["captions"][ci], "score": round(s, 6), "kept": k}) + "\n")
                values = [s for _, _, s in scored]
                kept_values = [s for s, k in zip(values, flags) if k]
                kept_images = {records[a]["image_id"] for a, _ in kept}
                counts.setdefault(name, {})[split] = {
                    "pairs": len(scored), "kept_pairs": len(kept), "images": len(records), "kept_images": len(kept_images),
                    "select": select, "threshold": threshold,
                    "score_mean": sum(values) / max(len(values), 1), "kept_score_mean": sum(kept_values) / max(len(kept_values), 1),
                }
                write_histogram(values, flags, threshold, f"{name} {split}: keep {keep:.0%} ({select})", out / f"histogram_{name}_{split}.png")
                logger.info("%s %s: kept %d of %d pairs (%d of %d images)", name, split, len(kept), len(scored), len(kept_images), len(records))
            if kept_by_split:
                entries[name] = writer(builder, kept_by_split, records_by_split, out)
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    if cfg_path is not None:
        from rslavis.common.config import load_yaml, parse_options

        project = OmegaConf.merge(load_yaml(cfg_path, "project config"), parse_options(options))
    else:
        project = OmegaConf.create({"datasets": OmegaConf.to_container(cfg.datasets, resolve=True), "run": {"task": cfg.run.task}})
    for name, entry in entries.items():
        project.datasets[name] = OmegaConf.merge(project.datasets.get(name) or {}, entry)
    (out / "curated.yaml").write_text("# written by python -m rslavis.curate: the project with its curated datasets\n" + OmegaConf.to_yaml(project))
    return counts


def run(args):
    from rslavis.common.config import Config

    cfg = Config.from_file(args.cfg_path, args.options)
    counts = curate(cfg, args.scorer, args.keep, args.out, args.splits, args.select, args.seed, args.batch_size, args.device,
                    cfg_path=args.cfg_path, options=args.options)
    print(json.dumps({"out": str(Path(args.out)), "curated_config": str(Path(args.out) / "curated.yaml"), "counts": counts}, indent=2))
    return 0


def main(argv=None):
    from rslavis.common.cli import run_cli

    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
