"""Annotation-only baselines."""

import pytest

from rslavis.baselines import leave_one_out_baseline, most_frequent_caption, most_frequent_caption_baseline
from rslavis.common.errors import RslavisError
from rslavis.metrics.coco_caption import caption_metrics

REFS = {
    1: ["two planes on the apron .", "there are two planes .", "two white planes are parked ."],
    2: ["a ship in the sea .", "one boat on calm water .", "a white ship sails on the sea ."],
}


def test_most_frequent_caption_ties_go_to_first():
    assert most_frequent_caption(["b", "a", "a", "b", "c"]) == "b"
    with pytest.raises(RslavisError):
        most_frequent_caption([])


def test_most_frequent_baseline_scores_one_caption_everywhere():
    out = most_frequent_caption_baseline(["a ship in the sea .", "a ship in the sea .", "x"], REFS, meteor=False, spice=False)
    assert out["caption"] == "a ship in the sea ."
    direct = caption_metrics(REFS, {1: out["caption"], 2: out["caption"]}, meteor=False, spice=False)
    assert out["CIDEr"] == pytest.approx(direct["CIDEr"])


def test_leave_one_out_is_mean_over_held_out_reference():
    out = leave_one_out_baseline(REFS, meteor=False, spice=False)
    per_k = [
        caption_metrics({i: r[:k] + r[k + 1 :] for i, r in REFS.items()}, {i: r[k] for i, r in REFS.items()}, meteor=False, spice=False)["Bleu_1"]
        for k in range(3)
    ]
    assert out["Bleu_1"] == pytest.approx(sum(per_k) / 3)
    with pytest.raises(RslavisError):
        leave_one_out_baseline({1: ["only one"]})


# ---------------------------------------------------------------------- scene-class oracle
from rslavis.baselines import UCM_CLASSES, class_oracle_predictions, scene_classes  # noqa: E402


def _rec(i, caption, **extra):
    return {"image_id": i, "image": f"/x/{i}.tif", "filename": f"{i}.tif", "captions": [caption, "other ."], **extra}


def test_scene_classes_come_from_label_background_rule_or_nowhere():
    assert scene_classes([_rec(1, "a", label="Airport", background="x")])[1] == "field 'label'"
    assert scene_classes([_rec(1, "a", background="water")]) == (["water"], "field 'background'")
    classes, source = scene_classes([_rec(1, "a"), _rec(100, "b"), _rec(101, "c"), _rec(2100, "d")], "ucm_caption")
    assert classes == ["agricultural", "agricultural", "airplane", "tenniscourt"] and source.startswith("rule: UC Merced")
    classes, reason = scene_classes([_rec(1, "a")], "sydney_caption")
    assert classes is None and "no class rule" in reason
    assert scene_classes([_rec(1, "a", scene="s")], class_field="scene") == (["s"], "field 'scene'")
    with pytest.raises(RslavisError, match="--class-field 'scene': 1 of 2"):
        scene_classes([_rec(1, "a", scene="s"), _rec(2, "b")], class_field="scene")


def test_class_oracle_takes_the_next_image_of_the_class_or_the_previous_at_its_end():
    recs = [_rec(0, "a0"), _rec(1, "b1"), _rec(2, "a2"), _rec(3, "a3"), _rec(4, "c4")]
    classes = ["a", "b", "a", "a", "c"]
    train = [_rec(10, "b-train"), _rec(11, "c-train")]
    preds, n_fallback = class_oracle_predictions(recs, classes, train, ["b", "c"])
    assert preds == {0: "a2", 2: "a3", 3: "a2", 1: "b-train", 4: "c-train"}
    assert n_fallback == 2  # b and c have one image in the split: a training image of the class
    with pytest.raises(RslavisError, match="class 'c' has one image"):
        class_oracle_predictions(recs, classes, train[:1], ["b"])


def test_ucm_class_oracle_matches_the_published_check(shared_data):
    """Next imgid in the class (imgid // 100), previous at the class end, first raw sentence,
    against all five raw references with PTB tokenization."""
    from rslavis.baselines import class_oracle_baseline
    from rslavis.metrics.coco_caption import java_available
    from tests.test_datasets_real import build

    if not java_available():
        pytest.skip("the published check uses the PTB tokenizer (Java)")
    sets = build("ucm_caption", {"annotation": str(shared_data / "ucm_captions/dataset.json"), "images": str(shared_data / "ucm_captions/images")})
    test = sets["test"]
    classes, source = scene_classes(test.records, "ucm_caption")
    assert source == "rule: UC Merced file numbering, n.tif is class (n - 1) // 100"
    assert classes == [UCM_CLASSES[r["image_id"] // 100] for r in test.records]
    out = class_oracle_baseline(test.records, classes, test.references(), meteor=False, spice=False)
    assert out["CIDEr"] == pytest.approx(3.9437164, abs=1e-6)
    assert out["Bleu_4"] == pytest.approx(0.8464353, abs=1e-6)
    assert out["n_classes"] == 21 and out["n_fallback"] == 0
    rsicd = build("rsicd_caption", {"annotation": str(shared_data / "rsicd/DERIVED_dataset_rsicd_karpathy.json"), "images": str(shared_data / "rsicd/images")})
    classes, source = scene_classes(rsicd["test"].records, "rsicd_caption")
    assert source == "field 'label'" and len(set(classes)) == 31  # the file's labels: RSICD's 30 scenes plus 'playfields'


def test_cli_prints_and_writes_every_baseline(tmp_path):
    import json

    from tests.conftest import run_python
    from tests.test_knn_caption import write_fixture

    root = write_fixture(tmp_path / "data", {"train": 3, "test": 2})
    project = tmp_path / "p.yaml"
    project.write_text(
        "model: {arch: knn_caption, model_type: tiny}\n"
        f"datasets: {{rsicd_caption: {{build_info: {{annotation: {root}/dataset.json, images: {root}/images}}}}}}\n"
        "run: {task: captioning}\n"
    )
    out_file = tmp_path / "b.json"
    out = run_python(["-m", "rslavis.baselines", "--cfg-path", str(project), "--split", "test", "--no-meteor", "--parser", "rules", "--out", str(out_file)])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "scene_class_oracle" in out.stdout and "3 classes from field 'label'" in out.stdout
    data = json.loads(out_file.read_text())
    assert data["split"] == "test"
    results = data["results"]["rsicd_caption"]
    assert list(results) == ["most_frequent_caption", "scene_class_oracle", "leave_one_out_human"]
    for metrics in results.values():
        assert {"Bleu_4", "ROUGE_L", "CIDEr", "SDE", "hallucination_rate", "count_exact"} <= set(metrics)
    # every image of a class has the same captions: the oracle copies a correct first caption
    assert results["scene_class_oracle"]["Bleu_1"] == pytest.approx(1.0) and results["scene_class_oracle"]["ROUGE_L"] == pytest.approx(1.0)
    bad = run_python(["-m", "rslavis.baselines", "--cfg-path", str(project), "--split", "val"])
    assert bad.returncode == 2 and "needs a 'train' and a 'val' split" in bad.stderr
