"""Metrics on one confounded object: does a caption name it where it is absent, miss it where it is present?

For the confounded synthetic split (``rs_synthetic`` with ``type: confounded``):

- ``hallucination_rate``: among images *without* the object, the share of captions
  that name it (on the test split every such image shows the object's usual context);
- ``oversight_rate``: among images *with* the object, the share of captions that do
  not name it (on the test split the object stands in an unusual context);
- ``n_absent`` / ``n_present``: how many images each rate is over (a rate over no
  image is reported as ``nan``, never as 0).

A caption names the object when any of ``names`` (its word forms, e.g.
:func:`rslavis.datasets.synthetic.scenes.object_names`) occurs as a whole word.
"""

import math
import re


def names_object(caption, names):
    """Whether ``caption`` contains one of ``names`` as whole words (case-insensitive)."""
    text = " ".join(str(caption).lower().split())
    return any(re.search(rf"(?<![\w-]){re.escape(n.lower())}(?![\w-])", text) for n in names)


def confounded_object_metrics(predictions, has_object, names):
    """``{hallucination_rate, oversight_rate, n_absent, n_present}``.

    ``predictions``: ``{image_id: caption}``; ``has_object``: ``{image_id: bool}`` (every
    predicted id must be there); ``names``: the object's word forms.
    """
    missing = [i for i in predictions if i not in has_object]
    if missing:
        raise KeyError(f"confounded_object_metrics: no has_object for image ids {missing[:5]}")
    if not names:
        raise ValueError("confounded_object_metrics: no word forms given for the object")
    named = {i: names_object(c, names) for i, c in predictions.items()}
    absent = [named[i] for i in predictions if not has_object[i]]
    present = [named[i] for i in predictions if has_object[i]]
    return {
        "hallucination_rate": sum(absent) / len(absent) if absent else math.nan,
        "oversight_rate": sum(not v for v in present) / len(present) if present else math.nan,
        "n_absent": len(absent),
        "n_present": len(present),
    }
