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
"""

import logging
import re
from pathlib import Path

from rslavis.common.errors import ConfigError, RegistryKeyError
from rslavis.common.registry import closest_match, registry

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("model", "datasets", "run", "plugins")

_ANY = object()
# run key -> accepted type(s). None in the YAML is accepted for keys whose default is None.
RUN_SCHEMA = {
    "task": str,
    "runner": str,
    "lr_sched": str,
    "init_lr": float,
    "min_lr": float,
    "warmup_lr": float,
    "warmup_steps": int,
    "lr_decay_rate": float,
    "weight_decay": float,
    "beta2": float,
    "max_epoch": int,
    "iters_per_epoch": int,
    "batch_size_train": int,
    "batch_size_eval": int,
    "num_workers": int,
    "accum_grad_iters": int,
    "log_freq": int,
    "val_freq": int,
    "save_freq": int,
    "save_last": bool,
    "seed": int,
    "output_dir": str,
    "job_id": str,
    "amp": _ANY,  # false | true | fp16 | bf16 (rslavis.runners.precision)
    "save_full": bool,
    "distributed_strategy": str,
    "resume_ckpt_path": str,
    "evaluate": bool,
    "train_splits": list,
    "valid_splits": list,
    "test_splits": list,
    "device": str,
    "world_size": int,
    "dist_url": str,
    "distributed": bool,
    "grad_clip": float,
    "min_scored_fraction": float,  # a test split scored on fewer of its items fails (default 1.0)
    "nonfinite_rewards": str,  # error | skip: a NaN/inf reward stops the run or drops the sample
    # task keys
    "max_len": int,
    "min_len": int,
    "num_beams": int,
    "repetition_penalty": float,
    "length_penalty": float,
    "prompt": str,
    "report_metric": bool,
    "metrics": _ANY,
}

# run key -> (lowest valid value, whether it is excluded, highest valid value or None, what it is).
# Zero or negative sizes, rates and frequencies fail at load time, not after an epoch.
RUN_RANGES = {
    "init_lr": (0, True, None, "a learning rate"),
    "min_lr": (0, False, None, "a learning rate"),
    "warmup_lr": (0, False, None, "a learning rate"),
    "warmup_steps": (0, False, None, "a number of steps"),
    "lr_decay_rate": (0, True, None, "a decay factor"),
    "weight_decay": (0, False, None, "a weight decay"),
    "beta2": (0, False, 1, "Adam's beta2"),
    "max_epoch": (0, False, None, "a number of epochs (0: evaluate only)"),
    "iters_per_epoch": (0, True, None, "a number of steps"),
    "batch_size_train": (0, True, None, "a batch size"),
    "batch_size_eval": (0, True, None, "a batch size"),
    "num_workers": (0, False, None, "a number of DataLoader workers"),
    "accum_grad_iters": (0, True, None, "a number of batches"),
    "log_freq": (0, True, None, "a frequency in steps"),
    "val_freq": (0, True, None, "a frequency in epochs"),
    "save_freq": (0, True, None, "a frequency in epochs (or -1, LAVIS's: only the last and the best)"),
    "grad_clip": (0, True, None, "a gradient norm"),
    "world_size": (0, True, None, "a number of processes"),
    "min_scored_fraction": (0, False, 1, "a fraction of a split's items"),
}

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}


def _omegaconf():
    from omegaconf import OmegaConf

    return OmegaConf


def to_plain(value):
    """OmegaConf nodes as plain dicts/lists (for constructors, hashing, JSON); anything else unchanged."""
    if hasattr(value, "_content"):  # an OmegaConf node; no omegaconf import for plain values
        return _omegaconf().to_container(value, resolve=True)
    return value


# OmegaConf's float rule (what LAVIS loads its files with): YAML 1.1 needs a dot before the
# exponent, so ``1e-5`` would stay a string under a plain safe_load. Same pattern as OmegaConf.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_LOADER = None


def yaml_loader():
    """A SafeLoader that reads numbers as OmegaConf (and so LAVIS) does: ``1e-5`` is a float."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class LavisLoader(yaml.SafeLoader):
            pass

        LavisLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
        _LOADER = LavisLoader
    return _LOADER


def load_yaml(path, what="config file"):
    """Load a YAML file to a DictConfig; a missing file or syntax error is a ConfigError."""
    OmegaConf = _omegaconf()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p} (check the path; it is resolved from {Path.cwd()}).")
    import yaml

    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping of sections, got {type(data).__name__}.")
    try:
        return OmegaConf.create(data)
    except Exception as exc:  # e.g. non-string keys
        raise ConfigError(f"{p}: cannot be read as a config: {exc}") from None


