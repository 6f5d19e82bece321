"""Count dictionaries: the objects of an image and how many of each.

:func:`fuse_counts` fuses the parses of an image's references into one
``{object: count or None}``: an object mentioned by any reference is present; its count
is the most frequent count stated by the references that give one (ties go to the
larger count), ``None`` when no reference states a count.

:func:`merge_detector_counts` adds counts from an object detector, the references
taking priority: a detector count fills an object the references mention without a
count, and adds objects the references do not mention; a count stated by the
references is never overwritten. :func:`load_detector_counts` reads them from a JSON
file ``{image_id: {object: count}}`` (or a list of ``{"image_id", "counts"}``).
"""

import json
import os
from collections import Counter

from rslavis.common.errors import DataError


def fuse_counts(parses):
    """One count dictionary from several ``{object: count or None}`` parses (see module docstring)."""
    stated = {}
    for p in parses:
        for obj, c in (p or {}).items():
            stated.setdefault(obj, [])
            if c is not None:
                stated[obj].append(int(c))
    out = {}
    for obj, counts in stated.items():
        if counts:
            freq = Counter(counts)
            out[obj] = max(freq, key=lambda c: (freq[c], c))
        else:
            out[obj] = None
    return out


def merge_detector_counts(reference_counts, detector_counts, synonyms=None):
    """References' count dictionary completed by detector counts (references take priority).

    ``synonyms`` (a :class:`~rslavis.text.synonyms.SynonymTable`) maps detector class
    names to canonical object names when given.
    """
    out = dict(reference_counts or {})
    for obj, c in (detector_counts or {}).items():
        name = synonyms.canonical(str(obj)) if synonyms is not None else str(obj).lower()
        if name is None:
            continue
        try:
            c = None if c is None else int(c)
        except (TypeError, ValueError):
            raise DataError(f"detector count for {obj!r} must be an integer, got {c!r}.") from None
        if name not in out or out[name] is None:
            if c is None and name in out:
                continue
            out[name] = c
    return {k: v for k, v in out.items() if v is None or v > 0}


def load_detector_counts(path):
    """``{str(image_id): {object: count}}`` from a detector-count JSON file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"detector count file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"detector count file {path!r} is not valid JSON: {exc}.") from None
    if isinstance(data, list):
        try:
            data = {r["image_id"]: r["counts"] for r in data}
        except (TypeError, KeyError):
            raise DataError(
                f"{path!r}: a list of detector counts needs records {{'image_id', 'counts'}}."
            ) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path!r}: expected {{image_id: {{object: count}}}}.")
    return {str(k): v for k, v in data.items()}


def build_count_dicts(references_by_image, parser=None, detector_path=None):
    """``{image_id: count dict}`` for ``{image_id: [references]}``, detector counts merged when given."""
    from rslavis.text import build_parser

    parser = parser if parser is not None else build_parser()
    ids = list(references_by_image)
    flat = [r for i in ids for r in references_by_image[i]]
    parses = iter(parser.parse_batch(flat))
    out = {i: fuse_counts([next(parses) for _ in references_by_image[i]]) for i in ids}
    if detector_path:
        det = load_detector_counts(detector_path)
        out = {i: merge_detector_counts(c, det.get(str(i)), parser.table) for i, c in out.items()}
    return out
