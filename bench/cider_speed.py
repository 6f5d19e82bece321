"""CIDEr-D speed: pycocoevalcap's Cider against rslavis's vectorised reward.

5,000 candidates x 5 references from real RSICD captions (../shared/data): each train
image's 5 references, and as candidate a caption of another image with the same scene
label. Both sides get the same corpus (these references) and the same tokenization
(rslavis.text.tokenize.simple_tokenize). Prints pycocoevalcap's time, ours (corpus
build, first call with empty reference cache, and the median of warm calls with cached
reference vectors, as in training), the speed ratios and the largest difference.

    python bench/cider_speed.py [--n 5000] [--data ../shared/data]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402

from rslavis.rewards.cider import CiderD  # noqa: E402
from rslavis.text.tokenize import simple_tokenize  # noqa: E402


from _rsicd import rsicd_candidates  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    refs, cands, _ = rsicd_candidates(args.data, args.n)

    tok = lambda s: " ".join(simple_tokenize(s))  # noqa: E731
    gts = {i: [tok(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [tok(c)] for i, c in enumerate(cands)}
    t0 = time.perf_counter()
    _, theirs = Cider().compute_score(gts, res)
    t_coco = time.perf_counter() - t0

    t0 = time.perf_counter()
    scorer = CiderD(corpus=refs)
    t_corpus = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = scorer.score(cands, refs)
    t_cold = time.perf_counter() - t0
    warm = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = scorer.score(cands, refs)
        warm.append(time.perf_counter() - t0)
    t_warm = statistics.median(warm)
    diff = float(np.abs(np.asarray(theirs) - ours).max())
    print(f"candidates x references : {len(cands)} x {sum(map(len, refs)) / len(refs):.0f} (RSICD train)")
    print(f"pycocoevalcap Cider     : {t_coco:.3f} s")
    print(f"rslavis corpus df       : {t_corpus:.3f} s (once per training run)")
    print(f"rslavis first call      : {t_cold:.3f} s (builds the reference cache)  ratio {t_coco / t_cold:.1f}x")
    print(f"rslavis cached refs     : {t_warm:.4f} s (median of {args.repeats})     ratio {t_coco / t_warm:.1f}x")
    print(f"largest |difference|    : {diff:.3e}")
    print(f"mean CIDEr-D            : pycocoevalcap {float(np.mean(theirs)):.6f}  rslavis {float(ours.mean()):.6f}")


if __name__ == "__main__":
    main()
