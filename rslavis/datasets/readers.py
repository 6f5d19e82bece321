"""Annotation readers: published files to ``{split: [record]}``, each file read once.

Pure Python (no torch), one pass over each file, no per-item file-system calls, so
building RSICD's 54,605 captions takes a fraction of a second. Record layouts are the
ones of :mod:`rslavis.datasets.datasets.caption_datasets` and ``vqa_datasets``.
Malformed files raise :class:`DataError` naming the file and the expected layout.
"""

import contextlib
import functools
import gc
import json
from pathlib import Path

from rslavis.common.errors import DataError


@contextlib.contextmanager
def no_gc():
    """Pause the cyclic garbage collector: building millions of small dicts and strings
    otherwise triggers repeated full collections over every live object (with torch
    loaded that doubles the time to read RSICD). Nothing built here forms cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _without_gc(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with no_gc():
            return fn(*args, **kwargs)

    return wrapper


def load_json(path):
    """A JSON file (or JSON lines when the suffix is .jsonl) as Python objects."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}).") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 JSON ({exc}).") from None


def _join(root, *parts):
    # Plain string concatenation: os.path.join costs ~15 us a call, and this runs once per image.
    out = str(root).rstrip("/")
    for p in parts:
        if p:
            out = p if p.startswith("/") else f"{out}/{p}"
    return out


def _field(item, key, path, layout, index):
    try:
        return item[key]
    except (KeyError, TypeError):
        raise DataError(f"{path}: entry {index} has no {key!r} field; expected {layout}.") from None


def _text(value, path, index, key, what="entry"):
    """A caption/answer string; null, a number or a list is a DataError (``str(None)`` would train on "None")."""
    if isinstance(value, str):
        return value.strip()
    raise DataError(f"{path}: {what} {index}: {key!r} is {value!r:.60} ({type(value).__name__}); it must be a string.")


def check_unique_ids(records, path, key="image_id"):
    """A DataError naming the first id that two records share (one would silently merge into the other)."""
    seen = {}
    for n, r in enumerate(records):
        i = r[key]
        if i in seen:
            a, b = records[seen[i]], r
            where = f" ({a.get('filename', a.get('image'))} and {b.get('filename', b.get('image'))})" if "image" in r else ""
            raise DataError(f"{path}: {key} {i!r} is used by records {seen[i]} and {n}{where}; ids must be unique.")
        seen[i] = n
    return records


# ---------------------------------------------------------------------- captions
KARPATHY_LAYOUT = '{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens"}]}]} (Karpathy dataset.json)'


@_without_gc
def read_karpathy(path, image_root, caption_field="raw", split_map=None):
    """Karpathy ``dataset.json`` to ``{split: [record]}``; ``image_id`` is ``imgid``.

    ``caption_field``: ``raw`` (the sentence as written) or ``tokens`` (joined tokens).
    ``split_map`` renames splits (default ``{"restval": "train"}``, as for COCO).
    """
    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: no 'images' list; expected {KARPATHY_LAYOUT}.")
    if caption_field not in ("raw", "tokens"):
        raise DataError(f"caption_field must be 'raw' or 'tokens', got {caption_field!r}.")
    split_map = {"restval": "train", **dict(split_map or {})}
    out = {}
    for n, im in enumerate(images):
        filename = _field(im, "filename", path, KARPATHY_LAYOUT, n)
        sentences = _field(im, "sentences", path, KARPATHY_LAYOUT, n)
        if not isinstance(sentences, list):
            raise DataError(f"{path}: image {n} ({filename}): 'sentences' must be a list; expected {KARPATHY_LAYOUT}.")
        if caption_field == "raw":
            captions = [_text(_field(s, "raw", path, KARPATHY_LAYOUT, n), path, f"{n} ({filename})", "raw", "image") for s in sentences]
        else:
            captions = []
            for s in sentences:
                toks = _field(s, "tokens", path, KARPATHY_LAYOUT, n)
                if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
                    raise DataError(f"{path}: image {n} ({filename}): 'tokens' must be a list of strings, got {toks!r:.60}.")
                captions.append(" ".join(toks))
        split = im.get("split", "train")
        split = split_map.get(split, split)
        image_id = im.get("imgid", im.get("cocoid", n))
        record = {"image_id": image_id, "image": _join(image_root, im.get("filepath"), filename), "captions": captions, "filename": filename}
        if "label" in im:
            record["label"] = im["label"]
        out.setdefault(split, []).append(record)
    for recs in out.values():
        check_unique_ids(recs, path)
    return out


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


RSICAP_LAYOUT = '{"annotations": [{"image_id", "filename", "text_input", "text_output"}]} (RSICap captions.json)'


@_without_gc
def read_rsicap(path, image_root):
    """RSICap to ``[record]``: the instruction ``text_input`` becomes the record's prompt."""
    data = load_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: no 'annotations' list; expected {RSICAP_LAYOUT}.")
    records = []
    for n, a in enumerate(anns):
        filename = _field(a, "filename", path, RSICAP_LAYOUT, n)
        records.append(
            {
                "image_id": str(a.get("image_id", Path(filename).stem)),
                "image": _join(image_root, filename),
                "captions": [_text(_field(a, "text_output", path, RSICAP_LAYOUT, n), path, n, "text_output", "annotation")],
                "prompt": str(a.get("text_input") or ""),
                "filename": filename,
            }
        )
    return check_unique_ids(records, path)


