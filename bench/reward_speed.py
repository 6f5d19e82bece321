"""Throughput of every registered reward on RSICD candidates (captions per second), each
reward timed alone in its own process.

References: the 5 captions of each of the first ``--n`` RSICD training images.
Candidates: captions of other RSICD images with the same scene label that no cache in
the process has seen (``_rsicd.unseen_candidates``: distinct, not among the references,
not among the other candidate list). Per reward, in a fresh process (no parser, parse
cache or reference cache shared with another reward):

- cold: the first call, references and candidates never seen (parser start-up excluded,
  it is the ``build`` column);
- warm: a second call with the same references (cached, as in training after the first
  step) and new candidates never parsed before, the number that matters in SCST;
- refs seen (object rewards only, a third process): the references parsed first (untimed),
  then the warm candidates: the parser's caches hold the references' segments and nothing of
  the cold candidates', the strict reading of "references already seen" (the warm column
  also profits from the segments of the 5,000 cold candidates, as training does after some
  steps).

The object rewards use the default caption parser unless ``--parser`` says otherwise; with
the ``hybrid`` parser the note says how many captions of each call it sent to spaCy (their
spaCy time is in the rates).
The varentropy loss term is timed on random logits of shape (n, 20, vocab 1000).

Rates are printed per wall-clock second and per CPU second of the reward's process.
Each reward's processes run ``--repeat`` times (3), alternating, and the table prints the
median of each column; a line under each object reward lists every run's warm and refs-seen
CPU rates, so a reader sees the spread. The same code's rate on one shared 2-core machine
has varied 2x between runs minutes apart (a single 0.25 s call is one sample); the ``ref ms``
column says how fast the machine was in each run: the best of five timings of a fixed
pure-Python loop (``sum(range(10**6))``) in the reward's process right after its warm call.

    python bench/reward_speed.py [--n 5000] [--parser rules] [--only sde count] [--repeat 3] [--data ../shared/data]

The load average is printed with the table (CPU-second rates fall less with the load than
wall-clock ones, but a machine shared by other processes slows both).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TARGET = {"sde": 20000, "count": 20000}  # warm captions/s with the default parser (issue 18)
OBJECT_REWARDS = ("sde", "count")  # rewards whose parser caches get the "refs seen" column


def one(name, args):
    """Time reward ``name`` (runs in a child process); prints one JSON line."""
    import torch

    from _rsicd import rsicd_candidates, unseen_candidates
    from rslavis.common.errors import RslavisError
    from rslavis.common.registry import registry

    cls = registry.get_reward_class(name)
    if cls.is_loss_term:
        term = cls.from_config({})
        logits = torch.randn(args.n, 20, 1000)
        mask = torch.ones(args.n, 20)
        t0 = time.perf_counter()
        term(logits, mask)
        return {"name": name, "cold": args.n / (time.perf_counter() - t0), "note": f"logits {tuple(logits.shape)}",
                "ref_ms": machine_ms()}
    refs, _, _ = rsicd_candidates(args.data, args.n)
    seen = {r for rs in refs for r in rs}
    cold_c = unseen_candidates(args.data, args.n, exclude=seen, seed=1)
    warm_c = unseen_candidates(args.data, args.n, exclude=seen | set(cold_c), seed=2)
    cfg = {"corpus": refs} if name in ("cider", "nkl") else {}
    if name in ("sde", "count") and args.parser:
        cfg["parser"] = args.parser
    t0 = time.perf_counter()
    try:
        reward = cls.from_config(cfg)
    except RslavisError as exc:  # e.g. learned_score needs a trained scorer and images
        return {"name": name, "skipped": str(exc)}
    build = time.perf_counter() - t0
    note = f"build {build:.2f} s"
    parser = getattr(reward, "parser", None)
    if parser is not None:
        note += f", parser {parser.name}" + (f" ({parser.model_name})" if getattr(parser, "model_name", None) else "")
    if args.refs_seen:  # references only, then the warm candidates
        if not hasattr(reward, "reference_counts"):
            return {"name": name, "note": note}
        reward.reference_counts(refs)
        t0, c0 = time.perf_counter(), time.process_time()
        reward(warm_c, refs)
        return {"name": name, "refs": args.n / (time.perf_counter() - t0),
                "refs_cpu": args.n / (time.process_time() - c0), "note": note, "ref_ms": machine_ms()}
    stats = getattr(parser, "stats", None)  # the hybrid parser counts the captions it sends to spaCy
    t0, c0 = time.perf_counter(), time.process_time()
    reward(cold_c, refs)
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    before = dict(stats) if stats else None
    t0, c0 = time.perf_counter(), time.process_time()
    reward(warm_c, refs)
    warm, warm_cpu = time.perf_counter() - t0, time.process_time() - c0
    if stats:
        note += (f", to spaCy: cold {before['fallback']} of {before['parsed']} distinct captions "
                 f"({before['fallback_s']:.3f} of {cold:.3f} s), warm {stats['fallback'] - before['fallback']} of "
                 f"{stats['parsed'] - before['parsed']} ({stats['fallback_s'] - before['fallback_s']:.3f} of {warm:.3f} s)")
    out = {"name": name, "cold": args.n / cold, "warm": args.n / warm, "cold_cpu": args.n / cold_cpu,
           "warm_cpu": args.n / warm_cpu, "note": note, "ref_ms": machine_ms()}
    if stats:
        out["spacy_warm_s"] = stats["fallback_s"] - before["fallback_s"]
    return out


def machine_ms():
    """Milliseconds of a fixed pure-Python loop, best of five: how fast this process's machine was."""
    return 1000 * min(timeit.repeat("sum(range(10**6))", number=1, repeat=5))


