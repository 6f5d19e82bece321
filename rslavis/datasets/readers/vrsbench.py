"""VRSBench: evaluation files (captions or VQA) and per-image training records (file or folder)."""

from pathlib import Path

from rslavis.datasets.readers.base import _field, _join, _text, _without_gc, load_json, record_list

VRSBENCH_EVAL_LAYOUT = 'a JSON list of {"image_id", "ground_truth", "question", "question_id", "type", "dataset"} (VRSBench_EVAL_*.json)'
VRSBENCH_TRAIN_LAYOUT = 'per-image records {"image", "caption", "objects", "qa_pairs": [{"question", "answer", "type"}]}: a JSON list, JSON lines, or a folder of one JSON file per image (Annotations_train/)'


def _image_name(name, image_ext):
    return name if Path(name).suffix else name + image_ext


@_without_gc
def read_vrsbench_eval(path, image_root, image_ext=".png"):
    """VRSBench evaluation records (captions or VQA) as a list of raw dicts plus image paths."""
    data = record_list(load_json(path), path, VRSBENCH_EVAL_LAYOUT)  # also {"data": [...]} / {"annotations": [...]}
    out = []
    for n, r in enumerate(data):
        image_id = str(_field(r, "image_id", path, VRSBENCH_EVAL_LAYOUT, n))
        name = _image_name(image_id, image_ext)
        out.append(
            {
                "image_id": Path(name).stem,
                "image": _join(image_root, name),
                "ground_truth": _text(_field(r, "ground_truth", path, VRSBENCH_EVAL_LAYOUT, n), path, n, "ground_truth", "record"),
                "question": str(r.get("question") or ""),
                "question_id": r.get("question_id", n),
                "type": r.get("type") or "",
                "dataset": r.get("dataset") or "",
            }
        )
    return out


@_without_gc
def read_vrsbench_train(path, image_root, image_ext=".png"):
    """VRSBench per-image training records (file or folder) as raw dicts with image paths."""
    p = Path(path)
    if p.is_dir():
        items = []
        for f in sorted(p.glob("*.json")):  # the published folder holds one file per image
            obj = load_json(f)
            obj.setdefault("image", f.stem)
            items.append(obj)
    else:
        items = load_json(p)
    items = record_list(items, path, VRSBENCH_TRAIN_LAYOUT)
    out = []
    for n, r in enumerate(items):
        name = _image_name(str(_field(r, "image", path, VRSBENCH_TRAIN_LAYOUT, n)), image_ext)
        out.append({**r, "image_id": Path(name).stem, "image": _join(image_root, name)})
    return out
