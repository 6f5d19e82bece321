"""Preference data for learned quality scorers: datasets, JSON reader and two builders.

An item is one image with two or more texts ranked by quality. Sample keys:
``image``, ``image_id``, ``pair_id`` (unique per item), ``text_input`` (the dataset
prompt, for VLM scorers), ``candidates`` (texts), ``ranks`` (one integer per
candidate, lower is better; ties allowed) and ``corruption`` (the item's category,
``""`` when unknown; metrics are reported per category).

Builders:

- ``preference_json``: files ``[{"image", "chosen", "rejected"}]`` (pairs) or
  ``[{"image", "candidates", "ranking"}]`` (ranked lists; ``ranking[i]`` is the rank of
  ``candidates[i]``, lower is better), both forms may be mixed. Optional fields:
  ``image_id`` (default: the image path), ``category`` or ``corruption``. ``image`` is
  relative to the split's ``images`` folder unless absolute. ``build_info.splits``:
  ``{split: {annotation, images}}``.
- ``caption_preferences``: pairs generated from any registered caption dataset (a
  reference caption preferred over a corrupted version, see
  :mod:`rslavis.datasets.corruptions`). ``build_info``: ``source`` (builder name),
  ``source_config`` (that dataset's entry, merged over its default YAML),
  ``corruptions`` (``{type: share}``, merged over the default shares: 0 leaves a type
  out), ``pairs_per_caption``, ``max_captions_per_image``,
  ``seed``, ``synonyms``.

:func:`write_pairs_json` writes generated pairs in the ``preference_json`` format.
"""

import json
import logging
import os
from pathlib import Path

from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from rslavis.datasets.builders.base_builder import BaseDatasetBuilder, to_plain
from rslavis.datasets.datasets.caption_datasets import ImageRecordDataset

logger = logging.getLogger(__name__)

PAIR_LAYOUT = '[{"image", "chosen", "rejected"}] or [{"image", "candidates", "ranking"}] (optional "image_id", "category")'


class PreferenceDataset(ImageRecordDataset):
    """One item per record ``{"image_id", "image", "candidates", "ranks", "pair_id", "corruption"?}``."""

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        record = self.records[idx]
        visual = self._visual(record)
        if visual is None:
            return None
        return {
            visual[0]: visual[1],
            "image_id": record["image_id"],
            "pair_id": record["pair_id"],
            "text_input": record.get("prompt", self.prompt),
            "candidates": [self.text_processor(c) for c in record["candidates"]],
            "ranks": list(record["ranks"]),
            "corruption": record.get("corruption") or "",
        }

    def all_captions(self):
        """Every candidate text (what a scorer's tokenizer is fitted on)."""
        return [self.text_processor(c) for r in self.records for c in r["candidates"]]

    def categories(self):
        return sorted({r.get("corruption") or "" for r in self.records})


def pair_record(image_id, image, chosen, rejected, pair_id, corruption=""):
    return {"image_id": image_id, "image": image, "candidates": [chosen, rejected], "ranks": [0, 1], "pair_id": pair_id, "corruption": corruption}


def read_preference_json(path, image_root=None):
    """Records of a preference file (see module docstring); malformed entries raise DataError."""
    from rslavis.datasets.readers import load_json

    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list {PAIR_LAYOUT}, got {type(data).__name__}.")
    out = []
    for n, e in enumerate(data):
        if not isinstance(e, dict) or "image" not in e:
            raise DataError(f"{path}: entry {n} has no 'image'; expected {PAIR_LAYOUT}.")
        image = str(e["image"])
        full = image if (image_root is None or os.path.isabs(image)) else os.path.join(str(image_root), image)
        image_id = e.get("image_id", image)
        category = str(e.get("category", e.get("corruption", "")) or "")
        pid = f"{Path(path).stem}#{n}"
        if "chosen" in e or "rejected" in e:
            if not isinstance(e.get("chosen"), str) or not isinstance(e.get("rejected"), str):
                raise DataError(f"{path}: entry {n}: 'chosen' and 'rejected' must both be strings.")
            out.append(pair_record(image_id, full, e["chosen"], e["rejected"], pid, category))
        elif "candidates" in e:
            cands, ranking = e.get("candidates"), e.get("ranking")
            if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
                raise DataError(f"{path}: entry {n}: 'candidates' must be a list of at least two strings.")
            if not isinstance(ranking, list) or len(ranking) != len(cands) or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ranking):
                raise DataError(f"{path}: entry {n}: 'ranking' must give one number per candidate (the rank of candidates[i], lower is better).")
            if len(set(ranking)) < 2:
                raise DataError(f"{path}: entry {n}: every candidate has the same rank; nothing to learn from.")
            out.append({"image_id": image_id, "image": full, "candidates": list(cands), "ranks": list(ranking), "pair_id": pid, "corruption": category})
        else:
            raise DataError(f"{path}: entry {n} has neither 'chosen'/'rejected' nor 'candidates'/'ranking'; expected {PAIR_LAYOUT}.")
    return out


