"""The benchmark candidate set shared by the reward benches: real RSICD captions.

For the first ``n`` training images: the references (all their captions) and one
candidate per image, a caption of a random image of the same scene class (seed 0), so
candidates are realistic and partly overlap their references.

:func:`unseen_candidates` draws candidates no cache can have seen: captions of RSICD
images outside the first ``n`` (same scene class where possible), all distinct and none
equal to a string in ``exclude``.
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data"


def _images(data):
    path = Path(data) / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json"
    return json.loads(path.read_text())["images"]


def rsicd_candidates(data=DEFAULT_DATA, n=5000):
    """``(references, candidates, resample)``; ``resample()`` draws another candidate list
    from the same seeded stream."""
    images = [im for im in _images(data) if im["split"] == "train"][:n]
    rng = random.Random(0)
    by_label = {}
    for im in images:
        by_label.setdefault(im["label"], []).append(im)
    refs = [[s["raw"] for s in im["sentences"]] for im in images]

    def resample():
        return [rng.choice(rng.choice(by_label[im["label"]])["sentences"])["raw"] for im in images]

    return refs, resample(), resample


def unseen_candidates(data=DEFAULT_DATA, n=5000, exclude=(), seed=1):
    """One caption per each of the first ``n`` training images, taken from the RSICD images
    after them (any split), distinct, never in ``exclude``; same scene label when possible."""
    all_images = _images(data)
    train = [im for im in all_images if im["split"] == "train"][:n]
    first = {id(im) for im in train}
    pool = {}
    for im in all_images:
        if id(im) not in first:
            for s in im["sentences"]:
                pool.setdefault(im.get("label"), []).append(s["raw"])
    rng = random.Random(seed)
    for caps in pool.values():
        rng.shuffle(caps)
    used = set(exclude)
    flat = [c for caps in pool.values() for c in caps]
    rng.shuffle(flat)
    out = []
    for im in train:
        caps = pool.get(im["label"], [])
        while caps and caps[-1] in used:
            caps.pop()
        if not caps:
            while flat and flat[-1] in used:
                flat.pop()
            if not flat:
                raise ValueError(f"RSICD has fewer than {n} distinct unseen captions")
            caps = flat
        c = caps.pop()
        used.add(c)
        out.append(c)
    return out
