"""Does SCST help? Greedy val CIDEr and count error, before and after SCST, over 3 seeds.

For each seed: a tiny SmallCap is trained with cross-entropy on the synthetic aerial
scenes (``python -m rslavis.train``, task ``captioning``); from its checkpoint
(``model.finetuned``) two SCST runs follow with the same number of steps and learning
rate: rewards ``{cider: 1}`` and ``{cider: 1, count: 1}``, and the equal-compute control:
cross-entropy continued from the same checkpoint for the same number of steps, images
per step and learning rate (task ``scst`` with ``scst_start_epoch`` past the run, so every
step is cross-entropy). A gain is SCST's only if it beats that control. Every run is evaluated by
greedy decoding on the same validation split; the script prints, per seed and as mean
+- standard deviation over seeds, CIDEr-D (pycocoevalcap) and the mean absolute count
error (over objects counted both in the caption and in the scene's ``count_dict``,
:func:`rslavis.metrics.object_metrics.object_metrics`, ``rules`` parser), with per seed the
number of objects that error compares (``n_counted``: captions that state fewer counts
are compared on fewer objects).

    python bench/scst_gain.py [--seeds 0 1 2] [--train 300] [--ce-epochs 5] [--scst-steps 40] [--threads 1]

The README's run is shrunk to fit a shared 2-core machine (``--seeds 0 1 --train 200
--ce-epochs 4 --scst-steps 30``: 9 to 35 minutes there, by its load); the defaults take longer. Every run
is a subprocess with ``OMP_NUM_THREADS=--threads`` (on a shared machine one thread per
process avoids oversubscription). Nothing here is tuned to the outcome: the settings were fixed before
the first run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = """
model:
  arch: smallcap
  model_type: tiny
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {cache}
      sizes: {{train: {train}, val: {val}, test: 10}}
run:
  task: captioning
  num_workers: 0
  batch_size_eval: 50
  max_len: 25
  min_len: 3
  skip_metrics: [METEOR, SPICE]
  test_splits: []
  output_dir: {out}
  log_freq: 10
