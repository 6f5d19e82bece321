"""Fixture data in LAVIS's formats, written per test into a tmp dir (nothing is copied from LAVIS).

``lavis_data(tmp_path)`` writes a folder of small images and annotation files:

* ``annotations/cap_train.json``: ``[{"image", "caption", "image_id"}]``, one record per caption;
* ``annotations/cap_val.json`` / ``cap_test.json``: ``[{"image", "caption": [refs]}]``;
* ``annotations/cap_val_gt.json``: COCO-format references of the val images;
* ``annotations/vqa_{train,val,test}.json``: ``[{"question_id", "question", "answer": [...], "image"}]``.
"""

import json

import pytest

SCENES = [
    ("airport", ["an airport with two planes", "two planes parked near a runway", "a runway and planes"]),
    ("harbor", ["many boats in a harbor", "boats docked at a pier", "a harbor full of boats"]),
    ("forest", ["a dense green forest", "many trees in a forest", "green trees cover the area"]),
    ("farmland", ["square farmland fields", "fields of farmland", "several green fields"]),
]
QUESTIONS = [("how many planes are there?", ["two", "2"]), ("is there water?", ["no"]), ("what covers the area?", ["trees"])]


def _image(path, seed, size=40):
    from PIL import Image

    import numpy as np

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def write_lavis_data(root, n_per_split=(4, 2, 2)):
    root.mkdir(parents=True, exist_ok=True)
    images = root / "images" / "val2014"
    images.mkdir(parents=True)
    ann = root / "annotations"
    ann.mkdir()
    splits = dict(zip(("train", "val", "test"), n_per_split))
    k = 0
    files = {}
    for split, n in splits.items():
        cap, vqa, gt_images, gt_anns = [], [], [], []
        for i in range(n):
            name, refs = SCENES[(k + i) % len(SCENES)]
            number = 1000 + k
            rel = f"val2014/COCO_val2014_{number:012d}.jpg"
            _image(images / rel.split("/")[-1], k)
            if split == "train":
                cap.extend({"image": rel, "caption": c, "image_id": f"coco_{number}"} for c in refs)
            else:
                cap.append({"image": rel, "caption": refs})
                gt_images.append({"id": number})
                gt_anns.extend({"image_id": number, "caption": c.upper(), "id": len(gt_anns)} for c in refs)
            for q, (question, answers) in enumerate(QUESTIONS):
                vqa.append({"question_id": number * 10 + q, "question": question, "answer": answers, "image": rel, "dataset": "rs"})
            k += 1
        files[f"cap_{split}"] = ann / f"cap_{split}.json"
        files[f"vqa_{split}"] = ann / f"vqa_{split}.json"
        files[f"cap_{split}"].write_text(json.dumps(cap))
        files[f"vqa_{split}"].write_text(json.dumps(vqa))
        if gt_anns:
            files[f"cap_{split}_gt"] = ann / f"cap_{split}_gt.json"
            files[f"cap_{split}_gt"].write_text(json.dumps({"images": gt_images, "annotations": gt_anns}))
    files["images"] = root / "images"
    return files


@pytest.fixture
def lavis_data(tmp_path):
    return write_lavis_data(tmp_path / "data")
