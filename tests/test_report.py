"""Report and comparison pages on hand-made run folders (a COCO-format dataset on disk, so
the report rebuilds it from config.yaml as it does for a real run)."""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import run_python

# (references, generated caption); objects chosen so every mark of the gallery occurs
SCENES = [
    (["three planes and two buildings near a runway", "there are three planes beside two buildings"], "three planes and two buildings near a runway"),
    (["two planes and a building", "two planes near a building"], "four planes and a ship"),
    (["a ship in the harbor", "one ship in a harbor"], "a ship in the harbor"),
    (["four cars next to a tennis court", "four cars parked near a tennis court"], "two cars and a bridge"),
    (["some storage tanks and a road", "many storage tanks beside a road"], "some storage tanks"),
    (["a bridge over a river", "one bridge crossing the river"], "a bridge over a river with two ships and a plane"),
    (["many trees around a pond", "a pond surrounded by trees"], "a pond"),
    (["two tennis courts and a building", "a building next to two tennis courts"], "two tennis courts and a building"),
    (["five cars in a parking lot", "a parking lot with five cars"], "three cars in a parking lot"),
    (["a runway and a plane", "one plane on the runway"], "a runway"),
]


class _Attrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "poster", "data", "action") and v is not None:
                self.refs.append((tag, k, v))


def static_refs(text):
    p = _Attrs()
    p.feed(text)
    return p


def assert_self_contained(text):
    """Every resource is inline: src only data:, href only in-page anchors, no url() or @import."""
    p = static_refs(text)
    for tag, k, v in p.refs:
        if k == "href":
            assert v.startswith("#"), (tag, k, v[:80])
        else:
            assert v.startswith("data:"), (tag, k, v[:80])
    assert "link" not in p.tags and "iframe" not in p.tags
    assert "url(" not in text and "@import" not in text
    assert not re.search(r"<script[^>]+src=", text)


def _write_dataset(root):
    from PIL import Image

    images = root / "data" / "images"
    images.mkdir(parents=True)
    anns = {"images": [], "annotations": []}
    for i, (refs, _) in enumerate(SCENES):
        name = f"scene_{i}.png"
        Image.new("RGB", (32, 32), ((40 * i) % 256, 120, 200 - 15 * i)).save(images / name)
        anns["images"].append({"id": i, "file_name": name})
        anns["annotations"] += [{"image_id": i, "caption": c} for c in refs]
    (root / "data" / "test.json").write_text(json.dumps(anns))
    return root / "data" / "test.json", images


def _config(ann, images, run_dir, **run):
    from rslavis.common.config import Config

    cfg = {
        "model": {"arch": "smallcap", "model_type": "tiny"},
        "datasets": {"coco_caption_format": {"build_info": {"splits": {"test": {"annotation": str(ann), "images": str(images)}}}}},
        "run": {"task": "captioning", "seed": 7, "max_epoch": 2, "output_dir": str(run_dir.parent), "job_id": run_dir.name,
                "valid_splits": ["test"], "test_splits": ["test"], "skip_metrics": ["METEOR", "SPICE"], **run},
    }
    return Config.from_dict(cfg).to_yaml()


