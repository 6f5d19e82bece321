"""Base class of tasks: ``setup_task``, ``build_datasets``, ``build_model``, ``train_step``, and
the one evaluation loop (``evaluation``: iterate, call the model, collect records; ``gather``:
merge the ranks' records) with ``after_evaluation`` turning records into metrics.

A task supplies only what differs: ``eval_step(model, samples)`` (the model call) and
``records(samples, outputs)`` (what one evaluated sample writes); generation settings
come from :func:`rslavis.tasks.generation.generation_settings`.
"""

import logging

import torch

from rslavis.common.registry import registry

logger = logging.getLogger(__name__)


class BaseTask:
    # Extra run keys a task understands, with their types, on top of config.RUN_SCHEMA.
    RUN_KEYS = {}

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def setup_task(cls, cfg):
        return cls(cfg)

    def build_model(self, cfg):
        """The configured model; with ``model.finetuned`` (a runner checkpoint or a ``save_pretrained``
        directory) its weights come from there (:func:`rslavis.models.loading.build_finetuned`)."""
        model_cfg = cfg.model
        if model_cfg.get("finetuned"):
            from rslavis.models.loading import build_finetuned

            return build_finetuned(model_cfg)
        model_cls = registry.get_model_class(model_cfg.arch)
        return model_cls.from_config(model_cfg)

    def run_value(self, key, default):
        """``run.<key>``, or ``default`` when it is unset or null (a given 0, 0.0 or false is kept)."""
        value = self.cfg.run.get(key)
        return default if value is None else value

    def build_datasets(self, cfg):
        """``{dataset_name: {split: Dataset}}`` from every entry of ``datasets:``."""
        out = {}
        for name, dcfg in cfg.datasets.items():
            builder = registry.get_builder_class(name)(dcfg, name)
            out[name] = builder.build_datasets()
        return out

    def state_dict(self):
        """State of the task that influences training and is not in the model or optimizer
        (reward windows, running statistics, generators), saved in every checkpoint so a resume
        is exact. Tensors and plain Python values only; ``{}`` when there is none."""
        return {}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (called by the runner on resume)."""

    def before_epoch(self, epoch):
        """Called by the runner at the start of every training epoch (also after a resume)."""

    def train_step(self, model, samples):
        """One forward pass; returns a dict with ``loss`` and any scalars to log."""
        return model(samples)

    # ------------------------------------------------------------------ evaluation
    def before_evaluation(self, split):
        """Called at the start of every :meth:`evaluation` (e.g. to re-seed a sampler)."""

    def eval_step(self, model, samples):
        """The model's outputs for one evaluation batch (captions, answers, scores, ...)."""
        raise NotImplementedError(f"{type(self).__name__} does not define eval_step(model, samples).")

    def records(self, samples, outputs):
        """The result records (dicts) of one evaluated batch."""
        raise NotImplementedError(f"{type(self).__name__} does not define records(samples, outputs).")

    @torch.no_grad()
    def evaluation(self, model, data_loader, split):
        """Records of this rank on ``data_loader``: :meth:`eval_step` then :meth:`records` per batch."""
        from rslavis.common.dist_utils import is_main_process
        from rslavis.common.logger import progress

        model.eval()
        self.before_evaluation(split)
        results = []
        for samples in progress(data_loader, desc=f"eval {split}", disable=not is_main_process()):
            if not samples:  # every image of the batch was unreadable
                continue
            results.extend(self.records(samples, self.eval_step(model, samples)))
        return results

    @staticmethod
    def record_id(record):
        """What identifies a record across ranks (``question_id``, else ``image_id``)."""
        return record.get("question_id", record.get("image_id"))

    def gather(self, results):
        """Every rank's records, the first of each :meth:`record_id` kept (DistributedSampler pads
        with repeats); the same list on every rank."""
        from rslavis.common import dist_utils

        merged, seen = [], set()
        for part in dist_utils.all_gather_object(results):
            for r in part:
                key = self.record_id(r)
                if key not in seen:
                    seen.add(key)
                    merged.append(r)
        return merged

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        """Metrics dict from the gathered results; must contain ``agg_metrics``."""
        raise NotImplementedError
