"""RS-MoE against a dense model trained for the same total epochs (the equal-compute control).

RS-MoE's stages train on top of a trained dense model, so "stage 2 beats its dense start"
mixes the mixture with extra training. Per seed, through ``python -m rslavis.train`` with
the synthetic projects (shrunk to run on a shared CPU; sizes printed):

- ``dense``: ``projects/instructblip/synthetic_caption.yaml`` for ``--dense-epochs``;
- ``stage 1`` / ``stage 2``: ``projects/rs_moe/synthetic_stage{1,2}.yaml`` from it, for
  ``--stage1-epochs`` and ``--stage2-epochs`` (K = 3 experts; the project's settings);
- ``dense control``: the dense checkpoint trained on (``model.finetuned``, the dense
  project's settings) for ``--stage1-epochs + --stage2-epochs`` more epochs, so it has
  seen as many epochs as stage 2 in total.

Each run keeps its best validation checkpoint and reports test CIDEr and Bleu_4 from it
(its ``metrics_test.json``). Printed: per seed and mean over seeds; the training
seconds of each run (a stage's steps cost about K times a dense step, see
``bench/moe_cost.py``). Nothing is tuned toward a result.

    OMP_NUM_THREADS=1 python bench/moe_equal_epochs.py [--seeds 0 1] [--train 300] [--dense-epochs 3] [--stage1-epochs 2] [--stage2-epochs 1]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           RSLAVIS_REPORT="0", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(project, out, job, options):
    """One training run; returns (metrics_test, seconds). A failed run stops the bench."""
    cmd = [sys.executable, "-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / project), "--options",
           f"run.output_dir={out}", f"run.job_id={job}", *options]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{project} ({job}) failed with exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads((Path(out) / job / "metrics_test.json").read_text()), seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train", type=int, default=300, help="synthetic training scenes (5 captions each)")
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--dense-epochs", type=int, default=3)
    ap.add_argument("--stage1-epochs", type=int, default=2)
    ap.add_argument("--stage2-epochs", type=int, default=1)
    ap.add_argument("--out", default="output/bench_moe_equal_epochs")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    extra = args.stage1_epochs + args.stage2_epochs
    data = [f"datasets.rs_synthetic.build_info.sizes.train={args.train}", f"datasets.rs_synthetic.build_info.sizes.val={args.val}",
            f"datasets.rs_synthetic.build_info.sizes.test={args.test}", f"datasets.rs_synthetic.build_info.cache_dir={out / 'cache'}",
            "run.warmup_steps=20", "run.val_freq=1", "run.skip_metrics=[METEOR,SPICE]"]
    arms = ["dense", "dense control", "stage 1", "stage 2"]
    epochs = {"dense": args.dense_epochs, "dense control": args.dense_epochs + extra,
              "stage 1": args.dense_epochs + args.stage1_epochs, "stage 2": args.dense_epochs + extra}
    print(f"synthetic scenes train/val/test {args.train}/{args.val}/{args.test}; seeds {args.seeds}; total epochs per arm: "
          + ", ".join(f"{a} {epochs[a]}" for a in arms))
    results = {a: [] for a in arms}
    for seed in args.seeds:
        d = out / f"seed{seed}"
        common = data + [f"run.seed={seed}"]
        dense_ckpt = d / "dense" / "checkpoint_best.pth"
        s1_ckpt = d / "s1" / "checkpoint_best.pth"
        got = {}
        got["dense"] = run("instructblip/synthetic_caption.yaml", d, "dense", common + [f"run.max_epoch={args.dense_epochs}"])
        got["dense control"] = run("instructblip/synthetic_caption.yaml", d, "control",
                                   common + [f"run.max_epoch={extra}", f"model.finetuned={dense_ckpt}"])
        got["stage 1"] = run("rs_moe/synthetic_stage1.yaml", d, "s1",
                             common + [f"run.max_epoch={args.stage1_epochs}", f"model.init_from={dense_ckpt}"])
        got["stage 2"] = run("rs_moe/synthetic_stage2.yaml", d, "s2",
                             common + [f"run.max_epoch={args.stage2_epochs}", f"model.init_from={s1_ckpt}"])
        for a in arms:
            m, sec = got[a]
            results[a].append(m)
            print(f"seed {seed} {a:<14} epochs {epochs[a]:>2}  test CIDEr {m['CIDEr']:.3f}  Bleu_4 {m['Bleu_4']:.3f}  ({sec:.0f} s)", flush=True)

    def summary(a, key):
        v = [m[key] for m in results[a]]
        return f"{statistics.mean(v):.3f}" + (f" +- {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    print("\nmean over seeds (+- sd):")
    for a in arms:
        print(f"{a:<14} epochs {epochs[a]:>2}  test CIDEr {summary(a, 'CIDEr')}  Bleu_4 {summary(a, 'Bleu_4')}")
    diffs = [s["CIDEr"] - c["CIDEr"] for s, c in zip(results["stage 2"], results["dense control"])]
    print(f"stage 2 - dense control (same total epochs), test CIDEr per seed: {', '.join(f'{x:+.3f}' for x in diffs)}")
    diffs = [s["CIDEr"] - c["CIDEr"] for s, c in zip(results["stage 2"], results["dense"])]
    print(f"stage 2 - dense start (fewer epochs, the former comparison): {', '.join(f'{x:+.3f}' for x in diffs)}")


if __name__ == "__main__":
    main()
