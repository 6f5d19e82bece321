"""The ``model`` section: the keys a model class accepts, LAVIS's spellings of them, local weights only."""

from pathlib import Path

from rslavis.common.config.schema import did_you_mean
from rslavis.common.config.yaml_io import PACKAGE_ROOT, load_yaml
from rslavis.common.errors import ConfigError

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
                hint = did_you_mean(key, valid)
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

