"""Object-level caption metrics from the caption parser.

For each image, GT objects are the fused count dictionary of its references
(:func:`rslavis.text.count_dict.fuse_counts`, or ``count_dicts`` when given) and the
predicted objects are the parse of the generated caption; matching uses the synonym
table, fuzzy matching and compound heads (:meth:`SynonymTable.same_object`).

- ``SDE``: mean over images with at least one GT object of the share of GT objects the
  caption mentions (scene description exhaustiveness).
- ``oversight_rate``: GT objects not mentioned / GT objects, pooled over all images.
- ``hallucination_rate``: mentioned objects found in no reference / mentioned objects,
  pooled over all images.
- ``count_abs_error``, ``count_signed_error``: mean ``|n_pred - n_ref|`` and mean
  ``n_pred - n_ref`` over all objects counted exactly by both sides, pooled.
- ``count_exact``: share of those objects whose count is exactly right.

A metric with nothing to average (no GT object, no mention, no compared count) is
``None`` (``null`` in JSON, "-" in tables and the report), never 0.0: a count error of
0.0 next to a count accuracy of 0.0 would read as perfect and useless at once.
``n_images``, ``n_gt_objects``, ``n_mentioned``, ``n_counted`` report the denominators.
"""

from rslavis.rewards.count import count_pairs
from rslavis.text import build_parser
from rslavis.text.count_dict import fuse_counts

KEYS = ("SDE", "oversight_rate", "hallucination_rate", "count_abs_error", "count_signed_error", "count_exact")


def parse_objects(references, predictions, parser=None, count_dicts=None):
    """``(ids, gts, preds, match)``: the ids scored, the reference count dictionaries, the
    captions' parses and the synonym-aware matcher ``match(obj, objs) -> obj in objs or None``.

    Shared by :func:`object_metrics` and the report's per-image analysis, so the two agree.
    """
    parser = build_parser(parser)
    table = parser.table

    def match(g, objs):
        if g in objs:
            return g
        for h in objs:
            if table.same_object(g, h):
                return h
        return None

    ids = [i for i in predictions if i in references]
    if count_dicts is None:
        flat = [r for i in ids for r in references[i]]
        parses = iter(parser.parse_batch(flat))
        gts = [fuse_counts([next(parses) for _ in references[i]]) for i in ids]
    else:
        gts = [count_dicts[i] for i in ids]
    preds = parser.parse_batch([predictions[i] for i in ids])
    return ids, gts, preds, match


def object_metrics(references, predictions, parser=None, count_dicts=None):
    """Object metrics (module docstring) for ``predictions {id: caption}`` vs ``references {id: [captions]}``."""
    ids, gts, preds, match = parse_objects(references, predictions, parser, count_dicts)
    sde_vals, n_gt, n_missed, n_mentioned, n_halluc = [], 0, 0, 0, 0
    pairs = []
    for gt, pred in zip(gts, preds):
        if gt:
            hit = sum(1 for g in gt if match(g, pred) is not None)
            sde_vals.append(hit / len(gt))
            n_gt += len(gt)
            n_missed += len(gt) - hit
        n_mentioned += len(pred)
        n_halluc += sum(1 for h in pred if match(h, gt) is None)
        pairs += count_pairs(pred, gt, match)
    n_pairs = len(pairs)
    out = {
        "SDE": sum(sde_vals) / len(sde_vals) if sde_vals else None,
        "oversight_rate": n_missed / n_gt if n_gt else None,
        "hallucination_rate": n_halluc / n_mentioned if n_mentioned else None,
        "count_abs_error": sum(abs(p - r) for p, r in pairs) / n_pairs if n_pairs else None,
        "count_signed_error": sum(p - r for p, r in pairs) / n_pairs if n_pairs else None,
        "count_exact": sum(1 for p, r in pairs if p == r) / n_pairs if n_pairs else None,
        "n_images": len(ids),
        "n_gt_objects": n_gt,
        "n_mentioned": n_mentioned,
        "n_counted": len(pairs),
    }
    return out
