"""The ``datasets`` sections: each builder's default YAML, and the processors and ``build_info`` keys it accepts."""

from rslavis.common.config.schema import did_you_mean, lookup
from rslavis.common.config.yaml_io import lazy_omegaconf, load_yaml, to_plain
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry

PROCESSOR_SECTIONS = ("vis_processor", "text_processor")


def dataset_defaults(name, dcfg, builder_cls, source):
    """The builder's default YAML for ``datasets.<name>`` (filed under ``name``, so an alias
    such as LAVIS's ``coco_caption`` gets it too). A processor the project renames drops the
    default's settings for that split: settings of one processor mean nothing to another."""
    OmegaConf = lazy_omegaconf()
    dtype = str((dcfg or {}).get("type", "default") if dcfg is not None else "default")

    def read(path):
        loaded = load_yaml(path, f"default config of dataset {name!r}").get("datasets") or {}
        if name in loaded:
            return OmegaConf.create(to_plain(loaded[name]) or {})
        if len(loaded) == 1:
            return OmegaConf.create(to_plain(next(iter(loaded.values()))) or {})
        raise ConfigError(f"{path}: a dataset YAML must hold one entry under 'datasets:' (found {list(loaded)}).")

    default_path = builder_cls.default_config_path(dtype, source=source)
    if default_path is None:
        return None
    default = read(default_path)
    if dtype.endswith((".yaml", ".yml")):  # one's own dataset YAML (LAVIS's has no processors): over the builder's default
        base_path = builder_cls.default_config_path("default", source=source) if "default" in builder_cls.DATASET_CONFIG_DICT else None
        if base_path is not None:
            merged = OmegaConf.merge(read(base_path), default)
            if default.get("build_info") is not None:  # its files replace the builder's default ones
                merged.build_info = default.build_info
            default = merged
    for section in PROCESSOR_SECTIONS:
        mine, theirs = (dcfg or {}).get(section), default.get(section)
        if not mine or not theirs or not OmegaConf.is_dict(mine):
            continue
        for split in list(mine.keys()):
            new, old = mine.get(split), theirs.get(split)
            if new is not None and old is not None and new.get("name") and new.get("name") != old.get("name"):
                del theirs[split]
    return default


def processor_keys(proc_cls):
    """Keyword arguments ``proc_cls`` accepts (its ``CONFIG_KEYS``, else its ``__init__``); None: any."""
    keys = getattr(proc_cls, "CONFIG_KEYS", None)
    if keys is not None:
        return set(keys)
    import inspect

    params = inspect.signature(proc_cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def validate_dataset(dcfg, name, builder_cls, source_of, checker):
    """Processor names exist and get only keys they accept; ``build_info`` keys are known to the builder."""
    for section in PROCESSOR_SECTIONS:
        node = dcfg.get(section)
        if not node:
            continue
        for split in list(node.keys()):
            pcfg = node[split]
            where = f"datasets.{name}.{section}.{split}"
            if pcfg is None:
                continue
            if split not in ("train", "eval"):
                checker.unknown(f"{source_of('datasets', name)}: {where}: unknown processor split {split!r}; valid: train, eval.", node, split)
                continue
            if not pcfg.get("name"):
                raise ConfigError(f"{source_of('datasets', name)}: {where}.name is not set; registered processors: {', '.join(registry.list_processors())}.")
            proc_cls = lookup("processor", pcfg.name, source_of("datasets", name), f"{where}.name")
            valid = processor_keys(proc_cls)
            if valid is None:
                continue
            for key in list(pcfg.keys()):
                if key != "name" and key not in valid:
                    hint = did_you_mean(key, valid)
                    checker.unknown(
                        f"{source_of('datasets', name)}: {where}: processor {pcfg.name!r} has no setting {key!r}.{hint} "
                        f"Valid: {', '.join(sorted(valid)) or '(none)'}.",
                        pcfg,
                        key,
                    )
    check = getattr(builder_cls, "check_build_info", None)
    if check is not None and dcfg.get("build_info") is not None:
        for key, message in check(dcfg.build_info, name):
            checker.unknown(f"{source_of('datasets', name)}: {message}", dcfg.build_info, key)
