"""Score caption predictions: ``python -m rslavis.evaluate --gt GT --pred PRED``.

``GT`` is a COCO caption file or a Karpathy ``dataset.json`` (images of ``--split``,
default ``test``; ids are ``imgid`` unless ``--id-field`` says otherwise). ``PRED`` is a
JSON list ``[{"image_id", "caption"}, ...]`` (or JSON lines of the same). Ids are
compared as strings, so ``12`` and ``"12"`` match.

Prints a table and, with ``--out``, writes a JSON object with the pycocoevalcap keys
(``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE`` when its jars
exist) and the object metrics (``SDE``, ``oversight_rate``, ``hallucination_rate``,
``count_abs_error``, ``count_signed_error``, ``count_exact``), plus ``n_images``.

Problems with the files: duplicate prediction ids, prediction ids missing from GT and GT
images without a prediction are warnings with counts (the first prediction of an id is
kept; only matched images are scored), or errors with ``--strict``. An empty prediction
file, or no prediction matching GT, is always an error. Errors print one line and exit 2.
"""

import argparse
import json
import logging
import os
import sys

from rslavis.common.errors import DataError, RslavisError

logger = logging.getLogger("rslavis.evaluate")


def _examples(ids, n=5):
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (", ..." if len(ids) > n else "")


def load_predictions(path):
    """``[(image_id, caption)]`` from a prediction file; DataError naming the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"prediction file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise DataError(f"prediction file {path!r} is empty; expected a JSON list of {{'image_id', 'caption'}}.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"prediction file {path!r} is neither JSON nor JSON lines: {exc}.") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(f"prediction file {path!r} must hold a list of {{'image_id', 'caption'}}, got {type(data).__name__}.")
    if not data:
        raise DataError(f"prediction file {path!r} holds no predictions.")
    out = []
    for k, rec in enumerate(data):
        if not isinstance(rec, dict) or "image_id" not in rec or "caption" not in rec:
            raise DataError(
                f"prediction file {path!r}: record {k} must have 'image_id' and 'caption', got {str(rec)[:120]}."
            )
        out.append((rec["image_id"], "" if rec["caption"] is None else str(rec["caption"])))
    return out


def reconcile(gt, preds, strict=False):
    """Match predictions to GT by string id. Returns ``(references, predictions)`` dicts keyed by str id."""
    refs = {str(k): v for k, v in gt.items()}
    seen, dups = {}, []
    for i, cap in preds:
        key = str(i)
        if key in seen:
            dups.append(key)
        else:
            seen[key] = cap
    problems = []
    if dups:
        problems.append(f"{len(dups)} duplicate prediction id(s) (e.g. {_examples(dict.fromkeys(dups))}); the first caption of each is kept")
    extra = [k for k in seen if k not in refs]
    if extra:
        problems.append(f"{len(extra)} prediction id(s) not in the ground truth (e.g. {_examples(extra)}); ignored")
    missing = [k for k in refs if k not in seen]
    if missing:
        problems.append(f"{len(missing)} of {len(refs)} ground-truth image(s) have no prediction (e.g. {_examples(missing)}); only predicted images are scored")
    if problems and strict:
        raise DataError("--strict: " + "; ".join(problems) + ".")
    for p in problems:
        logger.warning("%s.", p)
    matched = {k: seen[k] for k in seen if k in refs}
    if not matched:
        raise DataError(
            f"no prediction id matches a ground-truth id (predictions e.g. {_examples(seen)}; "
            f"ground truth e.g. {_examples(refs)}); check --split and --id-field."
        )
    return {k: refs[k] for k in matched}, matched


def evaluate(gt_path, pred_path, split="test", id_field="imgid", strict=False, meteor=True, spice=True,
             objects=True, parser=None):
    """All metrics as a dict (see module docstring)."""
    from rslavis.metrics.coco_caption import caption_metrics
    from rslavis.metrics.references import load_references

    gt = load_references(gt_path, split=split, id_field=id_field)
    if not gt:
        raise DataError(f"ground-truth file {os.fspath(gt_path)!r} has no images{f' in split {split!r}' if split else ''}.")
    refs, preds = reconcile(gt, load_predictions(pred_path), strict=strict)
    metrics = caption_metrics(refs, preds, meteor=meteor, spice=spice)
    if objects:
        from rslavis.metrics.object_metrics import object_metrics

        metrics.update(object_metrics(refs, preds, parser=parser))
    metrics["n_images"] = len(preds)
    return metrics


def format_table(metrics):
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
    for k, v in metrics.items():
        shown = f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else v)  # None: nothing to average
        lines.append(f"{k:<{width}}  {shown}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m rslavis.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gt", required=True, help="COCO caption file or Karpathy dataset.json")
    ap.add_argument("--pred", required=True, help='JSON list of {"image_id", "caption"}')
    ap.add_argument("--split", default="test", help="Karpathy split to score (default test; 'all' for every image)")
    ap.add_argument("--id-field", default="imgid", help="Karpathy image key used as image_id (default imgid)")
    ap.add_argument("--out", help="write the metrics to this JSON file")
    ap.add_argument("--strict", action="store_true", help="id mismatches and duplicates are errors, not warnings")
    ap.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    ap.add_argument("--no-spice", action="store_true", help="skip SPICE")
    ap.add_argument("--no-objects", action="store_true", help="skip the object-level metrics")
    ap.add_argument("--parser", default=None, help="caption parser for object metrics (default: hybrid; rules, spacy, ...)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        metrics = evaluate(
            args.gt, args.pred, split=args.split, id_field=args.id_field, strict=args.strict,
            meteor=not args.no_meteor, spice=not args.no_spice, objects=not args.no_objects, parser=args.parser,
        )
        print(format_table(metrics))
        if args.out:
            d = os.path.dirname(os.path.abspath(args.out))
            os.makedirs(d, exist_ok=True)
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2)
            print(f"wrote {args.out}")
    except (RslavisError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
