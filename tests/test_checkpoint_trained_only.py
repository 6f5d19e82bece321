"""Runner checkpoints keep what trains: a LoRA-only InstructBLIP on top of a local pretrained
directory writes a small fraction of a full checkpoint, resumes exactly on top of the same
weights, and is refused (one line) on other base weights or by a model that trains more."""

import json
import subprocess

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint
from tests.conftest import run_python

pytest.importorskip("peft")

VISION = dict(image_size=64, patch_size=16, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)

PROJECT = """
model:
  arch: instructblip
  model_type: tiny_opt
  pretrained: {base}
  freeze_vit: true
  freeze_qformer: true
  freeze_llm: true
  lora_r: 2
  lora_targets: attn
  max_txt_len: 24
  max_output_txt_len: 16
  qformer_max_len: 32
  num_query_tokens: 4  # the base directory's Q-Former has 4 queries (tiny_opt's default YAML says 8)
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {cache}
      sizes: {{train: 16, val: 4, test: 4}}
run:
  task: captioning
  lr_sched: constant_lr
  init_lr: 1.0e-3
  max_epoch: 1
  batch_size_train: 8
  batch_size_eval: 4
  log_freq: 1
  seed: 5
  output_dir: {out}
  max_len: 6
  valid_splits: []
  test_splits: []
"""


def pretrained_dir(path, seed):
    """A tiny InstructBLIP written in the Hugging Face layout (weights, tokenizer, qformer_tokenizer/)."""
    from rslavis.models.instructblip.model import InstructBLIP
    from rslavis.models.tokenization import train_caption_tokenizer
    from tests._instructblip_helpers import PROMPTS, TEXTS, tiny_cfg

    cfg = tiny_cfg("opt", vision=VISION)
    cfg["llm"] = dict(type="opt", hidden_size=64, num_layers=2, num_heads=2, ffn_dim=256, dropout=0.0)
    torch.manual_seed(seed)
    m = InstructBLIP(cfg, tokenizer=train_caption_tokenizer(TEXTS + PROMPTS), qformer_tokenizer=train_caption_tokenizer(PROMPTS))
    m.model.save_pretrained(str(path))
    m.tokenizer.save_pretrained(str(path))
    m.qformer_tokenizer.save_pretrained(str(path / "qformer_tokenizer"))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained_only")
    base = pretrained_dir(tmp / "base", seed=0)
    other = pretrained_dir(tmp / "other", seed=1)
    cfg = tmp / "p.yaml"
    cfg.write_text(PROJECT.format(base=base, cache=tmp / "cache", out=tmp / "out"))

    def train(*options, extra=(), ok=True):
        out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), *extra, "--options", *options], env={"OMP_NUM_THREADS": "1"})
        if ok:
            assert out.returncode == 0, out.stderr[-3000:]
        return out

    train("run.job_id=small")
    train("run.job_id=full", "run.save_full=true")
    return dict(tmp=tmp, base=base, other=other, cfg=cfg, train=train, out=tmp / "out")


def model_bytes(path):
    return sum(t.numel() * t.element_size() for t in load_checkpoint(path)["model"].values())


def test_lora_checkpoint_is_a_small_fraction_of_the_full_one(runs):
    small = runs["out"] / "small" / "checkpoint_latest.pth"
    full = runs["out"] / "full" / "checkpoint_latest.pth"
    a, b = load_checkpoint(small), load_checkpoint(full)
    assert a["model_info"]["full"] is False and b["model_info"]["full"] is True
    assert all("lora_" in k or "language_projection" in k for k in a["model"]), sorted(a["model"])[:5]
    # the same run: every tensor the small checkpoint keeps is bit-identical in the full one
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ratio = model_bytes(small) / model_bytes(full)
    print(f"model part: trained-only {model_bytes(small):,} B, full {model_bytes(full):,} B, ratio {ratio:.3f}; files {small.stat().st_size:,} / {full.stat().st_size:,} B")
    assert ratio < 0.1
    assert small.stat().st_size < 0.5 * full.stat().st_size  # optimizer state (of the trained tensors) is in both
    assert a["model_info"]["base_sources"] == {"model.": str(runs["base"])}


def test_resume_on_the_same_base_is_exact(runs):
    train = runs["train"]
    train("run.job_id=two", "run.max_epoch=2")
    train("run.job_id=one_then_two", "run.max_epoch=1")
    train("run.job_id=one_then_two", "run.max_epoch=2", extra=["--resume", "auto"])
    a = load_checkpoint(runs["out"] / "two" / "checkpoint_latest.pth")
    b = load_checkpoint(runs["out"] / "one_then_two" / "checkpoint_latest.pth")
    assert a["epoch"] == b["epoch"] == 1 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _one_line_error(out):
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    return line


def test_other_base_weights_are_refused(runs):
    ckpt = runs["out"] / "small" / "checkpoint_latest.pth"
    out = runs["train"]("run.job_id=eval_other", f"model.pretrained={runs['other']}", "run.evaluate=True", f"run.resume_ckpt_path={ckpt}", "run.test_splits=[test]", ok=False)
    line = _one_line_error(out)
    assert "made on other base weights" in line and str(runs["base"]) in line and str(runs["other"]) in line
    # the same base evaluates fine
    runs["train"]("run.job_id=eval_same", "run.evaluate=True", f"run.resume_ckpt_path={ckpt}", "run.test_splits=[test]")


def test_model_training_more_than_the_checkpoint_holds_is_refused(runs):
    ckpt = runs["out"] / "small" / "checkpoint_latest.pth"
    out = runs["train"]("run.job_id=eval_more", "model.freeze_qformer=false", "run.evaluate=True", f"run.resume_ckpt_path={ckpt}", "run.test_splits=[test]", ok=False)
    line = _one_line_error(out)
    assert "tensors this model trains are not in the checkpoint (first: model.query_tokens)" in line
