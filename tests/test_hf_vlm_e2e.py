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
    if family not in ("qwen2_5_vl", "paligemma"):  # the processor round trip of every family is in test_hf_vlm.py
        return
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


GRPO = [*SMALL, "run.max_epoch=2", "run.grpo_start_epoch=1", "run.grpo_group_size=2", "run.grpo_max_len=6", "run.val_freq=1",
        "run.test_splits=[]", "run.rewards.varentropy.weight=1.0", "run.rewards.varentropy.lam=1.0e-3"]
GRPO_KEYS = {"grpo/reward", "grpo/reward_std", "grpo/reward/cider", "grpo/reward_std/cider", "grpo/reward/count", "grpo/reward_std/count",
             "grpo/kl", "grpo/clip_fraction", "grpo/entropy", "grpo/varentropy", "grpo/advantage_abs", "grpo/pass"}


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    """Epoch 0 cross-entropy, epochs 1-2 GRPO with mu = 2 and a KL reference; constant lr so a shorter run is a prefix."""
    tmp = tmp_path_factory.mktemp("grpo")
    opts = (*GRPO, "run.grpo_mu=2", "run.grpo_beta=0.05", "run.lr_sched=constant_lr")
    out = train("synthetic_grpo.yaml", tmp, *opts, "run.max_epoch=3", "run.job_id=whole")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, opts


def test_grpo_project_cross_entropy_then_grpo(grpo_runs):
    tmp, _ = grpo_runs
    records = [r for r in log(tmp / "out" / "whole") if "loss" in r]
    ce = [r for r in records if r["epoch"] == 0]
    rl = [r for r in records if r["epoch"] >= 1]
    assert ce and rl and not any("grpo/reward" in r for r in ce)
    for r in rl:
        assert GRPO_KEYS <= set(r), GRPO_KEYS - set(r)
    assert [r["grpo/pass"] for r in rl][:2] == [1.0, 2.0]  # mu = 2: the second step re-scores the first step's answers


def test_grpo_resume_is_exact(grpo_runs):
    """A run stopped after the first GRPO epoch and resumed ends with the uninterrupted run's weights."""
    import torch

    from rslavis.common.checkpoint import load_checkpoint

    tmp, opts = grpo_runs
    out = train("synthetic_grpo.yaml", tmp, *opts, "run.max_epoch=2", "run.job_id=part")
    assert out.returncode == 0, out.stderr[-3000:]
    part = tmp / "out" / "part" / "checkpoint_latest.pth"
    assert "ref" in load_checkpoint(part)["task"]  # the reference policy travels with the checkpoint
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / "hf_vlm" / "synthetic_grpo.yaml"), "--resume", str(part),
                      "--options", f"run.output_dir={tmp / 'out'}", f"datasets.rs_synthetic.build_info.cache_dir={tmp / 'cache'}",
                      *opts, "run.max_epoch=3", "run.job_id=part"], env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_checkpoint(tmp / "out" / "whole" / "checkpoint_latest.pth")["model"]
    b = load_checkpoint(tmp / "out" / "part" / "checkpoint_latest.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ce_llava(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ce")
    out = train("synthetic_caption_llava.yaml", tmp, *SMALL, "run.max_epoch=1", "run.test_splits=[]", "run.job_id=ce")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "out" / "ce" / "checkpoint_best.pth"


@pytest.mark.parametrize("task", ["scst", "grpo"])
def test_rl_from_cross_entropy_checkpoint(task, tmp_path, ce_llava):
    """model.finetuned: SCST and GRPO start from a cross-entropy run of hf_vlm (its processor beside the checkpoint)."""
    ckpt = ce_llava
    if task == "scst":  # the caption project with the SCST keys
        project, rl = "synthetic_caption_llava.yaml", ["run.task=scst", "run.scst_start_epoch=0", "run.scst_num_samples=2", "run.scst_baseline=mean",
                                                       "run.scst_max_len=6", "run.scst_reward_parser=rules", "run.rewards={cider: 1.0, count: 0.5}"]
    else:
        project, rl = "synthetic_grpo.yaml", ["run.grpo_start_epoch=0", "run.grpo_group_size=2", "run.grpo_max_len=6", "model.family=llava"]
    out = train(project, tmp_path, *SMALL, "run.max_epoch=1", "run.test_splits=[]", *rl, f"model.finetuned={ckpt}", "run.job_id=rl")
    assert out.returncode == 0, out.stderr[-3000:]
    records = [r for r in log(tmp_path / "out" / "rl") if "loss" in r]
    assert records and all(f"{task}/reward" in r for r in records)


def test_vqa_project_with_a_tiny_model(tmp_path):
    """projects/hf_vlm/vrsbench_vqa_qwen2_5_vl.yaml, with a tiny random Qwen2.5-VL in place of the
    local weights (LoRA as the project sets it) on a VRSBench-layout fixture: trains and scores per type."""
    from tests.test_vqa import vrsbench_vqa_fixture

    root = vrsbench_vqa_fixture(tmp_path / "VRSBench")
    opts = ["model.model_type=tiny", "model.pretrained=null", "model.family=qwen2_5_vl", "model.dtype=float32", "model.lora_r=4",
            *[o for o in SMALL if o.startswith("model.")], "run.device=cpu", "run.amp=false", "run.batch_size_train=4", "run.max_epoch=1",
            "run.warmup_steps=1", "run.num_workers=0", "run.job_id=v",
            f"datasets.vrsbench_vqa.build_info.splits.train.annotation={root / 'Annotations_train'}",
            f"datasets.vrsbench_vqa.build_info.splits.train.images={root / 'Images_train'}",
            f"datasets.vrsbench_vqa.build_info.splits.test.annotation={root / 'VRSBench_EVAL_vqa.json'}",
            f"datasets.vrsbench_vqa.build_info.splits.test.images={root / 'Images_val'}",
            "datasets.vrsbench_vqa.vis_processor.train.image_size=32", "datasets.vrsbench_vqa.vis_processor.eval.image_size=32"]
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / "hf_vlm" / "vrsbench_vqa_qwen2_5_vl.yaml"), "--options",
                      f"run.output_dir={tmp_path / 'out'}", *opts], env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "v" / "metrics_test.json").read_text())
    text = json.dumps(metrics)
    assert "accuracy/object color" in text and "accuracy/object existence" in text
    preds = json.loads(next((tmp_path / "out" / "v" / "result").glob("test_epoch*.json")).read_text())
    assert len(preds) == 4 and all(isinstance(p["answer"], str) for p in preds)
