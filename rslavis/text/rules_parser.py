"""The ``rules`` caption parser: pure Python, no model, spaCy's tags learnt as tables.

Tokens come from :data:`PARSE_TOKEN` (spaCy's tokenizer on captions: words, numbers,
"'s", "n't", every other character alone). Tags come from the lexicon of
:mod:`rslavis.text.lexicon`: the tag spaCy gives each word of the training captions, the
contexts in which it gives another, and a small classifier per ambiguous word ("square",
"green", "stands"); words it has never seen are tagged by suffix, their plural lemma by
spaCy's noun rules, and a configured object noun (``extra_nouns``, synonyms) is a noun.
Objects and counts then follow the same rules as the ``spacy`` parser
(:class:`~rslavis.text.base_parser.BaseCaptionParser`); ``bench/parser_agreement.py``
prints how often both give the same objects and counts (training and held-out splits
apart). The older closed-vocabulary tagger, kept for the ``spacy`` parser's blank-pipeline
fallback, is :mod:`rslavis.text.closed_tagger`.
"""

import re

from rslavis.common.registry import registry
from rslavis.text.base_parser import (DEFINITE_WORDS, NOUN_POS, NUMBER_WORDS, ONE_WORDS, TWO_WORDS,
                                      VAGUE_WORDS, BaseCaptionParser, Tok, combine_mentions)
from rslavis.text.lexicon import features_of, oov_features


# spaCy's English tokenizer on captions: numbers, words (split before "n't"), "'s", any
# other character alone ("eye-catching" is three tokens, "malls,wide" three)
PARSE_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[a-z_]+(?=n't)|n't|'s(?![a-z])|[a-z_]+|\S")
_NOT_PLAIN = re.compile(r"[^a-z_ .,]")


def caption_words(caption):
    """``PARSE_TOKEN.findall(caption.lower())``; about three times as fast on plain captions."""
    s = caption.lower()
    if _NOT_PLAIN.search(s) is None:  # only letters, spaces, "." and ",": split around the punctuation
        return s.replace(".", " . ").replace(",", " , ").split()
    return PARSE_TOKEN.findall(s)


NOUN_RULES = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
              ("shes", "sh"), ("men", "man"), ("ies", "y"))  # spaCy's noun lemma rules, in its order


def noun_lemma(word, known):
    """spaCy's rule lemma of a plural noun: the last rule whose result is known, else the first result."""
    found, first = None, None
    for old, new in NOUN_RULES:
        if word.endswith(old) and len(word) > len(old):
            form = word[: len(word) - len(old)] + new
            if form in known:
                found = form
            elif first is None:
                first = form
    return found or first or word


def boundary_class(w):
    """What the rules read of a boundary word when they reach it from the right: the quantity
    it states ("a", "the", "no", "many"...); any other boundary word ("and", "with", "is")
    only stops them, so segments after such words share one cache entry."""
    if w in ("a", "one", "an") or w in NUMBER_WORDS or w.isdigit() or w == "no":
        return w
    if w in ONE_WORDS:
        return "<one>"
    if w in TWO_WORDS:
        return "<two>"
    if w in VAGUE_WORDS:
        return "<vague>"
    if w in DEFINITE_WORDS:
        return "<the>"
    return "<stop>"


def _tag_tuple(t, word):
    return (t[0], t[1] or word, bool(t[2]), bool(t[3]))


