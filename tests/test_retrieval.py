"""Retrieval: faiss indexes, own captions excluded, the retrieved-captions JSON written, reused and rebuilt."""

import json

import numpy as np
import pytest
import torch

from rslavis.common.errors import ConfigError
from rslavis.retrieval.datastore import Datastore, build_retrieval, encoder_fingerprint
from rslavis.retrieval.index import build_index, search


def clustered(n=60, d=16, clusters=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    labels = np.arange(n) % clusters
    x = centres[labels] + 0.05 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_indexes_find_the_same_cluster(kind):
    x, labels = clustered()
    index = build_index(x, kind, nlist=3, nprobe=3)
    scores, rows = search(index, x, 5)
    assert (rows[:, 0] == np.arange(len(x))).mean() > 0.95  # a row's nearest neighbour is itself
    assert (labels[rows] == labels[:, None]).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # inner products, best first
    with pytest.raises(ConfigError, match="flat, ivf, hnsw"):
        build_index(x, "lsh")


def test_datastore_excludes_the_query_image_and_takes_one_caption_per_neighbour():
    x, labels = clustered(n=12, clusters=2)
    caps = [[f"scene {i} a", f"scene {i} b"] for i in range(12)]
    store = Datastore(x, [f"id{i}" for i in range(12)], caps, [f"/img/{i}.png" for i in range(12)])
    got = store.retrieve(x[:3], k=4, exclude_paths=["/img/0.png", "/img/1.png", "/img/2.png"])
    for q, retrieved in enumerate(got):
        assert len(retrieved) == 4
        sources = [int(c.split()[1]) for c in retrieved]
        assert q not in sources  # never the query's own captions
        assert len(set(sources)) == 4  # four different neighbour images
        assert all(labels[s] == labels[q] for s in sources)
    # without exclusion the image itself comes first
    assert store.retrieve(x[:1], k=1)[0] == ["scene 0 a"]


class _CountingEncoder(torch.nn.Module):
    """A tiny frozen 'encoder': pooled = mean colour per channel and a few pixel statistics."""

    hidden_size = pooled_size = 6

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        pooled = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1) * self.scale
        return pooled[:, None, :], pooled


def _datasets(tmp_path, n_train=10, n_test=4):
    from PIL import Image

    from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset, CaptionTrainDataset
    from rslavis.processors.image_processors import RSImageEvalProcessor, RSImageTrainProcessor

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir(exist_ok=True)

    def records(split, n):
        out = []
        for i in range(n):
            colour = rng.integers(0, 255, size=3)
            arr = np.clip(colour + rng.normal(0, 5, size=(16, 16, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / "imgs" / f"{split}{i}.png"
            Image.fromarray(arr).save(path)
            out.append({"image_id": f"{split}{i}", "image": str(path), "captions": [f"{split} scene {i} first", f"{split} scene {i} second"]})
        return out

    train, test = records("train", n_train), records("test", n_test)
    return {
        "toy": {
            "train": CaptionTrainDataset(train, RSImageTrainProcessor(16)),
            "test": CaptionEvalDataset(test, RSImageEvalProcessor(16)),
        }
    }


def test_build_retrieval_writes_json_excludes_own_captions_and_reuses(tmp_path):
    datasets = _datasets(tmp_path)
    enc = _CountingEncoder()
    fp = encoder_fingerprint(enc, {"type": "toy"})
    built = build_retrieval(enc, fp, datasets, cache_dir=tmp_path / "cache", k=3, progress=False)
    res = built["toy"]
    on_disk = json.loads((res["folder"] / "retrieved_captions.json").read_text())
    assert on_disk == res["retrieved"]
    assert set(on_disk) == {f"train{i}" for i in range(10)} | {f"test{i}" for i in range(4)}
    for image_id, caps in on_disk.items():
        assert len(caps) == 3
        if image_id.startswith("train"):
            own = f"train scene {image_id[5:]} "
            assert not any(c.startswith(own) for c in caps)  # never the image's own captions
        assert all(c.startswith("train scene") for c in caps)  # the datastore holds training images only
    calls = enc.calls
    again = build_retrieval(enc, fp, datasets, cache_dir=tmp_path / "cache", k=3, progress=False)
    assert enc.calls == calls and again["toy"]["folder"] == res["folder"]  # reused, not re-encoded
    assert Datastore.exists(res["folder"])

    # another encoder (weights differ) or another k builds anew
    other = _CountingEncoder(scale=2.0)
    rebuilt = build_retrieval(other, encoder_fingerprint(other, {"type": "toy"}), datasets, cache_dir=tmp_path / "cache", k=3, progress=False)
    assert rebuilt["toy"]["folder"] != res["folder"] and other.calls > 0
    assert build_retrieval(enc, fp, datasets, cache_dir=tmp_path / "cache", k=2, progress=False)["toy"]["folder"] != res["folder"]


def test_retrieval_cli_builds_what_training_reuses(tmp_path):
    from tests.conftest import run_python

    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"""
model:
  arch: smallcap_causal
  model_type: tiny
  vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2}}
  retrieval: {{cache_dir: {tmp_path / 'ret'}, k: 2}}
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {tmp_path / 'syn'}
      sizes: {{train: 6, val: 2, test: 2}}
run:
  task: captioning
  seed: 5
  output_dir: {tmp_path / 'out'}
"""
    )
    out = run_python(["-m", "rslavis.retrieval", "--cfg-path", str(cfg)])
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout)["rs_synthetic"]
    assert info["datastore_images"] == 6 and info["retrieved_images"] == 10
    retrieved = json.loads((tmp_path / "ret" / info["folder"].split("/")[-1] / "retrieved_captions.json").read_text())
    assert all(len(c) == 2 for c in retrieved.values())
    again = run_python(["-m", "rslavis.retrieval", "--cfg-path", str(cfg)])
    assert "reusing" in again.stderr and json.loads(again.stdout)["rs_synthetic"]["folder"] == info["folder"]
    bad = run_python(["-m", "rslavis.retrieval", "--cfg-path", str(cfg), "--options", "model.disable_rag=true"])
    assert bad.returncode == 2 and "disable_rag" in bad.stderr.strip().splitlines()[-1]
