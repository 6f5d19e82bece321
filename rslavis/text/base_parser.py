"""Caption parsers: a caption in, ``{object: count or None}`` out.

Every parser (``registry.register_parser``) produces tokens with a lemma and a coarse
part of speech; :class:`BaseCaptionParser` turns them into objects and counts with one
set of documented rules, so the parsers differ only in how well they tag:

1. Objects are nouns (multi-word compounds such as "storage tank", "tennis court",
   "parking lot" are kept whole), mapped to a canonical name by the
   :class:`~rslavis.text.synonyms.SynonymTable` (synonyms and typo repair). Nouns
   naming positions, shapes, colours or quantities ("middle", "side", "row") are not
   objects. A noun that modifies the next noun ("roof" in "roof house") is part of it.
2. A count comes from the nearest quantifier before the noun phrase, skipping
   adjectives, adverbs, participles and noun modifiers: numerals ("three", "3") give
   that number, "a"/"an"/"one"/"single"/"another" give 1, "both"/"a pair of"/"a couple
   of" give 2, "a dozen" 12, "no" 0 (the object is then absent);
   "several"/"many"/"some"/"lots of"/"a number of"/"rows of"... mean present without an
   exact count (``None``). Without a quantifier a plural noun is ``None`` and a singular
   noun is 1. Mass nouns ("grass", "water", "farmland") are always ``None``.
3. Mentions of one object in one caption combine as: any mention without an exact count
   makes it ``None``; otherwise explicit counts (numeral, "a") add up ("a building on the
   left and a building on the right" is 2); a definite or bare singular mention ("the
   plane") only counts 1 when no explicit count exists, so "a plane ... the plane" is 1.

Parses are cached per caption string (``cache_size`` entries).
"""

import re
from collections import namedtuple

from rslavis.common.errors import ConfigError
from rslavis.text.synonyms import QUANTITY_NOUNS, SynonymTable

# text: lower-case surface form; lemma: lower-case lemma; pos: NOUN, PROPN, NUM, ADJ, ADV,
# VERB, DET, ADP, CCONJ, PUNCT, X...; plural: bool; modifier: True when the token is a
# noun modifying a later noun (spaCy's "compound" dependency).
Tok = namedtuple("Tok", "text lemma pos plural modifier participle")

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "dozen": 12,
}
ONE_WORDS = {"a", "an", "one", "single", "another", "lone", "sole"}
TWO_WORDS = {"both", "twin"}
VAGUE_WORDS = {
    "many", "several", "some", "numerous", "multiple", "few", "various", "lots", "plenty",
    "countless", "dozens", "hundreds", "thousands", "tens", "much", "more", "most", "all",
    "other", "others", "lot", "scattered", "abundant", "innumerable", "each", "every", "any",
}
DEFINITE_WORDS = {"the", "this", "that", "these", "those", "its", "their", "his", "her", "our", "my", "your"}
SKIP_POS = {"ADJ", "ADV"}
# colour words are skipped like adjectives even when tagged as nouns ("a piece of green ocean")
COLOUR_WORDS = frozenset("green white grey gray blue red orange khaki cyan brown silver cream yellow black dark light".split())
NOUN_POS = ("NOUN", "PROPN")
# parts of speech no compound spans and no quantifier search crosses
BLOCK_POS = frozenset(("PUNCT", "NUM", "DET", "ADP", "CCONJ", "AUX", "PRON"))
BLOCK_LEMMAS = frozenset(("be",))  # "is" tagged VERB is no compound modifier either
MAX_COUNT = 10000  # a numeral beyond this is a year or an id, not a count
_DIGITS = re.compile(r"^\d+$")  # also "12\n": "$" matches before a final newline
_MISSING = object()


