"""Where an SCST step spends its time: sampling (incl. the greedy baseline), rewards, backward.

Builds the task, datasets and model of a project exactly as ``python -m rslavis.train``
does (default: the tiny SCST project), trains the model with cross-entropy for
``--ce-epochs`` epochs (the project's own ``scst_start_epoch``, 3, by default: a model
that has learnt to caption samples captions like a trained one, an untrained one samples
noise), then times ``--steps`` SCST steps on training batches after ``--warmup`` untimed
ones (first-call costs: CIDEr corpus statistics, parser start-up, reference caches).
Each phase is timed with ``time.perf_counter`` inside :meth:`SCSTTask.scst_step`;
backward and the optimizer step are timed here.

The profile runs twice, each in its own process: with the caption parser a user gets
by default (``scst_reward_parser`` unset: ``hybrid``) and with ``rules``.
Prints the mean seconds of each phase, its share of the step, and the rewards' share
against the goal (<= 5%).

    python bench/scst_step_profile.py [--cfg-path projects/smallcap/synthetic_scst.yaml] [--steps 10]
        [--parsers default rules] [--options run.batch_size_train=16 ...]

On a shared machine set ``OMP_NUM_THREADS=1`` (thread oversubscription inflates every phase).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


GOAL = 0.05


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg-path", default=str(ROOT / "projects" / "smallcap" / "synthetic_scst.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ce-epochs", type=int, default=None, help="cross-entropy epochs first (default: the project's scst_start_epoch)")
    ap.add_argument("--parsers", nargs="+", default=["default", "rules"])
    ap.add_argument("--options", nargs="*", default=[])
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is None:
        rc = 0
        for parser in args.parsers:
            cmd = [sys.executable, __file__, "--one", parser, "--cfg-path", args.cfg_path, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--options", *args.options]
            if args.ce_epochs is not None:
                cmd += ["--ce-epochs", str(args.ce_epochs)]
            print(f"==== caption parser of the rewards: {parser}", flush=True)
            rc |= subprocess.call(cmd)
        return rc
    parser_opt = "run.scst_reward_parser=null" if args.one == "default" else f"run.scst_reward_parser={args.one}"
    args.options = [*args.options, parser_opt]

    from rslavis.common.checkpoint import seed_everything
    from rslavis.common.config import Config
    from rslavis.common.registry import registry
    from rslavis.runners.runner_base import RunnerBase

    out_dir = Path("/tmp") / f"scst_profile_{os.getpid()}"
    cfg = Config.from_file(args.cfg_path, [f"run.output_dir={out_dir}", "run.job_id=profile", "model.finetuned=", *args.options])
    seed_everything(int(cfg.run.seed))
    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner = RunnerBase(cfg, task, model, datasets, "profile")
    model.prepare_for_training(datasets, None)
    loader = runner._loader(runner.train_dataset(), train=True)
    model.train()
    ce_epochs = task.start_epoch if args.ce_epochs is None else args.ce_epochs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(cfg.run.init_lr))
    t_ce = time.perf_counter()
    ce_steps, ce_loss = 0, float("nan")
    for _ in range(ce_epochs):
        for samples in loader:
            loss = model(samples)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ce_steps, ce_loss = ce_steps + 1, float(loss.detach())
    t_ce = time.perf_counter() - t_ce
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    task.before_epoch(max(task.start_epoch, 0))

    totals = {"sample": 0.0, "reward": 0.0, "loss": 0.0, "backward": 0.0}
    it = iter(loader)
    n_rows = 0
    for i in range(args.warmup + args.steps):
        try:
            samples = next(it)
        except StopIteration:
            it = iter(loader)
            samples = next(it)
        timings = {}
        t0 = time.perf_counter()
        out = task.scst_step(model, samples, timings=timings)
        t1 = time.perf_counter()
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= args.warmup:
            totals["sample"] += timings["sample"]
            totals["reward"] += timings["reward"]
            totals["loss"] += (t1 - t0) - timings["sample"] - timings["reward"]
            totals["backward"] += t2 - t1
            n_rows += len(samples["image"]) * task.num_samples
    step = sum(totals.values())
    reward = task.reward
    parsers = {getattr(r, "parser", None) for _, r, _ in reward.components.values()} - {None}
    print(f"config: {args.cfg_path} {' '.join(args.options)}; torch threads: {torch.get_num_threads()}")
    print(f"cross-entropy first: {ce_epochs} epochs, {ce_steps} steps, last loss {ce_loss:.3f} ({t_ce:.0f} s); "
          f"reward parser: {', '.join(sorted(p.name + (f' ({p.model_name})' if getattr(p, 'model_name', None) else '') for p in parsers)) or 'none'}")
    print(f"SCST steps timed: {args.steps} (after {args.warmup} warm-up), {n_rows // args.steps} sampled captions per step "
          f"(batch {cfg.run.batch_size_train} x n {task.num_samples}), baseline {task.baseline}, rewards {dict(task.rewards_cfg)}")
    for p in parsers:  # the hybrid parser sends unsure captions to spaCy: how many
        if getattr(p, "stats", None):
            print(f"parser {p.name}: {p.stats['fallback']} of the {p.stats['parsed']} distinct captions it parsed went to spaCy "
                  f"({p.stats['fallback_s']:.3f} s in all)")
    print(f"mean step: {step / args.steps:.3f} s")
    for k, label in (("sample", "sampling + greedy baseline"), ("reward", "reward computation"), ("loss", "loss + loss terms"),
                     ("backward", "backward + optimizer step")):
        print(f"  {label:28s} {totals[k] / args.steps:8.3f} s  {100 * totals[k] / step:5.1f}%")
    share = totals["reward"] / step
    print(f"rewards share: {100 * share:.1f}% (goal <= {100 * GOAL:.0f}%): {'met' if share <= GOAL else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
