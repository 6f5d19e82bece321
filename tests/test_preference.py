"""Preference data and the ``preference`` task: losses, JSON reader, caption corruptions, the
generating builder, and an end-to-end scorer training run whose folder loads as a scorer."""

import json
import math
import random
from collections import Counter

import pytest
import torch
from PIL import Image

from rslavis.common.errors import ConfigError, DataError
from rslavis.datasets.corruptions import CaptionCorrupter, make_pairs, normalise_shares
from rslavis.datasets.preference import read_preference_json, write_pairs_json
from rslavis.tasks.preference import bradley_terry, pair_agreement, pairwise, plackett_luce, preference_loss, preference_metrics
from tests.conftest import run_python


# ---------------------------------------------------------------------- losses
def test_bradley_terry_and_listwise_losses():
    s = torch.tensor([2.0, 0.5])
    assert plackett_luce(s, [0, 1]).item() == pytest.approx(bradley_terry(s[0], s[1]).item())
    assert pairwise(s, [0, 1]).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))))
    s3 = torch.tensor([1.0, 3.0, 2.0])
    # ranking: candidate 1 best, then 2, then 0
    e = [math.exp(x) for x in (1.0, 3.0, 2.0)]
    expected = -(math.log(e[1] / sum(e)) + math.log(e[2] / (e[2] + e[0])))
    assert plackett_luce(s3, [2, 0, 1]).item() == pytest.approx(expected, rel=1e-5)
    assert pair_agreement(s3, [2, 0, 1])[:2] == (3.0, 3)
    assert pair_agreement(torch.tensor([1.0, 1.0]), [0, 1])[0] == 0.5  # score ties count half


