"""Reading a run folder (layout in :mod:`rslavis.runners.runner_base`) for the report."""

import json
import logging
import re
from pathlib import Path

from rslavis.common.errors import DataError

logger = logging.getLogger(__name__)
_RESULT = re.compile(r"^(?P<split>.+)_epoch(?P<epoch>\d+)\.json$")


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def flatten(d, prefix=""):
    """``{"a.b.c": value}`` from nested dicts (lists are kept whole)."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class RunData:
    """Everything the report reads from ``run_dir``; missing parts are empty, never errors.

    ``config`` (plain dict from ``config.yaml``), ``train_records`` / ``eval_records``
    (from ``log.jsonl``), ``metrics`` ``{split: {...}}`` (``metrics_<split>.json``),
    ``result_files`` ``{split: {epoch: path}}`` (``result/<split>_epoch<N>.json``).
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise DataError(f"run folder {str(self.run_dir)!r} does not exist.")
        markers = ("config.yaml", "log.jsonl", "result")
        if not any((self.run_dir / m).exists() for m in markers) and not list(self.run_dir.glob("metrics_*.json")):
            raise DataError(
                f"{str(self.run_dir)!r} is not a run folder: it has none of config.yaml, log.jsonl, result/, metrics_<split>.json."
            )
        self.name = self.run_dir.name
        self.warnings = []
        self.config = self._read_config()
        self.train_records, self.eval_records = self._read_log()
        self.metrics = {}
        for p in sorted(self.run_dir.glob("metrics_*.json")):
            try:
                self.metrics[p.stem[len("metrics_"):]] = _read_json(p)
            except (OSError, json.JSONDecodeError) as exc:
                self.warn(f"{p.name} is unreadable ({exc}); its metrics are left out.")
        self.result_files = {}
        for p in sorted((self.run_dir / "result").glob("*.json")):
            m = _RESULT.match(p.name)
            if m:
                self.result_files.setdefault(m["split"], {})[int(m["epoch"])] = p

    def warn(self, msg):
        self.warnings.append(msg)
        logger.warning("report %s: %s", self.name, msg)

    def _read_config(self):
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            self.warn("no config.yaml: the config section is empty and the dataset cannot be rebuilt.")
            return {}
        try:
            from omegaconf import OmegaConf

            return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        except Exception as exc:  # a hand-edited or truncated file: the rest of the report still helps
            self.warn(f"config.yaml is unreadable ({exc}).")
            return {}

    def _read_log(self):
        path = self.run_dir / "log.jsonl"
        train, evals = [], []
        if not path.is_file():
            return train, evals
        bad = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                bad += 1
                continue
            if not isinstance(rec, dict):
                continue
            if "split" in rec:
                evals.append(rec)
            elif "loss" in rec or "step" in rec:
                train.append(rec)
        if bad:
            self.warn(f"log.jsonl: {bad} unreadable line(s) skipped.")
        return train, evals

    # ------------------------------------------------------------------ config views
    @property
    def run_cfg(self):
        return self.config.get("run") or {}

    @property
    def task(self):
        return self.run_cfg.get("task")

    def splits(self):
        """Every split with metrics or results, test splits last."""
        names = list(dict.fromkeys([*self.metrics, *self.result_files]))
        tests = set(self.test_split_names())
        return [s for s in names if s not in tests] + [s for s in names if s in tests]

    def test_split_names(self):
        """Split names of the test splits (``<dataset>_<split>`` with several datasets)."""
        test = list(self.run_cfg.get("test_splits") or [])
        datasets = list((self.config.get("datasets") or {}).keys())
        if len(datasets) > 1:
            return [f"{d}_{s}" for s in test for d in datasets]
        return test

    def result_epoch(self, split):
        """The epoch of the split's predictions: that of ``metrics_<split>.json``, else the latest."""
        files = self.result_files.get(split) or {}
        if not files:
            return None
        epoch = (self.metrics.get(split) or {}).get("epoch")
        if epoch is not None and int(epoch) in files:
            return int(epoch)
        return max(files)

    def results(self, split):
        """The prediction records of ``split`` (``[]`` when there are none)."""
        epoch = self.result_epoch(split)
        if epoch is None:
            return []
        path = self.result_files[split][epoch]
        try:
            data = _read_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            self.warn(f"{path.name} is unreadable ({exc}).")
            return []
        return data if isinstance(data, list) else []

    # ------------------------------------------------------------------ datasets
    def eval_datasets(self, datasets=None):
        """``{split_name: dataset}`` for the run's splits, rebuilt from the config when not given.

        Returns ``{}`` with one warning when the data is not available (the report then
        has no gallery and no reference-based metrics).
        """
        if datasets is None:
            datasets = self.build_datasets()
        if not datasets:
            return {}
        out = {}
        for name, splits in datasets.items():
            for split, ds in splits.items():
                out[split if len(datasets) == 1 else f"{name}_{split}"] = ds
        return out

    def build_datasets(self):
        """``{dataset_name: {split: Dataset}}`` rebuilt through the registry; None (one warning) on failure."""
        if not self.config.get("datasets"):
            return None
        try:
            from rslavis.common.config import Config
            from rslavis.common.registry import registry

            cfg = Config.from_file(self.run_dir / "config.yaml")
            task = registry.get_task_class(cfg.run.task).setup_task(cfg)
            return task.build_datasets(cfg)
        except Exception as exc:  # any failure (data moved, plugin gone): report without the data
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.warn(f"the dataset could not be rebuilt from config.yaml ({first[:300]}); no gallery and no reference-based metrics.")
            return None
