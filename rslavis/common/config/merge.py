"""Merging a project with its defaults and ``--options`` into one validated config (order in
:mod:`rslavis.common.config`), and :class:`Config`, the object a run reads."""

from rslavis.common.config.dataset_section import dataset_defaults, validate_dataset
from rslavis.common.config.model_section import validate_model
from rslavis.common.config.schema import RUN_SCHEMA, Checker, check_sections, lookup, validate_run
from rslavis.common.config.yaml_io import PACKAGE_ROOT, lazy_omegaconf, load_yaml, mapping_option_keys, parse_options
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry


def _resolve_all(cfg, source):
    """Resolve every ``${...}`` once, so a bad interpolation is a ConfigError here, not a traceback later."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        lazy_omegaconf().to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{source}: {key}: cannot resolve the interpolation ({msg}); write ${{section.key}} with a key that exists, "
                          "e.g. ${run.output_dir}.") from None


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
        return lazy_omegaconf().to_yaml(self.config)

    @classmethod
    def from_file(cls, cfg_path, options=None, require_task=True, lenient=False):
        """``require_task=False``: a file with only ``datasets:`` (dataset tools need no task);
        ``lenient``: unknown sections and keys warn (one line each) and are dropped."""
        project = load_yaml(cfg_path, "project config")
        opts = parse_options(options)
        return cls(build_config(project, opts, str(cfg_path), require_task, lenient, replace=mapping_option_keys(options, opts)), cfg_path)

    @classmethod
    def from_dict(cls, data, options=None, source="<dict>", require_task=True, lenient=False):
        OmegaConf = lazy_omegaconf()
        project = OmegaConf.create(data)
        opts = parse_options(options)
        return cls(build_config(project, opts, source, require_task, lenient, replace=mapping_option_keys(options, opts)))


def build_config(project, opts, source, require_task=True, lenient=False, replace=()):
    """Merge defaults < project < options (see module docstring) and validate.

    ``replace``: dotted keys of ``opts`` whose mapping replaces the project's (not merges into it);
    the default YAMLs still fill keys the mapping leaves out. ``require_task=False`` accepts a
    file without ``run.task``; ``lenient`` makes unknown sections and keys warnings.
    """
    OmegaConf = lazy_omegaconf()
    checker = Checker(lenient)
    check_sections(project, source, checker)
    check_sections(opts, "--options", checker)
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
        model_cls = lookup("model", model.arch, source_of("model", "arch"), "model.arch")
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
            builders[name] = lookup("builder", name, source_of("datasets", name), f"datasets.{name}")
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
    task_cls = lookup("task", task_name, source_of("run", "task"), "run.task")
    schema = dict(RUN_SCHEMA)
    schema.update(getattr(task_cls, "RUN_KEYS", {}))
    validate_run(run, schema, source_of, checker)
    lookup("lr_scheduler", run.lr_sched, source_of("run", "lr_sched"), "run.lr_sched")
    lookup("runner", run.get("runner") or "runner_base", source_of("run", "runner"), "run.runner")
    return merged

