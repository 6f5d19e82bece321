"""Remote-sensing object vocabulary: synonyms, compound nouns, words that are not objects.

The default synonym table maps each canonical object name to the words and phrases
that name the same thing in remote-sensing captions (lemmas, lower case). It is
configurable: a parser's ``synonyms`` option (a mapping ``canonical: [variants]``, or a
YAML/JSON file path in ``synonyms_path``) is merged over the defaults, and
``use_default_synonyms: false`` drops them.

Fuzzy matching (for typos that are frequent in RSICD: "termial", "bridege",
"baksetball court", "hosue", "raod") maps an unknown lemma to a known name when it has
at least 5 letters and difflib's ratio is at least ``fuzzy_cutoff`` (0.85 by default),
or when it has at least 4 letters and differs by one swap of adjacent letters.
"""

import difflib
import json
import os

from rslavis.common.errors import ConfigError

DEFAULT_SYNONYMS = {
    "plane": ["airplane", "aeroplane", "aircraft", "jet", "airliner"],
    "car": ["vehicle", "automobile", "sedan", "van", "auto"],
    "truck": ["lorry"],
    "bus": ["coach"],
    "boat": ["ship", "vessel", "yacht", "speedboat", "sailboat"],
    "building": ["edifice", "structure"],
    "house": ["home", "villa", "residence", "cottage", "dwelling"],
    "road": ["street", "avenue", "roadway"],
    "highway": ["freeway", "expressway", "motorway"],
    "overpass": ["viaduct", "flyover"],
    "intersection": ["crossroad", "crossroads", "junction", "crossing"],
    "roundabout": ["traffic circle"],
    "railway": ["railroad", "rail", "railway track", "railroad track", "train track"],
    "railway station": ["train station", "railroad station"],
    "river": ["stream", "brook", "creek"],
    "sea": ["ocean"],
    "beach": ["seashore", "seaside", "sand beach"],
    "port": ["harbor", "harbour"],
    "parking lot": ["parking", "car park", "parking area", "parking space", "parking apron", "car lot"],
    "baseball field": ["baseball diamond", "baseballfield", "baseball court"],
    "tennis court": ["tennis field"],
    "basketball court": ["basketball field"],
    "football field": [
        "soccer field", "football pitch", "soccer pitch", "football ground", "footballground",
        "football playground", "soccer playground",
    ],
    "swimming pool": ["pool"],
    "storage tank": ["tank", "oil tank", "storagetank"],
    "runway": ["airstrip", "flight strip"],
    "airport": ["airfield", "aerodrome"],
    "farmland": ["cropland", "farm land", "agricultural land", "crop"],
    "meadow": ["grassland", "prairie", "pasture", "lawn", "turf"],
    "forest": ["woods", "woodland", "wood", "jungle", "rainforest"],
    "residential area": ["residential district", "neighborhood", "neighbourhood"],
    "church": ["cathedral", "chapel"],
    "bareland": ["bare land", "barren land", "wasteland"],
    "square": ["plaza"],
    "person": ["people", "pedestrian"],
    "mountain": ["mountainpeak"],
}

# Multi-word objects kept whole, beyond the multi-word entries of the synonym table.
DEFAULT_COMPOUNDS = [
    "golf course", "storage tank", "tennis court", "baseball field", "basketball court",
    "football field", "swimming pool", "parking lot", "railway station", "residential area",
    "industrial area", "commercial area", "business district", "construction site",
    "mountain range", "soccer field", "track field", "running track", "oil tank",
    "river bank", "bus station", "gas station", "power plant", "solar panel", "wind turbine",
    "apartment building", "office building", "school building", "terminal building",
    "palm tree", "coconut tree", "flower bed",
]

