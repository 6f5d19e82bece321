"""LAVIS annotation lists (caption and VQA); caption files in COCO or Karpathy layout are told apart and read too."""

from pathlib import Path

from rslavis.common.errors import DataError
from rslavis.datasets.readers.base import _field, _join, _text, _without_gc, check_unique_ids, load_json, record_list
from rslavis.datasets.readers.coco import read_coco_captions
from rslavis.datasets.readers.karpathy import read_karpathy

LAVIS_CAPTION_LAYOUT = (
    'a JSON list of {"image": <path relative to images.storage>, "caption": str (training: one record per caption) '
    'or [str] (val/test: all references), "image_id"?} (LAVIS caption annotations)'
)
LAVIS_VQA_LAYOUT = (
    'a JSON list of {"question_id", "question", "answer": str or [str], "image": <path relative to images.storage>, '
    '"question_type"?} (LAVIS VQA annotations)'
)


def _image_id(record, image):
    """``image_id`` as written, else the image file's stem (LAVIS val/test files carry none)."""
    value = record.get("image_id")
    return value if value is not None else Path(image).stem


@_without_gc
def read_caption_annotations(path, image_root, split=None, caption_field="raw", split_map=None, file_name_pattern=None):
    """One split's caption records from a LAVIS list file, a COCO captions file or a Karpathy
    ``dataset.json`` (its images of ``split``), told apart by their structure."""
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("images"), list) and data["images"] and "sentences" in data["images"][0]:
        by_split = read_karpathy(path, image_root, caption_field, split_map)
        if split is None:
            return [r for recs in by_split.values() for r in recs]
        if split not in by_split:
            raise DataError(f"{path}: no image has split {split!r} (splits in the file: {', '.join(sorted(by_split))}).")
        return by_split[split]
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return read_coco_captions(path, image_root, file_name_pattern)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected {LAVIS_CAPTION_LAYOUT}, a COCO captions file or a Karpathy dataset.json.")
    records, index = [], {}
    for n, item in enumerate(data):
        name = _field(item, "image", path, LAVIS_CAPTION_LAYOUT, n)
        caption = _field(item, "caption", path, LAVIS_CAPTION_LAYOUT, n)
        if not isinstance(caption, list):
            caption = [caption]
        captions = [_text(c, path, n, "caption") for c in caption]
        rec = index.get(name)
        if rec is None:  # training files repeat the image once per caption: one record per image
            image = _join(image_root, name)
            rec = index[name] = {"image_id": _image_id(item, name), "image": image, "captions": [], "filename": name}
            records.append(rec)
        rec["captions"].extend(captions)
    return check_unique_ids(records, path)


@_without_gc
def read_vqa_annotations(path, image_root):
    """VQA records from a LAVIS list file (``answer`` a string or a list of accepted answers)."""
    data = record_list(load_json(path), path, LAVIS_VQA_LAYOUT, ("annotations", "data"))
    records = []
    for n, item in enumerate(data):
        name = _field(item, "image", path, LAVIS_VQA_LAYOUT, n)
        answer = item.get("answer", item.get("answers"))
        if answer is None:
            raise DataError(f"{path}: entry {n} has no 'answer' field; expected {LAVIS_VQA_LAYOUT}.")
        answers = [_text(a, path, n, "answer") for a in (answer if isinstance(answer, list) else [answer])]
        records.append(
            {
                "image_id": _image_id(item, name),
                "image": _join(image_root, name),
                "question_id": item.get("question_id", n),
                "question": _text(_field(item, "question", path, LAVIS_VQA_LAYOUT, n), path, n, "question"),
                "answers": answers,
                "question_type": item.get("question_type") or item.get("type") or "",
            }
        )
    return check_unique_ids(records, path, "question_id")
