"""Ablation of smallcap_causal on the confounded synthetic split: causal block x retrieval, several seeds.

    python bench/causal_ablation.py [--seeds 0 1 2] [--train 200] [--epochs 2] [--out bench_causal.json]

The confounded split (``rs_synthetic`` with ``type: confounded``): in training, scenes on
the context background (concrete) show the object (plane) 90% of the time; every test
scene shows the context *without* the object. Each arm trains the tiny model (smaller
than the demo so the whole grid runs on CPU in about half an hour) with the same data,
schedule and seeds, and reports:

- test CIDEr (pycocoevalcap, METEOR/SPICE skipped);
- the hallucination rate of the confounded object: the share of test captions that name
  it (``plane``/``planes``/``airplane``...), every one of which is wrong by construction;
- mean, standard deviation and range over seeds.

Arms: causal block on/off x retrieval on/off (token attention and the contrastive loss
stay on in all arms). Nothing here is tuned toward a result; the settings are the model
defaults except the model size, data size and epochs, which only bound the run time.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROJECT = """
model:
  arch: smallcap_causal
  model_type: tiny
  vision: {{num_layers: 2, hidden_size: 64, num_heads: 2, intermediate_size: 128}}
  decoder: {{n_layer: 2, n_embd: 64, n_head: 2}}
  retrieval: {{cache_dir: {work}/retrieval}}
datasets:
  rs_synthetic:
    type: confounded
    build_info:
      cache_dir: {work}/scenes
      sizes: {{train: {train}, val: 50, test: 100}}
run:
  task: captioning
  lr_sched: linear_warmup_cosine_lr
  init_lr: 1.0e-3
  min_lr: 1.0e-5
  warmup_lr: 1.0e-5
  warmup_steps: 20
  weight_decay: 0.05
  max_epoch: {epochs}
  batch_size_train: 32
  batch_size_eval: 50
  num_workers: 0
  log_freq: 50
  val_freq: {epochs}
  output_dir: {work}/runs
  max_len: 20
  min_len: 3
  num_beams: 1
  skip_metrics: [METEOR, SPICE]
"""

ARMS = {
    "causal+rag": {"model.causal_block.enabled": "true", "model.disable_rag": "false"},
    "causal, no rag": {"model.causal_block.enabled": "true", "model.disable_rag": "true"},
    "no causal, rag": {"model.causal_block.enabled": "false", "model.disable_rag": "false"},
    "no causal, no rag": {"model.causal_block.enabled": "false", "model.disable_rag": "true"},
}


def mentions(caption, obj):
    """Whether ``caption`` names ``obj`` (singular, plural, or as the end of a compound like airplane)."""
    return re.search(rf"\b\w*{re.escape(obj)}s?\b", caption.lower()) is not None


def run_arm(project, work, arm, options, seed):
    job = re.sub(r"\W+", "_", arm) + f"_s{seed}"
    args = [sys.executable, "-m", "rslavis.train", "--cfg-path", str(project), "--options", f"run.seed={seed}", f"run.job_id={job}"]
    args += [f"{k}={v}" for k, v in options.items()]
    t0 = time.time()
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{out.stderr[-3000:]}")
    metrics = json.loads(out.stdout[out.stdout.index("{"):])["test"]["test"]
    run_dir = Path(work) / "runs" / job
    preds = json.loads(sorted((run_dir / "result").glob("test_epoch*.json"))[-1].read_text())
    return metrics, preds, time.time() - t0


def summary(values):
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd, min(values), max(values)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train", type=int, default=200, help="training images (5 captions each)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON")
    args = p.parse_args(argv)

    from omegaconf import OmegaConf

    conf = OmegaConf.load(ROOT / "rslavis/configs/datasets/rs_synthetic/confounded.yaml").datasets.rs_synthetic.build_info.confounded
    obj, context = conf.object, conf.context
    work = Path(args.work or tempfile.mkdtemp(prefix="causal_ablation_"))
    work.mkdir(parents=True, exist_ok=True)
    project = work / "project.yaml"
    project.write_text(PROJECT.format(work=work, train=args.train, epochs=args.epochs))
    print(f"confounded split: context {context!r}, object {obj!r} (co-occurrence {conf.cooccurrence} in training, absent in test)")
    print(f"train {args.train} images x 5 captions, {args.epochs} epochs, seeds {args.seeds}, work folder {work}")
    results = {}
    for arm in args.arms:
        rows = []
        for seed in args.seeds:
            metrics, preds, seconds = run_arm(project, work, arm, ARMS[arm], seed)
            halluc = sum(mentions(r["caption"], obj) for r in preds) / len(preds)
            rows.append({"seed": seed, "CIDEr": metrics["CIDEr"], "hallucination": halluc, "seconds": round(seconds, 1)})
            print(f"  {arm:18s} seed {seed}: CIDEr {metrics['CIDEr']:.3f}  {obj} hallucination {halluc:.3f}  ({seconds:.0f} s)", flush=True)
        results[arm] = rows

    print()
    print(f"{'arm':18s} | {'test CIDEr mean ± sd [min, max]':34s} | {obj + ' hallucination rate mean ± sd [min, max]':40s}")
    for arm, rows in results.items():
        c = summary([r["CIDEr"] for r in rows])
        h = summary([r["hallucination"] for r in rows])
        print(f"{arm:18s} | {c[0]:.3f} ± {c[1]:.3f} [{c[2]:.3f}, {c[3]:.3f}]{'':9s} | {h[0]:.3f} ± {h[1]:.3f} [{h[2]:.3f}, {h[3]:.3f}]")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "object": obj, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
