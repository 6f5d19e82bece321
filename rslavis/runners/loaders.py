"""What the runner feeds the model: the splits of its datasets, loaders, and each epoch's order.

The data order of epoch ``e`` and its workers' seeds are functions of ``(run.seed, e)``
alone, not of the global RNG, so a resumed run draws the same batches as an uninterrupted one.
"""

import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from rslavis.common.errors import ConfigError


def _collater(dataset):
    while isinstance(dataset, ConcatDataset):
        dataset = dataset.datasets[0]
    return getattr(dataset, "collater", None)


class _SeededRandomSampler(RandomSampler):
    """Random order fixed by ``seed + epoch``: independent of the global RNG (exact resume)."""

    def __init__(self, data_source, seed):
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class LoaderMixin:
    """Splits, loaders and device transfer of :class:`~rslavis.runners.runner_base.RunnerBase`
    (reads its ``datasets``, ``run_cfg``, ``distributed`` and ``device``)."""

    def _split_datasets(self, split):
        """``{name: dataset}`` with ``split`` from every configured dataset."""
        return {name: splits[split] for name, splits in self.datasets.items() if split in splits}

    def _split_name(self, dataset_name, split):
        return split if len(self.datasets) == 1 else f"{dataset_name}_{split}"

    def train_dataset(self):
        parts = [ds for split in self.run_cfg.train_splits for ds in self._split_datasets(split).values()]
        if not parts:
            raise ConfigError(f"run.train_splits {list(self.run_cfg.train_splits)}: no configured dataset has such a split.")
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def _loader(self, dataset, train):
        bs = self.run_cfg.batch_size_train if train else self.run_cfg.batch_size_eval
        if self.distributed:
            sampler = DistributedSampler(dataset, shuffle=train, seed=int(self.run_cfg.seed))
        elif train:
            sampler = _SeededRandomSampler(dataset, int(self.run_cfg.seed))
        else:
            sampler = SequentialSampler(dataset)
        g = torch.Generator()
        g.manual_seed(int(self.run_cfg.seed))
        workers = int(self.run_cfg.get("num_workers") or 0)
        cuda = self.device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            num_workers=workers,
            collate_fn=_collater(dataset),
            drop_last=train,
            generator=g,  # workers' seeds come from it: re-seeded every epoch (_start_epoch)
            pin_memory=cuda,
            # on CUDA workers stay up between epochs; on CPU they restart, so an epoch's augmentation depends on its number only
            persistent_workers=cuda and workers > 0,
        )

    def _start_epoch(self, loader, epoch):
        """Data order and worker seeds of ``epoch`` as functions of ``(seed, epoch)`` only: exact resume."""
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if loader.generator is not None:
            loader.generator.manual_seed(int(self.run_cfg.seed) * 1000 + epoch)

    def _to_device(self, samples):
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in samples.items()}

    def _device_loader(self, loader):
        runner = self

        class _OnDevice:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for samples in loader:
                    yield runner._to_device(samples) if samples else samples

        return _OnDevice()