RSIEVAL_LAYOUT = '{"annotations": [{"filename", "caption", "qa_pairs": [{"question", "answer", "type"}]}]} (RSIEval annotations.json)'


@_without_gc
def read_rsieval(path, image_root):
    """RSIEval to ``(caption records, question records)``; ids from the file name stem."""
    data = load_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: no 'annotations' list; expected {RSIEVAL_LAYOUT}.")
    captions, questions = [], []
    for n, a in enumerate(anns):
        filename = _field(a, "filename", path, RSIEVAL_LAYOUT, n)
        image_id = Path(filename).stem
        image = _join(image_root, filename)
        if a.get("caption") is not None:
            captions.append({"image_id": image_id, "image": image, "captions": [_text(a["caption"], path, n, "caption", "annotation")], "filename": filename})
        for k, qa in enumerate(a.get("qa_pairs") or []):
            questions.append(
                {
                    "image_id": image_id,
                    "image": image,
                    "question_id": f"{image_id}_{k}",
                    "question": _text(_field(qa, "question", path, RSIEVAL_LAYOUT, n), path, f"{n}, question {k}", "question", "annotation"),
                    "answers": [_text(_field(qa, "answer", path, RSIEVAL_LAYOUT, n), path, f"{n}, question {k}", "answer", "annotation")],
                    "question_type": qa.get("type") or "",
                }
            )
    return check_unique_ids(captions, path), questions


# ---------------------------------------------------------------------- VRSBench
VRSBENCH_EVAL_LAYOUT = 'a JSON list of {"image_id", "ground_truth", "question", "question_id", "type", "dataset"} (VRSBench_EVAL_*.json)'
VRSBENCH_TRAIN_LAYOUT = 'per-image records {"image", "caption", "objects", "qa_pairs": [{"question", "answer", "type"}]}: a JSON list, JSON lines, or a folder of one JSON file per image (Annotations_train/)'


def _image_name(name, image_ext):
    return name if Path(name).suffix else name + image_ext


@_without_gc
def read_vrsbench_eval(path, image_root, image_ext=".png"):
    """VRSBench evaluation records (captions or VQA) as a list of raw dicts plus image paths."""
    data = load_json(path)
    if isinstance(data, dict):  # tolerate {"data": [...]} / {"annotations": [...]} wrappers
        data = data.get("data", data.get("annotations"))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected {VRSBENCH_EVAL_LAYOUT}.")
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
        if isinstance(items, dict):
            items = items.get("data", items.get("annotations"))
    if not isinstance(items, list):
        raise DataError(f"{path}: expected {VRSBENCH_TRAIN_LAYOUT}.")
    out = []
    for n, r in enumerate(items):
        name = _image_name(str(_field(r, "image", path, VRSBENCH_TRAIN_LAYOUT, n)), image_ext)
        out.append({**r, "image_id": Path(name).stem, "image": _join(image_root, name)})
    return out


# ---------------------------------------------------------------------- RSVQA
RSVQA_LAYOUT = (
    '<prefix>_<split>_images.json {"images": [{"id", "questions_ids", "active"}]}, '
    '<prefix>_<split>_questions.json {"questions": [{"id", "img_id", "type", "question", "answers_ids", "active"}]}, '
    '<prefix>_<split>_answers.json {"answers": [{"id", "question_id", "answer", "active"}]}; images <images>/<id>.tif'
)


@_without_gc
def read_rsvqa(images_json, questions_json, answers_json, image_root, image_ext=".tif"):
    """RSVQA (LR or HR) split to question records, joining the three files by id; inactive entries dropped."""
    images = load_json(images_json)
    questions = load_json(questions_json)
    answers = load_json(answers_json)
    for data, key, path in ((images, "images", images_json), (questions, "questions", questions_json), (answers, "answers", answers_json)):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{path}: no {key!r} list; expected {RSVQA_LAYOUT}.")
    active_images = {im["id"] for im in images["images"] if im.get("active", True)}
    answer_text = {a["id"]: str(a["answer"]) for a in answers["answers"] if a.get("active", True)}
    records = []
    for n, q in enumerate(questions["questions"]):
        if not q.get("active", True):
            continue
        img_id = _field(q, "img_id", questions_json, RSVQA_LAYOUT, n)
        if img_id not in active_images:
            continue
        ans = [answer_text[a] for a in q.get("answers_ids", ()) if a in answer_text]
        if not ans:
            continue
        records.append(
            {
                "image_id": img_id,
                "image": _join(image_root, f"{img_id}{image_ext}"),
                "question_id": _field(q, "id", questions_json, RSVQA_LAYOUT, n),
                "question": str(_field(q, "question", questions_json, RSVQA_LAYOUT, n)).strip(),
                "answers": ans,
                "question_type": q.get("type") or "",
            }
        )
    return records


# ---------------------------------------------------------------------- LAVIS
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


@_without_gc
def read_vqa_annotations(path, image_root):
    """VQA records from a LAVIS list file (``answer`` a string or a list of accepted answers)."""
    data = load_json(path)
    if isinstance(data, dict):
        data = data.get("annotations", data.get("data"))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected {LAVIS_VQA_LAYOUT}.")
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