def _write_run(run_dir, config_text, captions, scst=False, loss_scale=1.0, str_ids=False):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_text)
    records = []
    for step in range(1, 41):
        r = {"epoch": (step - 1) // 20, "step": step, "loss": loss_scale * 4.0 / step ** 0.5, "lr": 1e-3 * min(1, step / 5),
             "seconds": step * 0.1, "skipped_images": 0, "my_scalar": step % 7}
        if scst and step > 20:
            r.update({"scst/reward": 0.5 + step / 100, "scst/reward_greedy": 0.45 + step / 110,
                      "scst/reward/cider": 0.4 + step / 100, "scst/reward/count": -1.0 + step / 80,
                      "scst/entropy": 2.0 - step / 50, "scst/varentropy": 1.0 - step / 90, "scst/caption_len": 8 + step % 3,
                      "scst/advantage_abs": 0.1})
        records.append(r)
    for epoch in (0, 1):
        records.append({"epoch": epoch, "split": "test", "Bleu_1": 0.5 + epoch / 10, "Bleu_4": 0.2 + epoch / 10,
                        "ROUGE_L": 0.4, "CIDEr": 0.3 + epoch / 5, "agg_metrics": 0.5 + epoch * 0.3})
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 1, "ste')  # killed mid-line
    (run_dir / "result").mkdir()
    for epoch in (0, 1):
        preds = [{"image_id": str(i) if str_ids else i, "caption": c if epoch else "a building"} for i, c in enumerate(captions)]
        (run_dir / "result" / f"test_epoch{epoch}.json").write_text(json.dumps(preds))
    (run_dir / "metrics_test.json").write_text(json.dumps(
        {"epoch": 1, "Bleu_1": 0.6, "Bleu_2": 0.5, "Bleu_3": 0.4, "Bleu_4": 0.3, "ROUGE_L": 0.4, "CIDEr": 0.7, "agg_metrics": 1.0}))


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ann, images = _write_dataset(root)
    run_a = root / "runs" / "a"
    run_b = root / "runs" / "b"
    captions = [c for _, c in SCENES]
    _write_run(run_a, _config(ann, images, run_a), captions)
    changed = list(captions)
    changed[2] = "two planes on a runway"          # completely different
    changed[6] = "a pond with trees"               # slightly different
    _write_run(run_b, _config(ann, images, run_b, init_lr=5e-4, task="scst", rewards={"cider": 1.0, "count": 0.5}), changed, scst=True, loss_scale=0.8, str_ids=True)  # ids "0", "1"... as some exporters write them
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    cfg = Config.from_file(run_a / "config.yaml")
    datasets = registry.get_task_class("captioning").setup_task(cfg).build_datasets(cfg)
    return {"dir": run_a, "dir_b": run_b, "root": root, "datasets": datasets, "n_images": len(SCENES)}


# ---------------------------------------------------------------------- analysis
def test_analysis_marks_objects_and_adds_up_to_object_metrics():
    from rslavis.metrics.object_metrics import object_metrics
    from rslavis.report.analysis import analyse_captions

    refs = {i: r for i, (r, _) in enumerate(SCENES)}
    preds = {i: c for i, (_, c) in enumerate(SCENES)}
    a = analyse_captions(refs, preds, parser="rules")
    x = a[1]  # refs: two planes and a building; caption: four planes and a ship
    assert [g for g, _ in x["matched"]] == ["plane"] and x["missed"] == ["building"]
    assert x["hallucinated"] == ["boat"] and x["count_errors"] == [("plane", 4, 2)]
    assert x["sde"] == 0.5
    assert a[0]["sde"] == 1.0 and not a[0]["hallucinated"] and not a[0]["count_errors"]
    # per-image marks reproduce the split's object metrics
    om = object_metrics(refs, preds, parser="rules")
    sdes = [v["sde"] for v in a.values() if v["sde"] is not None]
    assert om["SDE"] == pytest.approx(sum(sdes) / len(sdes))
    n_gt = sum(len(v["gt"]) for v in a.values())
    assert om["oversight_rate"] == pytest.approx(sum(len(v["missed"]) for v in a.values()) / n_gt)
    n_pred = sum(len(v["pred"]) for v in a.values())
    assert om["hallucination_rate"] == pytest.approx(sum(len(v["hallucinated"]) for v in a.values()) / n_pred)
    pairs = [p for v in a.values() for p in v["count_pairs"]]
    assert om["count_abs_error"] == pytest.approx(sum(abs(p - r) for p, r in pairs) / len(pairs))


def test_gallery_sample_is_capped_deterministic_and_keeps_the_worst():
    from rslavis.report.analysis import select_gallery

    analysis = {f"img{i}": {"sde": (i % 50) / 50 if i % 9 else None, "hallucinated": ["x"] * (i % 13)} for i in range(500)}
    ids, reasons = select_gallery(analysis, cap=48)
    assert len(ids) == len(set(ids)) == 48
    assert (ids, reasons) == select_gallery(dict(reversed(list(analysis.items()))), cap=48)
    worst = sorted(v["sde"] for v in analysis.values() if v["sde"] is not None)[:12]
    assert sorted(analysis[i]["sde"] for i in ids if reasons[i] == "lowest SDE") == worst
    assert sum(1 for i in ids if reasons[i] == "most hallucinations") == 12
    assert all(len(analysis[i]["hallucinated"]) >= 11 for i in ids if reasons[i] == "most hallucinations")
    small = {k: analysis[k] for k in list(analysis)[:5]}
    assert sorted(select_gallery(small, cap=48)[0]) == sorted(small)


