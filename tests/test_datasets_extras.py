"""Count dictionaries (cache, detector merge), confounded synthetic split, feature cache, question processor, CLI."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from tests.test_datasets_real import build

NUM = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4}


@pytest.fixture
def stub_parser():
    """A parser registered under a test name: ``<number> <noun>`` pairs, plus bare plurals as None."""
    base = pytest.importorskip("rslavis.text.base_parser").BaseCaptionParser

    class StubParser(base):
        calls = 0

        def __init__(self, **kwargs):
            pass

        def parse(self, caption):
            StubParser.calls += 1
            out = {}
            words = re.findall(r"[a-z]+", caption.lower())
            for i, w in enumerate(words):
                if w in ("plane", "planes", "tank", "tanks"):
                    noun = w.rstrip("s")
                    out[noun] = NUM.get(words[i - 1]) if i else None
            return out

        def parse_batch(self, captions):
            return [self.parse(c) for c in captions]

    name = "stub_counts_test"
    registry.register_parser(name, StubParser, force=True)
    yield StubParser
    registry._classes["parser"].pop(name, None)


def _karpathy(path, captions_by_image):
    images = [
        {"filename": f"{i}.png", "imgid": i, "split": "train" if i else "test", "sentences": [{"raw": c, "tokens": c.split()} for c in caps]}
        for i, caps in enumerate(captions_by_image)
    ]
    path.write_text(json.dumps({"images": images, "dataset": "x"}))


def test_count_dicts_from_references_cached_by_checksum(tmp_path, stub_parser):
    ann = tmp_path / "dataset.json"
    _karpathy(ann, [["two planes on an apron", "two planes parked", "three planes"], ["a tank and planes", "one tank"]])
    cfg = {"enabled": True, "parser": "stub_counts_test", "cache_dir": str(tmp_path / "cc"), "fusion": "median"}
    info = {"annotation": str(ann), "images": str(tmp_path)}
    sets = build("ucm_caption", info, count_dict=cfg)
    assert sets["test"].records[0]["count_dict"] == {"plane": 2}
    assert sets["train"].records[0]["count_dict"] == {"tank": 1, "plane": None}
    cache_files = list((tmp_path / "cc").glob("ucm_caption_*.json"))
    assert len(cache_files) == 1
    calls = stub_parser.calls
    build("ucm_caption", info, count_dict=cfg)
    assert stub_parser.calls == calls  # served from the cache
    _karpathy(ann, [["four planes"], ["one tank"]])  # a changed annotation file invalidates it
    sets = build("ucm_caption", info, count_dict=cfg)
    assert stub_parser.calls > calls and sets["test"].records[0]["count_dict"] == {"plane": 4}
    assert len(list((tmp_path / "cc").glob("ucm_caption_*.json"))) == 2


def test_detector_counts_merged_references_first(tmp_path, stub_parser):
    ann = tmp_path / "dataset.json"
    _karpathy(ann, [["two planes"], ["some planes here", "one tank"]])
    det = tmp_path / "det.json"
    det.write_text(json.dumps({"0": {"plane": 5, "car": 3}, "1.png": {"plane": 7, "tank": 4, "ship": 1}}))
    cfg = {"enabled": True, "parser": "stub_counts_test", "cache_dir": str(tmp_path / "cc"), "detector_counts": str(det)}
    sets = build("ucm_caption", {"annotation": str(ann), "images": str(tmp_path)}, count_dict=cfg)
    # references win where they state a count; the detector fills the rest
    test_cd = sets["test"].records[0]["count_dict"]
    assert test_cd["plane"] == 2 and test_cd["car"] == 3
    train_cd = sets["train"].records[0]["count_dict"]
    assert train_cd["tank"] == 1 and train_cd["ship"] == 1 and train_cd["plane"] == 7


def test_count_dict_needs_a_source(tmp_path):
    ann = tmp_path / "dataset.json"
    _karpathy(ann, [["two planes"]])
    with pytest.raises(ConfigError, match="count_dict is enabled but sets neither"):
        build("ucm_caption", {"annotation": str(ann), "images": str(tmp_path)}, count_dict={"enabled": True})


# ---------------------------------------------------------------------- confounded split
def test_default_synthetic_scenes_are_what_the_readme_describes():
    """The default YAML gives 1,500 / 100 / 200 scenes of 64x64; scenes are deterministic in
    their seed, splits differ, and every caption states each object's true count."""
    from pathlib import Path

    from omegaconf import OmegaConf

    import rslavis
    from rslavis.datasets.builders.synthetic import SPLIT_SEEDS, generation_settings
    from rslavis.datasets.synthetic.scenes import OBJECTS, generate_split
    from rslavis.text import build_parser

    yaml = Path(rslavis.__file__).parent / "configs" / "datasets" / "rs_synthetic" / "defaults.yaml"
    s = generation_settings(OmegaConf.load(yaml).datasets.rs_synthetic.build_info)
    assert s["sizes"] == {"train": 1500, "val": 100, "test": 200} and s["image_size"] == 64
    args = (s["image_size"], s["captions_per_image"], s["max_kinds"], s["max_count"])
    train = generate_split(25, s["seed"] * 1000 + SPLIT_SEEDS["train"], *args)
    again = generate_split(25, s["seed"] * 1000 + SPLIT_SEEDS["train"], *args)
    val = generate_split(25, s["seed"] * 1000 + SPLIT_SEEDS["val"], *args)
    parser = build_parser("rules")
    table = parser.table
    assert not any((a[0] == b[0]).all() for a, b in zip(train, val))
    for (img, meta), (img2, meta2) in zip(train, again):
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and (img == img2).all() and meta == meta2
        counts = meta["count_dict"]
        assert 1 <= len(counts) <= s["max_kinds"] and all(1 <= c <= s["max_count"] for c in counts.values())
        assert len(meta["captions"]) == s["captions_per_image"]
        for cap in meta["captions"]:
            parsed = parser.parse(cap)
            for obj, n in counts.items():
                names = {table.canonical(v) for pair in OBJECTS[obj] for v in pair}  # "houses" for buildings
                said = [v for h, v in parsed.items() if h in names]
                assert said == [n], (cap, counts, parsed)