def write_pairs_json(pairs, path, image_root=None):
    """Write ``[{"image_id", "image", "chosen", "rejected", "category"}]`` (image paths relative to ``image_root`` when given)."""
    rows = []
    for p in pairs:
        image = os.path.relpath(p["image"], image_root) if image_root else p["image"]
        rows.append({"image_id": p["image_id"], "image": image, "chosen": p["chosen"], "rejected": p["rejected"], "category": p.get("corruption", "")})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path


class _PreferenceBuilder(BaseDatasetBuilder):
    def make(self, split, records):
        return self.make_dataset(split, records, PreferenceDataset, PreferenceDataset)


@registry.register_builder("preference_json")
class PreferenceJSONBuilder(_PreferenceBuilder):
    DATASET_CONFIG_DICT = {"default": "configs/datasets/preference_json/defaults.yaml"}
    TITLE = "A preference file"
    LAYOUT = f"<annotation>.json {PAIR_LAYOUT} and an image folder per split"

    def build(self):
        splits = self.info("splits")
        if not splits:
            raise ConfigError(f"{self.config_key('splits')} is not set; give {{split: {{annotation: <json>, images: <folder>}}}}.")
        out = {}
        for split in splits:
            if self.info("splits", split) is None:
                continue
            ann = self.require_path("splits", split, "annotation", kind="file")
            images = self.require_path("splits", split, "images", kind="dir") if self.info("splits", split, "images") else None
            out[str(split)] = self.make(str(split), read_preference_json(ann, images))
        return out


def source_records(source, source_config, key="datasets.caption_preferences.build_info"):
    """``{split: records}`` of the caption dataset ``source`` built from ``source_config``."""
    from omegaconf import OmegaConf

    from rslavis.common.config import load_yaml
    from rslavis.common.errors import RegistryKeyError

    try:
        cls = registry.get_builder_class(str(source))
    except RegistryKeyError as exc:
        raise ConfigError(f"{key}.source: {exc}") from None
    user = OmegaConf.create(to_plain(source_config) or {})
    default = cls.default_config_path(str(user.get("type", "default")), source=f"{key}.source_config")
    cfg = OmegaConf.merge(load_yaml(default), user) if default is not None else user
    datasets = cls(cfg, str(source)).build_datasets()
    out = {}
    for split, ds in datasets.items():
        records = getattr(ds, "records", None)
        if not records or "captions" not in records[0]:
            raise ConfigError(f"{key}.source: {source!r} split {split!r} is not a caption dataset (records without 'captions').")
        out[split] = records
    return out


@registry.register_builder("caption_preferences")
class CaptionPreferenceBuilder(_PreferenceBuilder):
    """Preference pairs generated from a caption dataset (see module docstring)."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/caption_preferences/defaults.yaml"}

    def build(self):
        from rslavis.datasets.corruptions import make_pairs, normalise_shares

        key = self.config_key()
        source = self.info("source")
        if not source:
            raise ConfigError(f"{key}.source is not set; give a registered caption dataset, e.g. rs_synthetic.")
        shares = normalise_shares(to_plain(self.info("corruptions")), option=f"{key}.corruptions")
        per = int(self.info("pairs_per_caption", default=1))
        if per < 1:
            raise ConfigError(f"{key}.pairs_per_caption must be >= 1, got {per}.")
        cap = self.info("max_captions_per_image")
        seed = int(self.info("seed", default=0))
        synonyms = to_plain(self.info("synonyms"))
        out = {}
        for n, (split, records) in enumerate(sorted(source_records(source, self.info("source_config"), key).items())):
            pairs = make_pairs(records, shares, per, int(cap) if cap else None, seed * 1000 + n, synonyms, option=f"{key}.corruptions")
            recs = [pair_record(p["image_id"], p["image"], p["chosen"], p["rejected"], f"{p['image_id']}#{i}", p["corruption"]) for i, p in enumerate(pairs)]
            logger.info("caption_preferences %s: %d pairs from %d images of %s", split, len(recs), len(records), source)
            out[split] = self.make(split, recs)
        return out
