"""Fast pure-Python caption tokenizers shared by the rewards.

- :func:`ptb_tokenize`: the tokens pycocoevalcap's scorers see, i.e. the output of its
  Java ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 ``PTBTokenizer -preserveLines
  -lowerCase``) with pycocoevalcap's punctuation list removed. It keeps what PTB keeps:
  clitics split off as tokens (``airport's`` -> ``airport 's``, ``doesn't`` -> ``does
  n't``), hyphenated and dotted words whole (``semi-surrounded``, ``u.s.``, ``3.5``),
  brackets as ``-lrb-``/``-rrb-``/``-lsb-``..., and symbols such as ``%``, ``+``,
  ``!?``. It is what the CIDEr-D reward uses, so SCST optimises the tokens it is
  evaluated on. ``tests/test_tokenize_ptb.py`` compares it caption by caption with the
  Java tokenizer on every caption of UCM, RSICD and Sydney and on the synthetic
  captions (and on a list of harder cases). It is a re-implementation of the rules those
  captions exercise, not of the whole PTB lexer: exotic input (URLs with odd characters,
  SGML, rare abbreviations) may still tokenize differently.
- :func:`simple_tokenize`: lower case, every character that is neither a word character
  nor white space becomes a space. Used where only words matter (caption parsing,
  lengths, NKL's unigram distributions).

Neither starts a Java process; evaluation (``rslavis.metrics.coco_caption``) still runs
the Java PTB tokenizer when Java is present, as published numbers do.
"""

import re
from itertools import chain

import numpy as np

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


# ---------------------------------------------------------------------- PTB
# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS: tokens dropped after tokenizing.
# The bracket names are upper case there, so the lower-cased "-lrb-" PTB emits stays.
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# characters PTB normalises (curly quotes are apostrophes/quotes, dashes "--", ellipsis "...")
_NORMALISE = str.maketrans({
    "\u2019": "'", "\u2018": "`", "\u201c": '"', "\u201d": '"', "\u2013": " -- ", "\u2014": " -- ",
    "\u2015": " -- ", "\u2026": " ... ", "\u00a0": " ",
})
# abbreviations PTB keeps with their period (titles, "etc.", months, companies...)
_ABBREV = frozenset(
    "mr mrs ms dr prof st sr jr mt ft gen gov rep sen rev hon lt col capt sgt cpl messrs mme mlle "
    "etc vs al inc corp co ltd bros jan feb mar apr jun jul aug sep sept oct nov dec "
    "mon tue tues wed thu thur thurs fri sat sun ave blvd rd esq".split()
)
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                "wanna": ["wan", "na"], "gimme": ["gim", "me"], "lemme": ["lem", "me"]}
_SPLIT_SET = frozenset(_SPLIT_WORDS)
_SPLIT_BYTES = tuple(w.encode() for w in _SPLIT_WORDS)
_PTB_RE = re.compile(
    r"""
    (?P<url>https?://\S+|www\.\S+)
  | (?P<email>[\w.+-]+@\w+(?:[.-]\w+)*\.\w+)
  | (?P<sgml><[^\s<>]+>)
  | (?P<hash>[#@][^\W\d]\w*)
  | (?P<acro>(?<!\w)(?:[^\W\d_]\.){2,}(?!\w))
  | (?P<num>\d+(?:[.,:/]\d+)+|(?<!\w)[-+]\d+(?:[.,:/]\d+)*)
  | (?P<elis>(?<!\w)[dlo]'\w+)
  | (?P<ntw>\w+?(?=n't(?!\w)))
  | (?P<nt>n't(?!\w))
  | (?P<word>\w+(?:[-./]\w+)*)
  | (?P<clitic>'(?:s|m|d|re|ve|ll)(?!\w)|'t(?=(?:is|was)(?!\w)))
  | (?P<dots>\.+)
  | (?P<dash>-+)
  | (?P<excl>[!?]+)
  | (?P<other>\S)
    """,
    re.VERBOSE,
)