def test_vqa_accuracy_by_question_type():
    from rslavis.report.analysis import vqa_accuracy_by_type

    results = [{"question_id": 1, "answer": "Two."}, {"question_id": 2, "answer": "yes"}, {"question_id": 3, "answer": "the river"},
               {"question_id": 4, "answer": "no"}, {"question_id": 99, "answer": "x"}]
    answers = {1: ["2"], 2: ["no"], 3: ["River"], 4: ["no", "nope"]}
    types = {1: "count", 2: "presence", 3: "object", 4: "presence"}
    acc, correct = vqa_accuracy_by_type(results, answers, types)
    assert correct == {"1": True, "2": False, "3": True, "4": True}
    assert acc == {"overall": 0.75, "count": 1.0, "object": 1.0, "presence": 0.5}


# ---------------------------------------------------------------------- the page
def test_report_page(fake_run, tmp_path):
    from rslavis.report import write_report

    out = write_report(fake_run["dir"], tmp_path / "r.html", parser="rules")  # datasets rebuilt from config.yaml
    text = out.read_text()
    assert_self_contained(text)
    for section in ("Config", "Environment", "Metrics", "Training curves", "Gallery: test"):
        assert f">{section}</h2>" in text, section
    assert "smallcap" in text and "coco_caption_format" in text and "torch" in text
    for key in ("Bleu_4", "CIDEr", "SDE", "oversight_rate", "hallucination_rate", "count_abs_error"):
        assert f"<td>{key}</td>" in text, key
    assert text.count('class="card"') == len(SCENES)
    assert text.count("data:image/jpeg;base64,") == len(SCENES)
    assert text.count("data:image/png;base64,") == 2  # training + evaluation figures
    assert 'class="obj hall"' in text and 'class="obj miss"' in text and "count errors: plane: caption 4, references 2" in text
    assert "1 unreadable line(s) skipped" in text  # the partial last line of log.jsonl
    assert "SCST" not in text.split("Training curves")[1].split("Gallery")[0]
    # every numeric key of the log is plotted, as one panel (my_scalar): checked through the grouping
    from rslavis.report.plots import group_train_keys
    from rslavis.report.run import RunData

    groups = dict(group_train_keys(RunData(fake_run["dir"]).train_records))
    assert groups == {"loss": ["loss"], "learning rate": ["lr"], "my_scalar": ["my_scalar"]}


def test_scst_keys_are_grouped(fake_run):
    from rslavis.report.plots import group_train_keys, train_curves
    from rslavis.report.run import RunData

    recs = RunData(fake_run["dir_b"]).train_records
    groups = dict(group_train_keys(recs))
    assert groups["SCST reward components (sample mean, unweighted)"] == ["scst/reward/cider", "scst/reward/count"]
    assert groups["SCST sample vs greedy reward"] == ["scst/reward", "scst/reward_greedy"]
    assert groups["SCST entropy"] == ["scst/entropy"] and groups["SCST varentropy"] == ["scst/varentropy"]
    assert groups["SCST caption length (words)"] == ["scst/caption_len"]
    figs = train_curves(recs)
    assert [t for t, _ in figs] == ["Training by step", "SCST by step"]
    assert all(png.startswith(b"\x89PNG") for _, png in figs)


def test_report_without_data_has_no_gallery_and_one_warning(fake_run, tmp_path, caplog):
    from rslavis.report import write_report

    run = tmp_path / "moved"
    shutil.copytree(fake_run["dir"], run)
    cfg = (run / "config.yaml").read_text().replace(str(fake_run["root"] / "data"), str(tmp_path / "gone"))
    (run / "config.yaml").write_text(cfg)
    with caplog.at_level("WARNING"):
        text = write_report(run, parser="rules").read_text()
    assert (run / "report.html").is_file()
    warnings = [r for r in caplog.records if "could not be rebuilt" in r.getMessage()]
    assert len(warnings) == 1 and "not found" in warnings[0].getMessage()
    assert "No gallery" in text and 'class="card"' not in text
    assert "<td>CIDEr</td>" in text and "<td>SDE</td>" not in text  # logged metrics stay, reference-based ones cannot be computed
    assert_self_contained(text)


