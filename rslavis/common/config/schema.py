"""What a valid config is: its sections and the ``run`` keys with their types and ranges.

Unknown names get the closest valid one; :class:`Checker` makes unknown sections and keys
errors (strict, the default) or one warning each (``--lenient``).
"""

import logging

from rslavis.common.errors import ConfigError, RegistryKeyError
from rslavis.common.registry import closest_match, registry

logger = logging.getLogger(__name__)

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


def did_you_mean(name, valid):
    """`` Did you mean 'x'?`` for the closest valid name, or nothing when none is close."""
    guess = closest_match(name, valid)
    return f" Did you mean {guess!r}?" if guess else ""


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


def check_sections(cfg, source, checker=None):
    checker = checker or Checker()
    for key in list(cfg.keys()):
        if key not in SECTIONS:
            hint = did_you_mean(key, SECTIONS)
            checker.unknown(f"{source}: unknown top-level section {key!r}.{hint} Valid sections: {', '.join(SECTIONS)}.", cfg, key)


def lookup(kind, name, source, key):
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
            hint = did_you_mean(key, schema)
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

