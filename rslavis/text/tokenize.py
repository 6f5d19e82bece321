"""Fast pure-Python caption tokenization shared by the rewards.

``simple_tokenize(text)`` lower-cases, replaces every character that is neither a word
character nor white space by a space, and splits on white space. On remote-sensing
captions this matches what pycocoevalcap's Java PTB tokenizer produces for scoring
(lower case, punctuation dropped) except for clitics: PTB keeps ``'s`` as a token, this
tokenizer gives ``s``. Rewards call it on every sampled caption, so it must not start a
Java process; evaluation (``rslavis.metrics.coco_caption``) still uses PTB when Java is
present, as published numbers do.
"""

import re

_NON_WORD = re.compile(r"[^\w\s]+")
# ASCII fast path: str.translate is several times faster than the regex and gives the
# same result on ASCII text (non-word, non-space characters become spaces).
_ASCII_TABLE = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())}


def simple_tokenize(text):
    """Tokens of ``text`` (any object, ``None`` gives ``[]``): lower case, no punctuation."""
    if text is None:
        return []
    if not isinstance(text, str):
        text = str(text)
    if text.isascii():
        return text.lower().translate(_ASCII_TABLE).split()
    return _NON_WORD.sub(" ", text.lower()).split()


def tokenize_batch(texts):
    """``simple_tokenize`` over a list."""
    table = _ASCII_TABLE
    return [
        t.lower().translate(table).split() if isinstance(t, str) and t.isascii() else simple_tokenize(t) for t in texts
    ]