def test_vqa_report(tmp_path):
    """A VQA run: accuracy by question type and a gallery of questions (dataset passed in)."""
    from PIL import Image

    from rslavis.report import write_report

    run = tmp_path / "vqa"
    (run / "result").mkdir(parents=True)
    (run / "config.yaml").write_text("run: {task: vqa, test_splits: [test], seed: 1}\ndatasets: {rsvqa_lr: {}}\n")
    img = tmp_path / "i.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(img)
    records = [{"image_id": f"im{q % 3}", "image": str(img), "question_id": q, "question": f"how many things {q}?",
                "answers": [str(q % 4)], "question_type": ["count", "presence"][q % 2]} for q in range(12)]
    results = [{"question_id": q, "answer": str(q % 4 if q % 3 else 9), "image_id": f"im{q % 3}"} for q in range(12)]
    (run / "result" / "test_epoch0.json").write_text(json.dumps(results))
    (run / "metrics_test.json").write_text(json.dumps({"epoch": 0, "agg_metrics": 0.5}))
    ds = SimpleNamespace(records=records, answers=lambda: {r["question_id"]: r["answers"] for r in records},
                         question_types=lambda: {r["question_id"]: r["question_type"] for r in records})
    text = write_report(run, datasets={"rsvqa_lr": {"test": ds}}).read_text()
    assert "VQA accuracy by question type: test" in text
    acc = re.search(r"<td>overall</td><td class=\"num\">([0-9.]+)</td>", text)
    assert acc and float(acc.group(1)) == pytest.approx(8 / 12, abs=1e-4)
    assert text.count('class="card"') == 12 and text.count('data-wrong="1"') == 4
    assert_self_contained(text)


def test_comparison_page(fake_run, tmp_path):
    from rslavis.report import write_comparison
    from rslavis.report.compare import caption_change, config_diff

    assert caption_change("a b c", "a b c") == 0.0 and caption_change("a b", "c d") == 1.0
    assert config_diff({"run": {"a": 1, "b": 2}}, {"run": {"a": 1, "b": 3, "c": 4}}) == [("run.b", 2, 3), ("run.c", "", 4)]

    text = write_comparison(fake_run["dir"], fake_run["dir_b"], tmp_path / "c.html", parser="rules").read_text()
    assert_self_contained(text)
    diff = text.split("Config differences")[1].split("Metric differences")[0]
    assert "<td>run.init_lr</td>" in diff and "<td>run.task</td>" in diff and "<td>run.rewards.count</td>" in diff
    assert "<td>run.seed</td>" not in diff
    # the changed captions, most changed first; unchanged images are not listed
    cards = re.findall(r'<div class="card" data-order="(\d+)" data-change="([0-9.]+)"', text)
    assert len(cards) == 2 and float(cards[0][1]) > float(cards[1][1]) > 0
    assert text.index("two planes on a runway") < text.index("a pond with trees")
    assert "SCST by step" in text  # B's SCST curves appear next to A's training curves
    assert text.count("data:image/jpeg;base64,") == 2

    text_b = write_comparison(fake_run["dir_b"], fake_run["dir"], tmp_path / "c2.html", parser="rules").read_text()
    assert text_b.count('class="card"') == 2 and "<td>SDE</td>" in text_b  # string ids match the dataset's int ids


def test_cli(fake_run, tmp_path, capsys):
    out = run_python(["-m", "rslavis.report", str(fake_run["dir"]), "--out", str(tmp_path / "x.html"), "--parser", "rules", "--max-images", "4"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == tmp_path / "x.html"
    assert (tmp_path / "x.html").read_text().count('class="card"') == 4

    from rslavis.report.__main__ import main  # the rest in-process: a subprocess costs seconds of imports

    assert main([str(fake_run["dir"]), str(fake_run["dir_b"]), "--parser", "rules"]) == 0
    assert (fake_run["dir"] / "compare_b.html").is_file()
    capsys.readouterr()
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().startswith("rslavis: error: run folder")
    assert main([str(tmp_path)]) == 2  # a folder, but no run in it
    assert "is not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["a", "b", "c"])


def test_runner_report_failure_only_warns(tmp_path, caplog, monkeypatch):
    import rslavis.report
    from rslavis.runners.runner_base import RunnerBase

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(rslavis.report, "write_report", broken)
    monkeypatch.setenv("RSLAVIS_REPORT", "1")  # tests/conftest.py turns it off for other tests' training runs
    runner = SimpleNamespace(is_main=True, output_dir=tmp_path, datasets={}, device="cpu")
    with caplog.at_level("WARNING"):
        RunnerBase.write_report(runner)
    assert any("could not be written (ValueError: boom)" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("RSLAVIS_REPORT", "0")
    caplog.clear()
    monkeypatch.setattr(rslavis.report, "write_report", lambda *a, **k: pytest.fail("RSLAVIS_REPORT=0 must skip the report"))
    RunnerBase.write_report(runner)
    runner.is_main = False
    monkeypatch.setenv("RSLAVIS_REPORT", "1")
    RunnerBase.write_report(runner)  # other ranks never write
