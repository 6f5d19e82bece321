"""The instructblip projects through ``python -m rslavis.train`` at tiny sizes; real-data projects fail clearly."""

import json

import pytest

from tests.conftest import ROOT, run_python
from tests.test_vqa import vrsbench_vqa_fixture

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RSLAVIS_REPORT": "0"}
SMALL = [
    "datasets.rs_synthetic.build_info.sizes.train=16",
    "datasets.rs_synthetic.build_info.sizes.val=4",
    "datasets.rs_synthetic.build_info.sizes.test=6",
    "run.batch_size_train=8",
    "run.batch_size_eval=4",
    "run.warmup_steps=2",
    "run.max_len=8",
    "run.skip_metrics=[METEOR,SPICE]",
]


def train(project, tmp_path, *options):
    args = ["-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / "instructblip" / project), "--options",
            f"run.output_dir={tmp_path / 'out'}", f"datasets.rs_synthetic.build_info.cache_dir={tmp_path / 'cache'}", *options]
    return run_python(args, env=ENV)


def test_synthetic_caption_project_and_evaluate_only(tmp_path):
    out = train("synthetic_caption.yaml", tmp_path, *SMALL, "run.max_epoch=1", "run.job_id=a")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "a"
    assert (run_dir / "tokenizer" / "qformer_tokenizer").is_dir() and (run_dir / "checkpoint_best.pth").is_file()
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    preds = json.loads(next((run_dir / "result").glob("test_epoch*.json")).read_text())
    assert len(preds) == 6 and all(set(p) == {"image_id", "caption"} for p in preds)
    # the checkpoint and the saved tokenizers reproduce the test scores without training
    ev = train("synthetic_caption.yaml", tmp_path, *SMALL, "run.job_id=b", "run.evaluate=True",
               f"run.resume_ckpt_path={run_dir / 'checkpoint_best.pth'}", f"model.tokenizer_path={run_dir / 'tokenizer'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.loads((tmp_path / "out" / "b" / "metrics_test.json").read_text())
    assert again["CIDEr"] == pytest.approx(metrics["CIDEr"])
    assert json.loads(next((tmp_path / "out" / "b" / "result").glob("test_epoch*.json")).read_text()) == preds
    assert all(p["caption"] for p in preds)  # min_len 3: the comparison is not between empty strings


def test_synthetic_scst_project(tmp_path):
    import math

    out = train("synthetic_scst.yaml", tmp_path, *SMALL, "run.max_epoch=2", "run.scst_start_epoch=1", "run.scst_num_samples=2",
                "run.scst_max_len=8", "run.log_freq=1", "run.job_id=s")
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "s" / "log.jsonl").read_text().splitlines()]
    scst_steps = [r for r in records if any(k.endswith("scst/reward") for k in r)]
    ce_steps = [r for r in records if r.get("epoch") == 0 and any(k.endswith("loss") for k in r)]
    assert scst_steps and ce_steps and all(r["epoch"] == 1 for r in scst_steps)  # epoch 0 cross-entropy, then SCST

    def value(r, suffix):
        return next(v for k, v in r.items() if k.endswith(suffix))

    for r in scst_steps:
        reward, greedy, adv = value(r, "scst/reward"), value(r, "scst/reward_greedy"), value(r, "scst/advantage_abs")
        assert all(math.isfinite(x) for x in (reward, greedy, adv)) and adv >= 0
    # the advantage is the sampled reward minus the greedy one: not zero on every step
    assert any(value(r, "scst/advantage_abs") > 0 for r in scst_steps)
    metrics = json.loads((tmp_path / "out" / "s" / "metrics_test.json").read_text())
    assert math.isfinite(metrics["CIDEr"]) and metrics["CIDEr"] >= 0


def _setup(project, tmp_path, monkeypatch, *options):
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    monkeypatch.chdir(tmp_path)  # the projects' relative data/ and weights/ paths resolve to nothing here
    cfg = Config.from_file(str(ROOT / "projects" / "instructblip" / project), [f"run.output_dir={tmp_path}", *options])
    return cfg, registry.get_task_class(cfg.run.task).setup_task(cfg)


@pytest.mark.parametrize(
    "project,needle",
    [
        ("rsicd_caption_ft.yaml", "datasets.rsicd_caption.build_info.annotation"),
        ("rsicap_caption.yaml", "datasets.rsicap_caption.build_info.annotation"),
        ("vrsbench_vqa.yaml", "datasets.vrsbench_vqa.build_info.splits"),
    ],
)
def test_real_data_projects_name_the_missing_data(tmp_path, monkeypatch, project, needle):
    from rslavis.common.errors import RslavisError

    cfg, task = _setup(project, tmp_path, monkeypatch)
    with pytest.raises(RslavisError, match=needle.replace(".", r"\.")):
        task.build_datasets(cfg)


def test_missing_weights_name_the_option_once_data_is_there(tmp_path, monkeypatch):
    from rslavis.common.errors import ConfigError

    root = vrsbench_vqa_fixture(tmp_path / "VRSBench")
    cfg, task = _setup(
        "vrsbench_vqa.yaml", tmp_path, monkeypatch,
        f"datasets.vrsbench_vqa.build_info.splits.train.annotation={root / 'Annotations_train'}",
        f"datasets.vrsbench_vqa.build_info.splits.train.images={root / 'Images_train'}",
        f"datasets.vrsbench_vqa.build_info.splits.test.annotation={root / 'VRSBench_EVAL_vqa.json'}",
        f"datasets.vrsbench_vqa.build_info.splits.test.images={root / 'Images_val'}",
    )
    assert len(task.build_datasets(cfg)["vrsbench_vqa"]["test"]) == 4
    with pytest.raises(ConfigError, match=r"model\.pretrained: directory not found: .*instructblip-flan-t5-xl"):
        task.build_model(cfg)


def test_train_cli_reports_missing_data_on_one_line(tmp_path):
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / "instructblip" / "vrsbench_vqa.yaml"), "--options",
                      f"run.output_dir={tmp_path}"], cwd=tmp_path, env=ENV)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "datasets.vrsbench_vqa.build_info.splits" in last, last
