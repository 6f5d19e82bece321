"""Per-image object analysis and VQA accuracy by question type, for the report.

The object analysis follows :func:`rslavis.metrics.object_metrics.object_metrics` image
by image (same parser, same fused reference counts, same synonym matching), so the
gallery's marks add up to the split's SDE, oversight and hallucination rates.
"""

import hashlib
import re
import string



def analyse_captions(references, predictions, parser=None):
    """``{image_id: analysis}`` for every predicted image that has references.

    ``analysis``: ``matched`` [(reference object, caption object)], ``missed`` [objects in
    the references only], ``hallucinated`` [objects in the caption only], ``count_errors``
    [(object, n_caption, n_references)] for objects counted on both sides with different
    counts, ``sde`` (share of reference objects mentioned; None without reference objects).
    """
    from rslavis.metrics.object_metrics import parse_objects
    from rslavis.rewards.count import count_pairs

    ids, gts, preds, match = parse_objects(references, predictions, parser)
    out = {}
    for i, gt, pred in zip(ids, gts, preds):
        matched, missed = [], []
        for g in gt:
            h = match(g, pred)
            (matched.append((g, h)) if h is not None else missed.append(g))
        hallucinated = [h for h in pred if match(h, gt) is None]
        count_errors = []
        for g, n_ref in gt.items():
            if n_ref is None:
                continue
            h = match(g, pred)
            if h is not None and pred.get(h) is not None and int(pred[h]) != int(n_ref):
                count_errors.append((g, int(pred[h]), int(n_ref)))
        out[i] = {
            "gt": gt,
            "pred": pred,
            "matched": matched,
            "missed": missed,
            "hallucinated": hallucinated,
            "count_errors": count_errors,
            "count_pairs": count_pairs(pred, gt, match),
            "sde": len(matched) / len(gt) if gt else None,
        }
    return out


def stable_order(ids):
    """``ids`` in a fixed pseudo-random order (a hash of each id): the same on every machine."""
    return sorted(ids, key=lambda i: hashlib.sha1(str(i).encode()).hexdigest())


def select_gallery(analysis, cap=48):
    """Up to ``cap`` image ids: the lowest SDE, the most hallucinations, then a fixed hash sample.

    Returns ``(ids, reasons)`` with ``reasons[id]`` a short label of why it was chosen.
    """
    order = stable_order(analysis)
    if len(order) <= cap:
        return order, {i: "" for i in order}
    k = cap // 4
    reasons = {}
    worst_sde = sorted((i for i in order if analysis[i]["sde"] is not None), key=lambda i: analysis[i]["sde"])
    for i in worst_sde[:k]:
        reasons.setdefault(i, "lowest SDE")
    most_hall = sorted(order, key=lambda i: -len(analysis[i]["hallucinated"]))
    n = 0
    for i in most_hall:
        if n >= k or not analysis[i]["hallucinated"]:
            break
        if i not in reasons:
            reasons[i] = "most hallucinations"
            n += 1
    for i in order:
        if len(reasons) >= cap:
            break
        reasons.setdefault(i, "hash sample")
    return [i for i in order if i in reasons], reasons


_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(n) for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def normalize_answer(text):
    """Lower case, no punctuation or articles, number words as digits."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy_by_type(results, answers, question_types):
    """``{"overall": acc, type: acc, ...}`` and ``{question_id: correct}``.

    A prediction is correct when its normalised answer equals a normalised accepted answer.
    Question ids are compared as strings (``correct`` is keyed by ``str(question_id)``).
    """
    answers = {str(k): v for k, v in answers.items()}
    question_types = {str(k): v for k, v in question_types.items()}
    correct, per_type = {}, {}
    for r in results:
        qid = str(r.get("question_id"))
        if qid not in answers:
            continue
        ok = normalize_answer(r.get("answer", "")) in {normalize_answer(a) for a in answers[qid]}
        correct[qid] = ok
        per_type.setdefault(question_types.get(qid) or "(none)", []).append(ok)
    acc = {"overall": sum(correct.values()) / len(correct)} if correct else {}
    for t in sorted(per_type):
        acc[t] = sum(per_type[t]) / len(per_type[t])
    return acc, correct
