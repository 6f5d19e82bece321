"""Caption metrics wrapper and object-level metrics."""

import json

import pytest

from rslavis.common.errors import DataError
from rslavis.metrics.coco_caption import java_available
from rslavis.metrics.references import load_references

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed")


def test_object_metrics_definitions():
    pytest.importorskip("spacy", reason="spaCy is not installed")
    from rslavis.metrics.object_metrics import KEYS, object_metrics

    refs = {1: ["There is a forest and a river.", "There is a forest, a river and a road."],
            2: ["There are five planes and one building."]}
    preds = {1: "There is a forest and a car.", 2: "There are four planes and three buildings."}
    m = object_metrics(refs, preds)
    assert set(KEYS) <= set(m)
    assert m["SDE"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["oversight_rate"] == pytest.approx(2 / 5)  # river, road missed of 5 GT objects
    assert m["hallucination_rate"] == pytest.approx(1 / 4)  # car of 4 mentioned objects
    # compared counts: forest 1/1, plane 4/5, building 3/1
    assert m["count_abs_error"] == pytest.approx(1.0)
    assert m["count_signed_error"] == pytest.approx(1 / 3)
    assert m["count_exact"] == pytest.approx(1 / 3)
    empty = object_metrics({1: ["..."]}, {1: ""})
    assert all(empty[k] is None for k in KEYS)  # nothing to average: null, not a perfect 0.0


def test_object_metrics_are_null_when_nothing_is_counted():
    from rslavis.evaluate import format_table
    from rslavis.metrics.object_metrics import object_metrics
    from rslavis.report.html import fmt

    # objects on both sides, but no exact count on both sides of any object
    m = object_metrics({1: ["There are many trees.", "Some trees."]}, {1: "Lots of trees."}, parser="rules")
    assert m["SDE"] == 1.0 and m["hallucination_rate"] == 0.0 and m["n_counted"] == 0
    assert m["count_abs_error"] is None and m["count_signed_error"] is None and m["count_exact"] is None
    table = format_table({"count_abs_error": m["count_abs_error"], "SDE": m["SDE"]})
    assert "count_abs_error  -" in table and "1.0000" in table
    assert fmt(None) == "-" and fmt(0.0) == "0.0000"
    import json

    assert json.loads(json.dumps(m))["count_exact"] is None


def test_reference_loaders(shared_data, tmp_path):
    k = load_references(shared_data / "ucm_captions" / "dataset.json", split="test")
    c = load_references(shared_data / "ucm_captions" / "ucm_test_coco_format.json")
    assert len(k) == len(c) == 210 and set(k) == set(c)
    assert all(len(v) == 5 for v in k.values())
    with pytest.raises(DataError, match="splits in the file"):
        load_references(shared_data / "ucm_captions" / "dataset.json", split="testing")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(DataError, match="not a recognised caption file"):
        load_references(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_references(tmp_path / "missing.json")


@pytest.mark.skipif(not java_available(), reason="Java is needed for the PTB tokenizer")
def test_bleu_and_cider_equal_pycocoevalcap_on_ucm(shared_data):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from rslavis.metrics.coco_caption import caption_metrics, tokenize
    from rslavis.rewards.cider import CiderD

    refs_all = load_references(shared_data / "ucm_captions" / "dataset.json", split="test")
    preds = {i: r[0] for i, r in refs_all.items()}
    refs = {i: r[1:] for i, r in refs_all.items()}
    m = caption_metrics(refs, preds, meteor=False, spice=False)
    gts, res = tokenize(refs), tokenize({i: [c] for i, c in preds.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    cider, per_image = Cider().compute_score(gts, res)
    for n in range(4):
        assert m[f"Bleu_{n + 1}"] == pytest.approx(bleu[n], abs=1e-12)
    assert m["CIDEr"] == pytest.approx(cider, abs=1e-12)
    # the reward gives the same per-image CIDEr-D on the PTB-tokenized text
    ids = list(gts)
    ours = CiderD(corpus=[gts[i] for i in ids], pretokenized=True).score([res[i][0] for i in ids], [gts[i] for i in ids])
    assert abs(ours - per_image).max() < 1e-9
