"""Rewards: registry contract, worked examples, degenerate captions, combination."""

import json

import pytest
import torch

from rslavis.common.errors import ConfigError, RegistryKeyError
from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward
from rslavis.rewards.combine import CombinedReward, build_reward

import importlib.util

# only the tests that name the spaCy parser need spaCy; the rules parser, CIDEr, NKL, length
# and the combination run everywhere
HAS_SPACY = importlib.util.find_spec("spacy") is not None
PARSERS = ["rules", pytest.param("spacy", marks=pytest.mark.skipif(not HAS_SPACY, reason="spaCy is not installed"))]

NAMES = ["cider", "sde", "count", "nkl", "length", "varentropy"]
SDE_GEN = "There is a forest."
SDE_REFS = ["There is a forest and a river.", "There is a forest, a river and a road."]
COUNT_GEN = "There are four planes and three buildings."
COUNT_REFS = ["There are five planes and one building."]
DEGENERATE = ["", "   ", "... ?! ,", "ñandú café 東京 ✈️", "many planes near a building " * 100]


def test_all_names_registered():
    assert set(NAMES) <= set(registry.list_rewards())
    for name in NAMES:
        cls = registry.get_reward_class(name)
        assert issubclass(cls, BaseReward)
        assert cls.is_loss_term == (name == "varentropy")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "varentropy"])
def test_contract_and_degenerate_captions(name):
    reward = registry.get_reward_class(name).from_config({})
    gen = DEGENERATE + [SDE_GEN, COUNT_GEN]
    refs = [SDE_REFS] * len(DEGENERATE) + [SDE_REFS, COUNT_REFS]
    out = reward(gen, refs)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (len(gen),)
    assert bool(torch.isfinite(out).all())
    # degenerate references too
    out = reward([SDE_GEN] * len(DEGENERATE), [[d] for d in DEGENERATE])
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("parser", PARSERS)
def test_sde_worked_example(parser):
    sde = registry.get_reward_class("sde").from_config({"parser": parser})
    assert sde([SDE_GEN], [SDE_REFS]).item() == pytest.approx(1 / 3)
    assert sde(["A forest with a road and a river."], [SDE_REFS]).item() == pytest.approx(1.0)
    # count_dicts supplied by the dataset take the place of the references
    assert sde([SDE_GEN], [SDE_REFS], count_dicts=[{"forest": 1, "lake": None}]).item() == pytest.approx(0.5)


@pytest.mark.parametrize("parser", PARSERS)
def test_count_worked_example(parser):
    cls = registry.get_reward_class("count")
    reward = cls.from_config({"parser": parser})
    (abs_err, signed, exact, n), = reward.errors([COUNT_GEN], [COUNT_REFS])
    assert (abs_err, signed, n) == (1.5, 0.5, 2)
    assert exact == 0.0
    assert reward([COUNT_GEN], [COUNT_REFS]).item() == pytest.approx(-1.5)
    assert cls.from_config({"mode": "exact", "parser": parser})([COUNT_GEN], [COUNT_REFS]).item() == 0.0
    assert cls.from_config({"mode": "squared", "scale": 2, "parser": parser})([COUNT_GEN], [COUNT_REFS]).item() == pytest.approx(-5.0)
    with pytest.raises(ConfigError, match="valid modes"):
        cls.from_config({"mode": "cubic"})


def test_length_reward():
    cls = registry.get_reward_class("length")
    assert cls.from_config({})(["a plane , near a building ."], None).tolist() == [5.0]
    assert cls.from_config({"scale": -0.5})(["one two"], None).tolist() == [-1.0]
    assert cls.from_config({"target": 3})(["one two three four five"], None).tolist() == [-2.0]


def test_nkl_prefers_reference_like_vocabulary():
    refs = [["a plane near a building", "green trees around a pond", "a river and a bridge"]] * 4
    nkl = registry.get_reward_class("nkl").from_config({"corpus": refs, "window": 50})
    out = nkl(["a plane near a building and green trees", "a a a a a a a a"], refs[:2])
    assert out[0] > out[1] and bool((out <= 0).all())
    # a caption shares the batch's window: the same caption twice scores the same
    out = nkl(["a river", "a river"], refs[:2])
    assert out[0] == out[1]


def test_nkl_window_refresh_and_no_update():
    nkl = registry.get_reward_class("nkl").from_config({"window": 10})
    refs = [["a plane near a building"]]
    nkl(["a plane"], refs)  # first batch fills the window snapshot
    snap = nkl._snapshot.copy()
    nkl(["trees " * 5], refs, update_window=False)
    assert (nkl._snapshot == snap).all() and nkl._since_refresh == 0
    nkl(["trees " * 12], refs)  # 12 new tokens >= window of 10: refreshed
    assert nkl._since_refresh == 0 and nkl._snapshot.sum() == 10