def median_run(runs):
    """One result whose numeric columns are the medians over ``runs`` (the note of the median warm run)."""
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)):
            out[k] = statistics.median(r[k] for r in runs)
    if "warm_cpu" in out:
        out["note"] = sorted(runs, key=lambda r: r["warm_cpu"])[len(runs) // 2]["note"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--parser", default=None, help="caption parser of sde/count (default: the library's default)")
    ap.add_argument("--only", nargs="+", default=None, help="time only these rewards")
    ap.add_argument("--repeat", type=int, default=3, help="processes per reward and column; medians are printed")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--refs-seen", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return 0
    from rslavis.common.registry import registry

    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    print(f"{'reward':<14} {'cold':>10} {'warm':>10} {'cold cpu':>10} {'warm cpu':>10} {'refs cpu':>10} {'ref ms':>7}   "
          f"captions per wall-clock / CPU second, {args.n} distinct never-seen candidates, each reward in its own process "
          f"(CPU seconds: on a shared machine wall-clock rates fall with the load), medians of {args.repeat} runs; ref ms: "
          f"a fixed pure-Python loop in the same process (machine speed); load average {os.getloadavg()[0]:.1f}")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rc = 0

    def child(name, *extra):
        cmd = [sys.executable, __file__, "--one", name, "--n", str(args.n), "--data", args.data, *extra]
        if args.parser:
            cmd += ["--parser", args.parser]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{name:<14} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            return None
        return json.loads(out.stdout.strip().splitlines()[-1])

    for name in args.only or registry.list_rewards():
        runs, refs_runs, failed = [], [], False
        for _ in range(args.repeat):  # the two kinds of process alternate, so a slow spell hits both
            r = child(name)
            if r is None:
                failed = True
                break
            runs.append(r)
            if "skipped" in r:
                break
            if r.get("warm") is not None and name in OBJECT_REWARDS:
                refs = child(name, "--refs-seen")
                if refs is None:
                    failed = True
                    break
                refs_runs.append(refs)
        if failed:
            rc = 1
            continue
        if "skipped" in runs[0]:
            print(f"{name:<14} {'skipped':>10} {'':>10}   ({runs[0]['skipped']})")
            continue
        r = median_run(runs)
        if refs_runs:
            r["refs"] = statistics.median(x["refs"] for x in refs_runs)
            r["refs_cpu"] = statistics.median(x["refs_cpu"] for x in refs_runs)
            r["ref_ms"] = statistics.median([x["ref_ms"] for x in runs + refs_runs])
        warm = r.get("warm")
        goal = ""
        if name in TARGET and warm is not None:
            goal = (f"; warm target >= {TARGET[name]:,}: wall-clock {'met' if warm >= TARGET[name] else 'NOT met'}, "
                    f"CPU {'met' if r['warm_cpu'] >= TARGET[name] else 'NOT met'}")
            if "refs_cpu" in r:
                goal += f", refs seen CPU {'met' if r['refs_cpu'] >= TARGET[name] else 'NOT met'}"
        cpu = "".join(f" {r[k]:>10.0f}" if k in r else f" {'':>10}" for k in ("cold_cpu", "warm_cpu", "refs_cpu"))
        print(f"{name:<14} {r['cold']:>10.0f} {'' if warm is None else f'{warm:10.0f}':>10}{cpu} {r['ref_ms']:>7.1f}   "
              f"({r['note']}{goal})")
        if refs_runs and len(runs) > 1:
            each = ", ".join(f"{x['warm_cpu']:.0f}" + (f" (spaCy {x['spacy_warm_s']:.3f} s)" if "spacy_warm_s" in x else "")
                             + f" at {x['ref_ms']:.0f} ms" for x in runs)
            seen = ", ".join(f"{x['refs_cpu']:.0f}" for x in refs_runs)
            print(f"{'':<14} every run, warm CPU: {each}; refs seen CPU: {seen}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