# Common remote-sensing object nouns, for the rules parser (which has no part-of-speech
# tagger and only recognises known nouns). Synonym-table names are added automatically.
DEFAULT_OBJECT_NOUNS = [
    "building", "tree", "road", "field", "river", "playground", "house", "car", "bridge",
    "pond", "roof", "tank", "airport", "meadow", "lawn", "beach", "park", "land", "farmland",
    "forest", "plane", "boat", "pool", "stadium", "bareland", "runway", "viaduct", "port",
    "railway", "water", "desert", "church", "mountain", "resort", "school", "factory",
    "ocean", "lake", "station", "grass", "sea", "block", "highway", "sand", "wave", "street",
    "grassland", "ship", "people", "overpass", "crossroad", "track", "villa", "path", "bush",
    "city", "turf", "freeway", "intersection", "snow", "terminal", "bunker", "island",
    "train", "apron", "harbor", "hill", "farm", "yard", "workshop", "town", "container",
    "vegetation", "trail", "rail", "harbour", "facility", "rock", "vehicle", "pasture",
    "community", "wharf", "pitch", "campus", "junction", "wasteland", "bleacher", "tarmac",
    "flyover", "coast", "garden", "gate", "truck", "gymnasium", "gym", "crop", "ridge",
    "pipe", "pier", "aircraft", "warehouse", "tower", "apartment", "footpath", "pathway",
    "skyscraper", "ramp", "flower", "dome", "valley", "wheat", "stone", "ranch", "dock",
    "prairie", "basin", "cottage", "plain", "soil", "lane", "oasis", "office", "dam",
    "platform", "shrub", "cloud", "village", "shed", "fountain", "wetland", "bird", "palm",
    "court", "airplane", "roundabout", "bus", "person", "jungle", "stream", "canal",
    "greenhouse", "greenery", "hangar", "chimney", "pylon", "windmill", "helicopter",
    "ground", "lot", "dirt", "concrete", "ice", "cliff", "dune", "shore",
]

# Nouns that name a part, a position, a shape, a colour or a quantity, not an object.
DEFAULT_NON_OBJECTS = [
    "image", "picture", "photo", "photograph", "scene", "view", "area", "part", "side",
    "middle", "center", "centre", "top", "bottom", "left", "right", "corner", "coner", "edge",
    "front", "back", "kind", "type", "lot", "lots", "number", "piece", "row", "line", "group",
    "cluster", "plenty", "amount", "variety", "series", "set", "bunch", "couple", "pair",
    "dozen", "strip", "patch", "stretch", "tract", "expanse", "color", "colour", "shape",
    "size", "place", "way", "distance", "direction", "position", "one", "other", "thing",
    "form", "pattern", "texture", "surface", "space", "scale", "half", "end", "region",
    "zone", "total", "order", "style", "arrangement", "distribution", "design", "shade",
    "shadow", "green", "white", "grey", "gray", "blue", "red", "orange", "khaki", "cyan",
    "brown", "silver", "cream", "yellow", "black", "t", "s", "l", "u", "circle",
    "rectangle", "triangle", "oval", "ring", "arc", "curve", "loop", "cross", "mark",
    "stripe", "while", "there", "it", "lot of", "most", "layer", "range", "site", "point",
    "height", "length", "width", "bit", "portion", "section", "segment", "majority",
]

# Nouns whose number is not counted ("green grass" is present, not one grass).
DEFAULT_MASS_NOUNS = [
    "grass", "water", "vegetation", "sand", "soil", "land", "farmland", "bareland",
    "greenery", "snow", "ice", "dirt", "concrete", "meadow", "traffic", "mud", "wheat",
]

# Nouns that quantify the noun after "of": "a pair of courts" (2), "lots of trees" (present).
QUANTITY_NOUNS = {
    "pair": 2, "couple": 2, "dozen": 12, "lot": None, "lots": None, "number": None,
    "group": None, "row": None, "line": None, "cluster": None, "plenty": None,
    "bunch": None, "series": None, "set": None, "variety": None, "piece": None,
    "patch": None, "strip": None, "stretch": None, "amount": None, "kind": None,
    "type": None, "array": None, "collection": None, "dozens": None, "hundreds": None,
    "thousands": None, "tens": None, "majority": None, "part": None, "tract": None,
    "expanse": None, "sea": None, "field": None, "area": None, "block": None,
}


def _load_mapping(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"synonyms_path {path!r} does not exist; give a YAML or JSON file of canonical: [variants].")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"synonyms_path {path!r} must hold a mapping canonical: [variants], got {type(data).__name__}.")
    return data


