"""CIDEr-D speed: pycocoevalcap's Cider against rslavis's vectorised reward, every pass counted.

5,000 candidates x 5 references from real RSICD captions (../shared/data): each train
image's 5 references, and as candidate a caption of another image with the same scene
label. Both sides use these references as the corpus. pycocoevalcap gets text tokenized
by its own Java PTBTokenizer (timed apart: its tokenization is printed but left out of
the ratios, which favours pycocoevalcap); rslavis gets the raw text and tokenizes it
itself (Python PTB tokenizer) inside every timed call.

- first call: rslavis's corpus pass (tokenize, document frequencies) + its first score
  (builds the reference cache) against one ``Cider().compute_score`` (which makes its own
  document-frequency pass);
- warm: the median of later calls on fresh candidates of the same images (reference
  vectors cached, as in training) against ``compute_score`` on the same candidates.

    python bench/cider_speed.py [--n 5000] [--repeats 5] [--data ../shared/data]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402

from _rsicd import rsicd_candidates  # noqa: E402
from rslavis.rewards.cider import CiderD  # noqa: E402
from rslavis.text.tokenize import ptb_tokenize  # noqa: E402


def java_ptb(lines):
    """pycocoevalcap's PTBTokenizer on a list of captions in one Java call, or None without Java."""
    import pycocoevalcap.tokenizer.ptbtokenizer as m

    jar = os.path.join(os.path.dirname(m.__file__), m.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(c.replace("\n", " ") for c in lines))
    try:
        out = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                              "-lowerCase", f.name], capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return None
    finally:
        os.remove(f.name)
    return [" ".join(w for w in r.rstrip().split(" ") if w not in m.PUNCTUATIONS) for r in out.split("\n")[: len(lines)]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    refs, cands, resample = rsicd_candidates(args.data, args.n)
    warm_sets = [resample() for _ in range(args.repeats)]

    flat = [r for rs in refs for r in rs]
    everything = flat + cands + [c for s in warm_sets for c in s]
    t0 = time.perf_counter()
    toks = java_ptb(everything)
    t_java = time.perf_counter() - t0
    tok_note = f"Java PTBTokenizer, {t_java:.2f} s, not counted"
    if toks is None:
        toks = [" ".join(ptb_tokenize(c)) for c in everything]
        tok_note = "Java absent: rslavis's Python PTB tokenizer, not counted"
    it = iter(toks)
    gts = {i: [next(it) for _ in rs] for i, rs in enumerate(refs)}
    tok_sets = [[next(it) for _ in cands]] + [[next(it) for _ in s] for s in warm_sets]

    def coco(tok_cands):
        t = time.perf_counter()
        _, s = Cider().compute_score(gts, {i: [c] for i, c in enumerate(tok_cands)})
        return time.perf_counter() - t, np.asarray(s)

    t_coco_first, theirs = coco(tok_sets[0])
    t0 = time.perf_counter()
    scorer = CiderD(corpus=refs)
    t_corpus = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = scorer.score(cands, refs)
    t_first = time.perf_counter() - t0
    diff = float(np.abs(theirs - ours).max())
    warm_ours, warm_coco = [], []
    for raw, tok in zip(warm_sets, tok_sets[1:]):
        t0 = time.perf_counter()
        o = scorer.score(raw, refs)
        warm_ours.append(time.perf_counter() - t0)
        tc, th = coco(tok)
        warm_coco.append(tc)
        diff = max(diff, float(np.abs(th - o).max()))
    t_wo, t_wc = statistics.median(warm_ours), statistics.median(warm_coco)
    first = t_corpus + t_first
    print(f"candidates x references : {len(cands)} x {len(flat) / len(refs):.0f} (RSICD train; pycocoevalcap input: {tok_note})")
    print(f"first call   pycocoevalcap compute_score {t_coco_first:.3f} s | rslavis corpus pass {t_corpus:.3f} s + first score "
          f"{t_first:.3f} s = {first:.3f} s | ratio {t_coco_first / first:.1f}x (target >= 10x: {'met' if t_coco_first / first >= 10 else 'NOT met'})")
    print(f"warm (median of {args.repeats}) pycocoevalcap {t_wc:.3f} s | rslavis {t_wo:.4f} s (reference vectors cached, "
          f"candidates tokenized) | ratio {t_wc / t_wo:.1f}x (target >= 100x: {'met' if t_wc / t_wo >= 100 else 'NOT met'})")
    print(f"largest |difference| over {1 + args.repeats} calls: {diff:.3e} (raw text into rslavis, PTB tokens into pycocoevalcap)")


if __name__ == "__main__":
    main()