def parse_options(options):
    """``["a.b=c", ...]`` to a DictConfig; a malformed option is a ConfigError."""
    OmegaConf = _omegaconf()
    options = list(options or [])
    for opt in options:
        if "=" not in opt or opt.startswith("="):
            raise ConfigError(f"--options {opt!r}: expected key=value, for example run.max_epoch=3.")
    try:
        return OmegaConf.from_dotlist(options)
    except Exception as exc:
        raise ConfigError(f"--options {' '.join(options)}: cannot be parsed: {exc}") from None


def mapping_option_keys(options, opts):
    """Keys of ``--options`` whose value is a mapping (``run.rewards={cider: 1.0}``): such a value
    replaces the project's mapping instead of merging into it, so a command line can drop entries."""
    OmegaConf = _omegaconf()
    keys = []
    for opt in options or ():
        key = opt.split("=", 1)[0].strip()
        if OmegaConf.is_dict(OmegaConf.select(opts, key, default=None)) and opt.split("=", 1)[1].lstrip().startswith("{"):
            keys.append(key)
    return keys


def _resolve_all(cfg, source):
    """Resolve every ``${...}`` once, so a bad interpolation is a ConfigError here, not a traceback later."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        _omegaconf().to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{source}: {key}: cannot resolve the interpolation ({msg}); write ${{section.key}} with a key that exists, "
                          "e.g. ${run.output_dir}.") from None


class Checker:
    """Unknown sections and keys: a ConfigError (strict, the default), or with ``lenient``
    one warning each and the entry dropped (for porting files written for other forks)."""

    def __init__(self, lenient=False):
        self.lenient = bool(lenient)
        self.ignored = []

    def unknown(self, message, node, key):
        if not self.lenient:
            raise ConfigError(message)
        logger.warning("--lenient: ignored: %s", message)
        self.ignored.append(message)
        del node[key]


def _check_sections(cfg, source, checker=None):
    checker = checker or Checker()
    for key in list(cfg.keys()):
        if key not in SECTIONS:
            guess = closest_match(key, SECTIONS)
            hint = f" Did you mean {guess!r}?" if guess else ""
            checker.unknown(f"{source}: unknown top-level section {key!r}.{hint} Valid sections: {', '.join(SECTIONS)}.", cfg, key)


def _lookup(kind, name, source, key):
    try:
        return registry.get(kind, name)
    except RegistryKeyError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None


def _check_type(value, expected):
    if expected is _ANY or value is None:
        return True
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is list:
        from omegaconf import ListConfig

        return isinstance(value, (list, tuple, ListConfig))
    return isinstance(value, expected)


def validate_run(run_cfg, schema, source_of, checker=None):
    """Unknown run keys and wrongly typed values raise a ConfigError naming their source."""
    checker = checker or Checker()
    for key in list(run_cfg.keys()):
        if key not in schema:
            guess = closest_match(key, schema)
            hint = f" Did you mean {guess!r}?" if guess else ""
            checker.unknown(
                f"{source_of('run', key)}: unknown run key {key!r}.{hint} Valid run keys: {', '.join(sorted(schema))}.",
                run_cfg,
                key,
            )
            continue
        value = run_cfg[key]
        expected = schema[key]
        if not _check_type(value, expected):
            raise ConfigError(
                f"{source_of('run', key)}: run.{key} must be {_TYPE_NAMES.get(expected, expected)}, "
                f"got {value!r} ({type(value).__name__})."
            )
        if key == "save_freq" and value == -1:  # LAVIS: -1 saves only the last and the best checkpoints
            continue
        if key in RUN_RANGES and value is not None:
            low, open_low, high, what = RUN_RANGES[key]
            if value < low or (open_low and value == low) or (high is not None and value > high):
                valid = f"> {low}" if open_low else f">= {low}"
                if high is not None:
                    valid = f"between {low} and {high}"
                raise ConfigError(f"{source_of('run', key)}: run.{key} is {value!r}; {what} must be {valid}.")


class Config:
    """The merged run config: ``cfg.model``, ``cfg.datasets``, ``cfg.run`` (OmegaConf nodes).

    ``Config.from_file(path, options)`` loads, merges defaults and validates. The
    merged DictConfig is ``cfg.config``.
    """

    def __init__(self, config, cfg_path=None):
        self.config = config
        self.cfg_path = cfg_path

    @property
    def model(self):
        return self.config.model

    @property
    def datasets(self):
        return self.config.datasets

    @property
    def run(self):
        return self.config.run

    def to_yaml(self):
        return _omegaconf().to_yaml(self.config)

    @classmethod
    def from_file(cls, cfg_path, options=None, require_task=True, lenient=False):
        """``require_task=False``: a file with only ``datasets:`` (dataset tools need no task);
        ``lenient``: unknown sections and keys warn (one line each) and are dropped."""
        project = load_yaml(cfg_path, "project config")
        opts = parse_options(options)
        return cls(build_config(project, opts, str(cfg_path), require_task, lenient, replace=mapping_option_keys(options, opts)), cfg_path)

    @classmethod
    def from_dict(cls, data, options=None, source="<dict>", require_task=True, lenient=False):
        OmegaConf = _omegaconf()
        project = OmegaConf.create(data)
        opts = parse_options(options)
        return cls(build_config(project, opts, source, require_task, lenient, replace=mapping_option_keys(options, opts)))


def build_config(project, opts, source, require_task=True, lenient=False, replace=()):
    """Merge defaults < project < options (see module docstring) and validate.

    ``replace``: dotted keys of ``opts`` whose mapping replaces the project's (not merges into it);
    the default YAMLs still fill keys the mapping leaves out. ``require_task=False`` accepts a
    file without ``run.task``; ``lenient`` makes unknown sections and keys warnings.
    """
    OmegaConf = _omegaconf()
    checker = Checker(lenient)
    _check_sections(project, source, checker)
    _check_sections(opts, "--options", checker)
    user = OmegaConf.merge(project, opts)
    for key in replace:
        OmegaConf.update(user, key, OmegaConf.select(opts, key), merge=False)

    def source_of(section, key):
        node = opts.get(section)
        if node is not None and key in node:
            return "--options"
        return source

    plugins = user.get("plugins") or []
    if not isinstance(plugins, (list, tuple)) and not OmegaConf.is_list(plugins):
        raise ConfigError(f"{source_of('plugins', '')}: 'plugins' must be a list of module names, got {plugins!r}.")
    registry.load_plugins([str(p) for p in plugins])

    parts = [load_yaml(PACKAGE_ROOT / "configs" / "default.yaml", "default config")]

    model = user.get("model")
    model_cls = None
    if model is not None:
        if not OmegaConf.is_dict(model) or "arch" not in model:
            raise ConfigError(f"{source}: the 'model' section must set 'arch' (a registered model name, see registry.list_models()).")
        model_cls = _lookup("model", model.arch, source_of("model", "arch"), "model.arch")
        model_type = model.get("model_type") or getattr(model_cls, "DEFAULT_MODEL_TYPE", None)
        if model_type is not None:
            parts.append(OmegaConf.create({"model": {"model_type": model_type}}))
            default_path = model_cls.default_config_path(model_type, source=source_of("model", "model_type"))
            parts.append(load_yaml(default_path, f"default config of model {model.arch!r}"))

    datasets = user.get("datasets")
    if "datasets" in user and (datasets is None or (OmegaConf.is_dict(datasets) and len(datasets) == 0)):
        raise ConfigError(f"{source_of('datasets', '')}: 'datasets' is empty; name at least one dataset, e.g. "
                          f"datasets: {{rs_synthetic: {{}}}} (registered: {', '.join(registry.list_builders())}).")
    builders = {}
    if datasets is not None:
        if not OmegaConf.is_dict(datasets):
            raise ConfigError(f"{source}: 'datasets' must map dataset names to their settings.")
        # A dataset listed without settings ("rs_synthetic:") keeps its default YAML.
        for n in [n for n, d in datasets.items() if d is None]:
            user.datasets[n] = {}
        for name, dcfg in user.datasets.items():
            builders[name] = _lookup("builder", name, source_of("datasets", name), f"datasets.{name}")
            default = dataset_defaults(name, dcfg, builders[name], source)
            if default is not None:
                parts.append(OmegaConf.create({"datasets": {name: default}}))

    merged = OmegaConf.merge(*parts, user)
    _resolve_all(merged, source)
    for section in ("model", "datasets", "run"):
        if section not in merged:
            merged[section] = {}
    if model_cls is not None:
        validate_model(merged.model, user.model, model_cls, source_of, checker)
    for name, builder_cls in builders.items():
        validate_dataset(merged.datasets[name], name, builder_cls, source_of, checker)
    run = merged.run
    task_name = run.get("task")
    if not task_name:
        if not require_task:
            validate_run(run, RUN_SCHEMA, source_of, checker)
            return merged
        raise ConfigError(f"{source}: run.task is not set; registered tasks: {', '.join(registry.list_tasks())}.")
    task_cls = _lookup("task", task_name, source_of("run", "task"), "run.task")
    schema = dict(RUN_SCHEMA)
    schema.update(getattr(task_cls, "RUN_KEYS", {}))
    validate_run(run, schema, source_of, checker)
    _lookup("lr_scheduler", run.lr_sched, source_of("run", "lr_sched"), "run.lr_sched")
    _lookup("runner", run.get("runner") or "runner_base", source_of("run", "runner"), "run.runner")
    return merged


# ---------------------------------------------------------------------- model section
# Keys every model section may carry (LAVIS's spelling): ``pretrained`` and ``finetuned`` are
# local paths, used when ``load_pretrained`` / ``load_finetuned`` are not false.
COMMON_MODEL_KEYS = ("arch", "model_type", "pretrained", "finetuned", "load_pretrained", "load_finetuned")


def model_keys(model_cls):
    """Valid keys of ``model_cls``'s section: its default YAMLs' keys, the common ones, its
    ``MODEL_KEYS`` and ``KEY_ALIASES``; None when the class opts out (``MODEL_KEYS = None``)."""
    extra = getattr(model_cls, "MODEL_KEYS", ())
    if extra is None:
        return None
    keys = set(COMMON_MODEL_KEYS) | set(extra) | set(getattr(model_cls, "KEY_ALIASES", {}))
    for rel in getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {}).values():
        path = Path(rel) if Path(rel).is_absolute() else PACKAGE_ROOT / rel
        if path.is_file():
            keys.update((load_yaml(path, "default model config").get("model") or {}).keys())
    return keys


def validate_model(model_cfg, user_model, model_cls, source_of, checker):
    """Unknown model keys are errors (closest match, valid keys); LAVIS spellings in the class's
    ``KEY_ALIASES`` (e.g. ``num_query_token``) become the canonical key; ``load_pretrained:
    false`` / ``load_finetuned: false`` clear ``pretrained`` / ``finetuned``."""
    arch = model_cfg.get("arch")
    for alias, canonical in getattr(model_cls, "KEY_ALIASES", {}).items():
        if alias not in model_cfg:
            continue
        if canonical in user_model and user_model[canonical] != model_cfg[alias]:
            raise ConfigError(
                f"{source_of('model', alias)}: model.{alias} ({model_cfg[alias]!r}) and model.{canonical} "
                f"({user_model[canonical]!r}) name the same setting; keep one."
            )
        model_cfg[canonical] = model_cfg[alias]
        del model_cfg[alias]
    valid = model_keys(model_cls)
    if valid is not None:
        for key in list(model_cfg.keys()):
            if key not in valid:
                guess = closest_match(key, valid)
                hint = f" Did you mean {guess!r}?" if guess else ""
                checker.unknown(
                    f"{source_of('model', key)}: unknown model key {key!r} for model {arch!r}.{hint} "
                    f"Valid model keys: {', '.join(sorted(valid))}.",
                    model_cfg,
                    key,
                )
    for flag, key in (("load_pretrained", "pretrained"), ("load_finetuned", "finetuned")):
        if model_cfg.get(flag) is False and key in model_cfg:
            model_cfg[key] = None
        value = model_cfg.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            raise ConfigError(
                f"{source_of('model', key)}: model.{key} is a URL ({value}) and nothing is downloaded; "
                f"download it and set model.{key} to the local path (or model.{flag}: false)."
            )


# ---------------------------------------------------------------------- dataset sections
PROCESSOR_SECTIONS = ("vis_processor", "text_processor")


def dataset_defaults(name, dcfg, builder_cls, source):
    """The builder's default YAML for ``datasets.<name>`` (filed under ``name``, so an alias
    such as LAVIS's ``coco_caption`` gets it too). A processor the project renames drops the
    default's settings for that split: settings of one processor mean nothing to another."""
    OmegaConf = _omegaconf()
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
            proc_cls = _lookup("processor", pcfg.name, source_of("datasets", name), f"{where}.name")
            valid = processor_keys(proc_cls)
            if valid is None:
                continue
            for key in list(pcfg.keys()):
                if key != "name" and key not in valid:
                    guess = closest_match(key, valid)
                    hint = f" Did you mean {guess!r}?" if guess else ""
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