class BaseCaptionParser:
    """Base of the caption parsers: subclasses implement :meth:`_tokens`.

    Config keys (all parsers): ``synonyms`` (mapping canonical: [variants], merged over
    the default table), ``synonyms_path`` (YAML/JSON of the same), ``use_default_synonyms``
    (true), ``fuzzy_cutoff`` (0.85; 1 disables), ``extra_nouns``, ``non_objects``,
    ``mass_nouns``, ``compounds`` (lists extending the defaults), ``cache_size`` (100000).
    """

    name = "base"

    def __init__(self, synonyms=None, synonyms_path=None, use_default_synonyms=True, fuzzy_cutoff=0.85,
                 extra_nouns=(), non_objects=(), mass_nouns=(), compounds=(), cache_size=100000):
        self.table = SynonymTable(
            synonyms=synonyms, synonyms_path=synonyms_path, use_default_synonyms=use_default_synonyms,
            fuzzy_cutoff=fuzzy_cutoff, extra_nouns=extra_nouns, non_objects=non_objects,
            mass_nouns=mass_nouns, compounds=compounds,
        )
        self.cache_size = int(cache_size)
        self._cache = {}
        self._canonical = {}  # lemma -> SynonymTable.canonical(lemma), a pure function of the table

    @classmethod
    def from_config(cls, cfg=None):
        kwargs = dict(cfg or {})
        kwargs.pop("name", None)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"caption parser {cls.name!r}: bad option ({exc}).") from None

    # ------------------------------------------------------------------ subclass hook
    def _tokens(self, captions):
        """One list of :data:`Tok` per caption."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API
    def parse(self, caption):
        """``{canonical object: count or None}`` for one caption (see module docstring)."""
        return self.parse_batch([caption])[0]

    def parse_batch(self, captions):
        """:meth:`parse` over a list, tagging the uncached captions in one batch."""
        keys = [c if isinstance(c, str) else ("" if c is None else str(c)) for c in captions]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
                todo = list(dict.fromkeys(keys))  # the cached ones of this call are gone too
            for k, toks in zip(todo, self._tokens(todo)):
                self._cache[k] = self.objects_from_tokens(toks)
        return [dict(self._cache[k]) for k in keys]

    def count_dict(self, references):
        """Fused count dictionary of one image's references (see :func:`fuse_counts`)."""
        from rslavis.text.count_dict import fuse_counts

        return fuse_counts(self.parse_batch(list(references)))

    # ------------------------------------------------------------------ the rules
    def _canon(self, lemma):
        """``self.table.canonical(lemma)``, cached per lemma."""
        found = self._canonical.get(lemma, _MISSING)
        if found is _MISSING:
            found = self.table.canonical(lemma)
            if len(self._canonical) > 200000:
                self._canonical.clear()
            self._canonical[lemma] = found
        return found

    def _unit_end(self, toks, i):
        """End (exclusive) and canonical name of the longest known compound starting at ``i``."""
        n_max = min(self.table.max_compound_words, len(toks) - i)
        heads = self.table.compounds_by_head  # a phrase whose last word heads no compound is none
        for n in range(n_max, 1, -1):
            last = toks[i + n - 1]
            # a compound is nouns and their modifiers: no punctuation, numeral, determiner,
            # preposition, conjunction or pronoun inside, and it ends on a noun ("cars parked"
            # is no "car park")
            if last.pos not in NOUN_POS or last.lemma.rsplit(" ", 1)[-1] not in heads or any(
                    t.pos in BLOCK_POS or t.lemma in BLOCK_LEMMAS for t in toks[i : i + n]):
                continue
            words = [t.text for t in toks[i : i + n - 1]] + [last.lemma]
            found = self.table.compound(" ".join(words))
            if found is not None:
                return i + n, found
        return i + 1, None

    def _compound_before(self, toks, i):
        """(start, name) of a known compound ending at noun ``i`` whose modifiers are not
        tagged as nouns ("photovoltaic panel", "swimming pool" with "swimming" a verb)."""
        if toks[i].lemma.rsplit(" ", 1)[-1] not in self.table.compounds_by_head:
            return i, None  # no compound ends on this word (see SynonymTable.compound)
        for n in range(min(self.table.max_compound_words, i + 1), 1, -1):
            mods = toks[i - n + 1 : i]
            if any(t.pos in BLOCK_POS or t.lemma in BLOCK_LEMMAS for t in mods):
                continue
            found = self.table.compound(" ".join([t.text for t in mods] + [toks[i].lemma]))
            if found is not None:
                return i - n + 1, found
        return i, None

    def _quantity(self, toks, start):
        """(kind, value) from the words before position ``start``.

        kind is "exact" (value = count), "vague" (present, no count), "definite" or "none".
        """
        j = start - 1
        skipped = 0
        while j >= 0 and skipped <= 4:
            t = toks[j]
            w = t.text
            if w.isdecimal() or (w.endswith("\n") and _DIGITS.match(w)):  # _DIGITS without a regex call per word
                v = int(w)
                return ("exact", v) if v <= MAX_COUNT else ("vague", None)
            if w in NUMBER_WORDS and t.pos in ("NUM", "X", "NOUN", "DET", "ADJ"):
                if w == "dozen" and j > 0 and toks[j - 1].text in ("a", "one"):
                    return "exact", 12
                return "exact", NUMBER_WORDS[w]
            if w in ONE_WORDS:
                return "exact", 1
            if w in TWO_WORDS:
                return "exact", 2
            if w == "no":
                return "exact", 0
            if w in VAGUE_WORDS:
                return "vague", None
            if w in DEFINITE_WORDS:
                return "definite", None
            if w == "of":
                q = toks[j - 1].lemma if j > 0 else ""
                qt = toks[j - 1].text if j > 0 else ""
                if qt in QUANTITY_NOUNS or q in QUANTITY_NOUNS:
                    value = QUANTITY_NOUNS.get(qt, QUANTITY_NOUNS.get(q))
                    # "two rows of trees": the numeral counts rows, the trees stay uncounted
                    if value is not None and j > 1 and toks[j - 2].text in ("a", "an", "one"):
                        return "exact", value
                    return "vague", None
                return "none", None
            if t.pos in SKIP_POS or t.modifier or t.participle or w in ("-", "'s") or w in COLOUR_WORDS:
                j -= 1
                skipped += 1
                continue
            return "none", None
        return "none", None

    def objects_from_tokens(self, toks):
        """Apply the module's rules to tagged tokens."""
        return combine_mentions(self.mentions_from_tokens(toks))

    def mentions_from_tokens(self, toks):
        """``[(name, kind, value)]``: each object mention of rules 1 and 2, in order."""
        mentions = []
        i = 0
        n = len(toks)
        while i < n:
            t = toks[i]
            if t.pos not in ("NOUN", "PROPN"):
                i += 1
                continue
            end, compound = self._unit_end(toks, i)
            start = i
            if compound is None and not t.modifier:
                start, compound = self._compound_before(toks, i)
            last = toks[end - 1]
            if compound is None:
                # a noun modifying the next noun belongs to that noun's phrase
                if last.modifier and end < n and toks[end].pos in ("NOUN", "PROPN"):
                    i = end
                    continue
                name = self._canon(last.lemma)
                if name is None and last.text != last.lemma:
                    name = self._canon(last.text)
            else:
                name = self._canon(compound)
            followed_by_of = end < n and toks[end].text == "of"
            if name is None or (followed_by_of and compound is None and
                                (last.text in QUANTITY_NOUNS or last.lemma in QUANTITY_NOUNS)):
                i = end
                continue
            kind, value = self._quantity(toks, start)
            if name in self.table.mass_nouns or (compound is None and last.lemma in self.table.mass_nouns):
                kind, value = "vague", None
            elif kind in ("none", "definite"):
                kind, value = ("vague", None) if last.plural else ("implicit", 1)
            mentions.append((name, kind, value))
            i = end
        return mentions