def test_confounded_split_properties(tmp_path):
    from omegaconf import OmegaConf

    from rslavis.datasets.builders.base_builder import PACKAGE_ROOT

    base = OmegaConf.load(PACKAGE_ROOT / "configs/datasets/rs_synthetic/confounded.yaml").datasets.rs_synthetic
    cfg = OmegaConf.merge(base, {"build_info": {"cache_dir": str(tmp_path), "image_size": 32, "sizes": {"train": 300, "val": 20, "test": 40}, "confounded": {"cooccurrence": 0.9, "context_share": 0.4}}})
    sets = registry.get_builder_class("rs_synthetic")(cfg, "rs_synthetic").build_datasets()
    train, test = sets["train"].records, sets["test"].records
    ctx = [r for r in train if r["in_context"]]
    assert 0.3 < len(ctx) / len(train) < 0.5
    share = sum(r["has_object"] for r in ctx) / len(ctx)
    assert 0.8 < share <= 1.0
    assert all(r["background"] == "concrete" and "plane" not in r["count_dict"] for r in test)
    assert all(not r["has_object"] for r in test) and len(test) == 40
    assert all(("plane" in r["count_dict"]) == r["has_object"] for r in train)
    assert sets["test"][0]["image"].shape == (3, 64, 64)  # the eval processor resizes to 64


def test_confounded_rejects_impossible_settings():
    from rslavis.datasets.builders.synthetic import confounded_settings

    with pytest.raises(ConfigError, match="cannot appear on 'water'"):
        confounded_settings({"confounded": {"context": "water", "object": "plane"}})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        confounded_settings({"confounded": {"cooccurrence": 1.5}})


# ---------------------------------------------------------------------- feature cache
def test_feature_cache_builds_once_and_invalidates(tmp_path):
    from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset
    from rslavis.datasets.feature_cache import FeatureCache, attach_feature_cache

    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(p)
        paths.append(str(p))
    (tmp_path / "bad.png").write_bytes(b"broken")
    calls = []

    def encode(images):
        calls.append(len(images))
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])

    enc = {"name": "mean-colour", "size": 8}
    cache = FeatureCache(tmp_path / "fc", enc, paths)
    feats = cache.get(encode, batch_size=2)
    assert isinstance(feats, np.memmap) and feats.shape == (5, 3) and calls == [2, 2, 1]
    assert feats[3, 0] == pytest.approx(120)
    assert FeatureCache(tmp_path / "fc", enc, paths).get(encode).shape == (5, 3) and calls == [2, 2, 1]
    # a changed encoder config or image list is a different cache
    assert not FeatureCache(tmp_path / "fc", {**enc, "size": 16}, paths).exists()
    assert not FeatureCache(tmp_path / "fc", enc, paths[:4]).exists()
    # attached to a dataset: samples carry image_features; an unreadable image is still skipped
    records = [{"image_id": i, "image": p, "captions": ["x"]} for i, p in enumerate(paths + [str(tmp_path / "bad.png")])]
    ds = CaptionEvalDataset(records)
    attach_feature_cache(ds, tmp_path / "fc", enc, encode)
    assert ds[2]["image_features"].tolist() == pytest.approx([80, 80, 80]) and "image" not in ds[2]
    assert ds[5] is None and ds.skipped_images == 1