def _one_swap(a, b):
    """True when ``b`` is ``a`` with two adjacent letters swapped ("hosue", "raod")."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


class SynonymTable:
    """Canonical object names, synonyms, compounds and fuzzy matching (see module docstring).

    ``canonical(lemma)`` returns the canonical name of a known object, ``None`` for a
    word that is not an object (position, shape, colour, quantity word), and the lemma
    itself for an unknown noun (so open-vocabulary parsers still report it).
    """

    def __init__(self, synonyms=None, synonyms_path=None, use_default_synonyms=True, fuzzy_cutoff=0.85,
                 extra_nouns=(), non_objects=(), mass_nouns=(), compounds=()):
        table = {k: list(v) for k, v in DEFAULT_SYNONYMS.items()} if use_default_synonyms else {}
        for source in (_load_mapping(synonyms_path) if synonyms_path else None, synonyms):
            if source is None:
                continue
            if not isinstance(source, dict):
                raise ConfigError(f"synonyms must be a mapping canonical: [variants], got {source!r:.100}.")
            for canon, variants in source.items():
                if isinstance(variants, str):
                    variants = [variants]
                table.setdefault(str(canon).lower(), []).extend(str(v).lower() for v in (variants or []))
        try:
            self.fuzzy_cutoff = float(fuzzy_cutoff)
        except (TypeError, ValueError):
            raise ConfigError(f"fuzzy_cutoff={fuzzy_cutoff!r} must be a number in (0, 1]; 1 disables fuzzy matching.") from None
        self.table = table
        self.to_canonical = {}
        for canon, variants in table.items():
            self.to_canonical[canon] = canon
            for v in variants:
                self.to_canonical.setdefault(v, canon)
        self.compounds = {c for c in list(DEFAULT_COMPOUNDS) + [str(c).lower() for c in compounds]}
        self.compounds |= {t for t in self.to_canonical if " " in t}
        self.compounds_by_head = {}
        for c in self.compounds:
            self.compounds_by_head.setdefault(c.rsplit(" ", 1)[1], []).append(c)
        self._compound_fuzzy = {}
        # longest compound length in words, to bound the matcher's look-ahead
        self.max_compound_words = max((len(c.split()) for c in self.compounds), default=1)
        self.non_objects = set(DEFAULT_NON_OBJECTS) | {str(w).lower() for w in non_objects}
        self.non_objects -= set(self.to_canonical)  # a synonym-table name is always an object
        self.mass_nouns = set(DEFAULT_MASS_NOUNS) | {str(w).lower() for w in mass_nouns}
        self.nouns = (set(DEFAULT_OBJECT_NOUNS) | {str(w).lower() for w in extra_nouns}
                      | {t for t in self.to_canonical if " " not in t})
        self.nouns -= self.non_objects
        self._known = sorted(set(self.to_canonical) | self.nouns | self.compounds)
        self._known_by_len = {}
        for k in self._known:
            self._known_by_len.setdefault(len(k), []).append(k)
        # every known name with two adjacent letters swapped -> the first such name of its length
        # (what fuzzy's one-swap repair finds by comparing the word with each name of its length)
        self._swaps = {}
        for names in self._known_by_len.values():
            for k in names:
                for j in range(len(k) - 1):
                    if k[j] != k[j + 1]:
                        self._swaps.setdefault(k[:j] + k[j + 1] + k[j] + k[j + 2:], k)
        self._fuzzy_cache = {}
        self._letter_counts = None  # built on the first typo repair (see _quick_candidates)
        self._same_cache = {}
        self.compound_first_words = {c.split()[0] for c in self.compounds}  # for taggers, once

    def fuzzy(self, word):
        """The known name closest to ``word`` (typo repair), or None.

        The same answer as ``difflib.get_close_matches(word, known, 1, fuzzy_cutoff)`` (then
        one swap of adjacent letters), looking only at names of a length that can reach the
        cutoff: a new word costs tens of candidates, not the whole vocabulary.
        """
        if word in self._fuzzy_cache:
            return self._fuzzy_cache[word]
        found = None
        if len(word) >= 4 and self.fuzzy_cutoff < 1.0:
            if len(word) >= 5:
                found = self._close_match(word)
            if found is None:
                found = self._swaps.get(word)  # the first name of its length that _one_swap(word, name)
        if len(self._fuzzy_cache) > 200000:
            self._fuzzy_cache.clear()
        self._fuzzy_cache[word] = found
        return found

    def _close_match(self, word):
        cutoff = self.fuzzy_cutoff
        lw = len(word)
        m = difflib.SequenceMatcher()
        m.set_seq2(word)
        best = None
        for x in self._quick_candidates(word):
            m.set_seq1(x)
            r = m.ratio()
            if r >= cutoff and (best is None or (r, x) > best):
                best = (r, x)
        return best[1] if best else None

    def _quick_candidates(self, word):
        """The known names whose difflib ``quick_ratio`` with ``word`` reaches the cutoff
        (2 x shared letters, counted with repeats, over both lengths), for all names at once
        from a letter-count matrix: the same candidates as calling ``quick_ratio`` on each."""
        import numpy as np

        if self._letter_counts is None:
            alphabet = sorted({ch for k in self._known for ch in k})
            self._alphabet = {ch: i for i, ch in enumerate(alphabet)}
            # one more column for letters no known name has: they match nothing
            counts = np.zeros((len(self._known), len(alphabet) + 1), dtype=np.int16)
            for r, k in enumerate(self._known):
                for ch in k:
                    counts[r, self._alphabet[ch]] += 1
            self._letter_counts = counts
            self._lengths = np.array([len(k) for k in self._known], dtype=np.int32)
        vec = np.zeros(self._letter_counts.shape[1], dtype=np.int16)
        other = len(self._alphabet)
        for ch in word:
            vec[self._alphabet.get(ch, other)] += 1
        shared = np.minimum(self._letter_counts, vec).sum(axis=1)
        ok = 2.0 * shared >= self.fuzzy_cutoff * (self._lengths + len(word)) - 1e-9
        return [self._known[i] for i in np.flatnonzero(ok)]

    def compound(self, phrase):
        """The known compound ``phrase`` names (exactly, or with a typo in its modifier), or None."""
        if phrase in self.compounds:
            return phrase
        head = phrase.rsplit(" ", 1)[-1]
        cands = self.compounds_by_head.get(head)
        if not cands or self.fuzzy_cutoff >= 1.0:
            return None
        if phrase not in self._compound_fuzzy:
            close = difflib.get_close_matches(phrase, cands, n=1, cutoff=self.fuzzy_cutoff)
            if len(self._compound_fuzzy) > 200000:
                self._compound_fuzzy.clear()
            self._compound_fuzzy[phrase] = close[0] if close else None
        return self._compound_fuzzy[phrase]

    def is_known(self, name):
        return name in self.to_canonical or name in self.nouns or name in self.compounds

    def canonical(self, lemma):
        """Canonical object name of ``lemma``; None when it names no object."""
        lemma = lemma.strip().lower()
        if not lemma:
            return None
        if lemma in self.to_canonical:
            return self.to_canonical[lemma]
        if lemma in self.non_objects:
            return None
        if lemma in self.nouns or lemma in self.compounds:
            return lemma
        fixed = self.fuzzy(lemma)
        if fixed is not None:
            if fixed in self.non_objects:
                return None
            return self.to_canonical.get(fixed, fixed)
        return lemma

    def same_object(self, a, b):
        """Whether two canonical names denote the same object for matching.

        Equal names, fuzzy-equal names (difflib ratio >= ``fuzzy_cutoff``), or a compound
        and its bare head noun ("storage tank" and "tank", "tennis court" and "court").
        Answers are memoised per pair: the rewards ask the same pairs at every step.
        """
        if a == b:
            return True
        key = (a, b)
        hit = self._same_cache.get(key)
        if hit is None:
            if len(self._same_cache) > 200000:
                self._same_cache.clear()
            hit = self._same_cache[key] = self._same_uncached(a, b)
        return hit

    def first_same(self, a, names):
        """The first of ``names`` that :meth:`same_object` matches with ``a`` (its cache read inline), or None."""
        cache = self._same_cache
        for b in names:
            hit = cache.get((a, b))
            if hit is None:
                hit = self.same_object(a, b)
            if hit:
                return b
        return None

    def _same_uncached(self, a, b):
        if " " in a and a.rsplit(" ", 1)[1] == b or " " in b and b.rsplit(" ", 1)[1] == a:
            return True
        la, lb = len(a), len(b)
        if self.fuzzy_cutoff >= 1.0 or min(la, lb) < 5:
            return False
        if la == lb and _one_swap(a, b):
            return True
        if 2.0 * min(la, lb) / (la + lb) < self.fuzzy_cutoff:  # difflib's ratio cannot reach the cutoff
            return False
        m = difflib.SequenceMatcher(None, a, b)
        return m.real_quick_ratio() >= self.fuzzy_cutoff and m.quick_ratio() >= self.fuzzy_cutoff and m.ratio() >= self.fuzzy_cutoff
