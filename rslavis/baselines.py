"""Baselines from annotations alone, to stand beside any model's numbers.

    python -m rslavis.baselines --cfg-path projects/smallcap/synthetic_demo.yaml --split test [--out baselines.json]

- ``most_frequent_caption``: the most frequent training caption given to every image.
- ``scene_class_oracle``: each image gets the first caption of another image of its
  scene class in the same split: the next image of the class in annotation order, or
  the previous one for the class's last image (an image alone in its split's class
  takes the first training image of the class; ``n_fallback`` counts them). Remote-
  sensing caption sets repeat captions within a class, so this scores far above what
  looking at the image adds; a model below it has learned little beyond the class.
- ``leave_one_out_human``: each image's k-th reference scored against its other
  references, averaged over k (an estimate of human agreement, the upper bound a
  captioner can be expected to reach).

Scene classes (:func:`scene_classes`): a record's ``label`` (RSICD's Karpathy file),
its ``background`` (``rs_synthetic``), ``--class-field`` when given, or a documented
rule for sets whose file names encode the class (``ucm_caption``: image ``n.tif`` is
class ``(n - 1) // 100`` of the 21 UC Merced classes in alphabetical order). Without
any, the oracle is left out with a note.

All baselines use the same metric code as model evaluation: pycocoevalcap (PTB
tokenization; METEOR and SPICE when Java and the SPICE jars are there) plus the object
metrics of :mod:`rslavis.metrics.object_metrics`.
"""

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from rslavis.common.errors import RslavisError

logger = logging.getLogger(__name__)

# UC Merced Land Use classes in alphabetical order: UCM-Captions' image n.tif is class (n - 1) // 100.
UCM_CLASSES = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential",
    "forest", "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark",
    "overpass", "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt",
)


