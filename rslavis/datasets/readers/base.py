"""What every reader shares: JSON loading, fields and strings checked with the file's layout in
the message, unique ids, and the garbage collector paused while records are built."""

import contextlib
import functools
import gc
import json

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


def record_list(data, path, layout, wrappers=("data", "annotations")):
    """A file's list of records: the JSON list itself, or the one under the first of ``wrappers``
    that a mapping has (``{"data": [...]}``); anything else is a DataError naming ``layout``."""
    if isinstance(data, dict):
        data = next((data[key] for key in wrappers if key in data), None)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected {layout}.")
    return data


def annotation_list(path, layout):
    """The ``annotations`` list of a JSON mapping (RSGPT's files); else a DataError naming ``layout``."""
    data = load_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: no 'annotations' list; expected {layout}.")
    return anns


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
