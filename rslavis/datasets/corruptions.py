"""Corrupted captions, to turn any caption dataset into preference pairs.

A reference caption is preferred over a corrupted version of itself, so a scorer can be
trained without external preference data (the recipe of ScoreRS-style quality models).
Corruption types (``CORRUPTIONS``):

- ``swap_object``: one object noun (single word or compound such as "storage tank",
  from the remote-sensing vocabulary of :mod:`rslavis.text.synonyms`) is replaced by a
  different object noun, keeping its number ("three planes" -> "three ships");
  preferably by an object named in another caption of the dataset, so the swap stays
  in the dataset's vocabulary.
- ``change_count``: one count ("a", "one" ... "twenty" or digits, before an object
  noun for "a"/"an"/"one") becomes a different count, and the noun's number follows
  ("a plane" -> "three planes", "four ships" -> "one ship").
- ``other_caption``: the caption of another image (a different text).
- ``truncate``: the caption cut to 30-70 % of its words (at least one word dropped,
  at least two kept).

A type that does not apply to a caption (no object noun, no count, a one-word caption)
falls back to the other configured types in random order; ``other_caption`` applies
whenever the dataset has a caption of another image that is not one of this image's
references (a caption of another scene may still describe this one; rare noise). Pairs record the type used.
Everything is a pure function of the seed.
"""

import random
import re

from rslavis.common.errors import ConfigError

CORRUPTIONS = ("swap_object", "change_count", "other_caption", "truncate")
DEFAULT_SHARES = {"swap_object": 0.3, "change_count": 0.3, "other_caption": 0.2, "truncate": 0.2}

_COUNT_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}
_WORD_OF = {v: k for k, v in _COUNT_WORDS.items()}
_IRREGULAR = {"people": "person", "aircraft": "aircraft", "sheep": "sheep", "fish": "fish", "men": "man", "women": "woman"}
_TOKEN = re.compile(r"\w+|[^\w\s]+")
# Land-cover nouns: "a calm sea" is no count, and a scene noun is swapped for another scene noun.
_SCENE_NOUNS = {"sea", "ocean", "desert", "grassland", "forest", "field", "apron", "beach", "meadow", "farmland",
                "cropland", "pasture", "prairie", "land", "area", "water", "lake", "wasteland", "bareland", "sand"}


def normalise_shares(shares, option="corruptions"):
    """``{type: share}`` (non-negative, summing to 1) from a mapping; unknown types raise ConfigError."""
    if shares is None:
        shares = DEFAULT_SHARES
    shares = {str(k): float(v) for k, v in dict(shares).items()}
    unknown = set(shares) - set(CORRUPTIONS)
    if unknown:
        raise ConfigError(f"{option}: unknown corruption type(s) {sorted(unknown)}; valid: {', '.join(CORRUPTIONS)}.")
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ConfigError(f"{option}: shares must be >= 0 with a positive sum, got {shares}.")
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items() if v > 0}


def _vocabulary():
    from rslavis.text.synonyms import DEFAULT_COMPOUNDS, DEFAULT_MASS_NOUNS, DEFAULT_NON_OBJECTS, DEFAULT_OBJECT_NOUNS, DEFAULT_SYNONYMS

    words = set(DEFAULT_OBJECT_NOUNS) | set(DEFAULT_SYNONYMS) | set(DEFAULT_COMPOUNDS)
    for variants in DEFAULT_SYNONYMS.values():
        words.update(variants)
    words -= set(DEFAULT_NON_OBJECTS)
    return words, set(DEFAULT_MASS_NOUNS) | _SCENE_NOUNS