def test_builder_attaches_existing_cache(tmp_path):
    from rslavis.datasets.feature_cache import attach_feature_cache

    ann = tmp_path / "dataset.json"
    _karpathy(ann, [["two planes"], ["one tank"]])
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(tmp_path / f"{i}.png")
    info = {"annotation": str(ann), "images": str(tmp_path)}
    fc = {"enabled": True, "cache_dir": str(tmp_path / "fc"), "encoder": {"name": "m"}}
    sets = build("ucm_caption", info, feature_cache=fc)
    assert "image" in sets["test"][0]  # nothing cached yet
    attach_feature_cache(sets["test"], fc["cache_dir"], fc["encoder"], lambda ims: np.ones((len(ims), 4), np.float32))
    sets = build("ucm_caption", info, feature_cache=fc)
    assert sets["test"][0]["image_features"].shape == (4,)


# ---------------------------------------------------------------------- processors, CLI
def test_question_processor_templates():
    proc_cls = registry.get_processor_class("rs_question")
    assert proc_cls.from_config({"name": "rs_question"})("  Is there  a road? ") == "Question: Is there a road? Answer:"
    single = proc_cls(template="single_word")("How many planes?")
    assert single == "How many planes? Answer the question using a single word or phrase."
    assert proc_cls(prompt="<image> {question}", lowercase=True)("Is It?") == "<image> is it?"
    with pytest.raises(ConfigError, match="template 'nope' is unknown"):
        proc_cls(template="nope")
    with pytest.raises(ConfigError, match="placeholder"):
        proc_cls(prompt="no placeholder")


def test_summary_cli(tmp_path, capsys):
    from rslavis.datasets.summary import main

    ann = tmp_path / "dataset.json"
    _karpathy(ann, [["two planes on an apron ."], ["a tank", "one tank near planes"]])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0.png")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"datasets:\n  ucm_caption:\n    build_info:\n      annotation: {ann}\n      images: {tmp_path}\nrun:\n  task: captioning\n")
    assert main(["--cfg-path", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "ucm_caption" in out
    assert "train: 1 images, 2 captions, vocabulary 5, length min/median/max 2/3.0/4, missing images 1" in out
    assert "test: 1 images, 1 captions" in out and "missing images 0" in out
    assert main(["--cfg-path", str(cfg), "--options", f"datasets.ucm_caption.build_info.annotation={tmp_path}/none.json"]) == 2
    assert "build_info.annotation: file not found" in capsys.readouterr().err


def test_summary_lists_objects_from_count_dicts(tmp_path, capsys, stub_parser):
    from rslavis.datasets.summary import main

    ann = tmp_path / "dataset.json"
    _karpathy(ann, [["two planes"], ["one tank", "a tank"]])
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"datasets:\n  ucm_caption:\n    build_info:\n      annotation: {ann}\n      images: {tmp_path}\n"
        f"    count_dict:\n      cache_dir: {tmp_path}/cc\n"
    )
    assert main(["--cfg-path", str(cfg), "--parser", "stub_counts_test", "--no-image-check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ucm_caption"]["train"]["objects"] == [{"object": "tank", "images": 1, "mean_count": 1.0}]
    assert "missing_images" not in report["ucm_caption"]["train"]


def test_module_entry_point_runs(tmp_path):
    from tests.conftest import run_python

    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"datasets:\n  ucm_caption:\n    build_info:\n      annotation: {tmp_path}/missing.json\n      images: {tmp_path}\n")
    proc = run_python(["-m", "rslavis.datasets", "--cfg-path", str(cfg)], timeout=120)
    assert proc.returncode == 2 and "datasets.ucm_caption.build_info.annotation" in proc.stderr
