"""GRPO vs SCST from the same cross-entropy start, same reward, same number of sampled captions.

A tiny random Qwen2.5-VL (``hf_vlm``, transformers' own class) is trained once with
cross-entropy on the synthetic aerial scenes (task ``captioning``). From that checkpoint
(``model.finetuned``), for each seed, three runs of the same number of steps, batch and
learning rate follow:

- ``scst``: task ``scst``, ``n`` samples per image, baseline ``mean`` (the image's other
  samples: no extra greedy decode, so both RL methods draw exactly ``n`` captions per image);
- ``grpo``: task ``grpo``, group ``G = n``, group-std-normalised advantages, ``mu = 1``,
  ``beta = 0`` (TRL's defaults), sequence-level aggregation;
- ``ce-more``: the equal-compute control: the same number of further cross-entropy steps.

Reward for both RL runs: ``{cider: 1.0, count: 0.5}`` (``rules`` parser). Every run is
scored by greedy decoding on the same validation split: CIDEr-D (pycocoevalcap) and the
mean absolute count error (:func:`rslavis.metrics.object_metrics.object_metrics`).
Printed: per seed, mean +- standard deviation over seeds, and seconds per training step
(from each run's ``log.jsonl``: the training epoch's seconds / steps; evaluation excluded).

    python bench/grpo_vs_scst.py [--seeds 0 1 2] [--train 200] [--val 50] [--ce-epochs 8] [--rl-steps 30]

Sizes are chosen so the whole bench takes about 10-15 minutes on 2 shared CPU cores
(one thread per run); they are small, so the numbers say how the two objectives compare
on this toy problem at this budget, not how they compare on real data. Settings were fixed
before the first run and not tuned to the outcome.
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
  arch: hf_vlm
  model_type: tiny
  family: {family}
  prompt: "Describe the image briefly."
  vision: {{image_size: 32, patch_size: 8, hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 128}}
  llm: {{hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, intermediate_size: 128}}
datasets:
  rs_synthetic:
    vis_processor:
      train: {{name: rs_image_train, image_size: 32, min_scale: 0.9}}
      eval: {{name: rs_image_eval, image_size: 32}}
    build_info:
      cache_dir: {cache}
      image_size: 32
      sizes: {{train: {train}, val: {val}, test: 10}}
run:
  task: captioning
  num_workers: 0
  batch_size_eval: 50
  max_len: 20
  min_len: 3
  skip_metrics: [METEOR, SPICE]
  test_splits: []
  output_dir: {out}
  log_freq: 1
"""


def train(cfg_path, options, threads, log):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), RSLAVIS_REPORT="0")
    args = [sys.executable, "-m", "rslavis.train", "--cfg-path", str(cfg_path), "--options", *options]
    t = time.time()
    with open(log, "a") as f:
        proc = subprocess.run(args, cwd=ROOT, env=env, stdout=f, stderr=f)
    if proc.returncode != 0:
        raise SystemExit(f"run failed (see {log}): {' '.join(args)}")
    return time.time() - t


