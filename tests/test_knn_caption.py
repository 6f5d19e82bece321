"""knn_caption: consensus choice, the class-oracle equivalence, the train CLI, the feature cache."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from rslavis.common.errors import ConfigError
from tests.conftest import run_python

# Three scene classes drawn as solid red, green and blue images; every image of a class
# has the same five captions, the central one ("... here") deliberately not first.
POOLS = {
    "red": ["a red field .", "a red field here .", "a big red field here .", "the red field here .", "red field here in the image ."],
    "green": ["a green forest .", "a green forest here .", "a dense green forest here .", "the green forest here .", "green forest here in the view ."],
    "blue": ["a blue lake .", "a blue lake here .", "a calm blue lake here .", "the blue lake here .", "blue lake here in the photo ."],
}
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
CENTRAL = {c: pool[1] for c, pool in POOLS.items()}


class OneHotEncoder(nn.Module):
    """Features equal to the image's class one-hot (the channel with the largest mean)."""

    hidden_size = pooled_size = 3

    def forward(self, pixel_values):
        pooled = nn.functional.one_hot(pixel_values.mean((2, 3)).argmax(1), 3).float()
        return pooled[:, None, :], pooled


def write_fixture(root, per_split=None):
    from PIL import Image

    per_split = per_split or {"train": 6, "val": 2, "test": 4}
    (root / "images").mkdir(parents=True)
    images, imgid = [], 0
    for split, n in per_split.items():
        for cls in POOLS:
            for _ in range(n):
                name = f"{cls}_{imgid}.png"
                Image.new("RGB", (16, 16), COLOURS[cls]).save(root / "images" / name)
                sentences = [{"raw": s, "tokens": s.split()} for s in POOLS[cls]]
                images.append({"filename": name, "imgid": imgid, "split": split, "label": cls, "sentences": sentences})
                imgid += 1
    (root / "dataset.json").write_text(json.dumps({"images": images}))
    return root


PROJECT = """
model:
  arch: knn_caption
  model_type: tiny
  k: {k}
  mode: {mode}
  vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64, image_size: 16, patch_size: 8}}
datasets:
  rsicd_caption:
    vis_processor:
      train: {{name: rs_image_train, image_size: 16}}
      eval: {{name: rs_image_eval, image_size: 16}}
    build_info: {{annotation: {root}/dataset.json, images: {root}/images}}
run:
  task: captioning
  max_epoch: 0
  batch_size_train: 4
  batch_size_eval: 5
  output_dir: {root}/out
  skip_metrics: [METEOR, SPICE]
"""


def test_consensus_picks_the_central_caption_and_ties_go_to_the_nearest():
    from rslavis.models.knn_caption import consensus_indices
    from rslavis.rewards.cider import CiderD

    scorer = CiderD(corpus=[POOLS["red"], POOLS["green"], POOLS["blue"]])
    groups = [POOLS["red"] * 2, ["a ship .", "a ship .", "two planes ."], ["only one ."], ["x y .", "x y ."]]
    assert consensus_indices(groups, scorer) == [1, 0, 0, 0]


def test_bad_config_and_training_are_refused():
    from rslavis.models.knn_caption import KNNCaption

    with pytest.raises(ConfigError, match="model.mode 'vote'.*consensus, nearest"):
        KNNCaption({"mode": "vote"})
    with pytest.raises(ConfigError, match="model.k"):
        KNNCaption({"k": 0})
    model = KNNCaption({"vision": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}})
    assert model.count_parameters()[1] == 0  # nothing trainable
    with pytest.raises(ConfigError, match="run.evaluate: true"):
        model({"image": torch.zeros(1, 3, 64, 64)})
    with pytest.raises(ConfigError, match="datastore is empty"):
        model.generate({"image": torch.zeros(1, 3, 64, 64)})


def _run(root, mode, k=3):
    from rslavis.common.config import Config
    from rslavis.common.registry import registry
    from rslavis.runners.runner_base import RunnerBase

    project = root / f"{mode}.yaml"
    project.write_text(PROJECT.format(root=root, mode=mode, k=k))
    cfg = Config.from_file(str(project), [f"run.job_id={mode}"])
    task = registry.get_task_class("captioning").setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    model.visual_encoder = OneHotEncoder()
    metrics = RunnerBase(cfg, task, model, datasets, mode).train()["test"]  # max_epoch 0: no training
    preds = json.loads((root / "out" / mode / "result" / "test_epoch0.json").read_text())
    return cfg, datasets, metrics, preds


