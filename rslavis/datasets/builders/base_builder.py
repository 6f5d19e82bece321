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

Caption and VQA builders also read LAVIS's layout: ``build_info.annotations.<split>.storage``
(``url`` is taken as the local path when ``storage`` is absent; ``md5`` is ignored),
optional ``annotations.<split>.coco_gt`` (COCO-format references to score against) and
``images.storage`` (the folder the records' ``image`` paths are relative to). Unknown
``build_info`` keys are errors listing the valid ones.
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


COMMON_BUILD_INFO_KEYS = ("strict", "high_bit_depth", "bands")
LAVIS_BUILD_INFO_KEYS = ("annotations", "images")
LAVIS_SPLIT_KEYS = ("storage", "url", "md5", "coco_gt")


class BaseDatasetBuilder:
    DATASET_CONFIG_DICT = {}
    # build_info keys besides those of the default YAMLs; None: any key (no check)
    BUILD_INFO_KEYS = ()
    LAVIS_LAYOUT = False  # reads build_info.annotations.<split>.storage / images.storage
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
        if str(type_).endswith((".yaml", ".yml")):  # a dataset YAML of one's own (e.g. LAVIS's defaults_cap.yaml)
            path = Path(str(type_)).expanduser()
            if not path.is_file():
                raise ConfigError(f"{source}: dataset type {type_!r}: file not found (resolved from {Path.cwd()}).")
            return path
        if not cls.DATASET_CONFIG_DICT:
            return None
        if type_ not in cls.DATASET_CONFIG_DICT:
            valid = ", ".join(sorted(cls.DATASET_CONFIG_DICT))
            raise ConfigError(f"{source}: dataset type {type_!r} is unknown for {cls.__name__}; valid: {valid}, or the path of a dataset YAML.")
        return PACKAGE_ROOT / cls.DATASET_CONFIG_DICT[type_]

    @classmethod
    def build_info_keys(cls):
        """Valid ``build_info`` keys: those of every default YAML, the shared ones, ``BUILD_INFO_KEYS``."""
        if cls.BUILD_INFO_KEYS is None:
            return None
        from rslavis.common.config import load_yaml

        keys = set(COMMON_BUILD_INFO_KEYS) | set(cls.BUILD_INFO_KEYS)
        if cls.LAVIS_LAYOUT:
            keys |= set(LAVIS_BUILD_INFO_KEYS)
        for rel in cls.DATASET_CONFIG_DICT.values():
            for dcfg in (load_yaml(PACKAGE_ROOT / rel, "default dataset config").get("datasets") or {}).values():
                keys.update(_get(dcfg, "build_info", {}).keys())
        return keys

    @classmethod
    def check_build_info(cls, build_info, name):
        """``[(key, message)]`` for each unknown key of ``build_info`` (and of LAVIS's split entries)."""
        valid = cls.build_info_keys()
        if valid is None:
            return []
        from rslavis.common.registry import closest_match

        problems = []
        for key in build_info.keys():
            if key not in valid:
                guess = closest_match(key, valid)
                hint = f" Did you mean {guess!r}?" if guess else ""
                problems.append((key, f"datasets.{name}.build_info: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}."))
        annotations = build_info.get("annotations") if cls.LAVIS_LAYOUT else None
        if annotations is not None and not hasattr(annotations, "keys"):
            raise ConfigError(f"datasets.{name}.build_info.annotations must map splits to {{storage: <file>}}, got {annotations!r}.")
        for split in (annotations or {}).keys():
            node = annotations[split]
            if node is None:
                continue
            if not hasattr(node, "keys"):
                raise ConfigError(f"datasets.{name}.build_info.annotations.{split} must be {{storage: <file>}} (LAVIS layout), got {node!r}.")
            for key in node.keys():
                if key not in LAVIS_SPLIT_KEYS:
                    raise ConfigError(
                        f"datasets.{name}.build_info.annotations.{split}: unknown key {key!r}; valid: {', '.join(LAVIS_SPLIT_KEYS)}."
                    )
        return problems

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
        if hasattr(value, "keys"):  # LAVIS spelling: images: {storage: DIR}
            keys = (*keys, "storage")
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

    def annotation_files(self):
        """``{split: local file}`` of LAVIS's ``build_info.annotations`` (None when not used).

        ``storage`` is the local file; without it ``url`` is used as a local path (nothing is
        downloaded). A split set to null is left out."""
        annotations = self.info("annotations")
        if annotations is None:
            return None
        out = {}
        for split in annotations:
            split = str(split)
            node = self.info("annotations", split)
            if node is None:
                continue
            field = "url" if self.info("annotations", split, "url") and not self.info("annotations", split, "storage") else "storage"
            value = str(self.info("annotations", split, field, default=""))
            if value.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{self.config_key('annotations', split, field)}: {value} is a URL and nothing is downloaded; "
                    f"download it and set {self.config_key('annotations', split, 'storage')} to the local file."
                )
            try:
                out[split] = self.require_path("annotations", split, field, kind="file")
            except DataError as exc:
                raise DataError(f"{exc} To leave the split out, set {self.config_key('annotations', split)} to null.") from None
        if not out:
            raise ConfigError(f"{self.config_key('annotations')} lists no split; give {{train: {{storage: <file>}}, ...}}.")
        return out

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
