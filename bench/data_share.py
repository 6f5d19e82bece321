"""Share of a training step spent waiting for data, on the demo config (goal: under 10%).

Runs ``python -m rslavis.train`` on ``projects/smallcap/synthetic_demo.yaml`` for
``--steps`` training steps (no validation or test) once per ``run.num_workers`` setting,
in one session, and reads ``log.jsonl``: the runner adds up the time each step waits in
``next(loader)`` (``data_seconds``) beside the epoch's wall time (``seconds``). The dataset
cache is built first by a separate untimed run, so every timed run reads a warm cache;
worker start-up is inside the timed epoch (it is part of what a user waits for).

    python bench/data_share.py [--steps 40] [--workers 0 2] [--cfg projects/smallcap/synthetic_demo.yaml]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(cfg, out, job, options):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), RSLAVIS_REPORT="0", HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "rslavis.train", "--cfg-path", str(cfg), "--options", f"run.output_dir={out}", f"run.job_id={job}", *options]
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"bench/data_share.py: training failed ({job}):\n{res.stderr[-2000:]}")
    return [json.loads(l) for l in (Path(out) / job / "log.jsonl").read_text().splitlines() if '"loss"' in l]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg", default=str(ROOT / "projects/smallcap/synthetic_demo.yaml"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args(argv)
    common = ["run.max_epoch=1", "run.valid_splits=[]", "run.test_splits=[]", f"run.iters_per_epoch={args.steps}", "run.log_freq=1", "run.warmup_steps=0"]
    with tempfile.TemporaryDirectory() as out:
        train(args.cfg, out, "warm_cache", ["run.max_epoch=1", "run.valid_splits=[]", "run.test_splits=[]", "run.iters_per_epoch=1"])
        print(f"{Path(args.cfg).name}: {args.steps} training steps per run, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
        print("| run.num_workers | epoch seconds | waiting for data (s) | share waiting |")
        print("| --- | --- | --- | --- |")
        for w in args.workers:
            log = train(args.cfg, out, f"w{w}", common + [f"run.num_workers={w}"])
            last = log[-1]
            share = last["data_seconds"] / last["seconds"]
            print(f"| {w} | {last['seconds']:.1f} | {last['data_seconds']:.2f} | {100 * share:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