def ucm_class(record):
    """UC Merced class of a UCM-Captions record, from its file name ``n.tif``."""
    stem = Path(str(record.get("filename") or record["image"])).stem
    try:
        return UCM_CLASSES[(int(stem) - 1) // 100]
    except (ValueError, IndexError):
        raise RslavisError(f"ucm_caption: cannot read a class from file name {stem!r}; expected 1.tif ... 2100.tif.") from None


# dataset name -> (rule giving a record's class, its description) when the annotation file has no class field
CLASS_RULES = {"ucm_caption": (ucm_class, "UC Merced file numbering, n.tif is class (n - 1) // 100")}
CLASS_FIELDS = ("label", "background")


def scene_classes(records, dataset_name=None, class_field=None):
    """``(classes, source)``: one class per record and where it came from, or ``(None, reason)``."""
    if not records:
        return None, "no records"
    fields = (class_field,) if class_field else CLASS_FIELDS
    for field in fields:
        if all(field in r for r in records):
            return [r[field] for r in records], f"field {field!r}"
    if class_field:
        missing = sum(1 for r in records if class_field not in r)
        raise RslavisError(f"--class-field {class_field!r}: {missing} of {len(records)} records have no such field.")
    if dataset_name in CLASS_RULES:
        rule, description = CLASS_RULES[dataset_name]
        return [rule(r) for r in records], f"rule: {description}"
    return None, f"the records have no {' or '.join(map(repr, CLASS_FIELDS))} field and {dataset_name!r} has no class rule"


def most_frequent_caption(train_captions):
    """The most frequent caption; ties go to the caption seen first."""
    if not train_captions:
        raise RslavisError("most_frequent_caption: the training split has no captions.")
    return Counter(train_captions).most_common(1)[0][0]


def score(references, predictions, meteor=True, spice=True, objects=False, parser=None):
    """The metric set of model evaluation: pycocoevalcap, plus object metrics with ``objects``."""
    from rslavis.metrics.coco_caption import caption_metrics

    out = caption_metrics(references, predictions, meteor=meteor, spice=spice)
    if objects:
        from rslavis.metrics.object_metrics import object_metrics

        out.update(object_metrics(references, predictions, parser=parser))
    return out


def most_frequent_caption_baseline(train_captions, references, **metric_kwargs):
    caption = most_frequent_caption(train_captions)
    metrics = score(references, {i: caption for i in references}, **metric_kwargs)
    return {"caption": caption, **metrics}


def class_oracle_predictions(records, classes, train_records=(), train_classes=()):
    """``({image_id: caption}, n_fallback)`` of the scene-class oracle (module docstring)."""
    members = {}
    for i, c in enumerate(classes):
        members.setdefault(c, []).append(i)
    first_train = {}
    for r, c in zip(train_records, train_classes):
        if r["captions"]:
            first_train.setdefault(c, r)
    preds, n_fallback = {}, 0
    for c, idx in members.items():
        for pos, i in enumerate(idx):
            if len(idx) > 1:
                neighbour = records[idx[pos + 1] if pos + 1 < len(idx) else idx[pos - 1]]
            elif c in first_train:
                neighbour, n_fallback = first_train[c], n_fallback + 1
            else:
                raise RslavisError(f"scene_class_oracle: class {c!r} has one image in the split and none in training; no other image to copy.")
            preds[records[i]["image_id"]] = neighbour["captions"][0]
    return preds, n_fallback


def class_oracle_baseline(records, classes, references, train_records=(), train_classes=(), **metric_kwargs):
    preds, n_fallback = class_oracle_predictions(records, classes, train_records, train_classes)
    return {**score(references, preds, **metric_kwargs), "n_classes": len(set(classes)), "n_fallback": n_fallback}


def leave_one_out_baseline(references, **metric_kwargs):
    """Mean over k of the metrics of reference k against the other references (images with >= 2)."""
    multi = {i: refs for i, refs in references.items() if len(refs) >= 2}
    if not multi:
        raise RslavisError("leave_one_out_baseline: no image has two or more references.")
    n = min(len(r) for r in multi.values())
    totals = Counter()
    for k in range(n):
        preds = {i: refs[k] for i, refs in multi.items()}
        rest = {i: refs[:k] + refs[k + 1 :] for i, refs in multi.items()}
        totals.update(score(rest, preds, **metric_kwargs))
    return {key: value / n for key, value in totals.items()}


def compute_baselines(cfg, split="test", meteor=True, spice=True, objects=True, parser=None, class_field=None):
    """``{dataset_name: {baseline: metrics}}`` for ``split`` of every configured dataset."""
    from rslavis.common.registry import registry

    metric_kwargs = dict(meteor=meteor, spice=spice, objects=objects, parser=parser)
    from rslavis.tasks.base_task import BaseTask

    # a file with only a datasets: section needs no task: BaseTask builds every dataset
    task = registry.get_task_class(cfg.run.task).setup_task(cfg) if cfg.run.get("task") else BaseTask(cfg)
    datasets = task.build_datasets(cfg)
    out = {}
    for name, splits in datasets.items():
        if split not in splits or "train" not in splits:
            raise RslavisError(f"dataset {name!r} needs a 'train' and a {split!r} split for baselines; it has {sorted(splits)}.")
        target, train = splits[split], splits["train"]
        refs = target.references()
        results = {"most_frequent_caption": most_frequent_caption_baseline(train.all_captions(), refs, **metric_kwargs)}
        classes, source = scene_classes(target.records, name, class_field)
        if classes is None:
            logger.warning("%s: scene_class_oracle left out: %s (give --class-field).", name, source)
        else:
            train_classes, _ = scene_classes(train.records, name, class_field)
            oracle = class_oracle_baseline(target.records, classes, refs, train.records, train_classes or (), **metric_kwargs)
            results["scene_class_oracle"] = {**oracle, "classes_from": source}
        results["leave_one_out_human"] = leave_one_out_baseline(refs, **metric_kwargs)
        out[name] = results
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rslavis.baselines", description="Caption baselines from annotations alone.")
    p.add_argument("--cfg-path", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--options", nargs="+", default=[])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--class-field", default=None, help="record field holding the scene class (default: label, then background, then a dataset rule)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the Java start-up)")
    p.add_argument("--no-spice", action="store_true", help="skip SPICE")
    p.add_argument("--no-objects", action="store_true", help="skip the object metrics (saves the caption parser)")
    p.add_argument("--parser", default=None, help="caption parser for the object metrics (default: hybrid; rules, spacy, ...)")
    p.add_argument("--lenient", action="store_true", help="unknown sections and keys warn (one line each) instead of failing")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    from rslavis.common.checkpoint import atomic_write_json
    from rslavis.common.config import Config
    from rslavis.common.logger import setup_logging

    setup_logging()
    try:
        cfg = Config.from_file(args.cfg_path, args.options, require_task=False, lenient=args.lenient)
        results = compute_baselines(
            cfg, args.split, meteor=not args.no_meteor, spice=not args.no_spice, objects=not args.no_objects,
            parser=args.parser, class_field=args.class_field,
        )
    except RslavisError as exc:
        if args.debug:
            raise
        print(f"rslavis: error: {exc}", file=sys.stderr)
        return 2
    for name, baselines in results.items():
        for baseline, metrics in baselines.items():
            scores = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}=-"
                               for k, v in metrics.items() if isinstance(v, float) or (v is None and k != "caption"))
            print(f"{name} {args.split} {baseline}: {scores}")
            if "caption" in metrics:
                print(f"    caption: {metrics['caption']!r}")
            if "classes_from" in metrics:
                print(f"    {metrics['n_classes']} classes from {metrics['classes_from']}; {metrics['n_fallback']} image(s) alone in their class took a training caption")
    if args.out:
        atomic_write_json({"split": args.split, "config": str(args.cfg_path), "results": results}, args.out, indent=2)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
