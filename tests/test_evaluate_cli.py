"""``python -m rslavis.evaluate``: table, JSON, clear errors (exit 2), strict switch."""

import json

import pytest

from conftest import run_python
from rslavis.evaluate import main

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed")


@pytest.fixture
def ucm(shared_data):
    return shared_data / "ucm_captions" / "dataset.json"


def write_preds(tmp_path, ucm, transform=None, name="pred.json"):
    data = json.loads(ucm.read_text())
    preds = [{"image_id": im["imgid"], "caption": im["sentences"][0]["raw"]} for im in data["images"] if im["split"] == "test"]
    if transform:
        preds = transform(preds)
    p = tmp_path / name
    p.write_text(json.dumps(preds))
    return p


def test_cli_end_to_end(tmp_path, ucm):
    pred = write_preds(tmp_path, ucm)
    out = tmp_path / "metrics.json"
    res = run_python(["-m", "rslavis.evaluate", "--gt", str(ucm), "--pred", str(pred), "--out", str(out), "--no-meteor"])
    assert res.returncode == 0, res.stderr
    assert "CIDEr" in res.stdout and "SDE" in res.stdout
    m = json.loads(out.read_text())
    for k in ["Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "SDE", "oversight_rate", "hallucination_rate",
              "count_abs_error", "count_signed_error", "count_exact"]:
        assert isinstance(m[k], float), k
    assert m["n_images"] == 210 and m["Bleu_4"] > 0.9


def test_cli_error_exits_2(tmp_path, ucm):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    res = run_python(["-m", "rslavis.evaluate", "--gt", str(ucm), "--pred", str(empty)])
    assert res.returncode == 2 and "empty" in res.stderr and "Traceback" not in res.stderr


def test_mismatches_warn_or_fail_with_strict(tmp_path, ucm, caplog, capsys):
    pred = write_preds(tmp_path, ucm, lambda p: p[:100] + p[:3] + [{"image_id": 999999, "caption": "a plane"}])
    args = ["--gt", str(ucm), "--pred", str(pred), "--no-meteor", "--no-spice", "--no-objects"]
    assert main(args + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert "3 duplicate" in err and "1 prediction id(s) not in the ground truth" in err and "110 of 210" in err
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert "110 of 210" in caplog.text
    assert "n_images" in capsys.readouterr().out


def test_bad_inputs(tmp_path, ucm, capsys):
    pred = write_preds(tmp_path, ucm)
    assert main(["--gt", str(tmp_path / "nope.json"), "--pred", str(pred)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--gt", str(ucm), "--pred", str(pred), "--split", "bogus"]) == 2
    assert "splits in the file" in capsys.readouterr().err
    none_match = write_preds(tmp_path, ucm, lambda p: [{"image_id": "x" + str(r["image_id"]), "caption": r["caption"]} for r in p], "x.json")
    assert main(["--gt", str(ucm), "--pred", str(none_match), "--no-objects", "--no-meteor"]) == 2
    assert "no prediction id matches" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1}]))
    assert main(["--gt", str(ucm), "--pred", str(bad)]) == 2
    assert "'image_id' and 'caption'" in capsys.readouterr().err
