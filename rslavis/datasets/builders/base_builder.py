"""Base class of dataset builders.

A builder reads one entry of a project's ``datasets:`` section (merged over its
default YAML, chosen by ``type``), builds the processors it names and returns one
torch Dataset per split.
"""

from pathlib import Path

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry

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
