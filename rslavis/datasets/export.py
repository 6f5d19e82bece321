"""Export a caption split as COCO-format ground truth (what the evaluate command reads).

Output: ``{"info", "licenses": [], "type": "captions", "images": [{"id", "file_name"}],
"annotations": [{"id", "image_id", "caption"}]}``, image ids as in the dataset, so
predictions ``[{"image_id", "caption"}]`` of the same split score against it directly.
"""

import json
import os
import tempfile
from pathlib import Path


def coco_ground_truth(dataset_or_records, description="rslavis export"):
    """The COCO caption dict of a caption dataset (anything with ``records``) or a record list."""
    records = getattr(dataset_or_records, "records", dataset_or_records)
    images, annotations = [], []
    for r in records:
        images.append({"id": r["image_id"], "file_name": r.get("filename") or os.path.basename(str(r.get("image", "")))})
        for c in r["captions"]:
            annotations.append({"id": len(annotations), "image_id": r["image_id"], "caption": c})
    return {"info": {"description": description}, "licenses": [], "type": "captions", "images": images, "annotations": annotations}


def export_coco_gt(dataset_or_records, path, description="rslavis export"):
    """Write :func:`coco_ground_truth` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = coco_ground_truth(dataset_or_records, description)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
