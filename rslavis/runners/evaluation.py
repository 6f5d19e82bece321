"""Scoring the splits of a run: predictions, ``metrics_<split>.json``, and no silent partial score.

A split scored on fewer than ``run.min_scored_fraction`` (default 1.0) of its items fails
a test split and warns for a validation split; one with no readable image is an error.
"""

import logging

from rslavis.common import dist_utils
from rslavis.common.checkpoint import atomic_write_json
from rslavis.common.errors import DataError

logger = logging.getLogger(__name__)


class EvaluationMixin:
    """Evaluation of :class:`~rslavis.runners.runner_base.RunnerBase` (reads its task, datasets,
    loaders, log and output folder)."""

    def _warn_missing_splits(self):
        run = self.run_cfg
        for key in ("valid_splits", "test_splits"):
            missing = [s for s in (run.get(key) or []) if not self._split_datasets(s)]
            if missing:
                logger.warning("run.%s %s: no configured dataset has %s, so %s not evaluated (available: %s); set run.%s to the splits you have.",
                               key, missing, "this split" if len(missing) == 1 else "these splits", "it is" if len(missing) == 1 else "they are",
                               sorted({s for splits in self.datasets.values() for s in splits}), key)

    def _check_scored(self, split_name, dataset, n_scored, n_expected, tag):
        """Fail (test) or warn (val) when fewer than ``run.min_scored_fraction`` of the split's items were scored."""
        if n_scored >= n_expected:
            return
        fraction = self.run_cfg.get("min_scored_fraction")
        fraction = 1.0 if fraction is None else float(fraction)
        if n_expected and n_scored / n_expected >= fraction:
            return
        files = getattr(getattr(dataset, "skip_counter", None), "files", [])[:3]
        msg = (f"{split_name}: scored {n_scored} of {n_expected} items ({n_expected - n_scored} with unreadable images"
               f"{', e.g. ' + ', '.join(files) if files else ''}), below run.min_scored_fraction {fraction}; "
               f"metrics_{split_name}.json records n_scored/n_expected")
        if tag == "test":
            raise DataError(msg + ": fix or remove those images, or lower run.min_scored_fraction to accept a partial score.")
        logger.warning("%s.", msg)

    def evaluate_split(self, split, epoch, tag):
        """``{split_name: metrics}`` for every dataset having ``split``; rank 0 computes and writes.

        ``metrics_<split>.json`` holds ``n_scored`` (items with a prediction) and ``n_expected``
        (items of the split); a split with no readable image is an error, and one scored on
        fewer than ``run.min_scored_fraction`` (default 1.0) of its items fails a test split
        and warns for a validation split.
        """
        all_metrics = {}
        for name, dataset in self._split_datasets(split).items():
            split_name = self._split_name(name, split)
            loader = self._loader(dataset, train=False)
            with self.autocast(), dist_utils.full_parameters(self.unwrapped):
                results = self.task.evaluation(self.unwrapped, self._device_loader(loader), split_name)
            merged = self.task.gather(results)  # every rank's records, each id once
            metrics = None
            error = None
            if self.is_main:
                n_expected = len(dataset)
                if not merged and n_expected:
                    files = getattr(getattr(dataset, "skip_counter", None), "files", [])[:3]
                    error = (f"{split_name}: none of its {n_expected} items has a readable image"
                             f"{' (e.g. ' + ', '.join(files) + ')' if files else ''}; check the dataset's images folder (build_info).")
            if self.is_main and not error:
                metrics = self.task.after_evaluation(merged, split_name, epoch, dataset, self.result_dir)
                metrics = {k: (None if v is None else float(v)) for k, v in metrics.items()}
                metrics["n_scored"], metrics["n_expected"] = len(merged), n_expected
                atomic_write_json({"epoch": epoch, **metrics}, self.output_dir / f"metrics_{split_name}.json", indent=2)
                self.log.log({"epoch": epoch, "split": split_name, **metrics}, step=self.global_step, prefix=split_name)
                logger.info("%s epoch %d: %s", split_name, epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
                try:
                    self._check_scored(split_name, dataset, len(merged), n_expected, tag)
                except DataError as exc:
                    error = str(exc)
            metrics, error = dist_utils.broadcast_object((metrics, error))
            if error:
                raise DataError(error)
            all_metrics[split_name] = metrics
        return all_metrics
