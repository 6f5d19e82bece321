"""Caption parser: objects and counts, synonyms, fusion, optional backends."""

import json

import pytest

from conftest import run_python
from rslavis.common.errors import ConfigError, DataError, RegistryKeyError
from rslavis.text import build_parser
from rslavis.text.count_dict import fuse_counts, load_detector_counts, merge_detector_counts

spacy = pytest.importorskip("spacy", reason="spaCy is not installed (pip install spacy)")

RSICD_EXAMPLE = "many planes are parked next to a long building in an airport ."

CASES = [
    (RSICD_EXAMPLE, {"plane": None, "building": 1, "airport": 1}),
    ("There are four planes and three buildings.", {"plane": 4, "building": 3}),
    ("There is a forest, a river and a road.", {"forest": 1, "river": 1, "road": 1}),
    ("a pair of tennis courts and several storage tanks near a parking lot",
     {"tennis court": 2, "storage tank": None, "parking lot": 1}),
    ("lots of green trees are around a baseball field .", {"tree": None, "baseball field": 1}),
    ("two swimming pools and 3 cars", {"swimming pool": 2, "car": 3}),
    ("a building on the left and a building on the right", {"building": 2}),
    ("a plane is parked near the terminal . the plane is white", {"plane": 1, "terminal": 1}),
    ("there are no cars on the road", {"road": 1}),
    ("some green grass and a piece of farmland", {"grass": None, "farmland": None}),
    ("an airplane , two aircraft and some vehicles", {"plane": 3, "car": None}),
]


@pytest.fixture(scope="module")
def parser():
    return build_parser("spacy")


@pytest.mark.parametrize("caption,expected", CASES)
def test_spacy_parser_cases(parser, caption, expected):
    assert parser.parse(caption) == expected


@pytest.mark.parametrize("name", ["rules", {"name": "spacy", "model": "blank"}])
@pytest.mark.parametrize("caption,expected", CASES[:7])
def test_fallback_parsers_agree_on_core_cases(name, caption, expected):
    assert build_parser(name).parse(caption) == expected


def test_default_parser_is_the_hybrid_with_spacy_behind_it(parser):
    # the default is the hybrid (tests/test_hybrid_parser.py); with a pipeline installed,
    # its fallback is this full spaCy parser's pipeline
    assert build_parser().name == "hybrid" and build_parser() is not parser
    assert parser.mode == "full" and build_parser().fallback.mode == "full"


def test_typos_and_synonyms(parser):
    assert parser.parse("some hosues and a bridege over the raod") == {"house": None, "bridge": 1, "road": 1}
    assert parser.parse("a termial near two baksetball courts") == {"terminal": 1, "basketball court": 2}
    assert parser.table.canonical("aeroplane") == "plane"
    assert parser.table.canonical("middle") is None
    assert parser.table.same_object("storage tank", "tank")