def _ptb_slow(text):
    out = []
    append = out.append
    for m in _PTB_RE.finditer(text):
        kind = m.lastgroup
        tok = m.group()
        if kind == "word":
            end = m.end()
            nxt = text[end : end + 1]
            if tok.startswith("no.") and tok[3:].isdigit():
                out.extend(("no.", tok[3:]))
                continue
            if nxt == "." and (
                (len(tok) == 1 and tok.isalpha())
                or tok in _ABBREV
                or (tok == "no" and re.match(r"\.\s*\d", text[end:]))
            ):
                out.append(tok + ".")
                continue
            if tok in _SPLIT_WORDS:
                out.extend(_SPLIT_WORDS[tok])
                continue
            append(tok)
        elif kind in ("dots", "dash"):
            continue  # ".", "..", "...", "-", "--": all in PTB_PUNCTUATIONS
        elif kind == "excl":
            if tok not in ("!", "?"):
                append(tok)  # PTB keeps "!?" and "!!" as one token, not in the punctuation list
        elif kind == "other":
            if tok in _BRACKETS:
                append(_BRACKETS[tok])
            elif tok not in "'`\",:;":
                append(tok)
        else:
            append(tok)
    return out


def _ptb_fast(t):
    """Tokens of a lower-cased caption made of ASCII letters, digits and spaces, with "."
    and "," standing alone or ending a word; None when anything else needs the full rules."""
    u = t.replace(" .", " ").replace(", ", " ")
    if " ," in u:
        u = u.replace(" ,", " ")
    last = u[-1:]
    if last == "," or last == ".":
        u = u[:-1]
        if last == ".":
            end = u.rsplit(None, 1)[-1] if u.strip() else ""
            if len(end) < 2 or not end.isalpha() or end in _ABBREV or end == "no":
                return None
    v = u.replace(" ", "")
    if not (v.isalnum() and v.isascii()) and v:
        return None
    toks = u.split()
    if not _SPLIT_SET.isdisjoint(toks):
        return None
    return toks


def ptb_tokenize(text):
    """PTB tokens of ``text`` after pycocoevalcap's punctuation filter (see module docstring)."""
    if text is None:
        return []
    if not isinstance(text, str):
        text = str(text)
    t = text.lower()
    toks = _ptb_fast(t)
    if toks is None:
        toks = _ptb_slow(t.translate(_NORMALISE))
    return toks


# ------------------------------------------------------------- PTB, batched
# The batched path reads all captions of a call at once, as one byte string with numpy.
# A "plain" caption, lower-cased, holds only a-z, 0-9, "_", spaces and
#   "," or "."  before a space or the end (a period ending a word: not after a single
#               letter, an abbreviation of _ABBREV or "no", which PTB keeps with it),
#   "-"         between two word characters (PTB keeps "semi-surrounded" whole),
#   "'s"        after a word character, before a space, ",", "." or the end ("there 's";
#               not after a lone d, l or o, which PTB reads as "d'...", "l'...", "o'..."),
# and none of _SPLIT_WORDS. Its PTB tokens are str.split's after "," and "." are dropped
# and "'s" split off; every other caption goes through ptb_tokenize, one at a time.
# tests/test_tokenize_ptb.py checks the two paths give the same tokens.
_WCH, _SPACE, _COMMA, _DOT, _NL, _HYPHEN, _QUOTE, _BAD = range(8)  # byte classes
_CLASS = bytearray([_BAD] * 256)
for _chars, _c in ((b"abcdefghijklmnopqrstuvwxyz0123456789_", _WCH), (b" ", _SPACE), (b",", _COMMA), (b".", _DOT),
                   (b"\n", _NL), (b"-", _HYPHEN), (b"'", _QUOTE)):
    for _b in _chars:
        _CLASS[_b] = _c
_CLASS = bytes(_CLASS)  # for bytes.translate: one C pass gives every byte's class
_GAP = np.zeros(8, dtype=bool)  # may follow "," or "."
_GAP[[_SPACE, _NL]] = True
_SEP = np.zeros(8, dtype=bool)  # ends a word
_SEP[[_SPACE, _COMMA, _DOT, _NL]] = True
_DLO = np.zeros(256, dtype=bool)
_DLO[np.frombuffer(b"dlo", np.uint8)] = True
# "," "." and every byte PTB never keeps in a plain caption become spaces
_DROP = bytes(b if _CLASS[b] in (_WCH, _HYPHEN, _QUOTE, _NL) else 32 for b in range(256))
_IS_TOK = bytes(int(_CLASS[b] in (_WCH, _HYPHEN, _QUOTE)) for b in range(256))  # 1: a byte of a token
_KEEP_DOT = _ABBREV | {"no"}
_KEEP_DOT_LEN = max(map(len, _KEEP_DOT))
_WORD_END = re.compile(rb"[^ ,.\n]*\Z")


