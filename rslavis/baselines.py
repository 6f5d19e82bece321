"""Baselines from annotations alone, to stand beside any model's numbers.

    python -m rslavis.baselines --cfg-path projects/smallcap/synthetic_demo.yaml --split test [--out baselines.json]

- ``most_frequent_caption``: the most frequent training caption given to every image.
- ``leave_one_out_human``: each image's k-th reference scored against its other
  references, averaged over k (an estimate of human agreement, the upper bound a
  captioner can be expected to reach).

Both use the same metric code (pycocoevalcap) as model evaluation.
"""

import argparse
import json
import logging
import sys
from collections import Counter

from rslavis.common.errors import RslavisError

logger = logging.getLogger(__name__)


def most_frequent_caption(train_captions):
    """The most frequent caption; ties go to the caption seen first."""
    if not train_captions:
        raise RslavisError("most_frequent_caption: the training split has no captions.")
    return Counter(train_captions).most_common(1)[0][0]


def most_frequent_caption_baseline(train_captions, references, **metric_kwargs):
    from rslavis.metrics.coco_caption import caption_metrics

    caption = most_frequent_caption(train_captions)
    metrics = caption_metrics(references, {i: caption for i in references}, **metric_kwargs)
    return {"caption": caption, **metrics}


def leave_one_out_baseline(references, **metric_kwargs):
    """Mean over k of the metrics of reference k against the other references (images with >= 2)."""
    from rslavis.metrics.coco_caption import caption_metrics

    multi = {i: refs for i, refs in references.items() if len(refs) >= 2}
    if not multi:
        raise RslavisError("leave_one_out_baseline: no image has two or more references.")
    n = min(len(r) for r in multi.values())
    totals = Counter()
    for k in range(n):
        preds = {i: refs[k] for i, refs in multi.items()}
        rest = {i: refs[:k] + refs[k + 1 :] for i, refs in multi.items()}
        totals.update(caption_metrics(rest, preds, **metric_kwargs))
    return {key: value / n for key, value in totals.items()}


def compute_baselines(cfg, split="test", meteor=True):
    """``{dataset_name: {baseline: metrics}}`` for ``split`` of every configured dataset."""
    from rslavis.common.registry import registry

    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    out = {}
    for name, splits in datasets.items():
        if split not in splits or "train" not in splits:
            raise RslavisError(f"dataset {name!r} needs a 'train' and a {split!r} split for baselines; it has {sorted(splits)}.")
        refs = splits[split].references()
        train_caps = splits["train"].all_captions()
        out[name] = {
            "most_frequent_caption": most_frequent_caption_baseline(train_caps, refs, meteor=meteor),
            "leave_one_out_human": leave_one_out_baseline(refs, meteor=meteor),
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rslavis.baselines", description="Caption baselines from annotations alone.")
    p.add_argument("--cfg-path", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--options", nargs="+", default=[])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the Java start-up)")
    args = p.parse_args(argv)
    from rslavis.common.checkpoint import atomic_write_json
    from rslavis.common.config import Config
    from rslavis.common.logger import setup_logging

    setup_logging()
    try:
        cfg = Config.from_file(args.cfg_path, args.options)
        results = compute_baselines(cfg, args.split, meteor=not args.no_meteor)
    except RslavisError as exc:
        print(f"rslavis: error: {exc}", file=sys.stderr)
        return 2
    for name, baselines in results.items():
        for baseline, metrics in baselines.items():
            scores = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"{name} {args.split} {baseline}: {scores}")
            if "caption" in metrics:
                print(f"    caption: {metrics['caption']!r}")
    if args.out:
        atomic_write_json(results, args.out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