def synonym_groups(extra=None):
    """Word -> group id, so a swap never lands on a synonym ("ship" for "boat").

    Groups: the synonym table of :mod:`rslavis.text.synonyms`, the synthetic scenes'
    synonyms ("house" names a building there) and ``extra`` (``{name: [variants]}``).
    """
    from rslavis.datasets.synthetic.scenes import OBJECTS
    from rslavis.text.synonyms import DEFAULT_SYNONYMS

    groups = [[k, *v] for k, v in DEFAULT_SYNONYMS.items()]
    groups += [[obj, *(s for s, _ in forms)] for obj, forms in OBJECTS.items()]
    groups += [[k, *v] for k, v in dict(extra or {}).items()]
    parent = {}

    def find(w):
        while parent.setdefault(w, w) != w:
            w = parent[w]
        return w

    for g in groups:
        for w in g[1:]:
            parent[find(w)] = find(g[0])
    return {w: find(w) for w in parent}


def _plural(noun):
    last = noun.split()[-1]
    head = noun[: len(noun) - len(last)]
    for sing_, plur in ((v, k) for k, v in _IRREGULAR.items()):
        if last == sing_:
            return head + plur
    if re.search(r"(s|x|z|ch|sh)$", last):
        return head + last + "es"
    if re.search(r"[^aeiou]y$", last):
        return head + last[:-1] + "ies"
    return head + last + "s"


def _singular(word, known):
    """The known singular of ``word`` (last word of a phrase), or None when it is not a plural we know."""
    if word in _IRREGULAR and _IRREGULAR[word] != word:
        return _IRREGULAR[word]
    for cut, add in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(cut) and word[: -len(cut)] + add in known:
            return word[: -len(cut)] + add
    return None


class CaptionCorrupter:
    """Applies the corruption types (see module docstring) with a ``random.Random``.

    ``captions_pool``: every caption of the dataset (for ``other_caption`` and for the
    objects ``swap_object`` prefers); ``image_of``: caption index -> image id, so another
    image's caption is never the same image's.
    """

    def __init__(self, captions_pool=(), image_ids=(), synonyms=None):
        self.words, self.mass = _vocabulary()
        self.group = synonym_groups(synonyms)
        self.words |= set(self.group)
        self.max_len = max(len(w.split()) for w in self.words)
        self.pool = list(captions_pool)
        self.pool_images = list(image_ids) if image_ids else [None] * len(self.pool)
        seen = {}
        for cap in self.pool[:20000]:
            for _, _, noun, _ in self.find_objects(self.tokens(cap)):
                seen[noun] = seen.get(noun, 0) + 1
        self.dataset_objects = sorted(seen)

    @staticmethod
    def tokens(caption):
        return _TOKEN.findall(caption.lower())

    @staticmethod
    def join(tokens):
        text = " ".join(tokens)
        return re.sub(r" ([.,;:!?])", r" \1", text).strip()

    def find_objects(self, toks):
        """``[(start, end, singular noun, is_plural)]`` of object nouns in ``toks`` (longest match first)."""
        out, i = [], 0
        while i < len(toks):
            hit = None
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                phrase = " ".join(toks[i : i + n])
                if phrase in self.words:
                    hit = (i, i + n, phrase, False)
                    break
                sing = _singular(toks[i + n - 1], self.words)
                if sing is not None:
                    cand = " ".join(toks[i : i + n - 1] + [sing])
                    if cand in self.words:
                        hit = (i, i + n, cand, True)
                        break
            if hit:
                out.append(hit)
                i = hit[1]
            else:
                i += 1
        return out

    # ------------------------------------------------------------------ types
    def swap_object(self, caption, rng, **_):
        toks = self.tokens(caption)
        objs = [o for o in self.find_objects(toks) if o[2] not in self.mass] or self.find_objects(toks)
        if not objs:
            return None
        start, end, noun, plural = objs[rng.randrange(len(objs))]
        present = {self.group.get(o[2], o[2]) for o in objs}
        scene = noun in self.mass  # swap like for like: an object for an object, a land cover for a land cover
        same_kind = lambda w: (w in self.mass) == scene  # noqa: E731
        fresh = lambda w: self.group.get(w, w) not in present and same_kind(w)  # noqa: E731
        choices = [w for w in self.dataset_objects if fresh(w)] or sorted(w for w in self.words if fresh(w))
        new = choices[rng.randrange(len(choices))]
        repl = _plural(new) if plural else new
        return self.join(toks[:start] + repl.split() + toks[end:])

    def change_count(self, caption, rng, **_):
        toks = self.tokens(caption)
        starts = {o[0]: o for o in self.find_objects(toks)}
        spots = []
        for i, t in enumerate(toks):
            value = _COUNT_WORDS.get(t, int(t) if t.isdigit() and len(t) < 4 else None)
            if t in ("a", "an"):
                value = 1
            if value is None:
                continue
            # the object this count applies to: the next object noun within three words
            obj = next((starts[j] for j in range(i + 1, min(i + 4, len(toks))) if j in starts), None)
            if obj is not None and obj[2] in self.mass:
                obj = None
            if obj is None and t in ("a", "an", "one"):
                continue  # "a green meadow", "one of": not a count of an object
            spots.append((i, value, obj))
        if not spots:
            return None
        i, value, obj = spots[rng.randrange(len(spots))]
        hi = max(4, value + 2)
        new = rng.choice([v for v in range(1, hi + 1) if v != value])
        toks = list(toks)
        toks[i] = str(new) if toks[i].isdigit() else _WORD_OF.get(new, str(new))
        if obj is not None:
            start, end, noun, plural = obj
            if (new > 1) != plural or plural != (value > 1):
                repl = _plural(noun) if new > 1 else noun
                toks[start:end] = repl.split()
        return self.join(toks)

    def other_caption(self, caption, rng, image_id=None, own=(), **_):
        if not self.pool:
            return None
        own = {c.strip().lower() for c in own} | {caption.strip().lower()}
        for _ in range(20):
            k = rng.randrange(len(self.pool))
            other = self.pool[k]
            if other.strip().lower() not in own and (image_id is None or self.pool_images[k] != image_id):
                return other
        return None

    def truncate(self, caption, rng, **_):
        words = caption.split()
        if len(words) < 3:
            return None
        keep = max(2, min(len(words) - 1, int(round(len(words) * rng.uniform(0.3, 0.7)))))
        return " ".join(words[:keep])

    def corrupt(self, caption, kind, rng, image_id=None, own=()):
        """The corrupted caption, or None when ``kind`` does not apply to ``caption``
        (``own``: the image's references, which ``other_caption`` must not return)."""
        out = getattr(self, kind)(caption, rng, image_id=image_id, own=own)
        if out is None or out.strip().lower() == caption.strip().lower():
            return None
        return out