def _not_plain(buf):
    """Positions in ``buf`` that make their caption not plain. ``buf`` starts and ends
    with a newline; only the bytes other than word characters and spaces are looked at."""
    c = np.frombuffer(buf.translate(_CLASS), np.uint8)
    at = np.flatnonzero(c[1:-1] > _SPACE) + 1  # punctuation, newlines, anything else
    cls, prev, nxt = c[at], c[at - 1], c[at + 1]
    bad = cls == _BAD
    bad |= ((cls == _COMMA) | (cls == _DOT)) & ~_GAP[nxt]
    bad |= (cls == _HYPHEN) & ((prev != _WCH) | (nxt != _WCH))
    qu = np.flatnonzero(cls == _QUOTE)
    if qu.size:  # "'s" after a word character, then a separator; not d's, l's, o's after a separator
        p = at[qu]
        before2 = c[p - 2]  # p >= 2: a quote after the first newline needs a word character before it
        lone_dlo = _DLO[np.frombuffer(buf, np.uint8)[p - 1]] & (before2 != _WCH) & (before2 != _HYPHEN)
        s_next = np.frombuffer(buf, np.uint8)[p + 1] == 115
        ok = (prev[qu] == _WCH) & s_next & _SEP[c[np.minimum(p + 2, c.size - 1)]] & ~lone_dlo
        bad[qu[~ok]] = True
    for k in np.flatnonzero((cls == _DOT) & (prev == _WCH)).tolist():  # a period ending a word
        p = int(at[k])
        w = _WORD_END.search(buf, max(0, p - _KEEP_DOT_LEN - 1), p).group()
        if (len(w) == 1 and w.isalpha()) or w.decode("ascii") in _KEEP_DOT:
            bad[k] = True
    return at[bad]


def _split_word_positions(buf):
    """Where a word of _SPLIT_WORDS ("cannot", "gonna", ...) starts in ``buf``."""
    out = []
    for w in _SPLIT_WORDS:
        wb = w.encode()
        at = buf.find(wb)
        while at >= 0:
            out.append(at)
            at = buf.find(wb, at + 1)
    return np.asarray(out, dtype=np.int64)


def _joined(texts):
    """``(texts, buf, nl)``: the captions as strings (``ptb_tokenize``'s conversions of None and
    non-strings), joined lower-cased into ASCII bytes framed by newlines (one byte per character),
    and the newline positions (caption k lies between ``nl[k]`` and ``nl[k + 1]``; more than
    ``len(texts) + 1`` of them when a caption holds a newline)."""
    try:
        joined = "\n".join(texts)
    except TypeError:
        texts = ["" if t is None else t if isinstance(t, str) else str(t) for t in texts]
        joined = "\n".join(texts)
    buf = b"\n" + joined.lower().encode("ascii", "replace") + b"\n"
    return texts, buf, np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)


def _ptb_flat(texts):
    """PTB tokens of the captions ``texts`` (a list) as one flat list, and the number of
    tokens of each caption (int64 numpy). Equal to ``ptb_tokenize`` caption by caption."""
    n = len(texts)
    texts, buf, nl = _joined(texts)
    if nl.size != n + 1:  # a caption holds a newline: one caption at a time
        toks = [ptb_tokenize(t) for t in texts]
        return list(chain.from_iterable(toks)), np.fromiter(map(len, toks), np.int64, count=n)
    bad = _not_plain(buf)
    plain = buf.translate(_DROP)
    nl_plain = nl
    if b"'" in plain:
        plain = plain.replace(b"'s", b" 's")
        nl_plain = np.flatnonzero(np.frombuffer(plain, np.uint8) == 10)
    flat = plain.decode("ascii").split()
    # rare: find them; six substring searches of the text rule them out faster than hashing every token
    if any(w in buf for w in _SPLIT_BYTES) and not _SPLIT_SET.isdisjoint(flat):
        bad = np.concatenate([bad, _split_word_positions(buf)])
    tok = np.frombuffer(plain.translate(_IS_TOK), np.uint8)
    starts = np.flatnonzero(tok[1:] > tok[:-1])  # a token starts after each of these
    lengths = np.diff(np.searchsorted(starts, nl_plain))
    bad_lines = np.unique(np.searchsorted(nl, bad) - 1)
    if bad_lines.size:
        ends = np.cumsum(lengths).tolist()
        pieces, prev = [], 0
        for k in bad_lines.tolist():
            toks = ptb_tokenize(texts[k])
            pieces.append(flat[prev : ends[k] - int(lengths[k])])
            pieces.append(toks)
            prev = ends[k]
            lengths[k] = len(toks)
        pieces.append(flat[prev:])
        flat = list(chain.from_iterable(pieces))
    return flat, lengths.astype(np.int64, copy=False)


