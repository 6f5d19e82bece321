"""CIDEr-D speed: pycocoevalcap's Cider against rslavis's reward, every pass either side makes counted.

5,000 candidates x 5 references from real RSICD captions (../shared/data): each train
image's 5 references, and as candidate a caption of another image with the same scene
label (RSICD repeats captions, so about half the candidates of a call are duplicates;
rslavis scores each distinct caption once). Both sides use these references as the
corpus. pycocoevalcap keeps no state: every ``compute_score`` makes its own
document-frequency pass and scores; it gets text already tokenized by its own Java
PTBTokenizer (the Java time is printed apart and left out of its side). rslavis is
timed twice, in one run on the same candidates:

- raw text (its default, ``pretokenized: false``): rslavis tokenizes every caption in
  Python inside the timed calls, pycocoevalcap does not; this favours pycocoevalcap;
- the same PTB tokens into both (``pretokenized: true``): like against like.

The sides run interleaved, one call at a time, and are timed in CPU seconds of this
process (``time.process_time``), since the machine is shared with other jobs; run with
``OMP_NUM_THREADS=1`` so numpy uses one thread like pycocoevalcap.

Garbage collection: each timed call starts after a ``gc.collect()`` (not timed), so a call
pays only for the collections its own allocations trigger, not for another side's leftovers.
Without it, a full collection (0.13-0.20 s here: it walks the ~260,000 tracked objects of
this process, ~180,000 of them from the imported modules, torch included, and ~70,000 from
the RSICD annotations the bench holds) that pycocoevalcap's per-call n-gram dictionaries
made due fired inside the next call, on 9 of 17 pycocoevalcap calls and once in 34 rslavis
calls (the 5,000-distinct call: 0.176 s instead of ~0.03 s; 5 of 9 and none of 18 in a
shorter run, 2 Dec). This favours pycocoevalcap: called in a loop it would pay for those
collections itself. rslavis's reward holds about 1,200 tracked objects after its corpus pass
and, called alone 60 times, triggered no full collection. The full collections inside each
side's timed calls are counted and printed.

For each: **first call** = rslavis's corpus pass (tokenize the references, document
frequencies, reference vectors) + its first score, against one ``compute_score``;
**warm** = the median of later calls on fresh candidate draws for the same images
(reference vectors cached, as in training) against ``compute_score`` on the same
candidates; **distinct** = one call on 5,000 all-distinct candidates (captions of other
RSICD images), where deduplication cannot help.

    OMP_NUM_THREADS=1 python bench/cider_speed.py [--n 5000] [--repeats 5] [--data ../shared/data]
"""

import argparse
import gc
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

from _rsicd import rsicd_candidates, unseen_candidates  # noqa: E402
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


_FULL_GC = [0]  # full (generation 2) collections so far in this process


def _count_full(phase, info):
    if phase == "stop" and info["generation"] == 2:
        _FULL_GC[0] += 1


def timed(fn, *a, **k):
    """CPU seconds of this process (the machine is shared: wall time depends on the other jobs),
    the result and the full collections during the call; a ``gc.collect()`` first, not timed."""
    gc.collect()
    before = _FULL_GC[0]
    t = time.process_time()
    out = fn(*a, **k)
    t = time.process_time() - t
    timed.full_gc = _FULL_GC[0] - before
    return t, out


def verdict(ratio, target):
    return f"{ratio:.1f}x (target >= {target}x: {'met' if ratio >= target else 'NOT met'})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    refs, cands, resample = rsicd_candidates(args.data, args.n)
    raw_sets = [cands] + [resample() for _ in range(args.repeats)] + [unseen_candidates(args.data, args.n)]
    flat = [r for rs in refs for r in rs]

    # tokenization for pycocoevalcap (and for rslavis's pretokenized mode), outside every timed score
    t0 = time.perf_counter()
    tok_flat = java_ptb(flat)
    t_java_refs = time.perf_counter() - t0
    tok_first = java_ptb(cands)
    t_java_cands = time.perf_counter() - t0 - t_java_refs
    if tok_flat is None:
        tok_note = "Java absent: rslavis's Python PTB tokenizer"
        tok_flat, tok_first = ([" ".join(ptb_tokenize(c)) for c in x] for x in (flat, cands))
    else:
        tok_note = f"Java PTBTokenizer: references {t_java_refs:.2f} s, one candidate set {t_java_cands:.2f} s wall, not counted"
    rest = [c for s in raw_sets[1:] for c in s]
    tok_rest = java_ptb(rest) or [" ".join(ptb_tokenize(c)) for c in rest]
    it = iter(tok_flat)
    tok_refs = [[next(it) for _ in rs] for rs in refs]
    gts = dict(enumerate(tok_refs))
    it = iter(tok_rest)
    tok_sets = [tok_first] + [[next(it) for _ in s] for s in raw_sets[1:]]

    # one call at a time, the three sides interleaved on each candidate set
    modes = {"raw text": (refs, raw_sets, False), "same PTB tokens": (tok_refs, tok_sets, True)}
    gc.callbacks.append(_count_full)
    coco_t, sides = [], {name: [0.0, [], 0.0, None] for name in modes}
    full_gc = {name: 0 for name in ["pycocoevalcap", *modes]}
    for k, tok in enumerate(tok_sets):
        t, (_, theirs) = timed(Cider().compute_score, gts, {i: [c] for i, c in enumerate(tok)})
        coco_t.append(t)
        full_gc["pycocoevalcap"] += timed.full_gc
        for name, (corpus, sets, pre) in modes.items():
            side = sides[name]
            if k == 0:
                side[0], side[3] = timed(CiderD, corpus=corpus, pretokenized=pre)
                full_gc[name] += timed.full_gc
            t, ours = timed(side[3].score, sets[k], corpus)
            full_gc[name] += timed.full_gc
            side[1].append(t)
            side[2] = max(side[2], float(np.abs(ours - np.asarray(theirs)).max()))
    gc.callbacks.remove(_count_full)

    warm = slice(1, 1 + args.repeats)
    t_cf, t_cw, t_cd = coco_t[0], statistics.median(coco_t[warm]), coco_t[-1]
    n_distinct = [len(set(s)) for s in raw_sets]
    print(f"candidates x references: {len(cands)} x {len(flat) / len(refs):.0f} (RSICD train), distinct candidates per call "
          f"{min(n_distinct[:-1])}-{max(n_distinct[:-1])} (last call {n_distinct[-1]}); pycocoevalcap input: {tok_note}")
    print("times are CPU seconds of this process (time.process_time; numpy single-threaded with OMP_NUM_THREADS=1), "
          "each call after an untimed gc.collect()")
    print(f"full garbage collections inside the timed calls ({len(tok_sets)} calls a side, rslavis's corpus pass included): "
          + ", ".join(f"{name} {n}" for name, n in full_gc.items()))
    print(f"pycocoevalcap compute_score: first {t_cf:.3f} s, warm median {t_cw:.3f} s, distinct {t_cd:.3f} s "
          "(each call makes its own document-frequency pass)")
    for name, (t_corpus, times, diff, _) in sides.items():
        first = t_corpus + times[0]
        t_w = statistics.median(times[warm])
        print(f"rslavis, {name}: first call = corpus pass {t_corpus:.3f} s + first score {times[0]:.3f} s = {first:.3f} s "
              f"-> {verdict(t_cf / first, 10)}; warm median {t_w:.4f} s -> {verdict(t_cw / t_w, 100)}; "
              f"distinct {times[-1]:.4f} s -> {t_cd / times[-1]:.1f}x; largest |difference| {diff:.1e} over {len(times)} calls")


if __name__ == "__main__":
    main()
