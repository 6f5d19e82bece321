"""Agreement of the ``rules`` caption parser with the ``spacy`` parser on real captions.

For every caption of UCM, RSICD and Sydney in ``../shared/data`` (all splits), both
parsers produce ``{object: count or None}``, the dictionary the rewards and metrics read
(SDE: its objects; count: its counts); a caption agrees when the two dictionaries are
equal (same objects, same counts, ``None`` included). The rules parser's lexicon is
learnt from spaCy's tags on the **training** splits (``python -m rslavis.text.lexicon``),
so the share is printed for the training captions and for the held-out (val + test)
ones apart, per dataset and over all captions, then the most frequent disagreements by
kind (an object only one parser finds, or a different count). Times are CPU seconds of
this process (the machine may be shared), both parsers cold, distinct captions parsed once.

    python bench/parser_agreement.py [--data ../shared/data] [--show 15]
"""

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILES = {
    "UCM": "ucm_captions/dataset.json",
    "RSICD": "rsicd/DERIVED_dataset_rsicd_karpathy.json",
    "Sydney": "sydney_captions/dataset_sydney_modified.json",
}


def rows_of(path, name):
    return [(name, "train" if im.get("split") == "train" else "held-out", s["raw"])
            for im in json.loads(Path(path).read_text())["images"] for s in im["sentences"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--show", type=int, default=15)
    ap.add_argument("--target", type=float, default=0.99)
    args = ap.parse_args(argv)
    from rslavis.text import build_parser

    spacy_p = build_parser({"name": "spacy", "cache_size": 10**7})
    if getattr(spacy_p, "mode", "full") != "full":
        print("spaCy English pipeline not installed: nothing to compare against.")
        return 0
    rules_p = build_parser({"name": "rules", "cache_size": 10**7})
    rows = []
    for name, rel in FILES.items():
        path = Path(args.data) / rel
        if not path.is_file():
            print(f"{name}: {path} not found, skipped")
            continue
        rows += rows_of(path, name)
    if not rows:
        print("no caption file found")
        return 0
    distinct = list(dict.fromkeys(c for _, _, c in rows))
    t0 = time.process_time()
    a = dict(zip(distinct, spacy_p.parse_batch(distinct)))
    t1 = time.process_time()
    b = dict(zip(distinct, rules_p.parse_batch(distinct)))
    t2 = time.process_time()
    print(f"{len(rows)} captions, {len(distinct)} distinct; CPU s to parse the distinct ones cold: "
          f"spacy {t1 - t0:.1f}, rules {t2 - t1:.2f} ({(t1 - t0) / max(t2 - t1, 1e-9):.0f}x)")
    same = {c: a[c] == b[c] for c in distinct}
    ok, tot = Counter(), Counter()
    for name, split, c in rows:
        for key in ((name, split), (name, "all"), ("all", split), ("all", "all")):
            tot[key] += 1
            ok[key] += same[c]
    print(f"{'rules == spacy':16s} {'train':>16s} {'held-out':>16s} {'all':>16s}")
    for name in [*FILES, "all"]:
        if tot[(name, "all")]:
            print(f"{name:16s} " + " ".join(f"{ok[(name, s)] / tot[(name, s)]:.4f} ({tot[(name, s)]:5d})"
                                             if tot[(name, s)] else f"{'-':>16s}" for s in ("train", "held-out", "all")))
    d_ok = sum(same.values())
    share = ok[("all", "all")] / tot[("all", "all")]
    print(f"distinct captions: agreement {d_ok / len(distinct):.4f}")
    print(f"target >= {args.target} on all captions: {'met' if share >= args.target else 'NOT met'} ({share:.4f}); "
          f"held-out captions only: {ok[('all', 'held-out')] / max(tot[('all', 'held-out')], 1):.4f}")
    kinds, example = Counter(), {}
    weight = Counter(c for _, _, c in rows)
    for c in distinct:
        if same[c]:
            continue
        x, y = a[c], b[c]
        for k in sorted(set(x) | set(y)):
            if k not in y:
                kind = f"object only spacy finds: {k}"
            elif k not in x:
                kind = f"object only rules finds: {k}"
            elif x[k] != y[k]:
                kind = f"count of {k}: spacy {x[k]}, rules {y[k]}"
            else:
                continue
            kinds[kind] += weight[c]
            example.setdefault(kind, c.strip().lower())
    print(f"most frequent disagreements (captions, with one example):")
    for kind, k in kinds.most_common(args.show):
        print(f"  {k:5d}x {kind:45s} {example[kind]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
