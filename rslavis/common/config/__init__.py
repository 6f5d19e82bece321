"""Config loading in LAVIS's two-level schema, with errors that name the file and key.

A project YAML has the sections ``model``, ``datasets`` and ``run`` (plus an optional
``plugins`` list). The merged config is, lowest priority first::

    rslavis/configs/default.yaml            (run defaults)
    < the model's default YAML               (model class PRETRAINED_MODEL_CONFIG_DICT[model_type])
    < each dataset's default YAML            (builder DATASET_CONFIG_DICT[type])
    < the project YAML
    < --options a.b=c ...

``model.model_type`` (and ``model.arch``, ``datasets.X.type``) are read from the
project merged with ``--options`` before the defaults are chosen, so an option can
switch which default YAML is loaded.

By role: ``yaml_io`` (files and ``--options`` to DictConfigs), ``schema`` (sections, run
keys, strict or lenient), ``model_section`` and ``dataset_section`` (what registered
models, builders and processors accept; LAVIS's spellings), ``merge`` (the order above,
:class:`Config`). Everything is importable from here.
"""

from rslavis.common.config.dataset_section import PROCESSOR_SECTIONS, dataset_defaults, processor_keys, validate_dataset
from rslavis.common.config.merge import Config, build_config
from rslavis.common.config.model_section import COMMON_MODEL_KEYS, model_keys, validate_model
from rslavis.common.config.schema import RUN_RANGES, RUN_SCHEMA, SECTIONS, Checker, check_sections, lookup, validate_run
from rslavis.common.config.yaml_io import PACKAGE_ROOT, load_yaml, mapping_option_keys, parse_options, to_plain, yaml_loader

__all__ = [
    "Config", "build_config", "load_yaml", "parse_options", "mapping_option_keys", "to_plain", "yaml_loader", "PACKAGE_ROOT",
    "SECTIONS", "RUN_SCHEMA", "RUN_RANGES", "Checker", "check_sections", "lookup", "validate_run",
    "COMMON_MODEL_KEYS", "model_keys", "validate_model", "PROCESSOR_SECTIONS", "dataset_defaults", "processor_keys", "validate_dataset",
]
