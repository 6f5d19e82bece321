"""``run.distributed_strategy: fsdp`` under torchrun (2 processes, CPU gloo): the same config as a DDP
run by one key, the same losses and weights, and its checkpoints resumed by the same resume path."""

import json

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint
from tests.conftest import run_python
from tests.test_train_e2e import project

pytest.importorskip("torch.distributed.fsdp")


def torchrun(cfg, port, *options, extra=()):
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "rslavis.train", "--cfg-path", str(cfg), *extra,
            "--options", "run.lr_sched=constant_lr", "run.warmup_steps=0", *options]
    out = run_python(args, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "log.jsonl").read_text().splitlines() if '"loss"' in l]


def test_fsdp_matches_ddp_and_resumes(tmp_path):
    cfg = project(tmp_path, train=12, epochs=2)
    out = tmp_path / "out"
    torchrun(cfg, 29571, "run.job_id=ddp")
    torchrun(cfg, 29572, "run.job_id=fsdp", "run.distributed_strategy=fsdp", "run.max_epoch=1")
    # the FSDP run's checkpoint (full state gathered on rank 0) resumes through the same path
    torchrun(cfg, 29573, "run.job_id=fsdp", "run.distributed_strategy=fsdp", extra=["--resume", "auto"])
    a = load_checkpoint(out / "ddp" / "checkpoint_latest.pth")
    b = load_checkpoint(out / "fsdp" / "checkpoint_latest.pth")
    assert b["optimizer_format"] == "names" and a["optimizer_format"] == "torch"
    assert a["epoch"] == b["epoch"] == 1 and a["model"].keys() == b["model"].keys()
    # sharded gradients are reduce-scattered, DDP's all-reduced: equal up to float rounding
    assert losses(out / "ddp") == pytest.approx(losses(out / "fsdp"), rel=1e-4)
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5), k
    preds = json.loads(next((out / "fsdp" / "result").glob("test_epoch*.json")).read_text())
    assert sorted(p["image_id"] for p in preds) == [f"test_{i:06d}" for i in range(8)]  # evaluation with gathered parameters