def make_pairs(records, shares=None, pairs_per_caption=1, max_captions_per_image=None, seed=0, synonyms=None, option="corruptions"):
    """Preference pairs from caption records ``{"image_id", "image", "captions"}``.

    Returns ``[{"image_id", "image", "chosen", "rejected", "corruption"}]``: for each of
    the first ``max_captions_per_image`` references of each image, ``pairs_per_caption``
    corrupted versions, the type drawn by ``shares`` (see module docstring);
    ``synonyms`` (``{name: [variants]}``) adds synonym groups a swap must avoid.
    """
    shares = normalise_shares(shares, option)
    pool, owners = [], []
    for r in records:
        for c in r["captions"]:
            pool.append(c)
            owners.append(r["image_id"])
    corrupter = CaptionCorrupter(pool, owners, synonyms)
    rng = random.Random(seed)
    kinds, weights = list(shares), [shares[k] for k in shares]
    out = []
    for r in records:
        caps = r["captions"][:max_captions_per_image] if max_captions_per_image else r["captions"]
        for cap in caps:
            for _ in range(int(pairs_per_caption)):
                order = [rng.choices(kinds, weights)[0]]
                rest = [k for k in CORRUPTIONS if k in shares and k != order[0]]
                rng.shuffle(rest)
                for kind in order + rest:
                    bad = corrupter.corrupt(cap, kind, rng, image_id=r["image_id"], own=r["captions"])
                    if bad is not None:
                        out.append({"image_id": r["image_id"], "image": r["image"], "chosen": cap, "rejected": bad, "corruption": kind})
                        break
    return out
