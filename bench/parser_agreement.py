"""Agreement of the ``rules`` caption parser with the ``spacy`` parser on real captions.

For every caption of UCM, RSICD and Sydney in ``../shared/data`` (all splits), both
parsers produce ``{object: count or None}``; a caption agrees when the two dictionaries
are equal (same objects, same counts). Prints the share per dataset, over all captions
and over distinct captions, and the most frequent disagreements.

    python bench/parser_agreement.py [--data ../shared/data] [--show 20]
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


def captions(path):
    return [s["raw"] for im in json.loads(Path(path).read_text())["images"] for s in im["sentences"]]


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
    total, agree, bad = 0, 0, Counter()
    all_caps = []
    ok = True
    for name, rel in FILES.items():
        path = Path(args.data) / rel
        if not path.is_file():
            print(f"{name}: {path} not found, skipped")
            continue
        caps = captions(path)
        all_caps += caps
        t0 = time.perf_counter()
        a = spacy_p.parse_batch(caps)
        t1 = time.perf_counter()
        b = rules_p.parse_batch(caps)
        t2 = time.perf_counter()
        same = [x == y for x, y in zip(a, b)]
        n_ok = sum(same)
        total += len(caps)
        agree += n_ok
        for c, s, x, y in zip(caps, same, a, b):
            if not s:
                bad[(c.strip().lower(), json.dumps(x, sort_keys=True), json.dumps(y, sort_keys=True))] += 1
        print(f"{name}: {len(caps)} captions, rules == spacy on {n_ok / len(caps):.4f} "
              f"(spacy {t1 - t0:.1f} s, rules {t2 - t1:.2f} s, both cold, distinct captions parsed once)")
    if not total:
        print("no caption file found")
        return 0
    distinct = {c: None for c in all_caps}
    d_ok = sum(spacy_p.parse(c) == rules_p.parse(c) for c in distinct)
    share = agree / total
    print(f"all: {total} captions, agreement {share:.4f}; distinct captions: {len(distinct)}, agreement {d_ok / len(distinct):.4f}")
    print(f"target >= {args.target}: {'met' if share >= args.target else 'NOT met'}")
    for (c, x, y), k in bad.most_common(args.show):
        print(f"  {k:5d}x {c!r}\n         spacy {x}\n         rules {y}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
