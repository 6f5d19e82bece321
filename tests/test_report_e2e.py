"""A tiny real training run writes its report at the end; the page renders in Chromium."""

import json
import re

import pytest

from tests.test_report import assert_self_contained
from tests.test_report_browser import chromium_path, outside_requests, render
from tests.test_train_e2e import TINY
from tests.conftest import run_python


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_e2e")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY.format(cache=tmp / "cache", out=tmp / "out", train=12, epochs=2))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), "--options", "run.job_id=r", "run.val_freq=1"], env={"RSLAVIS_REPORT": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "out" / "r", out


def test_training_writes_the_report(trained):
    run_dir, out = trained
    page = run_dir / "report.html"
    assert page.is_file(), out.stderr[-2000:]
    assert "report written to" in out.stderr
    text = page.read_text()
    assert_self_contained(text)
    assert text.count('class="card"') == 8  # every test image (8 < the cap)
    assert text.count("data:image/jpeg;base64,") == 8
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    cider = re.search(r"<td>CIDEr</td><td class=\"num\">([0-9.]+)</td><td class=\"num\">([0-9.]+)</td>", text)
    assert cider and float(cider.group(2)) == pytest.approx(metrics["CIDEr"], abs=1e-4)  # columns: val, test
    for key in ("SDE", "hallucination_rate", "count_abs_error"):
        assert f"<td>{key}</td>" in text
    assert "Training by step" in text and "Evaluation metrics by epoch" in text
    assert len(page.read_bytes()) < 1_500_000


def test_training_report_in_chromium(trained, tmp_path):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    run_dir, _ = trained
    check, urls, failed, errors = render(run_dir / "report.html", tmp_path / "trained.png")
    assert check["n_cards"] == 8 and all(i["ok"] for i in check["imgs"]) and len(check["imgs"]) == 10
    assert not outside_requests(urls, run_dir), outside_requests(urls, run_dir)
    assert not failed and not errors, (failed, errors)
