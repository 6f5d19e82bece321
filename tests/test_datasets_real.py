"""Builders on the real published annotation files in ../shared/data (skipped when absent)."""

import logging

import pytest
import torch
from omegaconf import OmegaConf

from rslavis.common.registry import registry
from rslavis.datasets.builders.base_builder import PACKAGE_ROOT


def dataset_cfg(name, build_info, **extra):
    """The dataset's default YAML with ``build_info`` (and other keys) overridden, as config.py merges it."""
    base = OmegaConf.load(PACKAGE_ROOT / "configs" / "datasets" / name / "defaults.yaml").datasets[name]
    return OmegaConf.merge(base, {"build_info": build_info, **extra})


def build(name, build_info, **extra):
    return registry.get_builder_class(name)(dataset_cfg(name, build_info, **extra), name).build_datasets()


KARPATHY = {
    "ucm_caption": ("ucm_captions/dataset.json", "ucm_captions/images", 2100, 10500, {"train": 1680, "val": 210, "test": 210}),
    "rsicd_caption": ("rsicd/DERIVED_dataset_rsicd_karpathy.json", "rsicd/images", 10921, 54605, {"train": 8734, "val": 1093, "test": 1094}),
    "sydney_caption": ("sydney_captions/dataset_sydney_modified.json", "sydney_captions/images", 613, 3065, {"train": 497, "val": 58, "test": 58}),
}


@pytest.fixture(scope="module")
def karpathy_sets(shared_data):
    out = {}
    for name, (ann, images, *_rest) in KARPATHY.items():
        out[name] = build(name, {"annotation": str(shared_data / ann), "images": str(shared_data / images)})
    return out


@pytest.mark.parametrize("name", list(KARPATHY))
def test_karpathy_counts_and_splits(karpathy_sets, name):
    _, _, n_images, n_captions, splits = KARPATHY[name]
    sets = karpathy_sets[name]
    assert {s: len(ds.records) for s, ds in sets.items()} == splits
    assert sum(len(ds.records) for ds in sets.values()) == n_images
    assert sum(len(c) for ds in sets.values() for c in ds.references().values()) == n_captions
    # training items: one per (image, caption); evaluation items: one per image
    assert len(sets["train"]) == sum(len(r["captions"]) for r in sets["train"].records)
    assert len(sets["test"]) == splits["test"]
    ids = [r["image_id"] for ds in sets.values() for r in ds.records]
    assert len(set(ids)) == n_images  # stable, unique ids (Karpathy imgid)


def test_ucm_ids_and_raw_captions(karpathy_sets):
    train = karpathy_sets["ucm_caption"]["train"]
    first = train.records[0]
    assert first["image_id"] == 0 and first["image"].endswith("images/1.tif")
    # the raw text is used, not the tokens (the tokens of this sentence say "formland")
    assert first["captions"][0] == "There is a piece of farmland ."
    # ids match the COCO-format test ground truth published with UCM (81.tif has id 80)
    test_refs = karpathy_sets["ucm_caption"]["test"].references()
    assert 80 in test_refs


def test_real_images_through_train_and_eval_processors(karpathy_sets, shared_data):
    for name, n_real in (("ucm_caption", 9), ("sydney_caption", 9), ("rsicd_caption", 12)):
        train = karpathy_sets[name]["train"]
        present = [i for i, r in enumerate(train.records) if (shared_data / KARPATHY[name][1] / r["filename"]).is_file()]
        assert len(present) == n_real
        i = present[0]
        item = train[train.index.index((i, 0))]
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
        assert item["text_output"] == item["text_output"].lower()
        # the same real image through the eval transform is deterministic
        from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset

        ev = CaptionEvalDataset([train.records[i]], karpathy_sets[name]["test"].vis_processor)
        a, b = ev[0]["image"], ev[0]["image"]
        assert a.shape == (3, 224, 224) and torch.equal(a, b)


def test_missing_real_images_are_skipped_and_counted(karpathy_sets, caplog):
    test = karpathy_sets["ucm_caption"]["test"]  # none of the 210 test images is in ../shared/data
    with caplog.at_level(logging.WARNING):
        items = [test[i] for i in range(3)]
    assert items == [None, None, None]
    assert test.skipped_images == 3
    assert "81.tif" in caplog.text
    assert test.collater(items + [None]) == {}


def test_coco_format_builder_and_export_round_trip(shared_data, karpathy_sets, tmp_path):
    sets = build(
        "coco_caption_format",
        {"splits": {"test": {"annotation": str(shared_data / "ucm_captions/ucm_test_coco_format.json"), "images": str(shared_data / "ucm_captions/images")}}},
    )
    test = sets["test"]
    assert len(test) == 210 and sum(len(r["captions"]) for r in test.records) == 1050
    from rslavis.datasets.export import export_coco_gt
    from rslavis.metrics.references import load_references

    ucm_test = karpathy_sets["ucm_caption"]["test"]
    path = export_coco_gt(ucm_test, tmp_path / "gt" / "ucm_test.json")
    assert load_references(path) == ucm_test.references()
    # the export has the same images as the COCO file published for UCM
    assert set(load_references(path)) == set(test.references())


def test_rsicd_has_scene_labels_and_builds_fast(shared_data):
    import time

    t = time.perf_counter()
    sets = build("rsicd_caption", {"annotation": str(shared_data / KARPATHY["rsicd_caption"][0]), "images": str(shared_data / "rsicd/images")})
    elapsed = time.perf_counter() - t
    assert sets["train"].records[0]["label"] == "Airport"
    assert elapsed < 5.0, f"building RSICD took {elapsed:.2f}s"


def test_rsicap_excerpt_parses(shared_data, tmp_path):
    sets = build("rsicap_caption", {"annotation": str(shared_data / "rsgpt/RSICap_captions.EXCERPT_first3.json"), "images": str(tmp_path)})
    train = sets["train"]
    assert len(train.records) == 3 and len(train) == 3
    rec = train.records[0]
    assert rec["image_id"] == "0" and rec["image"].endswith("P0378_0001.png")
    assert rec["prompt"] == "Take a look at this image and describe what you notice."
    assert rec["captions"][0].startswith("This is an aerial image showing a parking lot")
    assert train.all_captions()[0].startswith("This is an aerial")  # rsicap keeps case


def test_rsieval_excerpt_parses(shared_data, tmp_path):
    info = {"annotation": str(shared_data / "rsgpt/RSIEval_annotations.EXCERPT_first3.json"), "images": str(tmp_path)}
    caps = build("rsieval_caption", info)["test"]
    assert len(caps) == 3 and caps.records[0]["image_id"] == "P1384_0054"
    vqa = build("rsieval_vqa", info)["test"]
    assert len(vqa) >= 3
    rec = vqa.records[0]
    assert rec["question_id"] == "P1384_0054_0" and rec["question"] == "Does this image contains trees?"
    assert rec["answers"] == ["Yes."] and rec["question_type"] == "presence"
    types = set(vqa.question_types().values())
    assert {"presence", "quantity"} <= types