def test_configurable_synonyms(tmp_path):
    p = build_parser({"name": "rules", "synonyms": {"plane": ["glider"]}, "extra_nouns": ["glider"]})
    assert p.parse("two gliders") == {"plane": 2}
    f = tmp_path / "syn.yaml"
    f.write_text("solar panel: [pv panel, photovoltaic panel]\n")
    p = build_parser({"name": "spacy", "synonyms_path": str(f)})
    assert p.parse("three photovoltaic panels") == {"solar panel": 3}
    with pytest.raises(ConfigError, match="synonyms_path"):
        build_parser({"name": "rules", "synonyms_path": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize("text", ["", "   ", "... !!", "ñandú 東京 café", "plane " * 500, None])
def test_degenerate_captions(parser, text):
    out = parser.parse(text)
    assert isinstance(out, dict)
    assert all(v is None or (isinstance(v, int) and v > 0) for v in out.values())


def test_fusion_rule():
    # most frequent stated count, ties to the larger; no stated count gives None
    assert fuse_counts([{"plane": 2}, {"plane": 3}, {"plane": 3, "tree": None}, {"plane": 2}]) == {"plane": 3, "tree": None}
    assert fuse_counts([{"plane": None}, {"plane": 4}]) == {"plane": 4}
    assert fuse_counts([]) == {}


def test_detector_counts_merge(tmp_path, parser):
    refs = {"plane": 3, "tree": None}
    det = {"airplane": 5, "tree": 12, "car": 2}
    assert merge_detector_counts(refs, det, parser.table) == {"plane": 3, "tree": 12, "car": 2}
    f = tmp_path / "det.json"
    f.write_text(json.dumps([{"image_id": 7, "counts": {"car": 1}}]))
    assert load_detector_counts(f) == {"7": {"car": 1}}
    with pytest.raises(DataError, match="does not exist"):
        load_detector_counts(tmp_path / "missing.json")


def test_count_dict_of_references(parser):
    refs = ["There is a forest and a river.", "There is a forest, a river and a road."]
    assert parser.count_dict(refs) == {"forest": 1, "river": 1, "road": 1}


def test_unknown_parser_name():
    with pytest.raises(RegistryKeyError, match="spacy"):
        build_parser("spacyy")


def test_factual_needs_checkpoint_dir(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        build_parser("factual")
    with pytest.raises(ConfigError, match="not a directory"):
        build_parser({"name": "factual", "checkpoint_dir": str(tmp_path / "none")})


def test_spacy_model_not_installed_is_clear():
    with pytest.raises(ConfigError, match="not installed"):
        build_parser({"name": "spacy", "model": "xx_no_such_pipeline"})


def test_import_stays_light():
    code = (
        "import sys, rslavis, rslavis.text, rslavis.common.registry as r\n"
        "r.registry.list_parsers(); r.registry.list_rewards()\n"
        "heavy = [m for m in ('spacy', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = run_python(["-c", code])
    assert res.returncode == 0, res.stderr


def test_real_rsicd_captions(shared_data, parser):
    data = json.loads((shared_data / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json").read_text())
    caps = [s["raw"] for im in data["images"][:150] for s in im["sentences"]]
    assert RSICD_EXAMPLE in caps
    parses = parser.parse_batch(caps)
    assert parses[caps.index(RSICD_EXAMPLE)] == {"plane": None, "building": 1, "airport": 1}
    # almost every real caption names at least one object, and no count is absurd
    assert sum(1 for p in parses if p) / len(parses) > 0.95
    assert all(v is None or 0 < v <= 100 for p in parses for v in p.values())


# captions reaching the attribute ruler's context patterns: "is" after an expletive "there" (a VERB), two-token
# patterns ("gon na", "let 's"), pronouns by dependency, whitespace tokens
RULER_CASES = ["there is a plane .", "there are many cars and it is gon na rain , let 's see it",
               "a  building   with two  spaces", "but i see you , but not him", "the house that has a pool",
               "let them see the planes"]  # "let" before another word than "'s"


def test_attribute_ruler_matched_in_python_gives_spacys_tokens(shared_data, parser):
    """The ``spacy`` parser runs the pipeline's attribute ruler as rslavis.text.attribute_rules: every token
    attribute it or the lemmatizer after it sets must be the unchanged pipeline's, on real captions."""
    if parser.mode != "full":
        pytest.skip("no English spaCy pipeline installed")
    from rslavis.text.lexicon import split_captions

    assert parser._after and parser._after[0][0] == "attribute_ruler"  # the fast path is on
    caps = RULER_CASES + list(dict.fromkeys(c.lower() for _, _, c in split_captions(shared_data, None)[::25]))
    names = [name for name, _ in parser._after]

    def attrs(doc):
        return [(t.text, t.pos_, t.tag_, str(t.morph), t.lemma_, t.dep_) for t in doc]

    real = [attrs(d) for d in parser.nlp.pipe(caps)]
    fast = []
    for doc in parser.nlp.pipe(caps, disable=names):
        for _, proc in parser._after:
            doc = proc(doc)
        fast.append(attrs(doc))
    assert len(caps) > 1500
    assert [c for c, a, b in zip(caps, fast, real) if a != b] == []
    assert any(t[1] == "VERB" and t[0] == "is" for t in real[0])  # "there is": the expletive pattern fired


def test_rule_lemmatizer_with_set_index_gives_the_unchanged_pipelines_lemmas(shared_data, parser):
    """The ``spacy`` parser's pipeline looks lemmas up in sets (``lemma_index_as_sets``): every token's
    attributes must be those of the same pipeline loaded unchanged, on real captions."""
    if parser.mode != "full":
        pytest.skip("no English spaCy pipeline installed")
    from rslavis.text.lexicon import split_captions
    from rslavis.text.spacy_parser import lemma_index_as_sets

    assert lemma_index_as_sets(parser.nlp) == 0  # done when the pipeline was loaded: no list left
    unchanged = spacy.load(parser.model_name, exclude=["ner"])
    caps = RULER_CASES + list(dict.fromkeys(c.lower() for _, _, c in split_captions(shared_data, None)[::40]))

    def attrs(doc):
        return [(t.text, t.pos_, t.tag_, str(t.morph), t.lemma_, t.dep_) for t in doc]

    # a fresh parser's tokens (its caches empty of these captions) against the unchanged pipeline's
    fresh = build_parser({"name": "spacy", "cache_size": 10**6})
    real = [[(a[0], a[4].lower(), a[1]) for a in attrs(d) if not a[0].isspace()] for d in unchanged.pipe(caps)]
    mine = [[(t.text, t.lemma, t.pos) for t in toks] for toks in fresh._tokens(caps)]
    assert len(caps) > 500
    assert [c for c, a, b in zip(caps, mine, real) if a != b] == []
    assert any(t[0] == "buildings" and t[1] == "building" for toks in mine for t in toks)
