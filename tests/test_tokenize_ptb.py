"""The pure-Python PTB tokenizer against pycocoevalcap's Java PTBTokenizer, caption by caption."""

import json

import numpy as np
import pytest

from _ptb import java_ptb
from rslavis.text.tokenize import ptb_tokenize, ptb_tokenize_batch

FILES = ["ucm_captions/dataset.json", "rsicd/DERIVED_dataset_rsicd_karpathy.json",
         "sydney_captions/dataset_sydney_modified.json"]

# cases the corpora do not cover (or cover once): every line was checked against the jar
HARD = [
    "a 1/2 mile road * and & at 3.5 km , 1,000 cars .", "ground.there is a road .",
    "there are many trees etc.", "the u.s. airport is big .", "a dr. house and st. louis .",
    "a house ... and a road .. and -- a river --- done", "\"quoted\" words 'here' and `there'",
    "cannot gonna won't can't don't i'm you're we've they'll he'd",
    "a semi- circle and -2 degrees and a-b-c", "it costs $5 and 10% more @home #tag x#y",
    "a (big) [road] {x} <y> = z ~ ^ | \\ w", "e.g. this i.e. that no. 5",
    "café naïve \u2013 \u2014 \u2026 \u2019s \u201cx\u201d \u2018y\u2019", "a b.c d. e",
    "rows of 2x2 trees and 3d 2nd 10th", "a house.", "hello !? ; : really?",
    "the trees'shadow and james' car and o'neill", "x.y.z and 3.5.6 and 1,2,3 and 1.2.",
    "a house,a road,and a river", "mr.smith and no.5", "there is no. and no.",
    "it is 3:30 and 1/2. and a/b and x/y/z", "'tis a road 'twas", "this is the u.k. and u.s.a. and a.b",
    "a road !! and ?? and ?!", "1st. and 5.5km and 10.3%", "The Airport's TWO Planes, a T-Junction .",
    "the car ' s roof", "a   spaced     caption \ttab", "d'you and l'eau and a'b", "", "   ", ".",
]


def synthetic_captions(n=2000):
    from rslavis.datasets.synthetic.scenes import BACKGROUNDS, captions_for

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        bg = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        allowed = BACKGROUNDS[bg][1]
        kinds = list(rng.choice(allowed, size=int(rng.integers(1, min(2, len(allowed)) + 1)), replace=False))
        out += captions_for(bg, {str(o): int(rng.integers(1, 5)) for o in kinds}, rng)
    return out


def _compare(captions):
    expected = java_ptb(captions)
    got = ptb_tokenize_batch(captions)
    bad = [(c, e, g) for c, e, g in zip(captions, expected, got) if e != g]
    assert not bad, f"{len(bad)} of {len(captions)} captions differ from PTBTokenizer, e.g. {bad[:3]}"
    assert [ptb_tokenize(c) for c in captions[:200]] == got[:200]


def test_every_real_caption_matches_java_ptb(shared_data):
    caps = []
    for rel in FILES:
        caps += [s["raw"] for im in json.loads((shared_data / rel).read_text())["images"] for s in im["sentences"]]
    assert len(caps) == 10500 + 54605 + 3065
    _compare(caps)


def test_synthetic_and_hard_captions_match_java_ptb():
    _compare(synthetic_captions() + HARD)


def test_ptb_keeps_what_the_metric_keeps():
    # the differences from simple_tokenize that made the reward differ from the metric
    assert ptb_tokenize("The airport's semi-surrounded lawn(2 .") == ["the", "airport", "'s", "semi-surrounded", "lawn", "-lrb-", "2"]
    assert ptb_tokenize(None) == [] and ptb_tokenize(3) == ["3"]


def _slow_reference(captions):
    """The regex rules alone (no fast path), caption by caption."""
    from rslavis.text.tokenize import _NORMALISE, _ptb_slow

    return [_ptb_slow(("" if c is None else str(c)).lower().translate(_NORMALISE)) for c in captions]


def test_fast_paths_equal_the_full_rules_on_random_text():
    # the batched byte-level path and the per-caption fast path only skip the regex rules
    # where they give the same tokens; random strings over the characters those paths
    # decide on (and a few that send a caption to the rules) check that claim
    import random

    rng = random.Random(0)
    pieces = list("abcdlnostxy019_ ,.-'") + [
        " .", ". ", ", ", "'s", "'s ", " d's", "a-b", "-", "no", "no. 5", "etc", "mr", "cannot", "gonna",
        "\t", "\u00e9", "K", "\u0130", "(", "n't", "..", "1,000", "3.5", "u.s.",
    ]
    caps = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))) for _ in range(30000)]
    caps += [None, 7, "", " ", "\n", "a\nb ."]
    expected = _slow_reference(caps)
    no_newline = [c for c in caps if not (isinstance(c, str) and "\n" in c)]
    assert ptb_tokenize_batch(no_newline) == _slow_reference(no_newline)  # one batch, line map used
    assert ptb_tokenize_batch(caps) == expected  # a caption with a newline: caption by caption
    assert [ptb_tokenize(c) for c in caps] == expected


def test_batched_path_keeps_caption_boundaries():
    from rslavis.text.tokenize import ptb_tokenize_flat

    caps = ["a house .", "", "x's road, etc. done", "two-lane road.", "(bad) one", "  ", "a b c"]
    flat, lengths = ptb_tokenize_flat(caps)
    assert lengths.tolist() == [len(ptb_tokenize(c)) for c in caps]
    assert flat == [t for c in caps for t in ptb_tokenize(c)]
    assert ptb_tokenize_flat([])[0] == []


def _spans_as_tokens(caps, spans_of=None):
    from rslavis.text.tokenize import ptb_token_spans

    buf, starts, ends, counts, fixes = (spans_of or ptb_token_spans)(caps)
    spans = iter(zip(starts.tolist(), ends.tolist()))
    out = []
    for k in range(len(caps)):
        assert k not in fixes or counts[k] == 0
        out.append(fixes[k] if k in fixes else [buf[a:b].decode() for a, b in (next(spans) for _ in range(counts[k]))])
    assert next(spans, None) is None
    return out


def test_byte_spans_equal_the_tokens(shared_data):
    # ptb_token_spans (the CIDEr-D reward's candidate path) gives ptb_tokenize's tokens caption by caption
    caps = []
    for rel in FILES:
        caps += [s["raw"] for im in json.loads((shared_data / rel).read_text())["images"] for s in im["sentences"]]
    for batch in (caps, synthetic_captions(200) + HARD, ["a\nb", "x"], [None, "", "cannot"], []):
        assert _spans_as_tokens(batch) == [ptb_tokenize(c) for c in batch]


def test_whitespace_spans_equal_str_split():
    # the CIDEr-D reward's `pretokenized: true` candidate path: str.split() per caption, as byte spans
    from rslavis.text.tokenize import whitespace_token_spans

    caps = ["a b  c", "", None, " x\ty\r\x0bz\x1f ", "caf\u00e9 w", "two\nlines here", "nul\x00x y", 3, "end ",
            "-lrb- a 's . ,", "\x0c"] + synthetic_captions(50)
    for batch in (caps, [], ["only"], ["a\nb"], [""]):
        assert _spans_as_tokens(batch, whitespace_token_spans) == [("" if c is None else str(c)).split() for c in batch]