def seconds_per_step(run_dir):
    """Training seconds per step of the run's last epoch (``seconds`` counts from the epoch's start)."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r and "split" not in r]
    last = max(r["epoch"] for r in steps)
    steps = [r for r in steps if r["epoch"] == last]
    return steps[-1]["seconds"] / len(steps)


def scores(result_file, val):
    from rslavis.metrics.coco_caption import caption_metrics
    from rslavis.metrics.object_metrics import object_metrics

    preds = {r["image_id"]: r["caption"] for r in json.loads(Path(result_file).read_text())}
    refs = val.references()
    counts = {r["image_id"]: r["count_dict"] for r in val.records}
    cider = caption_metrics(refs, preds, meteor=False, spice=False)["CIDEr"]
    obj = object_metrics(refs, preds, parser="rules", count_dicts=counts)
    return {"CIDEr": cider, "count_abs_error": obj["count_abs_error"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--train", type=int, default=200, help="training images (5 captions each)")
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--ce-epochs", type=int, default=8)
    ap.add_argument("--rl-steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="images per RL step")
    ap.add_argument("--samples", type=int, default=4, help="captions sampled per image (SCST n = GRPO G)")
    ap.add_argument("--lr", type=float, default=2e-4, help="constant learning rate of every run after the CE start")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="grpo_vs_scst_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "base.yaml"
    cfg.write_text(BASE.format(family=args.family, cache=work / "cache", train=args.train, val=args.val, out=work / "out"))
    log = work / "runs.log"
    print(f"workdir {work} (run logs: {log})", flush=True)

    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    started = time.time()
    ce_opts = ["run.job_id=ce", "run.seed=0", f"run.max_epoch={args.ce_epochs}", f"run.val_freq={args.ce_epochs}", "run.init_lr=2e-3",
               "run.min_lr=1e-5", "run.warmup_lr=1e-5", "run.warmup_steps=30", "run.lr_sched=linear_warmup_cosine_lr", "run.batch_size_train=32",
               "run.log_freq=50"]
    ce_dir = work / "out" / "ce"
    ckpt = ce_dir / "checkpoint_best.pth"
    if ckpt.is_file() and (ce_dir / "metrics_val.json").is_file():  # --workdir of an earlier run: same CE start
        ce_secs = float("nan")
        print(f"reusing the cross-entropy start {ckpt}", flush=True)
    else:
        ce_secs = train(cfg, ce_opts, args.threads, log)
    val = registry.get_builder_class("rs_synthetic")(Config.from_file(cfg).datasets.rs_synthetic, "rs_synthetic").build_datasets()["val"]
    start = scores(ce_dir / "result" / f"val_epoch{args.ce_epochs - 1}.json", val)
    print(json.dumps({"ce_start": start, "seconds": ce_secs}), flush=True)

    common = [f"model.finetuned={ckpt}", "run.max_epoch=1", f"run.iters_per_epoch={args.rl_steps}", f"run.batch_size_train={args.batch}",
              "run.lr_sched=constant_lr", f"run.init_lr={args.lr}", "run.weight_decay=0.0"]
    rl = ["run.scst_reward_parser=rules", "run.rewards={cider: 1.0, count: 0.5}"]
    methods = {
        "scst": ["run.task=scst", "run.scst_start_epoch=0", f"run.scst_num_samples={args.samples}", "run.scst_baseline=mean",
                 "run.scst_max_len=20", *rl],
        "grpo": ["run.task=grpo", "run.grpo_start_epoch=0", f"run.grpo_group_size={args.samples}", "run.grpo_max_len=20", "run.grpo_mu=1",
                 "run.grpo_beta=0.0", "run.grpo_scale_rewards=group", "run.grpo_loss_agg=sequence", *rl],
        # the captioning task ignores model.finetuned; scst before its start epoch is cross-entropy from the checkpoint
        "ce-more": ["run.task=scst", "run.scst_start_epoch=1"],
    }
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for name, opts in methods.items():
            job = f"{name}{seed}"
            train(cfg, [f"run.job_id={job}", f"run.seed={seed}", *common, *opts], args.threads, log)
            row[name] = scores(work / "out" / job / "result" / "val_epoch0.json", val)
            row[name]["s_per_step"] = seconds_per_step(work / "out" / job)
        rows.append(row)
        print(json.dumps(row), flush=True)

    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    num = lambda v: float("nan") if v is None else v  # noqa: E731  (no object counted in any caption)
    print(f"\n{args.family} tiny (hf_vlm), {args.train} train / {args.val} val synthetic images; CE start: {args.ce_epochs} epochs "
          f"(one checkpoint for all runs); then {args.rl_steps} steps x {args.batch} images, lr {args.lr}, {len(args.seeds)} seeds; "
          f"RL: {args.samples} sampled captions per image, reward cider + 0.5 count; greedy decoding on val")
    print(f"{'run':24s} {'val CIDEr':>16s} {'count abs err':>16s} {'s/step':>8s}   per seed (CIDEr / count err)")
    print(f"{'cross-entropy start':24s} {start['CIDEr']:8.3f}          {num(start['count_abs_error']):8.3f}")
    labels = {"ce-more": "CE, same steps (control)", "scst": "SCST (mean baseline)", "grpo": "GRPO (group std)"}
    for name in ("ce-more", "scst", "grpo"):
        cid = [r[name]["CIDEr"] for r in rows]
        err = [num(r[name]["count_abs_error"]) for r in rows]
        sps = [r[name]["s_per_step"] for r in rows]
        per = "  ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(cid, err))
        print(f"{labels[name]:24s} {statistics.mean(cid):8.3f} +- {sd(cid):5.3f} {statistics.mean(err):8.3f} +- {sd(err):5.3f} "
              f"{statistics.mean(sps):8.2f}   {per}")
    print(f"wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
