"""CIDEr-D reward against pycocoevalcap's Cider (same corpus, same tokenization)."""

import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest

from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from rslavis.rewards.cider import CiderD
from rslavis.text.tokenize import simple_tokenize

Cider = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap is not installed").Cider


def tok(s):
    return " ".join(simple_tokenize(s))


def pycoco(cands, refs):
    gts = {i: [tok(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [tok(c)] for i, c in enumerate(cands)}
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