class LexiconTagger:
    """Tags from the :mod:`rslavis.text.lexicon` tables: the word's tag, overridden by the
    most specific context seen in training, ambiguous words by their classifier; unknown words
    by suffix and spaCy's lemma rules (a configured object noun is a noun)."""

    def __init__(self, lex, known=(), compound_words=()):
        from rslavis.text.lexicon import hard_words

        self.words = {w: _tag_tuple(t, w) for w, t in lex["words"].items()}
        self.tri = {tuple(k.split(" ")): _tag_tuple(t, k.split(" ")[1]) for k, t in lex["tri"].items()}
        self.left = {tuple(k.split(" ")): _tag_tuple(t, k.split(" ")[1]) for k, t in lex["left"].items()}
        self.right = {tuple(k.split(" ")): _tag_tuple(t, k.split(" ")[0]) for k, t in lex["right"].items()}
        self.left_pos = {tuple(k.split(" ")): _tag_tuple(t, k.split(" ")[1]) for k, t in lex["left_pos"].items()}
        self.right_pos = {tuple(k.split(" ")): _tag_tuple(t, k.split(" ")[0]) for k, t in lex["right_pos"].items()}
        self.mod = {tuple(k.split(" ")): bool(v) for k, v in lex["mod"].items()}
        self.no_mod_next = frozenset(lex.get("no_mod_next", ()))
        self.suffix = dict(lex["suffix"])
        self.oov_context = {tuple(k.split(" ")): v for k, v in lex.get("oov_context", {}).items()}
        self.oov_classes = [tuple(c) for c in lex.get("oov_classes", ())]
        self.oov_weights = {f: tuple((int(c), v) for c, v in cs.items()) for f, cs in lex.get("oov_weights", {}).items()}
        self.ambiguous = {w: [_tag_tuple(t, w) for t in tags] for w, tags in lex.get("ambiguous", {}).items()}
        self.weights = {w: {f: tuple((int(c), v) for c, v in cs.items()) for f, cs in fs.items()}
                        for w, fs in lex.get("weights", {}).items()}
        self.shared = {f: dict(cs) for f, cs in lex.get("shared_weights", {}).items()}
        self.cand_pos = {w: [t[0] for t in tags] for w, tags in self.ambiguous.items()}
        self.known = set(known) | {t[1] for t in self.words.values() if t[0] in ("NOUN", "PROPN")}
        # a configured noun the lexicon tags otherwise is not a boundary either
        self.hard, self.semi_hard = hard_words(lex, set(compound_words), with_semi=True)
        self.hard -= self.known
        self.semi_hard -= self.known
        # words whose tag can depend on their neighbours
        self.contextual = ({k[1] for k in self.tri} | {k[1] for k in self.left} | {k[0] for k in self.right}
                           | {k[1] for k in self.left_pos} | {k[0] for k in self.right_pos})
        # words whose tag or modifier flag can depend on the next word
        self.looks_right = ({k[1] for k in self.tri} | {k[0] for k in self.right} | {k[0] for k in self.right_pos}
                            | {k[0] for k in self.mod} | set(self.weights))
        # words whose tag can depend on the previous word
        self.looks_left = ({k[1] for k in self.tri} | {k[1] for k in self.left} | {k[1] for k in self.left_pos}
                           | set(self.weights))
        self.boundary_class = {w: boundary_class(w) for w in self.hard | self.semi_hard}
        self.cut_words = frozenset(self.hard | self.semi_hard)
        self.special = frozenset(self.contextual | set(self.weights))  # tagged in context
        # known words whose tag and modifier flag ignore the next / the previous word
        self.blind_right = frozenset(set(self.words) - self.looks_right)
        self.blind_left = frozenset(set(self.words) - self.looks_left)
        self._ctx = {}
        self._semi = {}

    def is_boundary_tag(self, w, tag, nxt):
        """Whether ``w`` tagged ``tag`` (before ``nxt``) cuts the caption (see :func:`~rslavis.text.lexicon.hard_words`)."""
        from rslavis.text.lexicon import boundary_tag

        return boundary_tag(w, tag) and not self.mod.get((w, nxt), False)

    def semi_boundary(self, prev, w, nxt):
        """The tag of the semi-hard word ``w`` between ``prev`` and ``nxt`` when it cuts the
        caption there, else None (a function of the three words: cached)."""
        key = (prev, w, nxt)
        if key in self._semi:
            return self._semi[key]
        ws = [prev, w] if nxt == "</s>" else [prev, w, nxt]
        upos = [(self.words.get(x) or self.guess(x))[0] for x in ws]
        t = self.tag_at(ws, upos, 1, True, "</s>", self.words[w])
        hit = t if self.is_boundary_tag(w, t, nxt) else None
        if len(self._semi) > 200000:
            self._semi.clear()
        self._semi[key] = hit
        return hit

    def guess_in_context(self, w, ws, upos, i, nxt, first=True):
        """Tag of an unknown word: the classifier of :func:`~rslavis.text.lexicon.train_oov`
        (its ending, its neighbours' words and parts of speech), else :meth:`guess`."""
        pp = upos[i - 1] if i else "PUNCT"
        if i + 1 < len(ws):
            np_ = upos[i + 1]
        else:
            np_ = "PUNCT" if nxt == "</s>" else (self.words.get(nxt) or self.guess(nxt))[0]
        if self.oov_weights:
            p = ws[i - 1] if i else ("<s>" if first else "<b>")
            nx_w = ws[i + 1] if i + 1 < len(ws) else nxt
            scores = [0.0] * len(self.oov_classes)
            get = self.oov_weights.get
            for f in oov_features(w, p, pp, nx_w, np_, first and i == 0):
                for c, v in get(f, ()):
                    scores[c] += v
            pos, part = self.oov_classes[max(range(len(scores)), key=lambda c: (scores[c], -c))]
        else:
            pos, part = self.oov_context.get((pp, np_)), False
            if pos is None:
                return self.guess(w)
        if pos in ("NOUN", "PROPN") and w.endswith("s") and not w.endswith("ss"):
            return (pos, noun_lemma(w, self.known), True, False)
        return (pos, w, False, bool(part))

    def guess(self, w):
        """Tag of a word the lexicon does not hold."""
        if w[0].isdigit() or w in NUMBER_WORDS:
            return ("NUM", w, False, False)
        if not (w[0].isalpha() or w[0] == "_"):
            return ("PUNCT", w, False, False)
        pos = self.suffix.get(w[-3:], "NOUN") if len(w) > 3 else "NOUN"
        if w in self.known:  # a configured object noun (extra_nouns, synonyms) is a noun
            pos = "NOUN"
        if pos in ("NOUN", "PROPN") and w.endswith("s") and not w.endswith("ss"):
            return (pos, noun_lemma(w, self.known), True, False)
        return (pos, w, False, False)

    def tag(self, ws, first=True, nxt="</s>", first_tag=None):
        """:data:`Tok` list of the words ``ws`` (a caption, or a segment of one followed by
        ``nxt``; ``first_tag``: the tag of its first word, found in the whole caption).

        A word's tag is a function of the word and its two neighbours (``"<s>"`` before the
        caption, ``"<b>"`` before a segment): the tags of contextual and unknown words are
        cached per such triple."""
        n = len(ws)
        words, special, ctx = self.words, self.special, self._ctx
        oov = self.oov_weights or self.oov_context
        tags = []
        upos = None
        for i in range(n):
            w = ws[i]
            t = words.get(w)
            if t is not None and w not in special:
                tags.append(t)
                continue
            if t is None and not (oov and w not in self.known and w.isalpha() and len(w) > 3):
                tags.append(self.guess(w))
                continue
            key = (ws[i - 1] if i else ("<s>" if first else "<b>"), w, ws[i + 1] if i + 1 < n else nxt)
            hit = ctx.get(key)
            if hit is None:
                if upos is None:
                    upos = [(words.get(x) or self.guess(x))[0] for x in ws]
                if t is None:
                    hit = self.guess_in_context(w, ws, upos, i, nxt, first)
                else:
                    hit = self.tag_at(ws, upos, i, first, nxt, t)
                if len(ctx) > 200000:
                    ctx.clear()
                ctx[key] = hit
            tags.append(hit)
        if first_tag is not None:
            tags[0] = first_tag
        toks = []
        mod, no_mod_next, new = self.mod, self.no_mod_next, tuple.__new__
        for i in range(n):
            pos, lem, pl, part = tags[i]
            nx = ws[i + 1] if i + 1 < n else nxt
            m = mod.get((ws[i], nx))
            if m is None:
                m = (i + 1 < n and pos in NOUN_POS and tags[i + 1][0] in NOUN_POS and nx not in no_mod_next)
            toks.append(new(Tok, (ws[i], lem, pos, pl, m, part)))
        return toks

    def tag_at(self, ws, upos, i, first, nxt, default):
        """Tag of a contextual or ambiguous word ``ws[i]`` (``upos``: the words' own parts of speech)."""
        w = ws[i]
        if w in self.weights:
            return self._decide(ws, upos, i, first, nxt)
        n = len(ws)
        p = ws[i - 1] if i else ("<s>" if first else "<b>")
        nx = ws[i + 1] if i + 1 < n else nxt
        if i + 1 < n:
            npos = upos[i + 1]
        else:
            npos = "PUNCT" if nxt == "</s>" else (self.words.get(nxt) or ("PUNCT",))[0]
        return (self.tri.get((p, w, nx)) or self.left.get((p, w)) or self.right.get((w, nx))
                or self.left_pos.get((upos[i - 1] if i else "PUNCT", w)) or self.right_pos.get((w, npos))
                or default)

    def _decide(self, ws, upos, i, first, nxt):
        """The ambiguous word ``ws[i]``'s tag by its classifier (a segment's next word ``nxt`` is context, never beyond)."""
        n = len(ws)
        if i + 1 < n:
            nx, np_ = ws[i + 1], upos[i + 1]
        elif nxt != "</s>":
            nx, np_ = nxt, (self.words.get(nxt) or ("PUNCT",))[0]
        else:
            nx, np_ = "</s>", "E"
        p, pp = (ws[i - 1], upos[i - 1]) if i else ("<s>" if first else "<b>", "S")
        wt = self.weights[ws[i]]
        cands = self.ambiguous[ws[i]]
        scores = [0.0] * len(cands)
        shared = self.shared
        pos = self.cand_pos[ws[i]]
        for f in features_of(p, nx, pp, np_, first and i == 0):
            for c, v in wt.get(f, ()):
                scores[c] += v
            sf = shared.get(f)
            if sf:
                for c, ps in enumerate(pos):
                    scores[c] += sf.get(ps, 0.0)
        best = max(scores)
        return cands[scores.index(best)]  # ties: the first (most frequent) tag


