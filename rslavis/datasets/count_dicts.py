"""Per-image object count dictionaries for caption datasets.

``attach_count_dicts`` gives every record a ``count_dict`` ``{object: count or None}``
built from its reference captions by a registered caption parser (``count_dict.parser``,
built through :func:`rslavis.text.build_parser`; interface ``parser.parse(caption) ->
{lemma: count or None}``, ``parse_batch`` used when present), fused over the references,
and optionally merged with detector counts from a JSON file (``{image_id or file name:
{object: count}}``), the references taking priority.

Fusion (``count_dict.fusion``): ``default`` is :func:`rslavis.text.count_dict.fuse_counts`
(the count most references state; None when none states one); ``median`` (lower median
of the stated counts) and ``max`` are alternatives; a dotted path
``package.module.function`` names a custom ``f(list_of_parsed_dicts) -> dict``. Objects
mentioned by fewer than ``min_mentions`` references are dropped. Detector counts merge
through :func:`rslavis.text.count_dict.merge_detector_counts` (detector counts fill
objects the references mention without a count and add unmentioned objects; a count
the references state is never overwritten).

The result is cached to JSON under ``count_dict.cache_dir``, keyed by the SHA-1 of the
annotation file(s) and the parser settings, so a changed annotation file or parser
setting recomputes it and an unchanged one costs one file read.
"""

import hashlib
import importlib
import json
import logging
import os
import tempfile
from pathlib import Path

from rslavis.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def file_checksum(path, chunk=1 << 20):
    """SHA-1 of a file's bytes (of every JSON file, sorted, for a folder)."""
    h = hashlib.sha1()
    p = Path(path)
    files = sorted(p.rglob("*.json")) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    return h.hexdigest()


def _median_fusion(parsed, min_mentions=1):
    mentions, numbers = {}, {}
    for d in parsed:
        for obj, n in (d or {}).items():
            mentions[obj] = mentions.get(obj, 0) + 1
            if n is not None:
                numbers.setdefault(obj, []).append(int(n))
    out = {}
    for obj, m in mentions.items():
        if m < min_mentions:
            continue
        vals = sorted(numbers.get(obj, []))
        out[obj] = vals[(len(vals) - 1) // 2] if vals else None
    return out


def _max_fusion(parsed, min_mentions=1):
    out = _median_fusion(parsed, min_mentions)
    for obj in out:
        vals = [int(d[obj]) for d in parsed if d and d.get(obj) is not None]
        out[obj] = max(vals) if vals else None
    return out


def _default_fusion(parsed, min_mentions=1):
    try:
        from rslavis.text.count_dict import fuse_counts
    except ImportError:  # rslavis.text without fusion: the median rule is the closest
        return _median_fusion(parsed, min_mentions)
    return fuse_counts(parsed)


FUSIONS = {"default": _default_fusion, "median": _median_fusion, "max": _max_fusion}


def get_fusion(name, min_mentions=1):
    """``f(parsed dicts of one image's references) -> count_dict``, honouring ``min_mentions``."""
    if name in FUSIONS:
        base = FUSIONS[name]

        def fn(parsed):
            return base(parsed, min_mentions)

    elif isinstance(name, str) and "." in name:
        module, _, attr = name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"count_dict.fusion: cannot import {name!r}: {exc}.") from None
    else:
        raise ConfigError(f"count_dict.fusion: {name!r} is not one of {', '.join(FUSIONS)} or a dotted function path.")
    if min_mentions <= 1:
        return fn

    def filtered(parsed):
        out = fn(parsed)
        return {o: c for o, c in out.items() if sum(1 for d in parsed if d and o in d) >= min_mentions}

    return filtered


def build_parser(name, options=None):
    """A caption parser: shared instance from :func:`rslavis.text.build_parser` when available."""
    from rslavis.common.registry import registry

    options = dict(options or {})
    try:
        from rslavis.text import build_parser as text_build_parser
    except ImportError:
        text_build_parser = None
    try:
        if text_build_parser is not None:
            return text_build_parser({"name": name, **options})
        cls = registry.get_parser_class(name)
    except KeyError as exc:
        raise ConfigError(f"count_dict.parser: {exc}") from None
    return cls.from_config(options) if hasattr(cls, "from_config") else cls(**options)