def test_varentropy_term():
    term = registry.get_reward_class("varentropy").from_config({})
    uniform = torch.zeros(2, 3, 8)
    value, stats = term(uniform, torch.ones(2, 3))
    assert stats["entropy"] == pytest.approx(float(torch.log(torch.tensor(8.0))), rel=1e-5)
    assert stats["varentropy"] == pytest.approx(0.0, abs=1e-6) and float(value) == pytest.approx(0.0, abs=1e-9)
    logits = torch.randn(2, 4, 10, requires_grad=True)
    value, stats = term(logits, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    value.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert float(value.detach()) == pytest.approx(1e-4 * stats["varentropy"] / (stats["entropy"] + 1e-6), rel=1e-4)
    # log-probabilities give the same as logits
    v2, _ = term(torch.log_softmax(logits.detach(), -1), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    assert float(v2) == pytest.approx(float(value.detach()), rel=1e-5)
    # degenerate: -inf logits, empty mask, sampled-token log-probs only
    bad = torch.full((1, 2, 5), float("-inf"))
    bad[..., 0] = 0.0
    for args in [(bad, None), (torch.randn(1, 3, 5), torch.zeros(1, 3)), (torch.log(torch.rand(2, 6)), None)]:
        v, s = term(*args)
        assert bool(torch.isfinite(v)) and all(map(lambda x: x == x and abs(x) != float("inf"), s.values()))
    with pytest.raises(Exception, match="shape"):
        term(torch.zeros(5))
    assert registry.get_reward_class("varentropy").from_config({"lambda": 0.5}).lam == 0.5


@pytest.mark.parametrize("parser", PARSERS)
def test_combined_reward(parser):
    comb = build_reward({"cider": 1.0, "sde": 0.5, "count": {"weight": 0.2, "mode": "abs"}, "varentropy": 1.0},
                        corpus=[SDE_REFS, COUNT_REFS], parser=parser)
    assert isinstance(comb, CombinedReward) and comb.names == ["cider", "sde", "count"]
    total, parts = comb.compute([SDE_GEN, COUNT_GEN], [SDE_REFS, COUNT_REFS])
    assert set(parts) == {"cider", "sde", "count"}
    expected = parts["cider"] + 0.5 * parts["sde"] + 0.2 * parts["count"]
    assert torch.allclose(total, expected)
    assert parts["sde"][0].item() == pytest.approx(1 / 3) and parts["count"][1].item() == pytest.approx(-1.5)
    assert comb.components["cider"][1].has_corpus  # the shared corpus reached cider
    value, stats = comb.loss_term(torch.randn(2, 3, 7), torch.ones(2, 3))
    assert {"entropy", "varentropy"} <= set(stats) and bool(torch.isfinite(value))
    out = comb(DEGENERATE, [SDE_REFS] * len(DEGENERATE))
    assert out.shape == (len(DEGENERATE),) and bool(torch.isfinite(out).all())


def test_running_normalisation():
    comb = build_reward({"length": {"weight": 1.0, "normalize": True}})
    gen = ["a", "a b", "a b c", "a b c d"]
    total, parts = comb.compute(gen, None)
    assert abs(float(total.mean())) < 1e-6 and float(total.std(unbiased=False)) == pytest.approx(1.0, rel=1e-4)
    norm = comb.components["length"][2]
    mean = norm.mean
    comb.compute(["a " * 50], None, update_stats=False)
    assert norm.mean == mean


def test_unknown_and_bad_entries():
    with pytest.raises(RegistryKeyError, match="Did you mean 'cider'") as info:
        build_reward({"cidr": 1.0})
    assert "sde" in str(info.value)
    with pytest.raises(ConfigError, match="rewards.cider"):
        build_reward({"cider": "heavy"})
    with pytest.raises(ConfigError, match="empty"):
        build_reward({})


def test_rewards_on_real_captions(shared_data):
    data = json.loads((shared_data / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json").read_text())
    ims = [im for im in data["images"] if im["split"] == "test"][:60]
    refs = [[s["raw"] for s in im["sentences"]] for im in ims]
    gen = [r[0] for r in refs[1:]] + [refs[0][0]]  # captions of the next image
    own = [r[0] for r in refs]
    comb = build_reward({"cider": 1.0, "sde": 1.0, "count": 1.0, "nkl": 1.0, "length": 0.0}, corpus=refs)
    t_other, p_other = comb.compute(gen, refs)
    t_own, p_own = comb.compute(own, refs)
    assert bool(torch.isfinite(t_other).all()) and bool(torch.isfinite(t_own).all())
    # a caption of the image itself beats one of another image on CIDEr and SDE
    assert p_own["cider"].mean() > p_other["cider"].mean()
    assert p_own["sde"].mean() > p_other["sde"].mean()


def test_count_reward_does_not_reward_omitting_counts():
    """Leaving the count out must score worse than stating a nearly right count (SCST exploits it otherwise)."""
    reward = registry.get_reward_class("count")(parser="rules")
    refs = [["there are four planes ."]] * 3
    stated_near, stated_exact, omitted = reward(["there are three planes .", "there are four planes .", "there are planes ."], refs).tolist()
    assert stated_exact == 0.0 and stated_near == -1.0
    assert omitted == -4.0  # compared as if it said zero planes
    ignore = registry.get_reward_class("count")(parser="rules", missing="ignore")
    assert ignore(["there are planes ."], refs[:1]).tolist() == [0.0]


SYNTHETIC = ["there are four planes and three buildings .", "there are five planes and one building .",
             "two storage tanks near a parking lot", "a storage tank", "many tanks and a plain",
             "three aeroplanes parked beside two biuldings", "no cars on the road", "", "...",
             "a pair of tennis courts and several storage tanks", "a tennis court", "courts",
             "green trees around a pond", "there is a forest and a river .", "a river and a road",
             "two roads , 3 cars and no trees", "one ship , two boats and a harbour", "planes"]


def _object_reward_cases(shared_data):
    """(candidates, references) pairs: synthetic ones, and RSICD test captions against their image's and
    other images' references when ``../shared/data`` is there."""
    import random

    rng = random.Random(0)
    # objects matched only through SynonymTable.first_same (a compound and its head), counted or not
    matched = [("three tanks near a road", ["two storage tanks near a road", "two storage tanks ."]),
               ("a storage tank", ["three tanks", "there are three tanks ."]), ("two courts", ["a tennis court"]),
               ("four tennis courts and a pool", ["two courts and two swimming pools"]),
               ("many tanks", ["two storage tanks and a road"]), ("four planes", ["four planes and three buildings ."]),
               ("a court", ["three tennis courts and a road"]), ("three courts and a road", ["three tennis courts", "a road"])]
    cases = [(SYNTHETIC, [[rng.choice(SYNTHETIC) for _ in range(rng.randint(1, 5))] for _ in SYNTHETIC]),
             ([c for c, _ in matched], [r for _, r in matched])]
    if shared_data is not None:
        data = json.loads((shared_data / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json").read_text())
        ims = [im for im in data["images"] if im["split"] == "test"]  # 1,093 images
        refs = [[s["raw"] for s in im["sentences"]] for im in ims]
        by_label = {}
        for im in ims:
            by_label.setdefault(im["label"], []).append([s["raw"] for s in im["sentences"]])
        same = [rng.choice(rng.choice(by_label[im["label"]])) for im in ims]  # a caption of an image of its class
        other = [rng.choice(rng.choice(refs)) for _ in ims]
        own = [r[0] for r in refs]
        cases += [(same, refs), (other, refs), (own, refs)]
    return cases


@pytest.mark.parametrize("parser", ["rules", "hybrid"])
def test_object_reward_values_equal_their_definitions(parser, request):
    # sde and count (its default mode, abs with missing: zero) compute their values in one inlined loop
    # per caption; they must equal the module functions that define them (sde_value; reward_pairs and
    # the mean), value for value, on synthetic captions and on real RSICD ones (skipped without the data)
    from rslavis.rewards.count import reward_pairs
    from rslavis.rewards.sde import sde_value

    try:
        shared_data = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared_data = None
    p = {"name": parser, "spacy": False} if parser == "hybrid" else parser  # the gate, no spaCy start-up
    sde = registry.get_reward_class("sde")(parser=p, scale=2.0, empty_value=-0.5)
    count = registry.get_reward_class("count")(parser=p, scale=3.0, empty_value=0.25)
    compared = 0
    values = set()
    for gen, refs in _object_reward_cases(shared_data):
        gt = sde.reference_counts(refs)
        parsed = sde.parser.parse_batch(gen)
        want_sde = [sde_value(g, r, sde.match, sde.empty_value) * sde.scale for g, r in zip(parsed, gt)]
        want_count = []
        for g, r in zip(parsed, gt):
            pairs = reward_pairs(g, r, count.match)
            want_count.append(-sum(abs(a - b) for a, b in pairs) / len(pairs) * count.scale if pairs else count.empty_value)
        assert sde(gen, refs).tolist() == torch.tensor(want_sde, dtype=torch.float32).tolist()
        assert count(gen, refs).tolist() == torch.tensor(want_count, dtype=torch.float32).tolist()
        compared += len(gen)
        values |= {("sde", v) for v in want_sde} | {("count", v) for v in want_count}
    # the values differ between captions (a constant would pass the comparison with a broken definition)
    assert sum(k == "sde" for k, _ in values) > 3 and sum(k == "count" for k, _ in values) > 3
    assert compared >= (len(SYNTHETIC) + 8 if shared_data is None else 3000)
