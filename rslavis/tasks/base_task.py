"""Base class of tasks (see DESIGN.md: setup_task, build_datasets, build_model, train_step,
evaluation, after_evaluation)."""

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
        model_cfg = cfg.model
        model_cls = registry.get_model_class(model_cfg.arch)
        return model_cls.from_config(model_cfg)

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

    @torch.no_grad()
    def evaluation(self, model, data_loader, split):
        """Results of this rank on ``data_loader`` (the runner gathers ranks)."""
        raise NotImplementedError

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        """Metrics dict from the gathered results; must contain ``agg_metrics``."""
        raise NotImplementedError
