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
