"""COCO caption files: captions by image id, and COCO-format ground truth attached to other records."""

from pathlib import Path

from rslavis.common.errors import DataError
from rslavis.datasets.readers.base import _field, _join, _text, _without_gc, load_json

COCO_LAYOUT = '{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]} (COCO captions)'


@_without_gc
def read_coco_captions(path, image_root, file_name_pattern=None):
    """COCO caption file to ``[record]`` (one per image that has captions), in ``images`` order.

    ``file_name_pattern`` (e.g. ``"{id}.tif"``) names images for files whose ``images``
    entries carry only ``id``.
    """
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: no 'annotations' list; expected {COCO_LAYOUT}.")
    captions = {}
    for n, ann in enumerate(data["annotations"]):
        captions.setdefault(_field(ann, "image_id", path, COCO_LAYOUT, n), []).append(
            _text(_field(ann, "caption", path, COCO_LAYOUT, n), path, n, "caption", "annotation"))
    images = data.get("images")
    if not isinstance(images, list):
        images = [{"id": i} for i in captions]
    records = []
    first = {}
    for n, im in enumerate(images):
        image_id = _field(im, "id", path, COCO_LAYOUT, n)
        if image_id in first:
            raise DataError(f"{path}: images {first[image_id]} and {n} have the same id {image_id!r}; ids must be unique "
                            "(their captions cannot be told apart).")
        first[image_id] = n
        if image_id not in captions:
            continue
        name = im.get("file_name")
        if name is None:
            if not file_name_pattern:
                raise DataError(
                    f"{path}: image {image_id} has no 'file_name'; set build_info.file_name_pattern "
                    "(for example '{id}.tif') to name image files from their ids."
                )
            name = file_name_pattern.format(id=image_id)
        records.append({"image_id": image_id, "image": _join(image_root, name), "captions": captions.pop(image_id), "filename": name})
    if captions:
        missing = list(captions)[:5]
        raise DataError(f"{path}: {len(captions)} annotation image_id(s) have no entry in 'images' (first: {missing}).")
    return records


def _id_keys(value):
    """Spellings under which an image id may appear on the other side: as written, the file stem,
    and the stem's trailing number (LAVIS's ``COCO_val2014_000000391895.jpg`` is id 391895)."""
    text = str(value)
    keys = [text, Path(text).stem]
    tail = Path(text).stem.rsplit("_", 1)[-1]
    if tail.isdigit():
        keys.append(str(int(tail)))
    return keys


@_without_gc
def attach_coco_gt(records, gt_path):
    """Replace each record's references with those of a COCO-format ground-truth file
    (LAVIS scores val/test against ``coco_karpathy_<split>_gt.json``); ids are matched as
    written, by file stem, or by the stem's trailing number. Every record must be found."""
    data = load_json(gt_path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{gt_path}: no 'annotations' list; expected {COCO_LAYOUT}.")
    refs = {}
    for n, ann in enumerate(data["annotations"]):
        image_id = _field(ann, "image_id", gt_path, COCO_LAYOUT, n)
        refs.setdefault(str(image_id), (image_id, []))[1].append(_text(_field(ann, "caption", gt_path, COCO_LAYOUT, n), gt_path, n, "caption", "annotation"))
    missing = []
    for rec in records:
        hit = next((refs[k] for k in _id_keys(rec["image_id"]) + _id_keys(rec["image"]) if k in refs), None)
        if hit is None:
            missing.append(rec["image_id"])
            continue
        rec["image_id"], rec["captions"] = hit[0], list(hit[1])
    if missing:
        raise DataError(f"{gt_path}: {len(missing)} image(s) of the annotation file have no ground truth here (first: {missing[:5]}).")
    return records
