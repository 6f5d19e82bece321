"""Where a hallucination-bench training spends its time: one arm, a few epochs, split by phase.

    OMP_NUM_THREADS=1 python bench/hallucination_profile.py --encoder output/clip_pretrain_synthetic/pretrain/encoder/vision.json \\
        --work output/hallucination_profile --arms none,none+rag --epochs 2 --threads 1
    # plan v6's recipe (3,000 training scenes), one epoch, with the 15 costliest torch ops:
    OMP_NUM_THREADS=1 python bench/hallucination_profile.py --encoder ... --work output/prof_v6 --plan v6 --epochs 1 --ops 15

Runs :func:`bench.hallucination.run_arm` itself (``--plan``'s recipe, v2 unless given; validation only, p = 0.5,
seed 0) with timers wrapped around its phases, so the numbers are those of the bench's own
loop: prompt building and tokenization, decoder forward (without the tokenization), backward,
optimizer step, per-epoch greedy validation generation and its CIDEr; "setup" is the rest
(model build, tokenizer fitting, datastore / dictionary, frozen-feature cache). ``--ops N`` also runs the
whole training under ``torch.profiler`` and prints its N torch ops with the most self CPU time (validation
included; the profiler's own overhead inflates the many small ops, so read the shares, not the totals). Timings on
a shared machine are noisy (wall time grows with the machine's load): CPU seconds
(``time.process_time``) are what a training costs; compare phases within one run.
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
import hallucination as H  # noqa: E402


def timed(table, key, fn):
    """``fn`` adding its wall seconds to ``table[key]``, its CPU seconds to ``table[key, "cpu"]``, one call to ``table[key, "calls"]``."""

    def wrapper(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            table[key] += time.perf_counter() - t
            table[key, "cpu"] += time.process_time() - c
            table[key, "calls"] += 1

    return wrapper


def profile_arm(block, rag, plan, vision, datasets, data, work, ops=0):
    import torch

    from rslavis.common.registry import registry

    cls = registry.get_model_class("smallcap_causal")
    table = defaultdict(float)
    saved = {name: getattr(cls, name) for name in ("_tokenize", "_prompts", "forward")}
    saved_backward, saved_step = torch.Tensor.backward, torch.optim.AdamW.step
    saved_gen, saved_cider = H.generate, H.cider
    try:
        cls._tokenize = timed(table, "tokenize", saved["_tokenize"])
        cls._prompts = timed(table, "prompts (retrieved captions)", saved["_prompts"])
        cls.forward = timed(table, "forward (incl. prompts, tokenize)", saved["forward"])
        torch.Tensor.backward = timed(table, "backward", saved_backward)
        torch.optim.AdamW.step = timed(table, "optimizer step", saved_step)
        H.generate = timed(table, "validation generate (incl. prompts, tokenize)", saved_gen)
        H.cider = timed(table, "validation CIDEr", saved_cider)
        job = {"kind": "arm", "strength": 0.5, "block": block, "rag": rag, "seed": 0, "name": f"profile_{block}_{'rag' if rag else 'norag'}"}
        t, c = time.perf_counter(), time.process_time()
        if ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                res = H.run_arm(job, plan, vision, datasets, data, work)
            table["ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops)
        else:
            res = H.run_arm(job, plan, vision, datasets, data, work)
        table["total"], table["total", "cpu"] = time.perf_counter() - t, time.process_time() - c
    finally:
        for name, fn in saved.items():
            setattr(cls, name, fn)
        torch.Tensor.backward, torch.optim.AdamW.step = saved_backward, saved_step
        H.generate, H.cider = saved_gen, saved_cider
    return table, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", required=True)
    p.add_argument("--work", default="output/hallucination_profile")
    p.add_argument("--arms", default="none,none+rag", help="comma-separated: none, intervention, backdoor, each optionally +rag")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--plan", choices=sorted(H.PLANS), default="v2", help="the bench plan whose recipe and sizes are profiled")
    p.add_argument("--ops", type=int, default=0, help="also print the N torch ops with the most self CPU time (torch.profiler)")
    p.add_argument("--tiny", action="store_true", help="tests only: the bench's shrunk sizes (numbers mean nothing)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    plan = {**H.PLANS[args.plan], **(H.TINY if args.tiny else {}), "max_epoch": args.epochs, "patience": args.epochs + 1, "pilot": True, "seeds": [0]}
    if args.tiny:
        print("TINY RUN (tests only): sizes are shrunk; the numbers mean nothing.")
    vision = H.load_vision(args.encoder, plan)
    datasets = H.build_datasets(plan, 0.5, args.work)
    data = H.preload(datasets)
    for arm in args.arms.split(","):
        block, _, rag = arm.partition("+")
        table, res = profile_arm(block, bool(rag), plan, vision, datasets, data, args.work, ops=args.ops)
        epochs = res["epochs_trained"]
        top = ("forward (incl. prompts, tokenize)", "backward", "optimizer step", "validation generate (incl. prompts, tokenize)", "validation CIDEr")
        loop, loop_cpu = sum(table[k] for k in top), sum(table[k, "cpu"] for k in top)
        steps = plan["sizes"]["train"] // plan["batch_size"]
        print(f"\nplan {plan['version']}, arm {arm}: {epochs} epochs of {steps} steps ({plan['sizes']['train']} training images), {table['total']:.1f} s wall, {table['total', 'cpu']:.1f} s CPU in all, threads {args.threads}; val CIDEr {res['val_cider_history']}")
        print(f"  {'phase':48s} {'wall s/epoch':>12s} {'CPU s/epoch':>11s} {'CPU share of loop':>17s} {'calls/epoch':>11s}")
        for k in [k for k in table if isinstance(k, str) and k not in ("total", "ops")]:
            print(f"  {k:48s} {table[k] / epochs:12.2f} {table[k, 'cpu'] / epochs:11.2f} {table[k, 'cpu'] / loop_cpu:17.1%} {table[k, 'calls'] / epochs:11.1f}")
        print(f"  {'epoch loop (forward+backward+step+validation)':48s} {loop / epochs:12.2f} {loop_cpu / epochs:11.2f}")
        print(f"  {'setup (build, tokenizer, datastore, cache)':48s} {table['total'] - loop:12.2f} {table['total', 'cpu'] - loop_cpu:11.2f} (once)")
        print(f"  {'training step (forward+backward+optimizer step)':48s} {'':12s} {sum(table[k, 'cpu'] for k in top[:3]) / (epochs * steps):11.3f} CPU s a step")
        if args.ops:
            print(f"  torch ops with the most self CPU time over the whole training (validation included):\n{table['ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
