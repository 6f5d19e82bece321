"""VRSBench and RSVQA from fixture files written here in the published field layout; missing paths."""

import json

import numpy as np
import pytest
from PIL import Image

from rslavis.common.errors import ConfigError, DataError
from tests.test_datasets_real import build


def _png(path, color=(10, 120, 200), size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(path)


@pytest.fixture
def vrsbench(tmp_path):
    root = tmp_path / "VRSBench"
    train_dir = root / "Annotations_train"
    train_dir.mkdir(parents=True)
    for k, stem in enumerate(["P0001_0001", "P0002_0003"]):
        record = {
            "image": f"{stem}.png",
            "caption": f"The image shows {k + 1} large vehicles parked near a road.",
            "objects": [{"obj_id": 0, "obj_cls": "large-vehicle", "obj_coord": [0.1, 0.2, 0.3, 0.4], "is_unique": True}],
            "qa_pairs": [
                {"question": "How many large vehicles are there?", "answer": str(k + 1), "type": "object quantity"},
                {"question": "Is there a road?", "answer": "Yes", "type": "object existence"},
            ],
        }
        (train_dir / f"{stem}.json").write_text(json.dumps(record))
        _png(root / "Images_train" / f"{stem}.png")
    cap_eval = [
        {"image_id": "P0003_0002.png", "ground_truth": "A group of yellow buses lined up on the left.", "question": "Describe the image in detail", "question_id": 0, "type": "caption", "dataset": "DOTA"},
        {"image_id": "P0007_0001.png", "ground_truth": "A parking area with vehicles.", "question": "Describe the image in detail", "question_id": 1, "type": "caption", "dataset": "DIOR"},
    ]
    vqa_eval = [
        {"image_id": "P0003_0002.png", "ground_truth": "Yellow", "question": "What color are the buses?", "question_id": 10, "type": "object color", "dataset": "DOTA"},
        {"image_id": "P0003_0002.png", "ground_truth": "3", "question": "How many buses are there?", "question_id": 11, "type": "object quantity", "dataset": "DOTA"},
        {"image_id": "P0007_0001.png", "ground_truth": "Yes", "question": "Is there a vehicle?", "question_id": 12, "type": "object existence", "dataset": "DIOR"},
    ]
    (root / "VRSBench_EVAL_Cap.json").write_text(json.dumps(cap_eval))
    (root / "VRSBench_EVAL_vqa.json").write_text(json.dumps(vqa_eval))
    for stem in ("P0003_0002", "P0007_0001"):
        _png(root / "Images_val" / f"{stem}.png", (200, 200, 40))
    return root


def _vrs_info(root, test_file):
    return {
        "splits": {
            "train": {"annotation": str(root / "Annotations_train"), "images": str(root / "Images_train")},
            "test": {"annotation": str(root / test_file), "images": str(root / "Images_val")},
        }
    }


def test_vrsbench_caption(vrsbench):
    sets = build("vrsbench_caption", _vrs_info(vrsbench, "VRSBench_EVAL_Cap.json"))
    train, test = sets["train"], sets["test"]
    assert len(train) == 2 and len(test) == 2
    s = train[0]
    assert set(s) == {"image", "image_id", "text_input", "text_output", "references"}
    assert s["image_id"] == "P0001_0001" and s["text_output"].startswith("The image shows 1 large")
    assert s["text_input"] == "Describe the image in detail."
    e = test[0]
    assert e["image_id"] == "P0003_0002" and e["references"] == ["A group of yellow buses lined up on the left."]
    assert e["image"].shape == (3, 224, 224)


def test_vrsbench_vqa_keys_and_types(vrsbench):
    sets = build("vrsbench_vqa", _vrs_info(vrsbench, "VRSBench_EVAL_vqa.json"))
    train, test = sets["train"], sets["test"]
    assert len(train) == 4 and len(test) == 3
    s = train[0]
    assert set(s) == {"image", "image_id", "question_id", "question", "text_input", "text_output", "question_type"}
    assert s["question_id"] == "P0001_0001_0" and s["text_output"] == "1"
    assert s["text_input"] == "Question: How many large vehicles are there? Answer:"
    e = test[1]
    assert set(e) == {"image", "image_id", "question_id", "question", "text_input", "answers", "question_type"}
    assert e["question_id"] == 11 and e["answers"] == ["3"] and e["question_type"] == "object quantity"
    assert test.question_types() == {10: "object color", 11: "object quantity", 12: "object existence"}
    batch = test.collater([test[0], None, test[2]])
    assert batch["image"].shape == (2, 3, 224, 224) and batch["question_id"] == [10, 12]


def _rsvqa_files(root, prefix, split, n_images=2):
    images, questions, answers = [], [], []
    qid = 0
    for img in range(n_images):
        q_ids = []
        for text, ans, qtype in (("Is there a road?", "yes", "presence"), ("How many buildings are there?", str(3 + img), "count"), ("Is it a rural or an urban area?", "urban", "rural_urban")):
            questions.append({"id": qid, "img_id": img, "type": qtype, "question": text, "answers_ids": [qid], "active": not (img == 1 and qtype == "count"), "date_added": 0, "people_id": 0})
            answers.append({"id": qid, "question_id": qid, "answer": ans, "active": True, "date_added": 0, "people_id": 0})
            q_ids.append(qid)
            qid += 1
        images.append({"id": img, "questions_ids": q_ids, "active": True, "people_id": 0, "date_added": 0, "original_name": f"{img}.tif"})
    images.append({"id": n_images, "questions_ids": [], "active": False})
    for kind, data in (("images", images), ("questions", questions), ("answers", answers)):
        (root / f"{prefix}_{split}_{kind}.json").write_text(json.dumps({kind: data}))


@pytest.mark.parametrize("name,prefix,folder,splits", [("rsvqa_lr", "LR_split", "Images_LR", ["train", "val", "test"]), ("rsvqa_hr", "USGS_split", "Data", ["train", "test", "test_phili"])])
def test_rsvqa(tmp_path, name, prefix, folder, splits):
    root = tmp_path / name
    (root / folder).mkdir(parents=True)
    for split in splits:
        _rsvqa_files(root, prefix, split)
    for img in range(2):
        Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(root / folder / f"{img}.tif")
    sets = build(name, {"annotation_dir": str(root), "images": str(root / folder), "splits": splits})
    assert sorted(sets) == sorted(splits)
    train = sets["train"]
    assert len(train) == 5  # one inactive question dropped
    s = train[1]
    assert s["question"] == "How many buildings are there?" and s["text_output"] == "3" and s["question_type"] == "count"
    assert s["image_id"] == 0 and s["image"].shape[0] == 3
    test = sets["test"]
    assert test[0]["answers"] == ["yes"] and test.answers()[2] == ["urban"]


def test_rsvqa_missing_split_file_names_the_file(tmp_path):
    (tmp_path / "Images_LR").mkdir()
    _rsvqa_files(tmp_path, "LR_split", "train")
    with pytest.raises(DataError) as info:
        build("rsvqa_lr", {"annotation_dir": str(tmp_path), "images": str(tmp_path / "Images_LR"), "splits": ["train", "val"]})
    msg = str(info.value)
    assert "LR_split_val_images.json" in msg and "datasets.rsvqa_lr.build_info.annotation_dir" in msg
    assert "rsvqa.sylvainlobry.com" in msg


def test_missing_annotation_path_gives_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "dataset.json"
    with pytest.raises(DataError) as info:
        build("ucm_caption", {"annotation": str(missing), "images": str(tmp_path)})
    msg = str(info.value)
    assert "datasets.ucm_caption.build_info.annotation" in msg  # the config key
    assert str(missing) in msg  # the path tried
    assert "Expected layout" in msg and "dataset.json" in msg  # the layout
    assert "github.com/201528014227051/RSICD_optimal" in msg  # where it is published
    assert "\n" not in msg


def test_default_paths_point_to_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/rsicd/dataset_rsicd.json \(resolved from"):
        build("rsicd_caption", {})


def test_missing_image_folder_and_unset_key(tmp_path):
    ann = tmp_path / "dataset.json"
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"build_info.images: folder not found"):
        build("sydney_caption", {"annotation": str(ann), "images": str(tmp_path / "imgs")})
    with pytest.raises(ConfigError, match=r"datasets.sydney_caption.build_info.images is not set"):
        build("sydney_caption", {"annotation": str(ann), "images": None})


def test_malformed_annotation_names_file_and_layout(tmp_path):
    ann = tmp_path / "dataset.json"
    ann.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match="no 'images' list; expected .*Karpathy"):
        build("ucm_caption", {"annotation": str(ann), "images": str(tmp_path)})


def test_split_set_to_null_is_left_out(vrsbench):
    info = _vrs_info(vrsbench, "VRSBench_EVAL_Cap.json")
    info["splits"]["train"] = None
    assert list(build("vrsbench_caption", info)) == ["test"]
