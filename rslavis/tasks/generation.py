"""The generation settings of a run, read in one place: ``max_len``, ``min_len``, ``num_beams``,
``repetition_penalty``, ``length_penalty`` (the keyword arguments of ``model.generate``).

A key left unset (or null) takes the task's default; any value given is kept as given
(``min_len: 0`` stays 0, ``length_penalty: 0.0`` stays 0.0). Impossible values are a
one-line :class:`ConfigError` naming the key and the valid range. :class:`GenerativeTask`
is the base of the tasks that decode (captioning, VQA).
"""

import math

from rslavis.common.errors import ConfigError
from rslavis.tasks.base_task import BaseTask
from rslavis.tasks.best_of_n import from_run

DEFAULTS = {"max_len": 30, "min_len": 1, "num_beams": 1, "repetition_penalty": 1.0, "length_penalty": 1.0}
TYPES = {"max_len": int, "min_len": int, "num_beams": int, "repetition_penalty": float, "length_penalty": float}
VALID = {
    "max_len": "an integer >= 1 (tokens to generate at most)",
    "min_len": "an integer >= 0 and <= run.max_len",
    "num_beams": "an integer >= 1 (1: greedy)",
    "repetition_penalty": "a number > 0 (1.0: no penalty)",
    "length_penalty": "a finite number (1.0: mean log-probability per token; 0.0: sum)",
}


def _convert(key, value):
    kind = TYPES[key]
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"run.{key}: {value!r} is invalid; valid: {VALID[key]}.")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"run.{key}: {value!r} is invalid; valid: {VALID[key]}.") from None


def generation_settings(run, **defaults):
    """``{max_len, min_len, num_beams, repetition_penalty, length_penalty}`` from the ``run`` section;
    ``defaults`` override :data:`DEFAULTS` (e.g. ``max_len=10`` for VQA)."""
    out = {}
    for key, default in {**DEFAULTS, **defaults}.items():
        value = run.get(key) if run is not None else None
        out[key] = default if value is None else _convert(key, value)
    bad = None
    if out["max_len"] < 1:
        bad = "max_len"
    elif out["min_len"] < 0 or out["min_len"] > out["max_len"]:
        bad = "min_len"
    elif out["num_beams"] < 1:
        bad = "num_beams"
    elif not (out["repetition_penalty"] > 0 and math.isfinite(out["repetition_penalty"])):
        bad = "repetition_penalty"
    elif not math.isfinite(out["length_penalty"]):
        bad = "length_penalty"
    if bad is not None:
        extra = f" (run.max_len is {out['max_len']})" if bad == "min_len" and out["min_len"] > out["max_len"] else ""
        raise ConfigError(f"run.{bad}: {out[bad]!r} is invalid; valid: {VALID[bad]}{extra}.")
    return out


class GenerativeTask(BaseTask):
    """A task whose model decodes text (captioning, VQA): the run's generation settings and,
    with ``run.inference_method: best_of_n``, best-of-N selection (:mod:`rslavis.tasks.best_of_n`)."""

    DEFAULT_MAX_LEN = 30
    BEST_OF_N_KIND = "caption"  # what the best-of-N scorer reads: caption | vqa

    def __init__(self, cfg):
        super().__init__(cfg)
        self.generation = generation_settings(cfg.run, max_len=self.DEFAULT_MAX_LEN)
        self.best_of_n = from_run(cfg.run, self.BEST_OF_N_KIND)

    def generation_kwargs(self):
        return dict(self.generation)

    def before_evaluation(self, split):
        if self.best_of_n is not None:
            self.best_of_n.start()  # reproducible samples at every evaluation

    def decode(self, model, samples):
        """The model's text for each sample: best-of-N when configured, else ``model.generate``."""
        if self.best_of_n is not None:
            return self.best_of_n.select(model, samples, self.generation_kwargs())
        return model.generate(samples, **self.generation_kwargs())
