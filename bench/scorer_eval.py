"""Evidence for the learned quality scorer (issue 8), at tiny sizes on CPU.

    python bench/scorer_eval.py [--out output/bench_scorer_eval] [--epochs-scorer 6] [--epochs-captioner 8]

1. Scorer: a tiny CLIP-style ``score_model`` trained on preference pairs generated
   from synthetic scenes (seed 1; reference caption over its corruption), then its
   pairwise accuracy on held-out pairs (the test split's scenes) per corruption type.
2. Curation: the captioning scenes (seed 0) get noisy training captions (a share
   ``--noise`` of captions replaced by corrupted versions; the scorer never saw these
   scenes). ``python -m rslavis.curate`` keeps the top 70 % by score and, as the
   control, a random 70 %; a tiny SmallCap is trained on each (same seed, epochs,
   schedule) and scored on the clean test split (CIDEr, count error). Also printed:
   the share of noisy captions in each kept subset.
3. Best-of-N: the top-70 % captioner decodes the test split greedily and with
   best-of-N (n samples + the greedy caption, the scorer picks).

Count error: mean |n_caption - n_reference| over objects counted in both the caption
and the scene's ground truth (rules parser), over captions with such an object;
"coverage" is the share of captions with one. Everything runs with one torch thread
(OMP_NUM_THREADS=1); numbers come from one run, nothing is tuned toward a result.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           RSLAVIS_REPORT="0", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

SCORER = """
model: {{arch: score_model, model_type: tiny_clip}}
datasets:
  caption_preferences:
    build_info:
      source: rs_synthetic
      source_config: {{build_info: {{cache_dir: {cache}, seed: 1, sizes: {{train: {n_train}, val: 50, test: 100}}}}}}
      pairs_per_caption: 1
      seed: 0
run:
  task: preference
  init_lr: 1.0e-3
  min_lr: 1.0e-5
  warmup_steps: 20
  max_epoch: {epochs}
  batch_size_train: 32
  batch_size_eval: 64
  log_freq: 50
  val_freq: {epochs}
  seed: 42
  output_dir: {out}
"""

CAPTIONER = """
model:
  arch: smallcap
  model_type: tiny
  decoder: {{n_layer: 2, n_embd: 96, n_head: 4}}
  vision: {{num_layers: 2, hidden_size: 96, num_heads: 4, intermediate_size: 192}}
datasets:
  rs_synthetic:
    build_info: {{cache_dir: {cache}, seed: 0, sizes: {{train: {n_train}, val: 50, test: 150}}}}
run:
  task: captioning
  init_lr: 1.0e-3
  min_lr: 1.0e-5
  warmup_steps: 30
  max_epoch: {epochs}
  batch_size_train: 32
  batch_size_eval: 50
  log_freq: 50
  val_freq: {epochs}
  seed: 42
  output_dir: {out}
  max_len: 25
  min_len: 3
  skip_metrics: [METEOR, SPICE]
