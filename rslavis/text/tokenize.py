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


def ptb_tokenize_batch(texts):
    """:func:`ptb_tokenize` over a list."""
    out = []
    append = out.append
    for text in texts:
        if isinstance(text, str):
            t = text.lower()
            toks = _ptb_fast(t)
            append(toks if toks is not None else _ptb_slow(t.translate(_NORMALISE)))
        else:
            append(ptb_tokenize(text))
    return out