@registry.register_parser("rules")
class RulesCaptionParser(BaseCaptionParser):
    """Pure-Python parser (see module docstring): spaCy-like tokens, lexicon tags, no model.

    A caption is cut before every "hard" word (:func:`rslavis.text.lexicon.hard_words`:
    "and", "with", "the", "is", ","...): no rule looks across one, so the mentions of each
    segment are computed once and cached (``segment_cache_size`` entries), and a new caption
    made of known phrases costs a few look-ups. ``tests/test_text_parser.py`` checks that
    this gives what the same rules give on the whole caption.

    Extra config keys: ``lexicon_path`` (a lexicon JSON, default the packaged one),
    ``segment_cache_size`` (200000).
    """

    name = "rules"

    def __init__(self, lexicon_path=None, segment_cache_size=200000, **kwargs):
        super().__init__(**kwargs)
        from rslavis.text.lexicon import load_lexicon

        known = self.table.nouns | set(self.table.to_canonical)
        compound_words = {w for c in self.table.compounds for w in c.split()}
        self.tagger = LexiconTagger(load_lexicon(lexicon_path), known, compound_words)
        self.segment_cache_size = int(segment_cache_size)
        self._segments = {}

    def _tokens(self, captions):
        tag = self.tagger.tag
        return [tag(caption_words(c)) for c in captions]

    def parse_batch(self, captions):
        cache = self._cache
        keys = [c if isinstance(c, str) else ("" if c is None else str(c)) for c in captions]
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if todo:
            if len(cache) + len(todo) > self.cache_size:
                cache.clear()
            self._parse_new(todo, cache)
        return [dict(cache[k]) for k in keys]

    def _parse_new(self, todo, cache):
        """Parse the distinct captions ``todo`` that are not cached yet into ``cache``."""
        for k in todo:
            cache[k] = self._parse_segments(k)

    def _parse_segments(self, caption):
        ws = caption_words(caption)
        n = len(ws)
        if not n:
            return {}
        tagger = self.tagger
        cut_words = tagger.cut_words
        cuts = [i for i in range(1, n) if ws[i] in cut_words]
        ws.append("</s>")  # ws[n]: what follows the last segment (slices stop at n)
        forced = {}
        semi = tagger.semi_hard
        if cuts and not semi.isdisjoint(ws):  # a boundary only where the context tags it as one
            kept = []
            for i in cuts:
                if ws[i] in semi:
                    t = tagger.semi_boundary(ws[i - 1], ws[i], ws[i + 1])
                    if t is None:
                        continue
                    forced[i] = t
                kept.append(i)
            cuts = kept
        cuts.append(n)
        blind_right, blind_left, bclass = tagger.blind_right, tagger.blind_left, tagger.boundary_class
        segments = self._segments
        get = segments.get
        mentions = []
        start = 0
        first_hard = ws[0] in tagger.hard
        for i in cuts:
            # the next word only matters as the context of the segment's last word
            # (unknown words look both ways: their tag comes from their neighbours' parts of speech)
            right = None if ws[i - 1] in blind_right else ws[i]
            if i - start > 1 and ws[start + 1] in blind_left and (start or first_hard):
                # the segment's first word is a boundary word its second word does not look at
                # (the caption's first segment too, when it starts with a hard word)
                key = (False, right, bclass[ws[start]], *ws[start + 1:i])
            else:
                key = (start == 0, right, *ws[start:i])
            found = get(key)
            if found is None:
                # a tuple of (name, kind, count) tuples: the garbage collector stops tracking it,
                # so a cache of thousands of segments adds nothing to (and triggers no) full collections
                found = tuple(self.mentions_from_tokens(tagger.tag(ws[start:i], start == 0, ws[i], forced.get(start))))
                if len(segments) >= self.segment_cache_size:
                    segments.clear()
                segments[key] = found
            if found:
                mentions += found
            start = i
        return combine_mentions(mentions) if mentions else {}
