"""``rs_synthetic``: built-in procedurally drawn aerial scenes (no download needed).

Scenes are generated on first use into ``build_info.cache_dir/<hash of the generation
settings>/`` (PNG images and ``annotations.json``) and reused after; changing a
setting generates a new folder, so a cache never serves stale scenes.

``type: confounded`` (defaults in ``configs/datasets/rs_synthetic/confounded.yaml``)
is the hallucination-study family: a context background co-occurs with an object in a
configurable share of training scenes (``cooccurrence`` = p(object | context),
``elsewhere`` = p(object | other backgrounds)), and the test split shows the context
without the object and, for a share ``test_unusual_share``, the object on other
backgrounds. Its records add ``in_context`` and ``has_object``;
:mod:`rslavis.metrics.confounding` scores captions on the object itself.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.datasets.builders.base_builder import BaseDatasetBuilder, _get
from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset, CaptionTrainDataset

logger = logging.getLogger(__name__)

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


def confounded_settings(build_info):
    """The ``build_info.confounded`` block, validated."""
    from rslavis.datasets.synthetic.scenes import BACKGROUNDS

    c = _get(build_info, "confounded", {})
    out = {
        "context": str(_get(c, "context", "concrete")),
        "object": str(_get(c, "object", "plane")),
        "cooccurrence": float(_get(c, "cooccurrence", 0.9)),
        "context_share": float(_get(c, "context_share", 0.3)),
        "elsewhere": None if _get(c, "elsewhere") is None else float(_get(c, "elsewhere")),
        "test_unusual_share": float(_get(c, "test_unusual_share", 0.0)),
    }
    key = "datasets.rs_synthetic.build_info.confounded"
    if out["context"] not in BACKGROUNDS:
        raise ConfigError(f"{key}.context: {out['context']!r} is not a background; valid: {', '.join(BACKGROUNDS)}.")
    allowed = BACKGROUNDS[out["context"]][1]
    if out["object"] not in allowed:
        raise ConfigError(f"{key}.object: {out['object']!r} cannot appear on {out['context']!r}; valid there: {', '.join(allowed)}.")
    if len(allowed) < 2:
        raise ConfigError(f"{key}.context: {out['context']!r} has no object besides {out['object']!r}, so a test scene without it cannot be drawn.")
    for name in ("cooccurrence", "context_share", "elsewhere", "test_unusual_share"):
        if out[name] is not None and not 0.0 <= out[name] <= 1.0:
            raise ConfigError(f"{key}.{name} must be between 0 and 1, got {out[name]}.")
    return out


def generation_settings(build_info, confounded=False):
    sizes = _get(build_info, "sizes", {"train": 1500, "val": 100, "test": 200})
    settings = {
        "version": 1,
        "seed": int(_get(build_info, "seed", 0)),
        "image_size": int(_get(build_info, "image_size", 64)),
        "captions_per_image": int(_get(build_info, "captions_per_image", 5)),
        "max_kinds": int(_get(build_info, "max_kinds", 2)),
        "max_count": int(_get(build_info, "max_count", 4)),
        "sizes": {str(k): int(v) for k, v in dict(sizes).items()},
    }
    if confounded:  # only then: the default settings (and their cache hash) stay as they were
        settings["confounded"] = confounded_settings(build_info)
    for split, n in settings["sizes"].items():
        if split not in SPLIT_SEEDS:
            raise ConfigError(f"datasets.rs_synthetic.build_info.sizes: unknown split {split!r}; valid: {', '.join(SPLIT_SEEDS)}.")
        if n < 1:
            raise ConfigError(f"datasets.rs_synthetic.build_info.sizes.{split} must be a positive integer, got {n}.")
    return settings


def materialise(build_info, confounded=False):
    """Generate (once) and return the folder holding ``annotations.json`` and ``images/``."""
    from PIL import Image
    from tqdm import tqdm

    from rslavis.datasets.synthetic.scenes import generate_confounded_split, generate_split

    settings = generation_settings(build_info, confounded)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(_get(build_info, "cache_dir", "cache/rs_synthetic")).expanduser()
    target = root / key
    if (target / "annotations.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Generate into a temporary folder and rename it into place, so an interrupted run
    # never leaves a half-written dataset that a later run would trust.
    from rslavis.common.checkpoint import make_shared_tempdir

    tmp = Path(make_shared_tempdir(prefix=f".{key}-", dir=root))
    try:
        (tmp / "images").mkdir()
        annotations = {"settings": settings, "splits": {}}
        total = sum(settings["sizes"].values())
        with tqdm(total=total, desc="generating synthetic scenes", leave=False) as bar:
            for split, n in settings["sizes"].items():
                seed = settings["seed"] * 1000 + SPLIT_SEEDS[split]
                records = []
                if "confounded" in settings:
                    c = settings["confounded"]
                    scenes = generate_confounded_split(
                        n, seed, split, c["context"], c["object"], c["cooccurrence"], c["context_share"],
                        settings["image_size"], settings["captions_per_image"], settings["max_kinds"], settings["max_count"],
                        c["elsewhere"], c["test_unusual_share"],
                    )
                else:
                    scenes = generate_split(n, seed, settings["image_size"], settings["captions_per_image"], settings["max_kinds"], settings["max_count"])
                for i, (img, meta) in enumerate(scenes):
                    fname = f"{split}_{i:06d}.png"
                    Image.fromarray(img).save(tmp / "images" / fname)
                    records.append({"image_id": f"{split}_{i:06d}", "filename": fname, **meta})
                    bar.update(1)
                annotations["splits"][split] = records
        with open(tmp / "annotations.json", "w") as f:
            json.dump(annotations, f)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "annotations.json").is_file():  # another process did not win the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("synthetic scenes written to %s", target)
    return target


@registry.register_builder("rs_synthetic")
class SyntheticSceneBuilder(BaseDatasetBuilder):
    DATASET_CONFIG_DICT = {
        "default": "configs/datasets/rs_synthetic/defaults.yaml",
        "confounded": "configs/datasets/rs_synthetic/confounded.yaml",
    }

    def build(self):
        build_info = _get(self.config, "build_info", {})
        folder = materialise(build_info, confounded=_get(self.config, "type", "default") == "confounded")
        with open(folder / "annotations.json") as f:
            annotations = json.load(f)
        datasets = {}
        for split, records in annotations["splits"].items():
            recs = [
                {
                    "image_id": r["image_id"],
                    "image": str(folder / "images" / r["filename"]),
                    "captions": r["captions"],
                    "count_dict": r["count_dict"],
                    "background": r["background"],
                    **{k: r[k] for k in ("in_context", "has_object") if k in r},
                }
                for r in records
            ]
            datasets[split] = self.make_dataset(split, recs, CaptionTrainDataset, CaptionEvalDataset)
        return datasets
