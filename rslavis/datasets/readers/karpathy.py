"""Karpathy ``dataset.json`` (UCM, Sydney, RSICD as published): every split in one file."""

from rslavis.common.errors import DataError
from rslavis.datasets.readers.base import _field, _join, _text, _without_gc, check_unique_ids, load_json

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
