"""``python -m rslavis.datasets --cfg-path X`` (``rslavis-data``): check datasets before training.

For every dataset of the config's ``datasets:`` section (merged over its default YAML,
then ``--options``), and every split, prints: images, captions (or questions),
vocabulary size, caption length in words (min/median/max), the most frequent objects
with their mean count (from count dictionaries: attached ones, or parsed now with
``--parser NAME``) and the number of image files that do not exist.
Exit status: 0, or 2 with a one-line message for a configuration or data error.
"""

import argparse
import json
import os
import statistics
import sys
from collections import Counter


def load_dataset_configs(cfg_path, options=None, lenient=False):
    """``{name: merged dataset config}`` (dataset default YAML < project < options), validated
    as for training; a file with only a ``datasets:`` section is fine (no task needed)."""
    from rslavis.common.config import Config
    from rslavis.common.errors import ConfigError

    cfg = Config.from_file(cfg_path, options, require_task=False, lenient=lenient)
    if not cfg.datasets:
        raise ConfigError(f"{cfg_path}: no 'datasets' section to inspect.")
    return {name: cfg.datasets[name] for name in cfg.datasets}


def split_records(name, dcfg):
    """``{split: records}`` without decoding images (builders' ``read_records`` when they have it)."""
    from rslavis.common.registry import registry

    builder = registry.get_builder_class(name)(dcfg, name)
    if hasattr(builder, "read_records"):
        return builder.read_records()
    return {split: ds.records for split, ds in builder.build_datasets().items()}


def split_stats(records, check_images=True, top_k=10):
    """Statistics of one split's records (caption or VQA records)."""
    from rslavis.text.tokenize import simple_tokenize

    is_vqa = bool(records) and "question" in records[0]
    texts = [a for r in records for a in r["answers"]] if is_vqa else [c for r in records for c in r["captions"]]
    lengths = [len(simple_tokenize(t)) for t in texts]
    vocab = set()
    for t in texts:
        vocab.update(simple_tokenize(t))
    images = list(dict.fromkeys(r["image"] for r in records))
    stats = {
        "images": len(images),
        ("questions" if is_vqa else "captions"): len(records) if is_vqa else len(texts),
        "vocabulary": len(vocab),
        "length_min": min(lengths) if lengths else 0,
        "length_median": statistics.median(lengths) if lengths else 0,
        "length_max": max(lengths) if lengths else 0,
    }
    if is_vqa:
        stats["question_types"] = dict(Counter(r.get("question_type") or "" for r in records).most_common())
    dicts = [r["count_dict"] for r in records if "count_dict" in r]
    if dicts:
        freq, totals, numbered = Counter(), Counter(), Counter()
        for d in dicts:
            for obj, n in d.items():
                freq[obj] += 1
                if n is not None:
                    totals[obj] += n
                    numbered[obj] += 1
        stats["objects"] = [
            {"object": o, "images": c, "mean_count": round(totals[o] / numbered[o], 2) if numbered[o] else None}
            for o, c in freq.most_common(top_k)
        ]
    if check_images:
        missing = [p for p in images if not os.path.isfile(p)]
        stats["missing_images"] = len(missing)
        stats["missing_examples"] = missing[:3]
    return stats


def _format(name, stats_by_split):
    lines = [name]
    for split, s in stats_by_split.items():
        unit = "questions" if "questions" in s else "captions"
        miss = f", missing images {s['missing_images']}" if "missing_images" in s else ""
        lines.append(
            f"  {split}: {s['images']} images, {s[unit]} {unit}, vocabulary {s['vocabulary']}, "
            f"length min/median/max {s['length_min']}/{s['length_median']}/{s['length_max']}{miss}"
        )
        if s.get("missing_examples"):
            lines.append(f"    missing e.g. {', '.join(s['missing_examples'])}")
        if "question_types" in s:
            lines.append("    question types: " + ", ".join(f"{k or '?'} {v}" for k, v in s["question_types"].items()))
        if "objects" in s:
            objs = ", ".join(f"{o['object']} {o['images']} (mean {o['mean_count'] if o['mean_count'] is not None else 'n/a'})" for o in s["objects"])
            lines.append(f"    objects (images, mean count): {objs}")
    return "\n".join(lines)


def main(argv=None):
    """Console entry point (``rslavis-data``)."""
    from rslavis.common.errors import RslavisError

    ap = argparse.ArgumentParser(prog="rslavis-data", description="Per-split statistics of the datasets of a config.")
    ap.add_argument("--cfg-path", required=True, help="project YAML with a datasets: section")
    ap.add_argument("--options", nargs="*", default=[], help="overrides key=value, e.g. datasets.ucm_caption.build_info.images=/data/ucm")
    ap.add_argument("--parser", default=None, help="parse references with this caption parser to list objects (enables count_dict)")
    ap.add_argument("--top", type=int, default=10, help="objects to list per split")
    ap.add_argument("--no-image-check", action="store_true", help="skip the existence check of every image file")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    ap.add_argument("--lenient", action="store_true", help="unknown sections and keys warn (one line each) instead of failing")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    args = ap.parse_args(argv)
    try:
        configs = load_dataset_configs(args.cfg_path, args.options, args.lenient)
        report = {}
        for name, dcfg in configs.items():
            if args.parser:
                from omegaconf import OmegaConf

                dcfg = OmegaConf.merge(dcfg, {"count_dict": {"enabled": True, "parser": args.parser}})
            records = split_records(name, dcfg)
            report[name] = {split: split_stats(recs, not args.no_image_check, args.top) for split, recs in records.items()}
            if not args.json:
                print(_format(name, report[name]), flush=True)
        if args.json:
            print(json.dumps(report, indent=1, default=str))
    except RslavisError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