class _LinearScorer(torch.nn.Module):
    """Score = w . one-hot(text in vocabulary): enough to check the loss trains the right way."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = {t: i for i, t in enumerate(vocab)}
        self.w = torch.nn.Parameter(torch.zeros(len(vocab)))

    def scores(self, images, texts, prompts=None):
        return self.w[torch.tensor([self.vocab[t] for t in texts])] + 0 * images.sum((1, 2, 3))


def test_preference_loss_learns_the_ranking():
    texts = ["good", "bad", "worse", "ok"]
    model = _LinearScorer(texts)
    samples = {"image": torch.zeros(2, 3, 4, 4), "candidates": [["good", "bad"], ["ok", "worse", "good"]], "ranks": [[0, 1], [1, 2, 0]]}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(50):
        out = preference_loss(model, samples)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.3 * first
    w = model.w.detach()
    assert w[0] > w[3] > w[2] and w[0] > w[1]
    assert out["pref/accuracy"] == 1.0


def test_metrics_per_category():
    results = [{"correct": 1.0, "pairs": 1, "margin": 0.5, "top1": True, "category": "truncate"},
               {"correct": 0.0, "pairs": 1, "margin": -0.2, "top1": False, "category": "swap_object"},
               {"correct": 2.0, "pairs": 3, "margin": 0.1, "top1": True, "category": ""}]
    m = preference_metrics(results)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["agg_metrics"] == m["accuracy"]
    assert m["accuracy/truncate"] == 1.0 and m["accuracy/swap_object"] == 0.0 and "accuracy/" not in m


# ---------------------------------------------------------------------- JSON
def test_read_both_json_forms_and_errors(tmp_path):
    (tmp_path / "img").mkdir()
    good = [{"image": "a.png", "chosen": "two planes", "rejected": "one plane", "category": "count"},
            {"image": "/abs/b.png", "image_id": 7, "candidates": ["x", "y", "z"], "ranking": [2, 1, 3]}]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(good))
    recs = read_preference_json(path, tmp_path / "img")
    assert recs[0]["candidates"] == ["two planes", "one plane"] and recs[0]["ranks"] == [0, 1] and recs[0]["corruption"] == "count"
    assert recs[0]["image"] == str(tmp_path / "img" / "a.png") and recs[1]["image"] == "/abs/b.png" and recs[1]["image_id"] == 7
    assert len({r["pair_id"] for r in recs}) == 2
    for bad, msg in [
        ([{"chosen": "a", "rejected": "b"}], "entry 0 has no 'image'"),
        ([{"image": "a", "chosen": "a"}], "'chosen' and 'rejected' must both be strings"),
        ([{"image": "a", "candidates": ["a", "b"], "ranking": [1]}], "one number per candidate"),
        ([{"image": "a", "candidates": ["a", "b"], "ranking": [1, 1]}], "same rank"),
        ([{"image": "a", "text": "a"}], "neither 'chosen'/'rejected' nor 'candidates'/'ranking'"),
        ({"image": "a"}, "expected a JSON list"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=msg):
            read_preference_json(path)


# ---------------------------------------------------------------------- corruptions
CAPTIONS = ["there are two planes and a building in a desert .", "three storage tanks in farmland .", "a ship in the sea ."]


def test_each_corruption_type():
    c = CaptionCorrupter(CAPTIONS + ["four tennis courts in a meadow ."], image_ids=[0, 1, 2, 3])
    rng = random.Random(0)
    for _ in range(20):
        swapped = c.corrupt(CAPTIONS[0], "swap_object", rng)
        assert swapped is not None and "desert" in swapped and swapped != CAPTIONS[0]
        assert "airplanes" not in swapped and "aircraft" not in swapped  # never a synonym
        counted = c.corrupt(CAPTIONS[1], "change_count", rng)
        n = counted.split()[0]
        assert n in ("one", "two", "four", "five") and (counted.startswith("one storage tank ") if n == "one" else "tanks" in counted)
        other = c.corrupt(CAPTIONS[0], "other_caption", rng, image_id=0)
        assert other in CAPTIONS[1:] + ["four tennis courts in a meadow ."]
        cut = c.corrupt(CAPTIONS[0], "truncate", rng).split()
        assert 2 <= len(cut) < len(CAPTIONS[0].split()) and cut == CAPTIONS[0].split()[: len(cut)]
    assert c.corrupt("a green meadow .", "change_count", rng) is None  # "a" before a land cover is no count
    assert c.corrupt("sunny", "truncate", rng) is None


def test_make_pairs_shares_fallback_and_determinism():
    records = [{"image_id": i, "image": f"{i}.png", "captions": CAPTIONS} for i in range(40)]
    pairs = make_pairs(records, {"truncate": 1.0}, pairs_per_caption=2, seed=3)
    assert len(pairs) == 40 * 3 * 2 and {p["corruption"] for p in pairs} == {"truncate"}
    assert all(p["chosen"] in CAPTIONS and p["rejected"] != p["chosen"] for p in pairs)
    assert make_pairs(records, seed=3) == make_pairs(records, seed=3)
    assert make_pairs(records, seed=3) != make_pairs(records, seed=4)
    # every caption has a count ("a ship"), and other images have other captions: both types apply, shares are followed
    varied = [{"image_id": i, "image": f"{i}.png", "captions": [CAPTIONS[i % 3]]} for i in range(120)]
    counts = Counter(p["corruption"] for p in make_pairs(varied, {"change_count": 0.5, "other_caption": 0.5}, seed=0))
    assert set(counts) == {"change_count", "other_caption"} and abs(counts["change_count"] - counts["other_caption"]) < 40
    one_word = [{"image_id": 0, "image": "x", "captions": ["desert"]}, {"image_id": 1, "image": "y", "captions": ["sea"]}]
    assert {p["corruption"] for p in make_pairs(one_word, {"truncate": 1.0, "other_caption": 1e-9})} == {"other_caption"}  # fallback
    with pytest.raises(ConfigError, match="unknown corruption type"):
        normalise_shares({"shuffle": 1.0})
    with pytest.raises(ConfigError, match="positive sum"):
        normalise_shares({"truncate": 0})


# ---------------------------------------------------------------------- builders and training
def test_caption_preferences_builder(tmp_path):
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    cfg = Config.from_dict({
        "model": {"arch": "score_model"},
        "datasets": {"caption_preferences": {"build_info": {
            "source_config": {"build_info": {"cache_dir": str(tmp_path), "sizes": {"train": 6, "test": 3}}},
            "corruptions": {"swap_object": 1, "change_count": 1, "other_caption": 0, "truncate": 0}, "max_captions_per_image": 2}}},
        "run": {"task": "preference"}})
    builder = registry.get_builder_class("caption_preferences")(cfg.datasets.caption_preferences, "caption_preferences")
    ds = builder.build_datasets()
    assert set(ds) == {"train", "test"} and len(ds["train"]) == 12 and len(ds["test"]) == 6
    item = ds["test"][0]
    assert item["image"].shape == (3, 64, 64) and item["ranks"] == [0, 1] and len(item["candidates"]) == 2
    assert item["corruption"] in ("swap_object", "change_count") and item["candidates"][0] != item["candidates"][1]
    batch = ds["train"].collater([ds["train"][i] for i in range(4)])
    assert batch["image"].shape[0] == 4 and len(batch["candidates"]) == 4
    assert len(ds["train"].all_captions()) == 24

    bad = cfg.datasets.caption_preferences.copy()
    bad.build_info.source = "rsvqa_lr"
    with pytest.raises(ConfigError):
        registry.get_builder_class("caption_preferences")(bad, "caption_preferences").build_datasets()


TRAIN = """
model:
  arch: score_model
  model_type: tiny_clip
  vision: {{hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}
  text: {{hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}
datasets:
  preference_json:
    build_info:
      splits:
        train: {{annotation: {train}, images: {images}}}
        val: {{annotation: {val}, images: {images}}}
run:
  task: preference
  init_lr: 5.0e-3
  max_epoch: 3
  batch_size_train: 4
  batch_size_eval: 8
  log_freq: 1
  output_dir: {out}
  test_splits: []
"""


def test_train_on_json_pairs_and_lists_then_load_run_as_scorer(tmp_path):
    """Mixed pairs and ranked lists train end to end; the run folder is a scorer that
    prefers the chosen captions it was trained on."""
    images = tmp_path / "img"
    images.mkdir()
    for k, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 220)]):
        Image.new("RGB", (64, 64), colour).save(images / f"{k}.png")
    caps = ["a red square", "a green square", "a blue square", "a white square"]
    entries = []
    for k in range(4):
        for j in range(4):
            if j != k:
                entries.append({"image": f"{k}.png", "chosen": caps[k], "rejected": caps[j], "category": "colour"})
        entries.append({"image": f"{k}.png", "candidates": [caps[(k + 1) % 4], caps[k], caps[(k + 2) % 4]], "ranking": [2, 1, 3]})
    (tmp_path / "train.json").write_text(json.dumps(entries))
    write_pairs_json([{"image_id": k, "image": str(images / f"{k}.png"), "chosen": caps[k], "rejected": caps[(k + 1) % 4], "corruption": "colour"}
                      for k in range(4)], tmp_path / "val.json", image_root=images)
    assert json.loads((tmp_path / "val.json").read_text())[0]["image"] == "0.png"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(TRAIN.format(train=tmp_path / "train.json", val=tmp_path / "val.json", images=images, out=tmp_path / "out"))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), "--options", "run.job_id=j"], env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "j"
    metrics = json.loads((run_dir / "metrics_val.json").read_text())
    assert {"accuracy", "accuracy/colour", "margin", "top1", "agg_metrics"} <= set(metrics)
    # the colours are learnable: validation accuracy well above chance, one category only
    assert metrics["accuracy"] >= 0.75 and metrics["accuracy/colour"] == metrics["accuracy"]
    assert metrics["margin"] > 0
    log = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    train_acc = [v for r in log for k, v in r.items() if k.endswith("pref/accuracy")]
    assert train_acc and all(0.0 <= a <= 1.0 for a in train_acc)

    from rslavis.models.score_model import load_scorer
    from rslavis.processors.image_processors import RSImageEvalProcessor

    scorer = load_scorer(run_dir)
    proc = RSImageEvalProcessor(image_size=64)
    x = torch.stack([proc(Image.open(images / f"{k}.png").convert("RGB")) for k in range(4)])
    right = scorer.score(x, caps)
    wrong = scorer.score(x, caps[1:] + caps[:1])
    assert (right > wrong).float().mean() >= 0.75


@pytest.mark.parametrize("name", ["synthetic_clip", "synthetic_vlm", "smallcap_scst_learned_score"])
def test_projects_load(root, name):
    from rslavis.common.config import Config

    cfg = Config.from_file(root / "projects" / "score_model" / f"{name}.yaml")
    assert cfg.run.task in ("preference", "scst")
