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
from itertools import chain, compress, repeat

from rslavis.common.registry import registry
from rslavis.text.base_parser import (DEFINITE_WORDS, NOUN_POS, NUMBER_WORDS, ONE_WORDS, TWO_WORDS,
                                      VAGUE_WORDS, BaseCaptionParser, Tok, combine_mentions)
from rslavis.text.lexicon import features_of, oov_features


# spaCy's English tokenizer on captions: numbers, words (split before "n't"), "'s", any
# other character alone ("eye-catching" is three tokens, "malls,wide" three)
PARSE_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[a-z_]+(?=n't)|n't|'s(?![a-z])|[a-z_]+|\S")
_NOT_PLAIN = re.compile(r"[^a-z_ .,]")
_MISSING = object()


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
        self._mod_first = frozenset(k[0] for k in self.mod)  # words with a learnt modifier flag before some word
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
        # what the last word of a segment reads of the word after it (see ``tag``), for known words
        # without a classifier: the next words of their tri, right and mod entries exactly, else only
        # that word's part of speech, and only when they have right_pos entries
        right_words = {}
        for k in self.tri:
            right_words.setdefault(k[1], set()).add(k[2])
        for k in chain(self.right, self.mod):
            right_words.setdefault(k[0], set()).add(k[1])
        self.right_words = {w: frozenset(s) for w, s in right_words.items()}
        self.right_pos_words = frozenset(k[0] for k in self.right_pos)
        self.right_by_table = frozenset(set(self.words) - set(self.weights) - self.blind_right)
        self._ctx = {}
        self._semi = {}
        self._fast = {}

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
        tags = list(map(words.get, ws))
        if None in tags or not special.isdisjoint(ws):  # some word is tagged in context
            oov = self.oov_weights or self.oov_context
            upos = None
            for i in range(n):
                w = ws[i]
                t = tags[i]
                if t is not None and w not in special:
                    continue
                if t is None and not (oov and w not in self.known and w.isalpha() and len(w) > 3):
                    tags[i] = self.guess(w)
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
                tags[i] = hit
        if first_tag is not None:
            tags[0] = first_tag
        toks = []
        append = toks.append
        mod, mod_first, no_mod_next, new = self.mod, self._mod_first, self.no_mod_next, tuple.__new__
        last = n - 1
        for i, (pos, lem, pl, part) in enumerate(tags):
            w = ws[i]
            if i < last:
                nx = ws[i + 1]
                m = mod.get((w, nx)) if w in mod_first else None
                if m is None:
                    m = pos in NOUN_POS and tags[i + 1][0] in NOUN_POS and nx not in no_mod_next
            else:
                m = mod.get((w, nxt), False) if w in mod_first else False
            append(new(Tok, (w, lem, pos, pl, m, part)))
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
        w = ws[i]
        is_first = first and i == 0
        scores = self.fast_scores(w, p, nx, pp, np_, is_first)
        if scores is None:
            pass
        elif len(scores) == 1:  # two candidates: the first's score minus the second's
            d = scores[0]
            if d > AMB_EPS:
                return self.ambiguous[w][0]
            if d < -AMB_EPS:
                return self.ambiguous[w][1]
        else:
            best = max(scores)
            if sum(1 for s in scores if s > best - AMB_EPS) == 1:
                return self.ambiguous[w][scores.index(best)]
        return self.decide_exact(w, p, nx, pp, np_, is_first)  # a near tie: the classifier's exact sums decide

    def exact_scores(self, w, p, nx, pp, np_, is_first):
        """The classifier's score of each candidate tag of the ambiguous word ``w`` in a context: its
        own and the shared weights of the context's features (``features_of``) added in feature order."""
        wt = self.weights[w]
        scores = [0.0] * len(self.ambiguous[w])
        shared = self.shared
        pos = self.cand_pos[w]
        for f in features_of(p, nx, pp, np_, is_first):
            for c, v in wt.get(f, ()):
                scores[c] += v
            sf = shared.get(f)
            if sf:
                for c, ps in enumerate(pos):
                    scores[c] += sf.get(ps, 0.0)
        return scores

    def decide_exact(self, w, p, nx, pp, np_, is_first):
        """The classifier's tag of the ambiguous word ``w`` in a context (:meth:`exact_scores`); ties: the first."""
        scores = self.exact_scores(w, p, nx, pp, np_, is_first)
        return self.ambiguous[w][scores.index(max(scores))]  # ties: the first (most frequent) tag

    def fast_scores(self, w, p, nx, pp, np_, is_first):
        """The classifier's scores of the ambiguous word ``w`` (as :meth:`decide_exact`), summed in
        another order from per-template tables, without building feature strings: ``[first minus
        second]`` for a two-tag word, else one score per candidate. Sums in another order round
        differently (by far less than :data:`AMB_EPS`): callers decide on them only when no two
        values are within :data:`AMB_EPS` and use the exact sums otherwise."""
        tables = self._fast.get(w)
        if tables is None:
            tables = self._fast_tables(w)
        if not tables:  # a feature of another kind: no tables (the exact sums decide)
            return None
        k, bias_first, bias_rest, own, shared, zero = tables
        tp, tn, tpp, tnp, tppnp, tns, tpn = own
        ppnp, ns, pn = pp + np_, nx[-2:], p + " " + nx
        if k == 1:  # two candidates: the first's score minus the second's (0.0 for a feature without weights)
            (ap, an, app, anp, appnp, ans, apn), (bp, bn, bpp, bnp, bppnp, bns, bpn) = shared
            return [(bias_first if is_first else bias_rest)
                    + tp.get(p, 0.0) + tn.get(nx, 0.0) + tpp.get(pp, 0.0) + tnp.get(np_, 0.0) + tppnp.get(ppnp, 0.0)
                    + tns.get(ns, 0.0) + tpn.get(pn, 0.0)
                    + ap.get(p, 0.0) + an.get(nx, 0.0) + app.get(pp, 0.0) + anp.get(np_, 0.0) + appnp.get(ppnp, 0.0)
                    + ans.get(ns, 0.0) + apn.get(pn, 0.0)
                    - bp.get(p, 0.0) - bn.get(nx, 0.0) - bpp.get(pp, 0.0) - bnp.get(np_, 0.0) - bppnp.get(ppnp, 0.0)
                    - bns.get(ns, 0.0) - bpn.get(pn, 0.0)]
        scores = list(map(sum, zip(bias_first if is_first else bias_rest, tp.get(p, zero), tn.get(nx, zero),
                                   tpp.get(pp, zero), tnp.get(np_, zero), tppnp.get(ppnp, zero),
                                   tns.get(ns, zero), tpn.get(pn, zero))))
        for c, (sp, sn, spp, snp, sppnp, sns, spn) in enumerate(shared):
            scores[c] += (sp.get(p, 0.0) + sn.get(nx, 0.0) + spp.get(pp, 0.0) + snp.get(np_, 0.0)
                          + sppnp.get(ppnp, 0.0) + sns.get(ns, 0.0) + spn.get(pn, 0.0))
        return scores

    def _fast_tables(self, w):
        """The tables of :meth:`fast_scores` for ``w`` (built on first use): per template ("p", "n",
        ... of ``features_of``), its own weights by feature value, and the shared weights of each
        candidate's part of speech (built once for all words)."""
        by_pos = self._fast.get("<shared>")
        if by_pos is None:
            by_pos = {}  # part of speech -> template -> value -> shared weight
            ok = True
            for f, sf in self.shared.items():
                t = _template(f)
                ok = ok and t in _TEMPLATES
                for ps, v in sf.items():
                    if v:
                        by_pos.setdefault(ps, {}).setdefault(t, {})[_value(f)] = v
            self._fast["<shared>"] = by_pos = by_pos if ok else ()
        pos = self.cand_pos[w]
        k = len(pos)
        own = {}  # template -> value -> per-candidate weights
        for f, cs in self.weights[w].items():
            vec = own.setdefault(_template(f), {}).setdefault(_value(f), [0.0] * k)
            for c, v in cs:
                vec[c] += v
        if not by_pos and self.shared or not own.keys() <= _TEMPLATES:  # a feature of another kind
            self._fast[w] = ()
            return ()
        two = k == 2
        empty = {}

        def bias(first):
            tag = "first" if first else "notfirst"
            vec = [own.get("b", empty).get("", (0.0,) * k)[c] + own.get(tag, empty).get("", (0.0,) * k)[c]
                   + by_pos.get(ps, empty).get("b", empty).get("", 0.0) + by_pos.get(ps, empty).get(tag, empty).get("", 0.0)
                   for c, ps in enumerate(pos)]
            return vec[0] - vec[1] if two else tuple(vec)

        templates = ("p", "n", "pp", "np", "ppnp", "ns", "pn")
        own_tables = tuple({v: (vec[0] - vec[1] if two else tuple(vec)) for v, vec in own.get(t, empty).items()}
                           for t in templates)
        shared = tuple(tuple(by_pos.get(ps, empty).get(t, empty) for t in templates) for ps in pos)
        tables = (1 if two else k, bias(True), bias(False), own_tables, shared, (0.0,) * k)
        self._fast[w] = tables
        return tables


# scores of the ambiguous-word classifier closer than this are decided by the exact sums (the
# per-template sums of LexiconTagger.fast_scores differ from them by rounding only: < 1e-10 here)
AMB_EPS = 1e-6


_TEMPLATES = frozenset(("b", "first", "notfirst", "p", "n", "pp", "np", "ppnp", "ns", "pn"))


def _template(f):
    """The template of a feature of ``features_of`` ("p" of "p=road"; "b", "first", "notfirst" stand alone)."""
    return f if f in ("b", "first", "notfirst") else f.split("=", 1)[0]


def _value(f):
    return "" if f in ("b", "first", "notfirst") else f.split("=", 1)[1]


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
        captions = captions if isinstance(captions, list) else list(captions)
        if all(map(isinstance, captions, repeat(str))):
            keys = captions
        else:
            keys = [c if isinstance(c, str) else ("" if c is None else str(c)) for c in captions]
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if todo:
            if len(cache) + len(todo) > self.cache_size:
                cache.clear()
                todo = list(dict.fromkeys(keys))  # the cached ones of this call are gone too
            self._parse_new(todo, cache)
        return list(map(dict, map(cache.__getitem__, keys)))  # copies: callers may change them

    def _parse_new(self, todo, cache):
        """Parse the distinct captions ``todo`` that are not cached yet into ``cache``."""
        for k in todo:
            cache[k] = self._parse_segments(k)

    def _parse_segments(self, caption, ws=None):
        """``{object: count}`` of ``caption`` (split into ``ws`` when given; ``ws`` is then extended)."""
        if ws is None:
            ws = caption_words(caption)
        n = len(ws)
        if not n:
            return {}
        tagger = self.tagger
        cut_words = tagger.cut_words
        cuts = list(compress(range(n), map(cut_words.__contains__, ws)))  # C loops
        if cuts and not cuts[0]:
            del cuts[0]  # a segment starts at 0 anyway
        ws.append("</s>")  # ws[n]: what follows the last segment (slices stop at n)
        forced = {}
        semi = tagger.semi_hard
        if cuts and not semi.isdisjoint(ws):  # a boundary only where the context tags it as one
            kept = []
            known = tagger._semi
            for i in cuts:
                if ws[i] in semi:
                    key = (ws[i - 1], ws[i], ws[i + 1])
                    t = known.get(key, _MISSING)
                    if t is _MISSING:
                        t = tagger.semi_boundary(*key)
                    if t is None:
                        continue
                    forced[i] = t
                kept.append(i)
            cuts = kept
        cuts.append(n)
        blind_right, blind_left, bclass = tagger.blind_right, tagger.blind_left, tagger.boundary_class
        by_table, right_words, right_pos_words, words = (tagger.right_by_table, tagger.right_words,
                                                         tagger.right_pos_words, tagger.words)
        segments = self._segments
        get = segments.get
        mentions = []
        start = 0
        first_hard = ws[0] in tagger.hard
        for i in cuts:
            # the next word only matters as the context of the segment's last word
            # (unknown words look both ways: their tag comes from their neighbours' parts of speech)
            last = ws[i - 1]
            if last in blind_right:
                right = None
            elif last in by_table:
                # a known word without a classifier reads the next word only through its tables: the
                # next words they name, else its part of speech (tag_at's), else nothing; segments
                # before other words share one entry ("three blocks" before "in", "by", "at")
                right = ws[i]
                if right not in right_words.get(last, ()):
                    if last in right_pos_words:
                        t = words.get(right)
                        right = "PUNCT" if t is None or right == "</s>" else t[0]
                    else:
                        right = None
            else:
                right = ws[i]
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
