"""CIDEr-D reward on raw text against pycocoevalcap's Cider on PTB-tokenized text (same corpus).

The reference side tokenizes with pycocoevalcap's own Java PTBTokenizer when Java is
present (one Java call per scoring), else with rslavis's Python PTB tokenizer (then only
the arithmetic is compared; tests/test_tokenize_ptb.py covers the tokenizer).
"""

import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest

from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from rslavis.rewards.cider import CiderD
from rslavis.text.tokenize import ptb_tokenize

Cider = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap is not installed").Cider


def _java_ok():
    import os
    import shutil

    import pycocoevalcap.tokenizer.ptbtokenizer as m

    return shutil.which("java") is not None and os.path.isfile(os.path.join(os.path.dirname(m.__file__), m.STANFORD_CORENLP_3_4_1_JAR))


def ptb_all(captions):
    """Tokenized strings, by Java PTB when available."""
    captions = ["" if c is None else c for c in captions]
    if _java_ok():
        from _ptb import java_ptb

        return [" ".join(t) for t in java_ptb(captions)]
    return [" ".join(ptb_tokenize(c)) for c in captions]


def tok(s):
    return ptb_all([s])[0]


def pycoco(cands, refs):
    flat = ptb_all(list(cands) + [r for rs in refs for r in rs])
    it = iter(flat[len(cands):])
    gts = {i: [next(it) for _ in rs] for i, rs in enumerate(refs)}
    res = {i: [flat[i]] for i in range(len(cands))}
    return np.asarray(Cider().compute_score(gts, res)[1])


