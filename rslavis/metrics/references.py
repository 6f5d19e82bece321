"""Reading reference captions from the usual caption files.

Formats, detected from the content:

- Karpathy ``dataset.json``: ``{"images": [{"imgid", "filename", "split", "sentences":
  [{"raw", "tokens"}]}]}``. Images of one ``split`` (``None``/``"all"``: every image);
  the id is ``imgid`` unless ``id_field`` names another image key (``filename``, ``cocoid``).
- COCO captions: ``{"images": [{"id"}], "annotations": [{"image_id", "caption"}]}``.
- ``{id: [caption, ...]}`` or a JSON list of lists of captions (ids are positions).
"""

import json
import os

from rslavis.common.errors import DataError

KARPATHY_SPLITS = ("train", "val", "test", "restval")


def _read_json(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Caption file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"Caption file {path!r} is not valid JSON: {exc}.") from None


def detect_format(data):
    """``"karpathy"``, ``"coco"``, ``"mapping"`` or ``"lists"``; None when unrecognised."""
    if isinstance(data, dict):
        images = data.get("images")
        if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
            return "karpathy"
        if isinstance(data.get("annotations"), list):
            return "coco"
        if data and all(isinstance(v, list) for v in data.values()):
            return "mapping"
    if isinstance(data, list) and all(isinstance(v, list) for v in data):
        return "lists"
    return None


def load_references(path, split="test", id_field="imgid"):
    """``{image_id: [reference, ...]}`` from a caption file (see module docstring).

    ``split`` applies to Karpathy files only. Raises :class:`DataError` naming the file
    and what was expected when the file is missing, empty or of an unknown format.
    """
    data = _read_json(path)
    fmt = detect_format(data)
    path = os.fspath(path)
    if fmt == "karpathy":
        images = data["images"]
        if split not in (None, "all"):
            present = sorted({str(im.get("split")) for im in images})
            if split not in present:
                raise DataError(
                    f"{path!r}: no image has split {split!r}; splits in the file: {', '.join(present)}."
                )
            images = [im for im in images if im.get("split") == split]
        out = {}
        for im in images:
            if id_field not in im:
                raise DataError(f"{path!r}: image entry without {id_field!r} (keys: {sorted(im)}).")
            out[im[id_field]] = [s["raw"] if "raw" in s else " ".join(s.get("tokens", [])) for s in im["sentences"]]
        return out
    if fmt == "coco":
        out = {}
        for im in data.get("images", []) or []:
            if isinstance(im, dict) and "id" in im:
                out.setdefault(im["id"], [])
        for a in data["annotations"]:
            if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
                raise DataError(f"{path!r}: a COCO annotation needs 'image_id' and 'caption', got {a!r:.200}.")
            out.setdefault(a["image_id"], []).append(a["caption"])
        out = {k: v for k, v in out.items() if v}
        if not out:
            raise DataError(f"{path!r}: the COCO caption file has no annotations.")
        return out
    if fmt == "mapping":
        return {k: [str(c) for c in v] for k, v in data.items()}
    if fmt == "lists":
        if not data:
            raise DataError(f"{path!r}: the caption list is empty.")
        return {i: [str(c) for c in v] for i, v in enumerate(data)}
    raise DataError(
        f"{path!r} is not a recognised caption file: expected a Karpathy dataset.json "
        "({'images': [{'sentences': ...}]}), a COCO caption file ({'annotations': [{'image_id', 'caption'}]}), "
        "a {id: [captions]} mapping or a list of caption lists."
    )
