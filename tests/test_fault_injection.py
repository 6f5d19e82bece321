"""SIGKILL at 5 seeded random moments of a tiny cross-entropy + SCST run (inside a training step,
during validation, half-way through a checkpoint write), each followed by ``--resume auto`` (or a
restart when no checkpoint exists yet): the final weights, the rewards' state, the test metrics and
the training log equal those of the uninterrupted run.

Every run is a child of one fork server that has imported torch and rslavis but run nothing, so a
run costs its compute, not an interpreter start. The kill is the process sending SIGKILL to itself
at the chosen moment: the moment is exact, the death is as abrupt as ``kill -9``.
"""

import json
import multiprocessing
import os
import random
import signal
import sys

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint

PROJECT = """
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
  max_epoch: 3
  batch_size_train: 8
  batch_size_eval: 4
  log_freq: 1
  seed: 7
  output_dir: {out}
  max_len: 6
  skip_metrics: [METEOR, SPICE]
  scst_start_epoch: 1
  scst_num_samples: 2
  scst_max_len: 6
  rewards: {{cider: 1.0, nkl: {{weight: 0.5, normalize: true, window: 40}}}}
"""
STEPS, EPOCHS = 5, 3  # 8 images x 5 captions / batch 8; epoch 0 cross-entropy, 1-2 SCST


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kind, at):
    """Patch this process so that it SIGKILLs itself at the ``at``-th event of ``kind``."""
    from rslavis.common import checkpoint
    from rslavis.runners import checkpointing
    from rslavis.tasks.captioning import CaptionTask
    from rslavis.tasks.scst import SCSTTask

    count = [0]

    def hit():
        count[0] += 1
        return count[0] == at

    if kind == "step":  # after the forward pass and the rewards, before backward and the optimizer step
        real = SCSTTask.train_step

        def train_step(self, model, samples):
            out = real(self, model, samples)
            if hit():
                _kill()
            return out

        SCSTTask.train_step = train_step
    elif kind == "val":  # captions generated, metrics not yet computed or written
        real = CaptionTask.evaluation

        def evaluation(self, model, loader, split):
            out = real(self, model, loader, split)
            if hit():
                _kill()
            return out

        CaptionTask.evaluation = evaluation
    elif kind == "ckpt":  # half of the checkpoint's bytes in the temporary file, not yet renamed
        def atomic_torch_save(obj, path):
            if not hit():
                return checkpoint.atomic_torch_save(obj, path)

            def half(f):
                import io

                buf = io.BytesIO()
                torch.save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                _kill()

            checkpoint._atomic_write(path, half)

        checkpointing.atomic_torch_save = atomic_torch_save  # the name CheckpointMixin.save_checkpoint calls
    else:
        raise ValueError(kind)


def _child(argv, log_path, fault):
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if fault:
        _arm(*fault)
    from rslavis.train import main

    sys.exit(main(argv))


@pytest.fixture(scope="module")
def server():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "rslavis.train", "rslavis.tasks.scst", "rslavis.models.smallcap.model",
                                "rslavis.rewards.nkl", "rslavis.rewards.cider", "rslavis.metrics.coco_caption", "tests.test_fault_injection"])
    return ctx


def run(ctx, tmp, job, fault=None, resume=False):
    argv = ["--cfg-path", str(tmp / "p.yaml"), *(["--resume", "auto"] if resume else []), "--options", f"run.job_id={job}"]
    p = ctx.Process(target=_child, args=(argv, str(tmp / f"{job}.stderr"), fault))
    p.start()
    p.join(300)
    if p.is_alive():
        p.kill()
        pytest.fail(f"{job} did not finish; see {tmp / f'{job}.stderr'}")
    return p.exitcode


def _log(run_dir):
    """Training steps and evaluations of log.jsonl, without wall-clock fields."""
    out = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key in [k for k in rec if k == "seconds" or k.endswith("_seconds")]:  # wall-clock (data_seconds, ...)
            rec.pop(key)
        out.append(rec)
    return out


@pytest.mark.slow
def test_sigkill_at_five_random_moments_then_resume_equals_the_uninterrupted_run(server, tmp_path):
    (tmp_path / "p.yaml").write_text(PROJECT.format(cache=tmp_path / "cache", out=tmp_path / "out"))
    assert run(server, tmp_path, "ref") == 0, (tmp_path / "ref.stderr").read_text()[-3000:]
    ref_dir = tmp_path / "out" / "ref"
    ref = load_checkpoint(ref_dir / "checkpoint_latest.pth")
    ref_log = _log(ref_dir)
    assert len([r for r in ref_log if "loss" in r]) == STEPS * EPOCHS

    # one moment of each kind and two more, all distinct: 15 steps, 4 evaluations (3 val + test),
    # at least 4 checkpoint writes (best of epoch 0, latest of every epoch). Seed 21 draws
    # step 3 (cross-entropy, no checkpoint yet: restart), test evaluation, the 4th write,
    # step 11 (SCST, resume from epoch 1) and the validation of epoch 1.
    rng = random.Random(21)
    events = {"step": list(range(1, STEPS * EPOCHS + 1)), "val": list(range(1, EPOCHS + 2)), "ckpt": list(range(1, EPOCHS + 2))}
    moments = [(k, rng.choice(v)) for k, v in events.items()]
    moments += rng.sample([(k, i) for k, v in events.items() for i in v if (k, i) not in moments], 2)
    for n, (kind, at) in enumerate(moments):
        job = f"kill{n}_{kind}{at}"
        code = run(server, tmp_path, job, fault=(kind, at))
        assert code == -signal.SIGKILL, f"{job}: exit {code}, not killed; {(tmp_path / f'{job}.stderr').read_text()[-2000:]}"
        run_dir = tmp_path / "out" / job
        resumable = (run_dir / "checkpoint_latest.pth").is_file()
        code = run(server, tmp_path, job, resume=resumable)
        err = (tmp_path / f"{job}.stderr").read_text()
        assert code == 0, f"{job}: {err[-3000:]}"
        assert "taking over the lock of process" in err
        got = load_checkpoint(run_dir / "checkpoint_latest.pth")
        assert got["epoch"] == EPOCHS - 1
        for k in ref["model"]:
            assert torch.equal(ref["model"][k], got["model"][k]), f"{job}: {k} differs from the uninterrupted run"
        nkl_ref, nkl_got = ref["task"]["reward"]["nkl"], got["task"]["reward"]["nkl"]
        assert nkl_ref["norm"] == nkl_got["norm"] and torch.equal(nkl_ref["reward"]["recent"], nkl_got["reward"]["recent"]), job
        assert json.loads((run_dir / "metrics_test.json").read_text()) == json.loads((ref_dir / "metrics_test.json").read_text()), job
        assert _log(run_dir) == ref_log, f"{job}: log.jsonl differs (duplicated or lost records)"
        assert not list(run_dir.glob(".*.tmp")), f"{job}: the torn temporary file of the killed write is left behind"