def parse_captions(parser, captions, progress=True):
    """``{caption: parsed dict}`` for the distinct captions (duplicates are common in RSICD)."""
    unique = list(dict.fromkeys(captions))
    if hasattr(parser, "parse_batch"):
        parsed = parser.parse_batch(unique)
    else:
        from tqdm import tqdm

        parsed = [parser.parse(c) for c in tqdm(unique, desc="parsing captions", disable=not progress, leave=False)]
    return dict(zip(unique, parsed))


def load_detector_counts(path):
    """``{str(key): {object: count}}`` from a detector counts JSON file."""
    try:
        from rslavis.text.count_dict import load_detector_counts as text_load
    except ImportError:
        text_load = None
    p = Path(path)
    if text_load is not None and p.is_file():
        return text_load(p)
    if not p.is_file():
        raise DataError(
            f"count_dict.detector_counts: file not found: {p}. Expected a JSON mapping "
            '{image_id or image file name: {"object": count}}.'
        )
    with open(p) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise DataError(f"{p}: detector counts must be a JSON mapping {{image_id: {{object: count}}}}, got {type(data).__name__}.")
    return {str(k): dict(v or {}) for k, v in data.items()}


def merge_counts(refs, det, synonyms=None):
    """References' counts completed by detector counts, the references taking priority."""
    try:
        from rslavis.text.count_dict import merge_detector_counts
    except ImportError:
        merged = {str(k).lower(): v for k, v in (det or {}).items()}
        merged.update({k: v for k, v in refs.items() if v is not None or k not in merged})
        return merged
    return merge_detector_counts(refs, det, synonyms)


def _detector_entry(det, record):
    for key in (record.get("image_id"), record.get("filename"), Path(record["image"]).name, Path(record["image"]).stem):
        if key is not None and str(key) in det:
            return det[str(key)]
    return {}


def _write_json_atomic(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def reference_counts(records, annotation_paths, cfg, dataset_name="dataset", progress=True):
    """``{str(image_id): count_dict}`` from the records' references, cached (see module docstring)."""
    parser_name = cfg.get("parser")
    options = dict(cfg.get("parser_options") or {})
    fusion_name = cfg.get("fusion") or "default"
    min_mentions = int(cfg.get("min_mentions") or 1)
    settings = {
        "version": CACHE_VERSION,
        "annotations": [file_checksum(p) for p in annotation_paths],
        "parser": parser_name,
        "parser_options": options,
        "fusion": fusion_name,
        "min_mentions": min_mentions,
    }
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache_dir = Path(cfg.get("cache_dir") or "cache/count_dicts").expanduser()
    cache_file = cache_dir / f"{dataset_name}_{key}.json"
    if cache_file.is_file():
        try:
            with open(cache_file) as f:
                cached = json.load(f)
            if cached.get("settings") == json.loads(json.dumps(settings, default=str)):
                return cached["counts"]
        except (OSError, ValueError, KeyError):
            logger.warning("count dictionary cache %s is unreadable; rebuilding it", cache_file)
    parser = build_parser(parser_name, options)
    fuse = get_fusion(fusion_name, min_mentions)
    parsed = parse_captions(parser, [c for r in records for c in r["captions"]], progress)
    counts = {}
    for r in records:
        counts[str(r["image_id"])] = fuse([parsed[c] for c in r["captions"]])
    _write_json_atomic({"settings": settings, "counts": counts}, cache_file)
    logger.info("count dictionaries of %d images cached to %s", len(counts), cache_file)
    return counts


def attach_count_dicts(records_by_split, annotation_paths, cfg, dataset_name="dataset", progress=True):
    """Set ``record["count_dict"]`` on every record of every split (in place) per ``cfg`` (the ``count_dict`` section)."""
    if not cfg.get("parser") and not cfg.get("detector_counts"):
        raise ConfigError(
            f"datasets.{dataset_name}.count_dict is enabled but sets neither 'parser' (a registered caption "
            "parser) nor 'detector_counts' (a JSON file)."
        )
    all_records = [r for recs in records_by_split.values() for r in recs]
    refs = reference_counts(all_records, annotation_paths, cfg, dataset_name, progress) if cfg.get("parser") else {}
    det = load_detector_counts(cfg["detector_counts"]) if cfg.get("detector_counts") else {}
    synonyms = getattr(build_parser(cfg["parser"], cfg.get("parser_options")), "table", None) if det and cfg.get("parser") else None
    for r in all_records:
        counts = dict(refs.get(str(r["image_id"]), {}))
        r["count_dict"] = merge_counts(counts, _detector_entry(det, r), synonyms) if det else counts
    return records_by_split