def ptb_tokenize_flat(texts):
    """:func:`ptb_tokenize` over a list, as ``(tokens of all captions in one list, tokens per caption)``."""
    texts = list(texts)
    if not texts:
        return [], np.zeros(0, np.int64)
    return _ptb_flat(texts)


def ptb_tokenize_batch(texts):
    """:func:`ptb_tokenize` over a list (one token list per caption)."""
    flat, lengths = ptb_tokenize_flat(texts)
    ends = np.cumsum(lengths).tolist()
    return [flat[s:e] for s, e in zip([0] + ends[:-1], ends)]


def ptb_token_spans(texts):
    """:func:`ptb_tokenize` over a list, as byte spans, for callers that map tokens to ids
    without making a string per token.

    Returns ``(buf, starts, ends, counts, fixes)``: the tokens of caption ``k`` are
    ``counts[k]`` (int64) consecutive spans ``buf[starts[i]:ends[i]]`` (ASCII bytes), except
    for the captions of ``fixes`` (caption -> token list: they need the full rules; their
    count is 0 and they have no spans). ``tests/test_tokenize_ptb.py`` checks that this
    equals :func:`ptb_tokenize_flat`.
    """
    texts = list(texts)
    n = len(texts)
    texts, buf, nl = _joined(texts)
    if nl.size != n + 1:  # a caption holds a newline: every caption by the full rules
        return b"", _EMPTY_I64, _EMPTY_I64, np.zeros(n, np.int64), {k: ptb_tokenize(t) for k, t in enumerate(texts)}
    bad = _not_plain(buf)
    if any(w in buf for w in _SPLIT_BYTES):  # a word of _SPLIT_WORDS, or text containing one: full rules
        bad = np.concatenate([bad, _split_word_positions(buf)])
    plain = buf.translate(_DROP)
    nl_plain = nl
    if b"'" in plain:
        plain = plain.replace(b"'s", b" 's")
        nl_plain = np.flatnonzero(np.frombuffer(plain, np.uint8) == 10)
    tok = np.frombuffer(plain.translate(_IS_TOK), np.uint8)
    starts = np.flatnonzero(tok[1:] > tok[:-1]) + 1
    ends = np.flatnonzero(tok[1:] < tok[:-1]) + 1
    counts = np.diff(np.searchsorted(starts, nl_plain))
    bad_lines = np.unique(np.searchsorted(nl, bad) - 1).tolist()
    fixes = {}
    if bad_lines:
        line = np.repeat(np.arange(n, dtype=np.int64), counts)
        drop = np.zeros(n, dtype=bool)
        drop[bad_lines] = True
        keep = ~drop[line]
        starts, ends = starts[keep], ends[keep]
        counts[bad_lines] = 0
        fixes = {k: ptb_tokenize(texts[k]) for k in bad_lines}
    return plain, starts, ends, counts.astype(np.int64, copy=False), fixes


_EMPTY_I64 = np.zeros(0, np.int64)

# bytes str.split() splits ASCII text on (besides the newline that separates captions)
_WS_SEP = bytes(int(b in b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f") for b in range(256))


def whitespace_token_spans(texts):
    """``str.split()`` of each caption as byte spans, in :func:`ptb_token_spans`' format
    ``(buf, starts, ends, counts, fixes)`` (the CIDEr-D reward's ``pretokenized`` path): a
    caption that is not ASCII, holds a newline or a NUL byte is split in Python and sits in
    ``fixes``. None counts as "", other objects as ``str()``, as in the token-list path."""
    texts = ["" if t is None else t if isinstance(t, str) else str(t) for t in texts]
    n = len(texts)
    if not n:
        return b"", _EMPTY_I64, _EMPTY_I64, _EMPTY_I64, {}
    joined = "\n".join(texts)
    fixes = {}
    if "\0" in joined or not joined.isascii() or joined.count("\n") != max(n - 1, 0):
        fixes = {k: t.split() for k, t in enumerate(texts) if "\0" in t or "\n" in t or not t.isascii()}
        texts = ["" if k in fixes else t for k, t in enumerate(texts)]
        joined = "\n".join(texts)
    buf = b"\n" + joined.encode("ascii") + b"\n"
    tok = np.frombuffer(buf.translate(_WS_SEP), np.uint8)  # 1: a separator
    starts = np.flatnonzero(tok[1:] < tok[:-1]) + 1
    ends = np.flatnonzero(tok[1:] > tok[:-1]) + 1
    nl = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
    counts = np.diff(np.searchsorted(starts, nl)).astype(np.int64, copy=False)
    return buf, starts, ends, counts, fixes