def combine_mentions(mentions):
    """Rule 3: ``{name: count or None}`` from ``[(name, kind, value)]`` (order does not matter)."""
    out = {}
    zero = False
    for name, kind, value in mentions:  # the common case: one mention per object
        if name in out:
            return _combine_repeated(mentions)
        if kind == "vague":
            out[name] = None
        elif kind == "exact":
            out[name] = min(value, MAX_COUNT) if value > 0 else 0
            zero = zero or value <= 0
        else:
            out[name] = 1
    return {k: v for k, v in out.items() if v != 0} if zero else out


def _combine_repeated(mentions):
    by_name = {}
    for name, kind, value in mentions:
        if name in by_name:
            by_name[name].append((kind, value))
        else:
            by_name[name] = [(kind, value)]
    out = {}
    for name, ms in by_name.items():
        if len(ms) == 1:  # the common case: one mention
            kind, value = ms[0]
            if kind == "vague":
                out[name] = None
            elif kind == "exact":
                if value > 0:
                    out[name] = min(value, MAX_COUNT)
            else:
                out[name] = 1
            continue
        kinds = {k for k, _ in ms}
        if "vague" in kinds:
            out[name] = None
        elif "exact" in kinds:
            total = sum(v for k, v in ms if k == "exact")
            if total > 0:
                out[name] = min(total, MAX_COUNT)
            elif "implicit" in kinds and all(v != 0 for k, v in ms if k == "exact"):
                out[name] = 1
        else:
            out[name] = 1
    return out
