"""The hf_vlm projects through ``python -m rslavis.train`` at tiny sizes: cross-entropy training and
evaluation per family, SCST and GRPO from the cross-entropy checkpoint, real-weight projects
failing clearly without their directory."""

import json

import pytest

from tests.conftest import ROOT, run_python

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RSLAVIS_REPORT": "0"}
FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava", "idefics3", "paligemma"]
SMALL = [
    "datasets.rs_synthetic.build_info.sizes.train=16",
    "datasets.rs_synthetic.build_info.sizes.val=4",
    "datasets.rs_synthetic.build_info.sizes.test=4",
    "run.batch_size_train=8",
    "run.batch_size_eval=4",
    "run.warmup_steps=2",
    "run.max_len=6",
    "run.skip_metrics=[METEOR,SPICE]",
    "run.log_freq=1",
    "model.vision.hidden_size=32",
    "model.vision.num_layers=1",
    "model.vision.num_heads=2",
    "model.llm.hidden_size=32",
    "model.llm.num_layers=1",
    "model.llm.num_heads=2",
    "model.llm.num_kv_heads=1",
]


def train(project, tmp_path, *options):
    args = ["-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / "hf_vlm" / project), "--options",
            f"run.output_dir={tmp_path / 'out'}", f"datasets.rs_synthetic.build_info.cache_dir={tmp_path / 'cache'}", *options]
    return run_python(args, env=ENV)


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_project_trains_and_evaluates(family, tmp_path):
    out = train(f"synthetic_caption_{family}.yaml", tmp_path, *SMALL, "run.max_epoch=1", "run.job_id=a")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "a"
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file() and (run_dir / "checkpoint_best.pth").is_file()
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    assert "CIDEr" in json.dumps(metrics)
    preds = json.loads(next((run_dir / "result").glob("test_epoch*.json")).read_text())
    assert len(preds) == 4
    # the checkpoint and the saved processor reproduce the test captions without training
    ev = train(f"synthetic_caption_{family}.yaml", tmp_path, *SMALL, "run.job_id=b", "run.evaluate=True",
               f"run.resume_ckpt_path={run_dir / 'checkpoint_best.pth'}", f"model.tokenizer_path={run_dir / 'tokenizer'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.loads(next((tmp_path / "out" / "b" / "result").glob("test_epoch*.json")).read_text())
    assert [p["caption"] for p in again] == [p["caption"] for p in preds]


@pytest.mark.parametrize("project", ["rsicd_qwen2_5_vl.yaml", "vrsbench_vqa_qwen2_5_vl.yaml"])
def test_real_weight_projects_fail_clearly_without_weights(project, tmp_path):
    from rslavis.common.config import Config
    from rslavis.common.errors import ConfigError
    from rslavis.common.registry import registry

    cfg = Config.from_file(str(ROOT / "projects" / "hf_vlm" / project), [f"model.pretrained={tmp_path / 'no_weights'}"])
    assert cfg.model.arch == "hf_vlm" and "Qwen2.5-VL" in (ROOT / "projects" / "hf_vlm" / project).read_text()
    with pytest.raises(ConfigError, match="model.pretrained: directory not found.*nothing is downloaded"):
        registry.get_model_class(cfg.model.arch).from_config(cfg.model)
