"""End-to-end runs at tiny sizes: outputs, evaluate-only, exact resume after SIGKILL, torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint
from tests.conftest import ROOT, run_python

TINY = """
model:
  arch: smallcap
  model_type: tiny
  decoder: {{n_layer: 2, n_embd: 64, n_head: 2}}
  vision: {{num_layers: 1, hidden_size: 64, num_heads: 2, intermediate_size: 128}}
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {cache}
      sizes: {{train: {train}, val: 6, test: 8}}
run:
  task: captioning
  init_lr: 2.0e-3
  warmup_steps: 5
  max_epoch: {epochs}
  batch_size_train: 8
  batch_size_eval: 4
  log_freq: 1
  seed: 3
  output_dir: {out}
  max_len: 12
  skip_metrics: [METEOR, SPICE]
"""


def project(tmp_path, train=12, epochs=2):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY.format(cache=tmp_path / "cache", out=tmp_path / "out", train=train, epochs=epochs))
    return p


def train(cfg, *options, extra=()):
    args = ["-m", "rslavis.train", "--cfg-path", str(cfg), *extra]
    if options:
        args += ["--options", *options]
    out = run_python(args)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_run_writes_every_output_and_evaluates(tmp_path):
    cfg = project(tmp_path)
    # LAVIS habits: CUDA, distributed and amp without a GPU or a launcher
    out = train(cfg, "run.job_id=a", "run.device=cuda", "run.distributed=True", "run.amp=True")
    assert out.stderr.count("CUDA is not available") == 1
    assert out.stderr.count("not launched by torchrun") == 1
    run_dir = tmp_path / "out" / "a"
    for name in ("config.yaml", "log.jsonl", "checkpoint_latest.pth", "checkpoint_best.pth", "metrics_val.json", "metrics_test.json", "tokenizer"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"epoch", "step", "loss", "lr", "seconds"} <= set(steps[0])
    assert len(steps) == 2 * (12 * 5 // 8)  # every step of both epochs (log_freq 1)
    preds = json.loads(next((run_dir / "result").glob("test_epoch*.json")).read_text())
    assert len(preds) == 8 and all(set(p) == {"image_id", "caption"} for p in preds)
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    assert {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "agg_metrics"} <= set(metrics)
    assert metrics["agg_metrics"] == pytest.approx(metrics["CIDEr"] + metrics["Bleu_4"])
    ckpt = load_checkpoint(run_dir / "checkpoint_latest.pth")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "global_step", "rng", "config"} <= set(ckpt)
    best = load_checkpoint(run_dir / "checkpoint_best.pth")  # weights for evaluation: no optimizer state
    assert best["model_only"] and best["optimizer"] is None and best["model"].keys() == ckpt["model"].keys()

    # evaluate: True re-scores the best checkpoint without training
    train(cfg, "run.job_id=b", "run.evaluate=True", f"run.resume_ckpt_path={run_dir / 'checkpoint_best.pth'}", "model.tokenizer_path=" + str(run_dir / "tokenizer"))
    again = json.loads((tmp_path / "out" / "b" / "metrics_test.json").read_text())
    assert again["CIDEr"] == pytest.approx(metrics["CIDEr"])
    assert not (tmp_path / "out" / "b" / "checkpoint_latest.pth").exists()


def _wait_for_epoch(log, proc, epoch, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            return False
        if log.exists():
            for line in log.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("epoch") == epoch and "loss" in rec:
                    return True
        time.sleep(0.05)
    return False


def test_exact_resume_after_sigkill(tmp_path):
    cfg = project(tmp_path, train=24, epochs=3)
    train(cfg, "run.job_id=full", "run.val_freq=1")
    full_dir = tmp_path / "out" / "full"

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "rslavis.train", "--cfg-path", str(cfg), "--options", "run.job_id=killed", "run.val_freq=1"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_dir = tmp_path / "out" / "killed"
    try:
        assert _wait_for_epoch(killed_dir / "log.jsonl", proc, epoch=1), "run never reached its second epoch"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(killed_dir / "checkpoint_latest.pth")["epoch"] == 0  # killed inside epoch 1

    train(cfg, "run.job_id=killed", "run.val_freq=1", extra=["--resume", "auto"])
    a = load_checkpoint(full_dir / "checkpoint_latest.pth")
    b = load_checkpoint(killed_dir / "checkpoint_latest.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma = json.loads((full_dir / "metrics_test.json").read_text())
    mb = json.loads((killed_dir / "metrics_test.json").read_text())
    assert ma == mb


def test_torchrun_two_processes(tmp_path):
    cfg = project(tmp_path, train=12, epochs=1)
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "rslavis.train", "--cfg-path", str(cfg), "--options", "run.job_id=ddp"]
    out = run_python(args, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "ddp"
    preds = json.loads(next((run_dir / "result").glob("test_epoch*.json")).read_text())
    assert sorted(p["image_id"] for p in preds) == [f"test_{i:06d}" for i in range(8)]  # gathered from both ranks, no duplicates
    steps = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    # 60 training pairs over 2 ranks with batch 8 and drop_last: 3 steps each; only rank 0 writes the log
    assert len(steps) == 3
    assert (run_dir / "checkpoint_latest.pth").is_file()


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    cfg = project(tmp_path, train=12, epochs=1)
    train(cfg, "run.job_id=first", "run.test_splits=[]")
    images = sorted((tmp_path / "cache").glob("*/images/train_*.png"))
    assert len(images) == 12
    for img in images[:10]:  # most training batches are now empty or partial
        img.write_bytes(b"not a png")
    out = train(cfg, "run.job_id=second", "run.test_splits=[]")
    assert "Traceback" not in out.stderr
    steps = [json.loads(l) for l in (tmp_path / "out" / "second" / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps and steps[-1]["skipped_images"] >= 10 * 5 - 8  # counted per epoch


def test_gradient_accumulation_steps_the_optimizer_every_n_batches(tmp_path):
    cfg = project(tmp_path, train=12, epochs=1)
    train(cfg, "run.job_id=acc", "run.accum_grad_iters=3", "run.valid_splits=[]", "run.test_splits=[]")
    ckpt = load_checkpoint(tmp_path / "out" / "acc" / "checkpoint_latest.pth")
    steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    # 60 pairs / batch 8 = 7 batches: optimizer steps after batches 3, 6 and the last one
    assert steps == {3.0}
    assert ckpt["global_step"] == 7
