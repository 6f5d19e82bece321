"""The closed-vocabulary tagger: parts of speech from the synonym table's vocabulary alone.

:func:`tag_rules` is the older tagger of the ``rules`` parser, kept for the ``spacy``
parser's blank-pipeline fallback (:mod:`rslavis.text.spacy_parser`, no English pipeline
installed); :func:`rules_lemma` (a plural's singular when it is a known noun) is shared with
the ``spacy`` blank fallback and the ``factual`` parser. The ``rules`` parser itself tags
with the lexicon (:class:`rslavis.text.rules_parser.LexiconTagger`).
"""

from rslavis.text.base_parser import DEFINITE_WORDS, NUMBER_WORDS, Tok

IRREGULAR_PLURALS = {
    "leaves": "leaf", "shelves": "shelf", "men": "man", "women": "woman", "children": "child",
    "feet": "foot", "geese": "goose", "mice": "mouse", "oases": "oasis", "wharves": "wharf",
    "lives": "life", "knives": "knife", "halves": "half", "people": "people", "sheep": "sheep",
    "fish": "fish", "aircraft": "aircraft", "series": "series",
}

FUNCTION_WORDS = {
    "and", "or", "but", "nor", "with", "without", "in", "on", "at", "by", "near", "next", "to",
    "of", "from", "into", "onto", "beside", "besides", "between", "among", "around", "along",
    "across", "over", "under", "above", "below", "behind", "through", "beyond", "within",
    "inside", "outside", "against", "towards", "toward", "alongside", "surrounding", "up",
    "down", "off", "out", "about", "after", "before", "for", "like", "as", "than", "while",
    "where", "which", "who", "whose", "that", "is", "are", "was", "were", "be", "been",
    "being", "am", "has", "have", "had", "having", "do", "does", "did", "can", "could", "will",
    "would", "may", "might", "must", "shall", "should", "there", "here", "it", "they", "we",
    "you", "he", "she", "them", "its", "their", "what", "how", "when", "why", "if", "so",
    "not", "also", "too", "very", "then", "such", "same", "own", "lies", "lie", "stand", "stands", "run", "runs", "see", "show", "shows", "contains",
    "contain", "include", "includes", "flows", "flow", "passes", "cross", "crosses",
}


def rules_lemma(word, known):
    """Singular of ``word`` when that singular is a known noun; else ``word``."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word in known or len(word) < 3 or not word.endswith("s") or word.endswith("ss"):
        return word
    cands = []
    if word.endswith("ies"):
        cands.append(word[:-3] + "y")
    if word.endswith("ves"):
        cands += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        cands.append(word[:-2])
    cands.append(word[:-1])
    for c in cands:
        if c in known:
            return c
    return word


def tag_rules(words, lemmas, table):
    """:data:`Tok` list for tokens of one caption, with parts of speech from the vocabulary."""
    compound_words = getattr(table, "compound_first_words", None)
    if compound_words is None:
        compound_words = {c.split()[0] for c in table.compounds}
    out = []
    for w, lem in zip(words, lemmas):
        if w.isdigit() or (w in NUMBER_WORDS and w not in ("dozen",)):
            pos = "NUM"
        elif w in DEFINITE_WORDS or w in ("a", "an", "no", "some", "each", "every", "any", "another", "both"):
            pos = "DET"
        elif w in FUNCTION_WORDS:
            pos = "X"
        elif w.endswith("ed") and not table.is_known(w):
            pos = "ADJ"  # participle ("parked cars"), even when its lemma is a noun ("park")
        elif table.is_known(lem) or table.is_known(w) or w in compound_words or lem in table.non_objects:
            pos = "NOUN"
        else:
            pos = "ADJ"
        out.append([w, lem, pos, lem != w and w.endswith("s"), False, False])
    for i in range(len(out) - 1):
        if out[i][2] == "NOUN" and out[i + 1][2] == "NOUN":
            out[i][4] = True  # a noun followed by a noun modifies it ("roof house")
    return [Tok(*t) for t in out]
