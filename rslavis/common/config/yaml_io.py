"""Reading config files and ``--options``: YAML as OmegaConf (and so LAVIS) reads it, to DictConfigs.

A missing file, a syntax error or a malformed option is a :class:`ConfigError` naming it.
"""

import re
from pathlib import Path

from rslavis.common.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # rslavis/: configs/ lives there


def lazy_omegaconf():
    """OmegaConf, imported on first use (``to_plain`` is imported by model modules at import time)."""
    from omegaconf import OmegaConf

    return OmegaConf


def to_plain(value):
    """OmegaConf nodes as plain dicts/lists (for constructors, hashing, JSON); anything else unchanged."""
    if hasattr(value, "_content"):  # an OmegaConf node; no omegaconf import for plain values
        return lazy_omegaconf().to_container(value, resolve=True)
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
    OmegaConf = lazy_omegaconf()
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
    OmegaConf = lazy_omegaconf()
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
    OmegaConf = lazy_omegaconf()
    keys = []
    for opt in options or ():
        key = opt.split("=", 1)[0].strip()
        if OmegaConf.is_dict(OmegaConf.select(opts, key, default=None)) and opt.split("=", 1)[1].lstrip().startswith("{"):
            keys.append(key)
    return keys
