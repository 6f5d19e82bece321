"""``python -m rslavis.train`` with task ``scst``: cross-entropy then SCST in one run, logged keys,
exact resume across the switch, and ``model.finetuned``."""

import json

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint
from tests.conftest import run_python

TINY = """
model:
  arch: smallcap
  model_type: tiny
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2}}
  vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {cache}
      sizes: {{train: 8, val: 4, test: 4}}
run:
  task: scst
  lr_sched: constant_lr
  init_lr: 1.0e-3
  max_epoch: 2
  batch_size_train: 8
  batch_size_eval: 4
  log_freq: 1
  seed: 5
  output_dir: {out}
  max_len: 8
  test_splits: []
  skip_metrics: [METEOR, SPICE]
  scst_start_epoch: 1
  scst_num_samples: 2
  scst_max_len: 8
  scst_reward_parser: rules
  rewards: {{cider: 1.0, count: 0.5, varentropy: {{weight: 1.0, lam: 1.0e-3}}}}
"""

SCST_KEYS = {"scst/reward", "scst/reward_greedy", "scst/reward/cider", "scst/reward/count", "scst/entropy", "scst/varentropy",
             "scst/varentropy_term", "scst/caption_len", "scst/advantage_abs"}


def train(cfg, *options, extra=()):
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), *extra, "--options", *options])
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scst")
    cfg = tmp / "tiny_scst.yaml"
    cfg.write_text(TINY.format(cache=tmp / "cache", out=tmp / "out"))
    train(cfg, "run.job_id=full")
    return tmp, cfg


def test_cross_entropy_then_scst_logs_the_scst_keys(runs):
    tmp, _ = runs
    records = [json.loads(l) for l in (tmp / "out" / "full" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    ce = [r for r in steps if r["epoch"] == 0]
    scst = [r for r in steps if r["epoch"] == 1]
    assert len(ce) == len(scst) == 5  # 8 images x 5 captions / batch 8
    assert not any(k.startswith("scst/") for r in ce for k in r)
    for r in scst:
        assert SCST_KEYS <= set(r), SCST_KEYS - set(r)
        assert 0 < r["scst/caption_len"] <= 8 and r["scst/entropy"] > 0
    assert any(r.get("split") == "val" and r["epoch"] == 1 and "CIDEr" in r for r in records)


def test_resume_across_the_switch_is_exact(runs):
    tmp, cfg = runs
    train(cfg, "run.job_id=part", "run.max_epoch=1")
    part = tmp / "out" / "part" / "checkpoint_latest.pth"
    train(cfg, "run.job_id=part", extra=("--resume", str(part)))
    a = load_checkpoint(tmp / "out" / "full" / "checkpoint_latest.pth")["model"]
    b = load_checkpoint(part)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetuned_checkpoint_is_loaded_with_its_tokenizer(runs):
    from rslavis.common.config import Config
    from rslavis.common.errors import ConfigError
    from rslavis.common.registry import registry

    tmp, cfg = runs
    ckpt = tmp / "out" / "full" / "checkpoint_best.pth"
    config = Config.from_file(cfg, [f"model.finetuned={ckpt}", "run.scst_start_epoch=0"])
    task = registry.get_task_class("scst").setup_task(config)
    model = task.build_model(config)
    assert model.tokenizer is not None  # taken from the tokenizer/ folder beside the checkpoint
    state = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    bad = Config.from_file(cfg, [f"model.finetuned={tmp / 'missing.pth'}"])
    with pytest.raises(ConfigError, match="model.finetuned .*missing.pth"):
        task.build_model(bad)
    wrong = Config.from_file(cfg, [f"model.finetuned={ckpt}", "model.decoder.n_embd=64"])
    with pytest.raises(ConfigError, match="does not fit this model"):
        task.build_model(wrong)


def test_resume_is_exact_with_nkl_window_and_running_normalisation(tmp_path):
    """The nkl token window and normalize: true statistics are in the checkpoint: a run cut after
    an SCST epoch and resumed ends with the weights of the uninterrupted run."""
    from rslavis.train import main

    cfg = tmp_path / "tiny_scst.yaml"
    cfg.write_text(TINY.format(cache=tmp_path / "cache", out=tmp_path / "out"))
    opts = ["run.rewards={cider: 1.0, nkl: {weight: 0.5, normalize: true, window: 40}, count: {weight: 0.5, normalize: true}}",
            "run.max_epoch=3", "run.valid_splits=[]"]
    assert main(["--cfg-path", str(cfg), "--options", "run.job_id=full", *opts]) == 0
    assert main(["--cfg-path", str(cfg), "--options", "run.job_id=part", *opts, "run.max_epoch=2"]) == 0
    part = tmp_path / "out" / "part" / "checkpoint_latest.pth"
    state = load_checkpoint(part)["task"]["reward"]
    assert state["nkl"]["reward"]["recent"].numel() > 0 and state["nkl"]["norm"]["mean"] is not None
    assert state["count"]["norm"]["var"] is not None
    assert main(["--cfg-path", str(cfg), "--resume", str(part), "--options", "run.job_id=part", *opts]) == 0
    a = load_checkpoint(tmp_path / "out" / "full" / "checkpoint_latest.pth")
    b = load_checkpoint(part)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resumed SCST run differs"
    assert a["task"]["reward"]["nkl"]["reward"]["recent"].tolist() == b["task"]["reward"]["nkl"]["reward"]["recent"].tolist()
    # the resumed log has each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "out" / "part" / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == sorted(set(steps)) and len(steps) == 15


@pytest.mark.parametrize("task_name", ["captioning", "vqa", "preference", "scst"])
def test_every_task_honours_model_finetuned(runs, tmp_path, task_name):
    """BaseTask.build_model loads ``model.finetuned`` (a checkpoint or a save_pretrained folder) for every task."""
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    tmp, cfg = runs
    ckpt = tmp / "out" / "full" / "checkpoint_best.pth"
    state = load_checkpoint(ckpt)["model"]
    config = Config.from_file(cfg, [f"model.finetuned={ckpt}"])
    task = registry.get_task_class(task_name).setup_task(config)
    model = task.build_model(config)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.save_pretrained(tmp_path / "saved")
    again = task.build_model(Config.from_file(cfg, [f"model.finetuned={tmp_path / 'saved'}"]))
    assert all(torch.equal(v, state[k]) for k, v in again.state_dict().items())