def reference_cider(cands, refs, corpus, n=4, sigma=6.0):
    """Direct transcription of pycocoevalcap's formulas with df from ``corpus``."""
    def grams(s):
        w = s.split()
        c = defaultdict(int)
        for k in range(1, n + 1):
            for i in range(len(w) - k + 1):
                c[tuple(w[i : i + k])] += 1
        return c

    allc = list({x: 0 for rs in (list(corpus) + list(refs) + [list(cands)]) for x in rs})
    tok_of = dict(zip(allc, ptb_all(allc)))

    def tok(x):  # noqa: F811 (one Java call for the whole corpus)
        return tok_of[x]

    df = defaultdict(float)
    for rs in corpus:
        for g in {g for r in rs for g in grams(tok(r))}:
            df[g] += 1
    ref_len = math.log(len(corpus))

    def vec(c):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        for g, tf in c.items():
            v[len(g) - 1][g] = tf * (ref_len - math.log(max(1.0, df[g])))
            norm[len(g) - 1] += v[len(g) - 1][g] ** 2
        return v, [math.sqrt(x) for x in norm], sum(tf for g, tf in c.items() if len(g) == 2)

    out = []
    for cand, rs in zip(cands, refs):
        vh, nh, lh = vec(grams(tok(cand)))
        total = np.zeros(n)
        for r in rs:
            vr, nr, lr = vec(grams(tok(r)))
            for k in range(n):
                val = sum(min(x, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, x in vh[k].items())
                if nh[k] and nr[k]:
                    val /= nh[k] * nr[k]
                total[k] += val * math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
        out.append(total.mean() / len(rs) * 10)
    return np.asarray(out)


def karpathy_split(path, split):
    data = json.loads(path.read_text())
    return [[s["raw"] for s in im["sentences"]] for im in data["images"] if im["split"] == split]


def test_registered():
    assert registry.get_reward_class("cider") is CiderD


def test_ucm_test_split_matches_pycocoevalcap(shared_data):
    refs_all = karpathy_split(shared_data / "ucm_captions" / "dataset.json", "test")
    cands = [r[0] for r in refs_all]
    refs = [r[1:] for r in refs_all]
    scorer = CiderD.from_config({"corpus": refs})
    ours = scorer.score(cands, refs)
    assert np.abs(ours - pycoco(cands, refs)).max() < 1e-9
    t = scorer(cands, refs)
    assert t.shape == (len(cands),) and t.dtype.is_floating_point


def test_rsicd_matches_pycocoevalcap(shared_data):
    refs_all = karpathy_split(shared_data / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json", "test")
    rng = random.Random(0)
    cands = [rng.choice(rng.choice(refs_all)) if i % 2 else r[0] for i, r in enumerate(refs_all)]
    scorer = CiderD(corpus=refs_all)
    assert np.abs(scorer.score(cands, refs_all) - pycoco(cands, refs_all)).max() < 1e-9
    # second call: reference vectors come from the cache, same answer
    assert np.abs(scorer.score(cands[::-1], refs_all[::-1]) - pycoco(cands[::-1], refs_all[::-1])).max() < 1e-9


def test_tricky_captions_match_pycocoevalcap():
    refs = [["a plane is parked near the terminal .", "two planes near a building"],
            ["many trees", "many many trees , trees and trees"],
            ["a road", "a road crosses the river"],
            ["zebra", "a b c d e f g"]]
    cands = ["xyzzy xyzzy xyzzy plane", "trees trees trees trees", "", "a b c d e f g h a b c d"]
    assert np.abs(CiderD(corpus=refs).score(cands, refs) - pycoco(cands, refs)).max() < 1e-9


def test_corpus_differs_from_batch():
    corpus = [["a plane near a building", "two planes"], ["green trees around a pond", "a pond"],
              ["a river and a road", "a bridge over a river"], ["many cars in a parking lot", "cars parked"]]
    refs = [["two planes near a building", "a big airport"], ["a bridge", "a river crossing"]]
    cands = ["planes near a building", "a bridge over the river river"]
    ours = CiderD(corpus=corpus).score(cands, refs)
    assert np.abs(ours - reference_cider(cands, refs, corpus)).max() < 1e-9


def test_without_corpus_uses_the_batch(caplog):
    refs = [["a plane near a building", "two planes"], ["green trees", "a pond with trees"]]
    cands = ["a plane", "trees"]
    with caplog.at_level("WARNING"):
        ours = CiderD().score(cands, refs)
    assert "corpus" in caplog.text
    assert np.abs(ours - pycoco(cands, refs)).max() < 1e-9


def test_corpus_from_file(shared_data):
    path = shared_data / "ucm_captions" / "dataset.json"
    scorer = CiderD(corpus=str(path), corpus_split="train")
    assert scorer.n_docs == 1680


@pytest.mark.parametrize("text", ["", "   ", "?!...", "ünïcödé 東京 ✈", "word " * 500, None])
def test_degenerate_captions_are_finite(text):
    refs = [["a plane near a building", "two planes"]]
    v = CiderD(corpus=refs)([text], refs)
    assert v.shape == (1,) and bool(v.isfinite().all())


def test_bad_input():
    with pytest.raises(ConfigError, match="n="):
        CiderD(n=7)
    with pytest.raises(DataError, match="pair one to one"):
        CiderD(corpus=[["a"]]).score(["a", "b"], [["a"]])
    with pytest.raises(DataError, match="empty"):
        CiderD(corpus=[])


def test_rsicd_raw_text_equals_pycocoevalcap_with_ptb(shared_data):
    """The issue's case: the 1,094 RSICD test images, each predicted by a caption of another
    image with the same scene label; raw text into the reward, pycocoevalcap's own pipeline
    (Java PTBTokenizer, then Cider) on the other side. With simple_tokenize 953 images differed."""
    from _ptb import ptb_jar

    ptb_jar()  # skips without Java
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = json.loads((shared_data / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json").read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    assert len(test) == 1094
    rng = random.Random(0)
    by_label = {}
    for im in test:
        by_label.setdefault(im["label"], []).append(im)
    refs, cands = [], []
    for im in test:
        others = [o for o in by_label[im["label"]] if o is not im] or [im]
        refs.append([s["raw"] for s in im["sentences"]])
        cands.append(rng.choice(rng.choice(others)["sentences"])["raw"])
    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(cands)})
    expected = np.asarray(Cider().compute_score(gts, res)[1])
    ours = CiderD(corpus=refs).score(cands, refs)
    assert np.abs(ours - expected).max() < 1e-9
    tok_refs = [gts[i] for i in range(len(cands))]
    pre = CiderD(corpus=tok_refs, pretokenized=True).score([res[i][0] for i in range(len(cands))], tok_refs)
    assert np.abs(pre - expected).max() < 1e-9


def test_vocabulary_beyond_the_old_packed_key_limit():
    """More than 32,767 distinct words (the old 15-bit packing's limit; COCO-sized corpora
    hold about 30k): scores still equal the direct transcription of the formulas."""
    rng = random.Random(1)
    words = [f"w{i}" for i in range(45000)]
    corpus = [[" ".join(rng.choice(words) for _ in range(8)) for _ in range(2)] for _ in range(6000)]
    scorer = CiderD(corpus=corpus)
    assert len(scorer.vocab) > 32767
    refs = corpus[:40]
    cands = [" ".join(r[0].split()[:5] + [rng.choice(words), "unseenword"]) for r in refs]
    ours = scorer.score(cands, refs)
    assert ours.max() > 0.5
    assert np.abs(ours - reference_cider(cands, refs, corpus)).max() < 1e-9
    # references with words the corpus has never seen grow the vocabulary further
    new_refs = [[f"fresh{i} w1 w2", f"fresh{i} w3"] for i in range(3)]
    assert np.isfinite(scorer.score(["fresh0 w1 w2"] * 3, new_refs)).all()


def test_small_cache_and_corpus_larger_than_cache():
    """The corpus pass caches the corpus images only when they fit; a full cache is cleared and
    rebuilt mid-run. Every path gives the formulas' scores, call after call."""
    rng = random.Random(3)
    words = "a the plane road river tree trees building buildings green many two near with".split()
    corpus = [[" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(1, 4))]
              for _ in range(30)]
    cands = [" ".join(rng.choice(words) for _ in range(6)) for _ in corpus]
    expected = reference_cider(cands, corpus, corpus)
    for cache_size in (7, 30, 1000):
        scorer = CiderD(corpus=corpus, cache_size=cache_size)
        assert scorer.pool.count == (30 if cache_size >= 30 else 0)
        for lo in (0, 10, 20, 0):
            got = scorer.score(cands[lo:lo + 10], corpus[lo:lo + 10])
            assert np.abs(got - expected[lo:lo + 10]).max() < 1e-9, cache_size
        assert scorer.pool.count <= max(cache_size, 10)  # one batch's images always fit
    with pytest.raises(ConfigError, match="cache_size"):
        CiderD(cache_size=0)


def test_key_index_is_a_map():
    # the hash table behind the n-gram ids: every key found with its value, absent keys
    # -1, across inserts that grow it; keys that share their low or high bits included
    from rslavis.rewards.cider_ngrams import KeyIndex

    rng = np.random.default_rng(0)
    keys = np.unique(np.concatenate([rng.integers(0, 1 << 62, 20000), np.arange(0, 1 << 40, 1 << 28),
                                     (np.arange(3000, dtype=np.int64) << 50)]))
    rng.shuffle(keys)
    vals = rng.integers(0, 1 << 40, keys.size)
    index, expected = KeyIndex(), {}
    for part in np.array_split(np.arange(keys.size), 7):
        index.add(keys[part], vals[part])
        expected.update(zip(keys[part].tolist(), vals[part].tolist()))
        probe = np.concatenate([keys[: part[-1] + 1], keys[part[-1] + 1 :][:500], [1, 5, (1 << 62) + 3]])
        assert index.get(probe).tolist() == [expected.get(k, -1) for k in probe.tolist()]
    assert index.count == keys.size and 2 * index.count <= index.keys.size


def _span_ids_equal_string_ids(table, caps):
    from rslavis.text.tokenize import ptb_token_spans, ptb_tokenize_flat

    flat, lengths = ptb_tokenize_flat(caps)
    ids, counts = table.word_ids_spans(*ptb_token_spans(caps))
    assert counts.tolist() == lengths.tolist()
    assert ids.tolist() == table.word_ids(flat, lengths, grow=False).tolist()


def test_byte_span_word_ids_equal_the_dictionary_path(shared_data):
    # the candidate side maps PTB tokens to ids from packed bytes (no string per token): it must
    # give the ids the vocabulary dictionary gives, unknown words (local ids) included, on every
    # real caption against a vocabulary from part of them, and on words around the 8/16-byte packing
    from rslavis.rewards.cider_ngrams import NgramTable
    from rslavis.text.tokenize import ptb_tokenize_flat

    from test_tokenize_ptb import FILES, HARD

    caps = []
    for rel in FILES:
        caps += [s["raw"] for im in json.loads((shared_data / rel).read_text())["images"] for s in im["sentences"]]
    edge = ["abcdefgh", "abcdefghi", "abcdefghijklmnop", "abcdefghijklmnopq", "abcdefghijklmnopqr", "a" * 40]
    table = NgramTable(4)
    table.word_ids(*ptb_tokenize_flat(caps[::3] + edge[:4] + ["x\x00y", "caf\u00e9"]), grow=True)
    odd = ["abcdefghijklmnopq x abcdefgh", "a abcdefghijklmnopqr b abcdefghi", "a\nnewline caption", None, "", "   ",
           "café and unknownword unknownword", "a " + "a" * 40 + " b", "zzzz9 zzzz9 q-r q-r"]
    for batch in (caps, odd, HARD, odd + HARD + caps[:500]):
        _span_ids_equal_string_ids(table, batch)


def test_whitespace_span_word_ids_equal_the_dictionary_path():
    # `pretokenized: true` candidates: ids from the packed bytes of str.split() tokens must equal
    # the dictionary's on known, unknown, long (> 16 bytes), non-ASCII and NUL-holding tokens
    from rslavis.rewards.cider import _split_flat
    from rslavis.rewards.cider_ngrams import NgramTable
    from rslavis.text.tokenize import whitespace_token_spans

    from test_tokenize_ptb import synthetic_captions

    refs = synthetic_captions(300) + ["abcdefgh abcdefghi abcdefghijklmnop abcdefghijklmnopq " + "b" * 40,
                                      "caf\u00e9 x\x00y Road -lrb- 's"]
    table = NgramTable(4)
    table.word_ids(*_split_flat(refs[::2]), grow=True)
    odd = ["abcdefghijklmnopq abcdefgh", "b" * 40 + " abcdefghi", "caf\u00e9 Road\troad", "x\x00y x", "a\x00 a", None, "", " \n ",
           "unknownword unknownword -lrb- 's", 7]
    for batch in (refs, odd, odd + refs):
        flat, lengths = _split_flat(batch)
        ids, counts = table.word_ids_spans(*whitespace_token_spans(batch))
        assert counts.tolist() == lengths.tolist()
        assert ids.tolist() == table.word_ids(flat, lengths, grow=False).tolist()
