"""Base class of dataset builders.

A builder reads one entry of a project's ``datasets:`` section (merged over its
default YAML, chosen by ``type``), builds the processors it names and returns one
torch Dataset per split.

Keys every builder understands (besides its own ``build_info`` paths):

* ``prompt``: ``text_input`` of caption samples (a per-record instruction wins);
* ``build_info.strict`` (false): an unreadable image raises instead of being skipped;
* ``build_info.high_bit_depth`` (``stretch``) and ``build_info.bands`` ([0, 1, 2]):
  how 16-bit and multi-band images become 8-bit RGB (see :mod:`rslavis.datasets.image_io`);
* ``count_dict``: per-image object counts (see :mod:`rslavis.datasets.count_dicts`);
* ``feature_cache: {enabled, cache_dir, encoder}``: serve ``image_features`` from an
  existing cache of a frozen encoder (see :mod:`rslavis.datasets.feature_cache`).
"""

import logging
from pathlib import Path

from rslavis.common.config import to_plain  # noqa: F401  (re-exported for builders)
from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _get(cfg, key, default=None):
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default)
    except AttributeError:
        return default
    return default if value is None else value


class BaseDatasetBuilder:
    DATASET_CONFIG_DICT = {}
    # For the missing-path error: the dataset's name, where it is published, its file layout.
    TITLE = ""
    PUBLISHED_AT = ""
    LAYOUT = ""
    train_dataset_cls = None
    eval_dataset_cls = None

    def __init__(self, cfg=None, name=None):
        self.config = cfg
        self.name = name or type(self).__name__
        self.vis_processors = {}
        self.text_processors = {}

    @classmethod
    def default_config_path(cls, type_="default", source="config"):
        if not cls.DATASET_CONFIG_DICT:
            return None
        if type_ not in cls.DATASET_CONFIG_DICT:
            valid = ", ".join(sorted(cls.DATASET_CONFIG_DICT))
            raise ConfigError(f"{source}: dataset type {type_!r} is unknown for {cls.__name__}; valid: {valid}.")
        return PACKAGE_ROOT / cls.DATASET_CONFIG_DICT[type_]

    def build_processors(self):
        """Processors from ``vis_processor`` / ``text_processor``, each with ``train``/``eval``."""
        for attr, key in (("vis_processors", "vis_processor"), ("text_processors", "text_processor")):
            section = _get(self.config, key)
            out = {}
            for split in ("train", "eval"):
                pcfg = _get(section, split)
                if pcfg is not None:
                    out[split] = registry.get_processor_class(pcfg["name"]).from_config(pcfg)
            setattr(self, attr, out)

    def build_datasets(self):
        """``{split: Dataset}`` for every split the annotations provide."""
        self.build_processors()
        return self.build()

    def build(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def build_info(self):
        return _get(self.config, "build_info", {})

    def config_key(self, *keys):
        return ".".join(["datasets", str(self.name), "build_info", *map(str, keys)])

    def info(self, *keys, default=None):
        """The ``build_info`` value at ``keys`` (nested), or ``default``."""
        node = self.build_info
        for k in keys:
            node = _get(node, k)
            if node is None:
                return default
        return node

    def require_path(self, *keys, kind="file"):
        """The path at ``build_info.<keys>`` after checking it exists (``kind``: file, dir or any).

        A missing setting is a ConfigError, a missing path a DataError; both name the
        config key, the path tried, the expected layout and where the dataset is published.
        """
        value = self.info(*keys)
        key = self.config_key(*keys)
        where = f" {self.TITLE or self.name} is published at {self.PUBLISHED_AT}." if self.PUBLISHED_AT else ""
        layout = f" Expected layout: {self.LAYOUT}." if self.LAYOUT else ""
        if value is None or str(value) == "":
            raise ConfigError(f"{key} is not set; set it to the {kind} path in the project YAML.{layout}{where}")
        path = Path(str(value)).expanduser()
        ok = {"file": path.is_file(), "dir": path.is_dir(), "any": path.exists()}[kind]
        if not ok:
            tried = path if path.is_absolute() else f"{path} (resolved from {Path.cwd()})"
            what = "folder" if kind == "dir" else kind if kind != "any" else "path"
            raise DataError(
                f"{key}: {what} not found: {tried}.{layout}{where} Download it there or set {key} in the project YAML."
            )
        return str(path)

    def dataset_kwargs(self):
        """Keyword arguments shared by the dataset classes: ``strict`` and ``image_options``."""
        strict = self.info("strict", default=_get(self.config, "strict", False))
        options = {"high_bit_depth": str(self.info("high_bit_depth", default="stretch"))}
        bands = self.info("bands")
        if bands is not None:
            options["bands"] = tuple(int(b) for b in bands)
        return {"strict": bool(strict), "image_options": options}

    def make_dataset(self, split, records, train_cls, eval_cls, train=None, text_processor=None):
        """One dataset of ``split``: ``train_cls`` with train processors for ``train``, else ``eval_cls``."""
        is_train = (split == "train") if train is None else train
        key = "train" if is_train else "eval"
        cls = train_cls if is_train else eval_cls
        tproc = text_processor if text_processor is not None else self.text_processors.get(key)
        dataset = cls(records, self.vis_processors.get(key), tproc, _get(self.config, "prompt", ""), **self.dataset_kwargs())
        self._maybe_attach_features(dataset, split)
        return dataset

    def _maybe_attach_features(self, dataset, split):
        """Serve features from an existing cache when ``feature_cache.enabled`` (see feature_cache module)."""
        fc = _get(self.config, "feature_cache")
        if fc is None or not _get(fc, "enabled", False):
            return
        from rslavis.datasets.feature_cache import FeatureCache, attach_feature_cache

        cache_dir = str(_get(fc, "cache_dir", "cache/features"))
        encoder = to_plain(_get(fc, "encoder", {}))
        if FeatureCache(cache_dir, encoder, dataset.image_paths()).exists():
            attach_feature_cache(dataset, cache_dir, encoder)
            logger.info("datasets.%s %s: image features from the cache in %s", self.name, split, cache_dir)
        else:
            logger.info("datasets.%s %s: no feature cache yet in %s; the model builds it", self.name, split, cache_dir)

    def attach_count_dicts(self, records_by_split, annotation_paths):
        """Attach ``count_dict`` to every record when ``count_dict.enabled`` (see count_dicts module)."""
        cfg = _get(self.config, "count_dict")
        if cfg is None or not _get(cfg, "enabled", False):
            return records_by_split
        from rslavis.datasets.count_dicts import attach_count_dicts

        plain = {k: to_plain(_get(cfg, k)) for k in ("parser", "parser_options", "fusion", "min_mentions", "detector_counts", "cache_dir")}
        return attach_count_dicts(records_by_split, annotation_paths, plain, str(self.name))