"""


def sh(args, log):
    t = time.time()
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    log.write_text(out.stdout + "\n---- stderr ----\n" + out.stderr)
    if out.returncode != 0:
        sys.exit(f"command failed ({' '.join(args)}); see {log}\n{out.stderr[-2000:]}")
    return time.time() - t


def train(cfg_path, job, options=(), log_dir=None):
    args = ["-m", "rslavis.train", "--cfg-path", str(cfg_path), "--options", f"run.job_id={job}", *options]
    secs = sh(args, Path(log_dir) / f"{job}.log")
    return secs


def count_error(preds, gt):
    """(mean abs count error over captions with a compared object, coverage)."""
    from rslavis.rewards.count import CountReward

    reward = CountReward(parser="rules")
    ids = list(preds)
    errs = reward.errors([preds[i] for i in ids], [gt[i]["captions"] for i in ids], count_dicts=[gt[i]["count_dict"] for i in ids])
    vals = [e[0] for e in errs if e[0] is not None]
    return (sum(vals) / len(vals) if vals else float("nan")), len(vals) / max(len(errs), 1)


def test_metrics(run_dir, gt):
    m = json.loads((run_dir / "metrics_test.json").read_text())
    res = json.loads(sorted((run_dir / "result").glob("test_epoch*.json"))[-1].read_text())
    err, cov = count_error({r["image_id"]: r["caption"] for r in res}, gt)
    return {"CIDEr": m["CIDEr"], "Bleu_4": m["Bleu_4"], "count_error": err, "count_coverage": cov}


def make_noisy(cache, out_cache, noise, seed):
    """Copy the synthetic cache folder with a share ``noise`` of training captions corrupted; returns noisy flags."""
    from rslavis.datasets.corruptions import DEFAULT_SHARES, CORRUPTIONS, CaptionCorrupter

    src = next(p for p in Path(cache).iterdir() if (p / "annotations.json").is_file())
    data = json.loads((src / "annotations.json").read_text())
    recs = data["splits"]["train"]
    pool = [c for r in recs for c in r["captions"]]
    owners = [r["image_id"] for r in recs for _ in r["captions"]]
    corrupter = CaptionCorrupter(pool, owners)
    rng = random.Random(seed)
    noisy = {}
    kinds, weights = list(DEFAULT_SHARES), list(DEFAULT_SHARES.values())
    for r in recs:
        caps = list(r["captions"])
        for j, c in enumerate(caps):
            if rng.random() < noise:
                for kind in [rng.choices(kinds, weights)[0], *CORRUPTIONS]:
                    bad = corrupter.corrupt(c, kind, rng, image_id=r["image_id"], own=r["captions"])
                    if bad is not None:
                        caps[j] = bad
                        noisy[(r["image_id"], bad)] = kind
                        break
        r["captions"] = caps
    target = Path(out_cache) / src.name
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "images").exists():
        os.symlink((src / "images").resolve(), target / "images")
    (target / "annotations.json").write_text(json.dumps(data))
    return noisy, sum(len(r["captions"]) for r in recs)


def noisy_share(curated_cache, noisy):
    src = next(p for p in Path(curated_cache).iterdir() if (p / "annotations.json").is_file())
    recs = json.loads((src / "annotations.json").read_text())["splits"]["train"]
    caps = [(r["image_id"], c) for r in recs for c in r["captions"]]
    return sum((k in noisy) for k in caps) / max(len(caps), 1), len(caps)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="output/bench_scorer_eval")
    p.add_argument("--scorer-train", type=int, default=400, help="synthetic scenes for the scorer's preference pairs")
    p.add_argument("--epochs-scorer", type=int, default=6)
    p.add_argument("--captioner-train", type=int, default=400)
    p.add_argument("--epochs-captioner", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.3, help="share of training captions corrupted before curation")
    p.add_argument("--keep", type=float, default=0.7)
    p.add_argument("--n", type=int, default=8, help="best-of-N samples")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    print(f"torch threads: {torch.get_num_threads()} (subprocesses OMP_NUM_THREADS=1)")

    # 1. scorer ----------------------------------------------------------------------
    cfg = out / "scorer.yaml"
    cfg.write_text(SCORER.format(cache=out / "cache_scorer", n_train=args.scorer_train, epochs=args.epochs_scorer, out=out / "scorer"))
    secs = train(cfg, "scorer", log_dir=logs)
    scorer_dir = out / "scorer" / "scorer"
    m = json.loads((scorer_dir / "metrics_test.json").read_text())
    print(f"\n[1] scorer: tiny CLIP, {args.scorer_train} scenes x 5 captions -> pairs, {args.epochs_scorer} epochs, {secs:.0f} s")
    print(f"    held-out pairs (test scenes, {int(m['items'])} pairs): pairwise accuracy {m['accuracy']:.3f}")
    for k in sorted(k for k in m if k.startswith("accuracy/")):
        print(f"      {k.split('/', 1)[1]:<14} {m[k]:.3f}")

    # 2. curation --------------------------------------------------------------------
    cap_cfg = out / "captioner.yaml"
    clean_cache = out / "cache_captions"
    noisy_cache = out / "cache_captions_noisy"
    common = dict(n_train=args.captioner_train, epochs=args.epochs_captioner)
    cap_cfg.write_text(CAPTIONER.format(cache=clean_cache, out=out / "captioner", **common))
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    c = Config.from_file(cap_cfg)
    registry.get_builder_class("rs_synthetic")(c.datasets.rs_synthetic, "rs_synthetic").build_datasets()  # materialise scenes
    noisy, total = make_noisy(clean_cache, noisy_cache, args.noise, seed=7)
    noisy_cfg = out / "captioner_noisy.yaml"
    noisy_cfg.write_text(CAPTIONER.format(cache=noisy_cache, out=out / "captioner", **common))
    gt_src = next(p for p in clean_cache.iterdir() if (p / "annotations.json").is_file())
    gt = {r["image_id"]: r for r in json.loads((gt_src / "annotations.json").read_text())["splits"]["test"]}
    print(f"\n[2] curation: {args.captioner_train} training scenes, {len(noisy)} of {total} captions corrupted ({len(noisy) / total:.0%})")
    rows = {}
    for select in ("top", "random"):
        cdir = out / f"curated_{select}"
        secs = sh(["-m", "rslavis.curate", "--cfg-path", str(noisy_cfg), "--scorer", str(scorer_dir), "--keep", str(args.keep),
                   "--out", str(cdir), "--select", select, "--seed", "0"], logs / f"curate_{select}.log")
        share, kept = noisy_share(cdir / "rs_synthetic", noisy)
        tsecs = train(cdir / "curated.yaml", f"cap_{select}", log_dir=logs)
        rows[select] = dict(test_metrics(out / "captioner" / f"cap_{select}", gt), noisy_share=share, kept=kept, secs=tsecs, curate_secs=secs)
    tsecs = train(noisy_cfg, "cap_all", log_dir=logs)
    rows["all (no curation)"] = dict(test_metrics(out / "captioner" / "cap_all", gt), noisy_share=len(noisy) / total, kept=total, secs=tsecs)
    print(f"    {'training captions':<22} {'kept':>5} {'noisy':>6} {'CIDEr':>7} {'Bleu_4':>7} {'count err':>9} {'coverage':>8} {'train s':>7}")
    for name, r in rows.items():
        label = {"top": f"top {args.keep:.0%} by score", "random": f"random {args.keep:.0%}"}.get(name, name)
        print(f"    {label:<22} {r['kept']:>5} {r['noisy_share']:>6.1%} {r['CIDEr']:>7.3f} {r['Bleu_4']:>7.3f} {r['count_error']:>9.3f} {r['count_coverage']:>8.1%} {r['secs']:>7.0f}")

    # 3. best-of-N ---------------------------------------------------------------------
    cap_dir = out / "captioner" / "cap_top"
    ckpt = cap_dir / "checkpoint_best.pth"
    opts = ["run.evaluate=True", f"run.resume_ckpt_path={ckpt}", "run.inference_method=best_of_n",
            f"run.best_of_n={{n: {args.n}, scorer: {scorer_dir}, temperature: 1.0, include_greedy: true, seed: 0}}"]
    secs = train(out / "curated_top" / "curated.yaml", "cap_top_bon", options=opts, log_dir=logs)
    bon = test_metrics(out / "captioner" / "cap_top_bon", gt)
    greedy = rows["top"]
    print(f"\n[3] best-of-N on the top-{args.keep:.0%} captioner, test split ({len(gt)} scenes), n={args.n} samples + greedy, scorer picks")
    print(f"    {'decoding':<22} {'CIDEr':>7} {'Bleu_4':>7} {'count err':>9} {'coverage':>8}")
    print(f"    {'greedy':<22} {greedy['CIDEr']:>7.3f} {greedy['Bleu_4']:>7.3f} {greedy['count_error']:>9.3f} {greedy['count_coverage']:>8.1%}")
    print(f"    {f'best-of-{args.n}':<22} {bon['CIDEr']:>7.3f} {bon['Bleu_4']:>7.3f} {bon['count_error']:>9.3f} {bon['count_coverage']:>8.1%}   ({secs:.0f} s)")
    print(f"\ntotal {time.time() - t_all:.0f} s; outputs in {out}")


if __name__ == "__main__":
    main()
