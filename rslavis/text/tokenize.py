"""Fast pure-Python caption tokenization shared by the rewards.

``simple_tokenize(text)`` lower-cases, replaces every character that is neither a word
character (``\\w``) nor white space by a space, and splits on white space. On
remote-sensing captions this matches what pycocoevalcap's Java PTB tokenizer produces for
scoring (lower case, punctuation dropped) except for clitics: PTB keeps ``'s`` as a
token, this tokenizer gives ``s``. Rewards call it on every sampled caption, so it must
not start a Java process; evaluation (``rslavis.metrics.coco_caption``) still uses PTB
when Java is present, as published numbers do.
"""

import re

_NON_WORD = re.compile(r"[^\w\s]+")


def _slow(text):
    return _NON_WORD.sub(" ", text.lower()).split()


def simple_tokenize(text):
    """Tokens of ``text`` (any object, ``None`` gives ``[]``): lower case, no punctuation."""
    if text is None:
        return []
    if not isinstance(text, str):
        text = str(text)
    # Fast path (about 2x the regex): most captions only carry "." and "," as punctuation;
    # if anything else is left the regex path gives the exact answer.
    toks = text.lower().replace(".", " ").replace(",", " ").split()
    if "".join(toks).isalnum():
        return toks
    return _slow(text)


def tokenize_batch(texts):
    """``simple_tokenize`` over a list (same result, less call overhead)."""
    out = []
    append = out.append
    for t in texts:
        if isinstance(t, str):
            toks = t.lower().replace(".", " ").replace(",", " ").split()
            if not "".join(toks).isalnum():
                toks = _slow(t)
            append(toks)
        else:
            append(simple_tokenize(t))
    return out
