"""Time building the Karpathy caption datasets from the real annotation files.

    python bench/dataset_build.py [--data ../shared/data] [--repeat 5]

Reports, per dataset, the best and median wall time of (a) reading the annotation
file into records and (b) the full ``build_datasets()`` (records, processors and
the train/val/test Dataset objects, no image decoding), after one warm-up run.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = {
    "rsicd_caption": ("rsicd/DERIVED_dataset_rsicd_karpathy.json", "rsicd/images"),
    "ucm_caption": ("ucm_captions/dataset.json", "ucm_captions/images"),
    "sydney_caption": ("sydney_captions/dataset_sydney_modified.json", "sydney_captions/images"),
}


def timed(fn, repeat):
    fn()  # warm-up: imports, OS file cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    from omegaconf import OmegaConf

    from rslavis.common.registry import registry
    from rslavis.datasets import readers
    from rslavis.datasets.builders.base_builder import PACKAGE_ROOT

    data = Path(args.data)
    print(f"{'dataset':<16}{'images':>8}{'captions':>10}{'read best/median (s)':>24}{'build best/median (s)':>25}")
    for name, (ann, images) in DATASETS.items():
        ann_path, img_path = data / ann, data / images
        if not ann_path.is_file():
            print(f"{name:<16} skipped: {ann_path} not found")
            continue
        r_best, r_med, records = timed(lambda: readers.read_karpathy(str(ann_path), str(img_path)), args.repeat)
        base = OmegaConf.load(PACKAGE_ROOT / "configs" / "datasets" / name / "defaults.yaml").datasets[name]
        cfg = OmegaConf.merge(base, {"build_info": {"annotation": str(ann_path), "images": str(img_path)}})
        b_best, b_med, sets = timed(lambda: registry.get_builder_class(name)(cfg, name).build_datasets(), args.repeat)
        n_img = sum(len(v) for v in records.values())
        n_cap = sum(len(r["captions"]) for v in records.values() for r in v)
        assert n_img == sum(len(ds.records) for ds in sets.values())
        print(f"{name:<16}{n_img:>8}{n_cap:>10}{r_best:>13.3f} / {r_med:<8.3f}{b_best:>14.3f} / {b_med:<8.3f}")


if __name__ == "__main__":
    main()
