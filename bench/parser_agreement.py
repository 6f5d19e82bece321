"""Agreement of the ``rules`` and ``hybrid`` caption parsers with the ``spacy`` parser on real captions.

For every caption of UCM, RSICD and Sydney in ``../shared/data`` (all splits), both
parsers produce ``{object: count or None}``, the dictionary the rewards and metrics read
(SDE: its objects; count: its counts); a caption agrees when the two dictionaries are
equal (same objects, same counts, ``None`` included). The rules parser's lexicon is
learnt from spaCy's tags on the **training** splits (``python -m rslavis.text.lexicon``),
so the share is printed for the training captions and for the held-out (val + test)
ones apart, per dataset and over all captions, then the most frequent disagreements by
kind (an object only one parser finds, or a different count). Times are CPU seconds of
this process (the machine may be shared), both parsers cold, distinct captions parsed once.
The ``spacy`` parser's tokens (its attribute ruler run by :mod:`rslavis.text.attribute_rules`)
are also compared with the unchanged pipeline's on every distinct caption, with both times.

The ``hybrid`` parser (``rules`` with a spaCy fallback on unsure captions,
:mod:`rslavis.text.hybrid_parser`) gets the same table and its fallback rate: the share
of captions it sends to spaCy, here and on the 5,000 cold and 5,000 warm candidates of
``bench/reward_speed.py`` (its speed depends on it). ``--curve`` adds the trade-off of its
two thresholds: agreement against fallback rate (computed from the parses above: a
fallback caption gets spaCy's dictionary).

    python bench/parser_agreement.py [--data ../shared/data] [--show 15] [--curve]
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
    ap.add_argument("--curve", action="store_true", help="agreement vs fallback rate of the hybrid parser's thresholds")
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
    toks = spacy_p._tokens(distinct)
    a = {c: spacy_p.objects_from_tokens(t) for c, t in zip(distinct, toks)}
    t1 = time.process_time()
    b = dict(zip(distinct, rules_p.parse_batch(distinct)))
    t2 = time.process_time()
    print(f"{len(rows)} captions, {len(distinct)} distinct; CPU s to parse the distinct ones cold: "
          f"spacy {t1 - t0:.1f}, rules {t2 - t1:.2f} ({(t1 - t0) / max(t2 - t1, 1e-9):.0f}x)")
    if spacy_p._after:  # the spacy parser's attribute ruler in Python against the unchanged pipeline
        plain = build_parser({"name": "spacy", "cache_size": 10**7})
        plain._after = None
        t3 = time.process_time()
        same_toks = sum(x == y for x, y in zip(toks, plain._tokens(distinct)))
        t4 = time.process_time()
        print(f"spacy parser, attribute ruler in Python (rslavis.text.attribute_rules): tokens identical to the "
              f"unchanged pipeline's on {same_toks} of {len(distinct)} distinct captions "
              f"({'met' if same_toks == len(distinct) else 'NOT met'}); CPU s {t1 - t0:.1f} with it, "
              f"{t4 - t3:.1f} with spaCy's ruler")
    same = {c: a[c] == b[c] for c in distinct}
    share = agreement_table("rules == spacy", rows, same, args.target)
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

    hybrid_p = build_parser({"name": "hybrid", "cache_size": 10**7})
    t0 = time.process_time()
    h = dict(zip(distinct, hybrid_p.parse_batch(distinct)))
    t1 = time.process_time()
    fb = {c: hybrid_p.unsure(c) for c in distinct}
    print(f"\nhybrid parser ({hybrid_p.model_name or 'no spaCy fallback'}; oov_margin {hybrid_p.oov_margin:g}, "
          f"ambiguous_margin {hybrid_p.ambiguous_margin:g}): CPU s to parse the distinct captions cold {t1 - t0:.2f}, "
          f"{hybrid_p.stats['fallback']} of {hybrid_p.stats['parsed']} sent to spaCy")
    agreement_table("hybrid == spacy", rows, {c: a[c] == h[c] for c in distinct}, args.target)
    cands = reward_bench_candidates(args.data)
    print("fallback rate (captions sent to spaCy): " + ", ".join(
        f"{k} {v:.4f}" for k, v in fallback_rates(rows, fb, cands, hybrid_p.unsure).items()))
    if args.curve:
        print("\ntrade-off of the hybrid thresholds (agreement: spaCy's dictionary on a fallback caption, "
              "the rules' otherwise; fallback: share of captions sent to spaCy)")
        print(f"{'oov_margin':>10s} {'amb_margin':>10s} {'agree all':>10s} {'held-out':>10s} {'train':>10s} "
              f"{'fb all':>8s} {'held-out':>8s} {'cold':>8s} {'warm':>8s}")
        for om in (0, 1, 2, 4, 8, 16, float("inf")):
            for am in (0, 1, 2, 4):
                g = build_parser({"name": "hybrid", "spacy": False, "oov_margin": om, "ambiguous_margin": am})
                gate = {c: g.unsure(c) for c in distinct}
                ok, tot = Counter(), Counter()
                for _, split, c in rows:
                    for key in (split, "all"):
                        tot[key] += 1
                        ok[key] += gate[c] or same[c]
                r = fallback_rates(rows, gate, cands, g.unsure)
                print(f"{om:>10g} {am:>10g} " + " ".join(f"{ok[k] / tot[k]:>10.4f}" for k in ("all", "held-out", "train"))
                      + " " + " ".join(f"{r[k]:>8.4f}" for k in ("all", "held-out", "reward-bench cold", "reward-bench warm")))
    return 0


def agreement_table(title, rows, same, target):
    """Print the agreement per dataset and split; returns the share on all captions."""
    ok, tot = Counter(), Counter()
    for name, split, c in rows:
        for key in ((name, split), (name, "all"), ("all", split), ("all", "all")):
            tot[key] += 1
            ok[key] += same[c]
    print(f"{title:16s} {'train':>16s} {'held-out':>16s} {'all':>16s}")
    for name in [*FILES, "all"]:
        if tot[(name, "all")]:
            print(f"{name:16s} " + " ".join(f"{ok[(name, s)] / tot[(name, s)]:.4f} ({tot[(name, s)]:5d})"
                                             if tot[(name, s)] else f"{'-':>16s}" for s in ("train", "held-out", "all")))
    print(f"distinct captions: agreement {sum(same.values()) / len(same):.4f}")
    share = ok[("all", "all")] / tot[("all", "all")]
    print(f"target >= {target} on all captions: {'met' if share >= target else 'NOT met'} ({share:.4f}); "
          f"held-out captions only: {ok[('all', 'held-out')] / max(tot[('all', 'held-out')], 1):.4f}")
    return share


def reward_bench_candidates(data):
    """The cold and warm candidates of ``bench/reward_speed.py`` (none when RSICD is missing)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _rsicd import rsicd_candidates, unseen_candidates

    try:
        refs, _, _ = rsicd_candidates(data, 5000)
    except FileNotFoundError:
        return {}
    seen = {r for rs in refs for r in rs}
    cold = unseen_candidates(data, 5000, exclude=seen, seed=1)
    return {"cold": cold, "warm": unseen_candidates(data, 5000, exclude=seen | set(cold), seed=2)}


def fallback_rates(rows, gate, cands, unsure):
    """Share of captions sent to spaCy: all, train, held-out (per caption occurrence) and the reward-bench candidates."""
    out = {k: 0.0 for k in ("all", "train", "held-out")}
    n = Counter()
    for _, split, c in rows:
        for key in (split, "all"):
            n[key] += 1
            out[key] += gate[c]
    out = {k: v / max(n[k], 1) for k, v in out.items()}
    for k, cs in cands.items():
        out[f"reward-bench {k}"] = sum(gate[c] if c in gate else unsure(c) for c in cs) / len(cs)
    return out


if __name__ == "__main__":
    sys.exit(main())
