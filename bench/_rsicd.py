"""The benchmark candidate set shared by the reward benches: real RSICD captions.

For the first ``n`` training images: the references (all their captions) and one
candidate per image, a caption of a random image of the same scene class (seed 0), so
candidates are realistic and partly overlap their references.
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data"


def rsicd_candidates(data=DEFAULT_DATA, n=5000):
    """``(references, candidates, resample)``; ``resample()`` draws another candidate list
    from the same seeded stream."""
    path = Path(data) / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json"
    images = [im for im in json.loads(path.read_text())["images"] if im["split"] == "train"][:n]
    rng = random.Random(0)
    by_label = {}
    for im in images:
        by_label.setdefault(im["label"], []).append(im)
    refs = [[s["raw"] for s in im["sentences"]] for im in images]

    def resample():
        return [rng.choice(rng.choice(by_label[im["label"]])["sentences"])["raw"] for im in images]

    return refs, resample(), resample
