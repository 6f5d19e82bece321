"""VQA accuracy after answer normalisation, overall and per question type.

``normalize_answer`` lower-cases, drops punctuation (keeping decimal points and digit
grouping inside numbers: ``1,000`` -> ``1000``, ``2.5`` stays), removes the articles
``a``/``an``/``the``, writes number words as digits (``two`` -> ``2``, ``none`` -> ``0``
as in the VQA convention) and collapses white space. A prediction is right when its
normal form equals that of any accepted answer (RSVQA, VRSBench and RSIEval publish
one answer per question). ``vqa_accuracy`` reports fractions in [0, 1].
"""

import re
from collections import defaultdict

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
    "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
}
ARTICLES = {"a", "an", "the"}
_DIGIT_GROUP = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalize_answer(text):
    """Normal form of an answer for exact-match scoring (see the module docstring)."""
    s = str(text).lower().strip()
    s = _DIGIT_GROUP.sub("", s).replace("'", "").replace("\u2019", "")  # it's -> its, not "it s"
    s = _PUNCT.sub(" ", s)
    words = [NUMBER_WORDS.get(w, w) for w in s.split() if w not in ARTICLES]
    return " ".join(words)


def answer_correct(prediction, answers):
    """1.0 when the normalised prediction equals any normalised accepted answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def vqa_accuracy(predictions, answers, question_types=None):
    """Accuracy of ``predictions`` ``{question_id: answer}`` against ``answers`` ``{question_id: [answers]}``.

    Returns ``accuracy`` (over every question of ``answers``; a missing prediction
    counts as wrong), ``n_questions``, and with ``question_types`` ``{question_id: type}``
    also ``accuracy/<type>`` per type and ``average_type_accuracy`` (the mean over
    types, RSVQA's "AA").
    """
    per_type = defaultdict(list)
    scores = []
    for qid, accepted in answers.items():
        score = answer_correct(predictions[qid], accepted) if qid in predictions else 0.0
        scores.append(score)
        if question_types is not None:
            per_type[question_types.get(qid) or "unknown"].append(score)
    out = {"accuracy": sum(scores) / len(scores) if scores else 0.0, "n_questions": float(len(scores))}
    if question_types is not None and per_type:
        type_acc = {t: sum(v) / len(v) for t, v in sorted(per_type.items())}
        out.update({f"accuracy/{t}": a for t, a in type_acc.items()})
        out["average_type_accuracy"] = sum(type_acc.values()) / len(type_acc)
    return out