def test_class_one_hot_features_reach_the_class_oracle(tmp_path):
    from rslavis.baselines import compute_baselines

    root = write_fixture(tmp_path / "data")
    cfg, datasets, metrics, preds = _run(root, "nearest")
    oracle = compute_baselines(cfg, "test", meteor=False, spice=False, objects=False)["rsicd_caption"]["scene_class_oracle"]
    assert oracle["classes_from"] == "field 'label'" and oracle["n_classes"] == 3
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert metrics[key] == pytest.approx(oracle[key], abs=1e-9), key
    labels = {r["image_id"]: r["label"] for r in datasets["rsicd_caption"]["test"].records}
    assert len(preds) == 12
    # nearest: the first caption of a same-class training image (text-processed: lower case)
    assert all(p["caption"] == POOLS[labels[p["image_id"]]][0].lower() for p in preds)

    # consensus among the 3 neighbours' 15 captions: the class's central caption, which
    # scores at least as well as the oracle's first caption
    _, _, cons_metrics, cons_preds = _run(root, "consensus")
    assert all(p["caption"] == CENTRAL[labels[p["image_id"]]] for p in cons_preds)
    assert cons_metrics["CIDEr"] >= oracle["CIDEr"]


TINY = """
model:
  arch: knn_caption
  model_type: tiny
  k: 3
  vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}
  feature_cache: {{enabled: true, cache_dir: {tmp}/features}}
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {tmp}/cache
      sizes: {{train: 20, val: 4, test: 6}}
run:
  task: captioning
  evaluate: true
  batch_size_eval: 4
  seed: 3
  output_dir: {tmp}/out
  skip_metrics: [METEOR, SPICE]
"""


def test_train_cli_evaluates_without_checkpoint_and_caches_features(tmp_path):
    project = tmp_path / "knn.yaml"
    project.write_text(TINY.format(tmp=tmp_path))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(project), "--options", "run.job_id=a"])
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "a"
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    assert {"Bleu_4", "CIDEr", "agg_metrics"} <= set(metrics) and metrics["CIDEr"] > 0
    preds = json.loads((run_dir / "result" / "test_epoch0.json").read_text())
    assert len(preds) == 6

    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    cfg = Config.from_file(str(project))
    datasets = registry.get_task_class("captioning").setup_task(cfg).build_datasets(cfg)
    train_caps = set(datasets["rs_synthetic"]["train"].all_captions())
    assert all(p["caption"] in train_caps for p in preds)  # retrieval: only training captions
    # one cache for the datastore (train images) and one per evaluation split, rows L2-normalised
    caches = sorted((tmp_path / "features").glob("*/features.npy"))
    assert len(caches) == 3
    rows = sorted(np.load(c).shape[0] for c in caches)
    assert rows == [4, 6, 20]
    assert np.allclose(np.linalg.norm(np.load(caches[0]), axis=1), 1.0, atol=1e-5)

    # a second run (same seed, so the same random encoder; in-process to save a start-up)
    # reuses the caches and captions identically
    from rslavis.common.checkpoint import seed_everything
    from rslavis.runners.runner_base import RunnerBase

    mtimes = {c: c.stat().st_mtime_ns for c in caches}
    cfg = Config.from_file(str(project), ["run.job_id=b"])
    seed_everything(3)
    task = registry.get_task_class("captioning").setup_task(cfg)
    datasets = task.build_datasets(cfg)
    RunnerBase(cfg, task, task.build_model(cfg), datasets, "b").train()
    assert {c: c.stat().st_mtime_ns for c in (tmp_path / "features").glob("*/features.npy")} == mtimes
    assert json.loads((tmp_path / "out" / "b" / "result" / "test_epoch0.json").read_text()) == preds


def test_features_of_another_encoder_are_refused():
    from rslavis.models.knn_caption import KNNCaption
    from rslavis.retrieval.index import build_index

    model = KNNCaption({"mode": "nearest", "vision": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}})
    model.index, model.captions = build_index(np.eye(4, dtype=np.float32)), [["a ."]] * 4
    with pytest.raises(Exception, match="query features have 8 dimensions, the datastore 4"):
        model.generate({"image_features": torch.ones(2, 8)})
    assert model.generate({"image_features": torch.tensor([[0.0, 0.0, 2.0, 0.1]])}) == ["a ."]
