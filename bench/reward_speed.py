"""Throughput of every registered reward on 5,000 RSICD candidates (captions per second).

Candidates are captions of other images with the same scene label, references the
image's 5 captions. Each reward is timed twice: a first call (parses and reference
caches cold) and a second call on new candidates with the same references (warm
reference caches, as in training after the first epoch). The varentropy loss term is
timed on random logits of shape (5000, 20, vocab 1000).

    python bench/reward_speed.py [--n 5000] [--data ../shared/data] [--parser spacy|rules]

The object rewards (sde, count) share one parser and its parse cache, so whichever runs
first pays for parsing the references; their warm call is dominated by parsing the new
candidates (spaCy: a few hundred to a thousand captions/s per core; ``rules``: far more).
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from rslavis.common.errors import RslavisError  # noqa: E402
from rslavis.common.registry import registry  # noqa: E402


from _rsicd import rsicd_candidates  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--parser", default=None, help="caption parser of sde/count (default: spacy)")
    args = ap.parse_args()
    refs, cands, resample = rsicd_candidates(args.data, args.n)
    cands2 = [c + " ." for c in resample()]
    print(f"{'reward':<11} {'first call':>12} {'warm call':>12}   (captions/s, {len(cands)} candidates)")
    for name in registry.list_rewards():
        cls = registry.get_reward_class(name)
        if cls.is_loss_term:
            term = cls.from_config({})
            logits = torch.randn(len(cands), 20, 1000)
            mask = torch.ones(len(cands), 20)
            t0 = time.perf_counter()
            term(logits, mask)
            dt = time.perf_counter() - t0
            print(f"{name:<11} {len(cands) / dt:>12.0f} {'':>12}   (logits {tuple(logits.shape)})")
            continue
        cfg = {"corpus": refs} if name in ("cider", "nkl") else {}
        if name in ("sde", "count") and args.parser:
            cfg["parser"] = args.parser
        t0 = time.perf_counter()
        try:
            reward = cls.from_config(cfg)
        except RslavisError as exc:  # e.g. learned_score needs a trained scorer and images
            print(f"{name:<11} {'skipped':>12} {'':>12}   ({exc})")
            continue
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        reward(cands, refs)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        reward(cands2, refs)
        warm = time.perf_counter() - t0
        print(f"{name:<11} {len(cands) / first:>12.0f} {len(cands) / warm:>12.0f}   (build {build:.2f} s)")


if __name__ == "__main__":
    main()