"""


def train(cfg_path, options, threads, log):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "rslavis.train", "--cfg-path", str(cfg_path), "--options", *options]
    t = time.time()
    with open(log, "a") as f:
        proc = subprocess.run(args, cwd=ROOT, env=env, stdout=f, stderr=f)
    if proc.returncode != 0:
        raise SystemExit(f"run failed (see {log}): {' '.join(args)}")
    return time.time() - t


def scores(result_file, val):
    from rslavis.metrics.coco_caption import caption_metrics
    from rslavis.metrics.object_metrics import object_metrics

    preds = {r["image_id"]: r["caption"] for r in json.loads(Path(result_file).read_text())}
    refs = val.references()
    counts = {r["image_id"]: r["count_dict"] for r in val.records}
    cider = caption_metrics(refs, preds, meteor=False, spice=False)["CIDEr"]
    obj = object_metrics(refs, preds, parser="rules", count_dicts=counts)
    err = obj["count_abs_error"]  # None when no count was compared
    return {"CIDEr": cider, "count_abs_error": float("nan") if err is None else err, "n_counted": obj["n_counted"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=300, help="training images (5 captions each)")
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--ce-epochs", type=int, default=5)
    ap.add_argument("--scst-steps", type=int, default=40)
    ap.add_argument("--scst-batch", type=int, default=16)
    ap.add_argument("--scst-samples", type=int, default=5)
    ap.add_argument("--scst-lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="scst_gain_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "base.yaml"
    cfg.write_text(BASE.format(cache=work / "cache", train=args.train, val=args.val, out=work / "out"))
    log = work / "runs.log"
    print(f"workdir {work} (run logs: {log})", flush=True)

    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    c = Config.from_file(cfg)
    started = time.time()
    rows = []
    val = None
    for seed in args.seeds:
        ce = [f"run.job_id=ce{seed}", f"run.seed={seed}", f"run.max_epoch={args.ce_epochs}", f"run.val_freq={args.ce_epochs}",
              "run.init_lr=1e-3", "run.min_lr=1e-5", "run.warmup_steps=30", "run.batch_size_train=32"]
        secs = train(cfg, ce, args.threads, log)
        ce_dir = work / "out" / f"ce{seed}"
        if val is None:  # the same split for every run (the cache exists now)
            val = registry.get_builder_class("rs_synthetic")(c.datasets.rs_synthetic, "rs_synthetic").build_datasets()["val"]
        row = {"seed": seed, "ce": scores(ce_dir / "result" / f"val_epoch{args.ce_epochs - 1}.json", val), "ce_s": secs}
        for name, rewards in (("ce_more", "{cider: 1.0}"), ("cider", "{cider: 1.0}"), ("cider+count", "{cider: 1.0, count: 1.0}")):
            job = f"scst{seed}_{name.replace('+', '_')}"
            start = 1 if name == "ce_more" else 0  # ce_more: SCST never starts, the same steps are cross-entropy
            opts = [f"run.job_id={job}", f"run.seed={seed}", "run.task=scst", f"model.finetuned={ce_dir / 'checkpoint_best.pth'}",
                    f"run.scst_start_epoch={start}", "run.max_epoch=1", f"run.iters_per_epoch={args.scst_steps}",
                    f"run.batch_size_train={args.scst_batch}", f"run.scst_num_samples={args.scst_samples}",
                    "run.lr_sched=constant_lr", f"run.init_lr={args.scst_lr}", "run.scst_reward_parser=rules", f"run.rewards={rewards}"]
            secs = train(cfg, opts, args.threads, log)
            row[name] = scores(work / "out" / job / "result" / "val_epoch0.json", val)
            row[name + "_s"] = secs
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nSCST from cross-entropy checkpoints: {len(args.seeds)} seeds, {args.train} train / {args.val} val images, "
          f"CE {args.ce_epochs} epochs, SCST {args.scst_steps} steps x {args.scst_batch} images x {args.scst_samples} samples, "
          f"lr {args.scst_lr}, greedy baseline; greedy decoding on val")
    print(f"{'run':14s} {'CIDEr':>16s} {'count abs err':>16s}   per seed (CIDEr / count err / objects compared)")
    for name in ("ce", "ce_more", "cider", "cider+count"):
        cid = [r[name]["CIDEr"] for r in rows]
        err = [r[name]["count_abs_error"] for r in rows]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        # objects compared: (image, object) pairs counted both in the caption and in the scene (the error's denominator)
        per = "  ".join(f"{a:.3f}/{b:.3f}/{r[name]['n_counted']}" for a, b, r in zip(cid, err, rows))
        label = {"ce": "cross-entropy", "ce_more": "+CE same steps", "cider": "+SCST cider", "cider+count": "+SCST cid+count"}[name]
        print(f"{label:14s} {statistics.mean(cid):8.3f} +- {sd(cid):5.3f} {statistics.mean(err):8.3f} +- {sd(err):5.3f}   {per}")
    for name in ("cider", "cider+count"):
        d_cid = [r[name]["CIDEr"] - r["ce_more"]["CIDEr"] for r in rows]
        d_err = [r[name]["count_abs_error"] - r["ce_more"]["count_abs_error"] for r in rows]
        print(f"{name} vs CE same steps: CIDEr {statistics.mean(d_cid):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in d_cid)}), "
              f"count abs err {statistics.mean(d_err):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in d_err)})")
    for name in ("ce_more", "cider", "cider+count"):
        d_cid = [r[name]["CIDEr"] - r["ce"]["CIDEr"] for r in rows]
        d_err = [r[name]["count_abs_error"] - r["ce"]["count_abs_error"] for r in rows]
        print(f"change with {name:12s}: CIDEr {statistics.mean(d_cid):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in d_cid)}), "
              f"count abs err {statistics.mean(d_err):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in d_err)})")
    print(f"wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
