"""The confounded synthetic family (p(object | context) and p(object | elsewhere) by config, unusual-context test
scenes) and the confounded-object metrics (hallucination, oversight)."""

import math

import pytest
from omegaconf import OmegaConf

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.datasets.builders.base_builder import PACKAGE_ROOT
from rslavis.datasets.synthetic.scenes import object_names
from rslavis.metrics.confounding import confounded_object_metrics, names_object


def _sets(tmp_path, **confounded):
    base = OmegaConf.load(PACKAGE_ROOT / "configs/datasets/rs_synthetic/confounded.yaml").datasets.rs_synthetic
    cfg = OmegaConf.merge(base, {"build_info": {"cache_dir": str(tmp_path), "image_size": 32, "sizes": {"train": 400, "val": 10, "test": 200}, "confounded": confounded}})
    return registry.get_builder_class("rs_synthetic")(cfg, "rs_synthetic").build_datasets()


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_confounding_strength_is_set_by_config(tmp_path, p):
    sets = _sets(tmp_path, cooccurrence=p, elsewhere=round(1 - p, 2), context_share=0.4, test_unusual_share=0.5)
    train = sets["train"].records
    ctx = [r for r in train if r["in_context"]]
    other = [r for r in train if not r["in_context"]]
    p_ctx = sum(r["has_object"] for r in ctx) / len(ctx)
    p_other = sum(r["has_object"] for r in other) / len(other)
    assert abs(p_ctx - p) < 0.1 and abs(p_other - (1 - p)) < 0.1
    assert all(("plane" in r["count_dict"]) == r["has_object"] for r in train)
    test = sets["test"].records
    absent = [r for r in test if not r["has_object"]]
    present = [r for r in test if r["has_object"]]
    assert 0.4 < len(present) / len(test) < 0.6
    assert all(r["background"] == "concrete" and "plane" not in r["count_dict"] for r in absent)  # usual context, no object
    assert all(r["background"] != "concrete" and "plane" in r["count_dict"] for r in present)  # object, unusual context
    assert len({r["background"] for r in present}) >= 3


def test_legacy_settings_draw_the_same_scenes(tmp_path):
    a = _sets(tmp_path / "a")
    b = _sets(tmp_path / "b", elsewhere=None, test_unusual_share=0.0)
    assert [r["count_dict"] for r in a["train"].records] == [r["count_dict"] for r in b["train"].records]
    assert all(not r["has_object"] for r in a["test"].records)


def test_family_settings_are_validated():
    from rslavis.datasets.builders.synthetic import confounded_settings

    with pytest.raises(ConfigError, match="elsewhere must be between 0 and 1"):
        confounded_settings({"confounded": {"elsewhere": 1.2}})
    with pytest.raises(ConfigError, match="test_unusual_share must be between 0 and 1"):
        confounded_settings({"confounded": {"test_unusual_share": -0.1}})


def test_names_object_matches_whole_words_and_synonyms():
    names = object_names("plane")
    assert set(names) == {"plane", "planes", "airplane", "airplanes"}
    assert names_object("There are two Airplanes on an apron .", names)
    assert names_object("a plane .", names)
    assert not names_object("a planet and some biplane-like sheds .", names)
    assert not names_object("a paved area with two buildings .", names)


def test_hallucination_and_oversight_rates():
    preds = {"a": "two planes in a paved area", "b": "a paved area with a building", "c": "a desert", "d": "a plane in a desert", "e": "a meadow"}
    has = {"a": False, "b": False, "c": True, "d": True, "e": True}
    m = confounded_object_metrics(preds, has, object_names("plane"))
    assert m == {"hallucination_rate": 0.5, "oversight_rate": 2 / 3, "n_absent": 2, "n_present": 3}
    m = confounded_object_metrics({"a": "a plane"}, {"a": False}, ["plane"])
    assert m["hallucination_rate"] == 1.0 and math.isnan(m["oversight_rate"])  # no image with the object: nan, not 0
    with pytest.raises(KeyError, match="no has_object"):
        confounded_object_metrics({"z": "x"}, {}, ["plane"])
