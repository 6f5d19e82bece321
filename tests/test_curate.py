"""``python -m rslavis.curate``: selection, the written formats (rs_synthetic, Karpathy, COCO)
read back unchanged by their builders, counts, scores and histogram."""

import json

import pytest
import torch
from PIL import Image

from rslavis.common.errors import ConfigError
from rslavis.curate import select_pairs, writer_for
from tests.conftest import run_python
from tests.test_score_model import TINY_CLIP


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    """A random tiny scorer saved with save_pretrained: curation needs scores, not good ones."""
    from rslavis.models.score_model import ScoreModel
    from rslavis.models.tokenization import train_caption_tokenizer

    torch.manual_seed(0)
    words = "there are is a an one two three four planes plane ships storage tanks in desert sea red green square image .".split()
    m = ScoreModel(TINY_CLIP, tokenizer=train_caption_tokenizer([" ".join(words)]))
    d = tmp_path_factory.mktemp("scorer") / "scorer"
    m.save_pretrained(d)
    return d


def test_select_pairs():
    scored = [(0, 0, 0.1), (0, 1, 0.9), (1, 0, 0.5), (1, 1, 0.7), (2, 0, 0.3)]
    kept, thr = select_pairs(scored, 0.6)
    assert kept == {(0, 1), (1, 1), (1, 0)} and thr == 0.5
    assert select_pairs(scored, 0.4, "bottom")[0] == {(0, 0), (2, 0)}
    rnd, thr = select_pairs(scored, 0.6, "random", seed=1)
    assert len(rnd) == 3 and thr is None and rnd == select_pairs(scored, 0.6, "random", seed=1)[0]
    assert len(select_pairs(scored, 1.0)[0]) == 5
    with pytest.raises(ConfigError, match="--keep must be in"):
        select_pairs(scored, 0)


def curate(cfg, scorer, out, *extra):
    res = run_python(["-m", "rslavis.curate", "--cfg-path", str(cfg), "--scorer", str(scorer), "--keep", "0.6", "--out", str(out), *extra],
                     env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def kept_from_scores(out, split="train"):
    rows = [json.loads(l) for l in (out / "scores.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == split]
    kept = {}
    for r in rows:
        if r["kept"]:
            kept.setdefault(r["image_id"], []).append(r["caption"])
    return rows, kept


def build(cfg_path, name):
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    cfg = Config.from_file(cfg_path)
    return registry.get_builder_class(name)(cfg.datasets[name], name).build_datasets()


def test_curate_synthetic_roundtrip(tmp_path, scorer_dir):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""
model: {{arch: smallcap}}
datasets:
  rs_synthetic:
    build_info: {{cache_dir: {tmp_path / 'cache'}, sizes: {{train: 10, val: 2, test: 3}}}}
run: {{task: captioning}}
""")
    out = tmp_path / "out"
    res = curate(cfg, scorer_dir, out)
    counts = res["counts"]["rs_synthetic"]["train"]
    assert counts["pairs"] == 50 and counts["kept_pairs"] == 30 and counts["kept_score_mean"] >= counts["score_mean"]
    assert json.loads((out / "counts.json").read_text()) == res["counts"]
    png = out / "histogram_rs_synthetic_train.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows, kept = kept_from_scores(out)
    threshold = counts["threshold"]
    assert all((r["score"] >= threshold - 1e-6) == r["kept"] for r in rows)

    original = build(cfg, "rs_synthetic")
    curated = build(out / "curated.yaml", "rs_synthetic")  # the builder reads the curated folder as its cache
    refs = curated["train"].references()
    assert refs == kept  # same images, kept captions in their original order
    assert sum(map(len, refs.values())) == 30
    assert curated["test"].references() == original["test"].references()  # other splits unchanged
    assert curated["train"][0]["image"].shape == original["train"][0]["image"].shape

    rnd = curate(cfg, scorer_dir, tmp_path / "rnd", "--select", "random")["counts"]["rs_synthetic"]["train"]
    assert rnd["kept_pairs"] == 30 and rnd["threshold"] is None


def _images(folder, names):
    folder.mkdir()
    for k, n in enumerate(names):
        Image.new("RGB", (64, 64), (40 * k, 200 - 40 * k, 90)).save(folder / n)


def test_curate_karpathy_and_coco(tmp_path, scorer_dir):
    _images(tmp_path / "images", ["1.png", "2.png", "3.png", "4.png"])
    sentences = lambda k: [{"raw": f"there are {w} planes in a desert .", "tokens": [], "sentid": 10 * k + j} for j, w in enumerate(["one", "two", "three"])]  # noqa: E731
    karpathy = {"dataset": "ucm", "images": [
        {"filename": f"{k}.png", "imgid": k, "split": "train" if k < 4 else "test", "sentences": sentences(k), "sentids": [10 * k + j for j in range(3)]}
        for k in range(1, 5)]}
    (tmp_path / "dataset.json").write_text(json.dumps(karpathy))
    coco = {"images": [{"id": k, "file_name": f"{k}.png"} for k in range(1, 4)],
            "annotations": [{"id": 10 * k + j, "image_id": k, "caption": s["raw"]} for k in range(1, 4) for j, s in enumerate(sentences(k))]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""
model: {{arch: smallcap}}
datasets:
  ucm_caption:
    vis_processor: {{eval: {{name: rs_image_eval, image_size: 64}}}}
    build_info: {{annotation: {tmp_path / 'dataset.json'}, images: {tmp_path / 'images'}}}
  coco_caption_format:
    vis_processor: {{eval: {{name: rs_image_eval, image_size: 64}}}}
    build_info:
      splits: {{train: {{annotation: {tmp_path / 'coco.json'}, images: {tmp_path / 'images'}}}, val: null, test: null}}
run: {{task: captioning}}
""")
    out = tmp_path / "out"
    counts = curate(cfg, scorer_dir, out)["counts"]
    assert counts["ucm_caption"]["train"]["pairs"] == 9 and counts["ucm_caption"]["train"]["kept_pairs"] == 6
    assert counts["coco_caption_format"]["train"]["kept_pairs"] == 6
    rows = [json.loads(l) for l in (out / "scores.jsonl").read_text().splitlines()]
    for name in ("ucm_caption", "coco_caption_format"):
        kept = {}
        for r in rows:
            if r["dataset"] == name and r["kept"]:
                kept.setdefault(r["image_id"], []).append(r["caption"])
        curated = build(out / "curated.yaml", name)
        assert curated["train"].references() == kept, name
    written = json.loads((out / "ucm_caption_dataset.json").read_text())
    assert written["dataset"] == "ucm" and any(im["split"] == "test" and len(im["sentences"]) == 3 for im in written["images"])
    for im in written["images"]:
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]


def test_unsupported_format_and_bad_scorer(tmp_path):
    from rslavis.datasets.builders.caption_builders import RSICapCaptionBuilder

    with pytest.raises(ConfigError, match="curation writes the Karpathy"):
        writer_for(RSICapCaptionBuilder({}, "rsicap_caption"))
    cfg = tmp_path / "p.yaml"
    cfg.write_text("model: {arch: smallcap}\ndatasets: {rs_synthetic: {build_info: {sizes: {train: 2}}}}\nrun: {task: captioning}\n")
    res = run_python(["-m", "rslavis.curate", "--cfg-path", str(cfg), "--scorer", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "rslavis: error: scorer" in res.stderr and len(res.stderr.strip().splitlines()) == 1
