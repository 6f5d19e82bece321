"""Epoch-based runner: training, validation, best/last checkpoints, exact resume, DDP.

Output folder ``<run.output_dir>/<job_id>/``::

    config.yaml                 merged config of the run
    log.jsonl                   one JSON object per log step (and per evaluation)
    tensorboard/                event files
    checkpoint_latest.pth       written every ``save_freq`` epochs (atomic), for resume
    checkpoint_best.pth         best ``agg_metrics`` on the first validation split
    result/<split>_epoch<N>.json   predictions
    metrics_<split>.json        metrics of the last evaluation of each split (with n_scored / n_expected)
    .lock                       pid and host of the run using the folder (see rslavis.common.job_lock)

Exactness of resume: the data order of epoch ``e`` is drawn from a generator seeded
with ``seed + e`` (not from the global RNG), the learning rate is a function of
``(epoch, step)``, and the checkpoint holds every RNG state and the task's state
(:meth:`BaseTask.state_dict`: reward windows, running normalisation), so a resumed run
repeats the uninterrupted one bit for bit on CPU; ``log.jsonl`` is cut back to the
checkpoint, so no step is logged twice.
"""

import atexit
import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from rslavis.common import dist_utils
from rslavis.common.checkpoint import (
    atomic_torch_save, atomic_write_json, atomic_write_text, base_identity, load_checkpoint, load_model_state, model_checkpoint, rng_state,
    seed_everything, set_rng_state,
)
from rslavis.common.errors import ConfigError, DataError, RslavisError
from rslavis.common.logger import RunLogger, progress
from rslavis.common.registry import registry
from rslavis.datasets.image_io import skipped_images
from rslavis.runners.precision import AMP_DTYPES, resolve_amp, trained_to_float32

logger = logging.getLogger(__name__)


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


@registry.register_runner("runner_base")
class RunnerBase:
    def __init__(self, cfg, task, model, datasets, job_id):
        self.cfg = cfg
        self.run_cfg = cfg.run
        self.task = task
        self.datasets = datasets
        self.job_id = job_id
        self.device = dist_utils.resolve_device(self.run_cfg.get("device"))
        self.distributed = dist_utils.init_distributed_mode(self.run_cfg, self.device)
        self.strategy = str(self.run_cfg.get("distributed_strategy") or "ddp").lower()
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"run.distributed_strategy: {self.run_cfg.get('distributed_strategy')!r} is unknown; valid: ddp, fsdp.")
        if self.strategy == "fsdp" and not self.distributed:
            logger.warning("run.distributed_strategy is fsdp but the run has one process: nothing to shard, training as usual.")
        self.fsdp = self.strategy == "fsdp" and self.distributed
        self.amp = resolve_amp(self.run_cfg.get("amp"), self.device)  # None | "fp16" | "bf16"; CPU: None, one warning
        self.use_amp = self.amp is not None
        self.output_dir = Path(self.run_cfg.output_dir) / job_id
        self.result_dir = self.output_dir / "result"
        self.is_main = dist_utils.is_main_process()
        self.lock = None
        if self.is_main:
            from rslavis.common.job_lock import JobLock

            self.lock = JobLock(self.output_dir).acquire()  # before anything is written into the folder
            atexit.register(self.lock.release)
            for tmp in [*self.output_dir.glob(".*.tmp"), *self.result_dir.glob(".*.tmp")]:
                if not tmp.name.startswith(".lock."):  # a write cut short by a kill: never read, now removed
                    tmp.unlink(missing_ok=True)
            self.result_dir.mkdir(parents=True, exist_ok=True)
        self._model = model.to(self.device)
        self._wrapped = None
        self.optimizer = None
        self.lr_scheduler = None
        self.start_epoch = 0
        self.global_step = 0
        self.best_agg = -math.inf
        self.best_epoch = None
        self.log = RunLogger(self.output_dir, enabled=self.is_main)
        self.seed = int(self.run_cfg.seed) + dist_utils.get_rank()
        self._base_identity = None
        self._resume_ckpt = None

    # ------------------------------------------------------------------ parts
    @property
    def model(self):
        if self.fsdp:
            if self._wrapped is None:
                from rslavis.runners import fsdp

                self._wrapped = fsdp.shard(self._model, AMP_DTYPES.get(self.amp))  # in place: the module itself, sharded
            return self._wrapped
        if self.distributed and self._wrapped is None:
            self._wrapped = torch.nn.parallel.DistributedDataParallel(
                self._model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(self._model, "ddp_find_unused_parameters", False),
            )
        return self._wrapped if self.distributed else self._model

    @property
    def unwrapped(self):
        return self._model

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

    def build_optimizer(self):
        run = self.run_cfg
        decay, no_decay = [], []
        for name, p in self.unwrapped.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "bias" in name or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": run.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=run.init_lr, betas=(0.9, run.beta2))

    # ------------------------------------------------------------------ checkpoints
    def _model_state(self, state=None):
        """Trained parameters and buffers (frozen base weights left out) or, with ``run.save_full``, everything."""
        if self._base_identity is None:  # frozen tensors never change: probe them once (before any sharding)
            self._base_identity = base_identity(self.unwrapped)
        from rslavis.common.config import to_plain

        full = bool(self.run_cfg.get("save_full"))
        return model_checkpoint(self.unwrapped, full=full, identity=self._base_identity, model_cfg=to_plain(self.cfg.model), state=state)

    def _checkpoint_state(self, epoch, with_optimizer=True, rngs=None):
        with_optimizer = with_optimizer and self.optimizer is not None
        optimizer = self.optimizer.state_dict() if with_optimizer and not self.fsdp else None
        if self.fsdp:  # collectives: every rank takes part, rank 0 receives the full tensors
            from rslavis.runners import fsdp

            gathered = fsdp.full_model_state(self._model)
            optimizer = fsdp.full_optimizer_state(self._model, self.optimizer) if with_optimizer else None
            if not self.is_main:
                return None
        model_state, model_info = self._model_state(gathered if self.fsdp else None)
        return {
            "model": model_state,
            "model_info": model_info,
            "optimizer": optimizer,
            "optimizer_format": "names" if self.fsdp else "torch",
            "model_only": not with_optimizer,  # checkpoint_best: weights for evaluation / model.finetuned, not for resume
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "epoch": epoch,
            "global_step": self.global_step,
            "best_agg": self.best_agg,
            "best_epoch": self.best_epoch,
            "rng": rng_state(),
            "rng_per_rank": rngs,  # each rank's RNG (dropout differs per rank): every rank resumes its own
            "task": self.task.state_dict(),  # reward windows, running normalisation, generators: exact resume
            "log_offset": self.log.offset(),
            "config": self.cfg.to_yaml() if hasattr(self.cfg, "to_yaml") else None,
        }

    def save_checkpoint(self, epoch, name, with_optimizer=True):
        rngs = dist_utils.all_gather_object(rng_state()) if self.distributed else None  # a collective: every rank
        if not self.is_main and not self.fsdp:
            return
        state = self._checkpoint_state(epoch, with_optimizer, rngs)
        if not self.is_main:
            return
        path = self.output_dir / name
        atomic_torch_save(state, path)
        logger.info("saved %s (epoch %d)", path, epoch)

    def resume_model(self, path):
        """Model weights of a resume checkpoint, before the optimizer (and any FSDP sharding) exists."""
        self._resume_ckpt = load_checkpoint(path)
        load_model_state(self.unwrapped, self._resume_ckpt, f"resume checkpoint {path}")

    def resume(self, path):
        ckpt = self._resume_ckpt if self._resume_ckpt is not None else load_checkpoint(path)
        if self._resume_ckpt is None:
            load_model_state(self.unwrapped, ckpt, f"resume checkpoint {path}")
        self._resume_ckpt = None
        if ckpt.get("model_only"):
            raise ConfigError(f"resume checkpoint {path}: holds the model only (checkpoint_best.pth keeps no optimizer state); resume from checkpoint_latest.pth, or start a new run from these weights with model.finetuned.")
        if ckpt.get("optimizer") and self.optimizer is not None:
            names = ckpt.get("optimizer_format") == "names"
            if self.fsdp and not names:
                raise ConfigError(f"resume checkpoint {path}: written by a DDP run; its optimizer state cannot resume under run.distributed_strategy fsdp (resume it with ddp).")
            if names:
                from rslavis.runners import fsdp

                fsdp.load_optimizer_state(self.model, self.optimizer, ckpt["optimizer"])
            else:
                self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("lr_scheduler") and self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.global_step = int(ckpt.get("global_step", 0))
        self.best_agg = float(ckpt.get("best_agg", -math.inf))
        self.best_epoch = ckpt.get("best_epoch")
        per_rank = ckpt.get("rng_per_rank")
        if per_rank and len(per_rank) == dist_utils.get_world_size():
            set_rng_state(per_rank[dist_utils.get_rank()])
        elif ckpt.get("rng") is not None:
            set_rng_state(ckpt["rng"])
        self.task.load_state_dict(ckpt.get("task") or {})
        if self.is_main:  # records after the checkpoint belong to the attempt that was cut short
            if ckpt.get("log_offset") is not None:
                self.log.truncate(int(ckpt["log_offset"]))
            else:
                self.log.truncate_to_step(self.global_step, int(ckpt["epoch"]))
        logger.info("resumed from %s: continuing at epoch %d", path, self.start_epoch)

    def close(self):
        """Release the run folder's lock (also done at exit)."""
        self.log.close()
        if self.lock is not None:
            self.lock.release()

    def load_model_weights(self, path, option="run.resume_ckpt_path"):
        if self.fsdp and self._wrapped is not None:  # sharded: the checks, then each rank takes its shards
            from rslavis.runners import fsdp

            ckpt = load_checkpoint(path)
            info = ckpt.get("model_info") or {}
            if info and not info.get("full", True) and info.get("base_probe") != self._base_identity["probe"]:
                raise ConfigError(f"{option} {path}: a trained-only checkpoint made on other base weights ({info.get('base_sources')}).")
            fsdp.load_model_state(self._model, ckpt["model"])
            return
        from rslavis.models.loading import load_weights

        load_weights(self.unwrapped, path, option)

    # ------------------------------------------------------------------ train / eval
    def _warn_missing_splits(self):
        run = self.run_cfg
        for key in ("valid_splits", "test_splits"):
            missing = [s for s in (run.get(key) or []) if not self._split_datasets(s)]
            if missing:
                logger.warning("run.%s %s: no configured dataset has %s, so %s not evaluated (available: %s); set run.%s to the splits you have.",
                               key, missing, "this split" if len(missing) == 1 else "these splits", "it is" if len(missing) == 1 else "they are",
                               sorted({s for splits in self.datasets.values() for s in splits}), key)

    def train(self):
        run = self.run_cfg
        seed_everything(self.seed)
        self._warn_missing_splits()
        if self.is_main:
            atomic_write_text(self.cfg.to_yaml(), self.output_dir / "config.yaml")
        self.unwrapped.prepare_for_training(self.datasets, self.output_dir)
        if self.use_amp:  # float32 master weights; frozen parts keep model.dtype
            cast = trained_to_float32(self.unwrapped)
            if cast:
                logger.info("run.amp=%s: %d trained parameter tensors cast to float32 (frozen ones keep their dtype)", self.amp, cast)
        total, trainable = self.unwrapped.count_parameters()
        logger.info("model %s: %s parameters, %s trainable", type(self.unwrapped).__name__, f"{total:,}", f"{trainable:,}")

        if run.max_epoch == 0 and not run.get("evaluate"):
            logger.warning("run.max_epoch is 0: nothing is trained; the model is evaluated as built%s.",
                           " (weights from model.finetuned)" if self.cfg.model.get("finetuned") else " (untrained unless its architecture needs no training)")
        if run.get("evaluate") or run.max_epoch == 0:
            if run.get("resume_ckpt_path"):
                self.load_model_weights(run.resume_ckpt_path)
            metrics = {}
            # as LAVIS: an evaluate-only run scores valid_splits, then test_splits
            for split in list(run.get("valid_splits") or []):
                metrics.update(self.evaluate_split(split, epoch=0, tag="val"))
            for split in list(run.get("test_splits") or []):
                metrics.update(self.evaluate_split(split, epoch=0, tag="test"))
            self.log.close()
            self.write_report()
            return metrics

        train_set = self.train_dataset()
        loader = self._loader(train_set, train=True)
        iters = run.get("iters_per_epoch") or len(loader)
        if len(loader) == 0:
            raise ConfigError(f"run.batch_size_train {run.batch_size_train} is larger than the training set ({len(train_set)} items).")
        self._base_identity = base_identity(self.unwrapped)  # of the unsharded model, with its frozen base weights
        if run.get("resume_ckpt_path"):
            self.resume_model(run.resume_ckpt_path)
        if self.fsdp:
            self.model  # shard now: the optimizer must hold the sharded parameters
        self.optimizer = self.build_optimizer()
        sched_cls = registry.get_lr_scheduler_class(run.lr_sched)
        self.lr_scheduler = sched_cls.from_config(self.optimizer, run, iters)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None  # bfloat16 needs no loss scaling
        if run.get("resume_ckpt_path"):
            self.resume(run.resume_ckpt_path)
        elif self.is_main and self.log.offset():
            logger.warning("%s: starting job %s from the beginning; the log of its earlier attempt is replaced (use --resume to continue it).",
                           self.output_dir, self.job_id)
            self.log.truncate(0)

        start = time.time()
        for epoch in range(self.start_epoch, run.max_epoch):
            self.train_epoch(epoch, loader, iters)
            last = epoch == run.max_epoch - 1
            if run.valid_splits and ((epoch + 1) % run.val_freq == 0 or last):
                per_split = self.evaluate_split(run.valid_splits[0], epoch, tag="val")
                for split in list(run.valid_splits)[1:]:
                    self.evaluate_split(split, epoch, tag="val")
                # model selection on the first dataset's first validation split
                agg = next(iter(per_split.values()), {}).get("agg_metrics")
                if agg is not None and agg > self.best_agg:
                    self.best_agg, self.best_epoch = agg, epoch
                    self.save_checkpoint(epoch, "checkpoint_best.pth", with_optimizer=False)  # the optimizer state only matters for resume
            if (run.save_freq > 0 and (epoch + 1) % run.save_freq == 0) or (last and run.save_last):  # -1 (LAVIS): last and best only
                self.save_checkpoint(epoch, "checkpoint_latest.pth")
            dist_utils.barrier()
        logger.info("training finished in %.1f s", time.time() - start)

        test_metrics = {}
        if run.test_splits:
            best = self.output_dir / "checkpoint_best.pth"
            if self.best_epoch is not None and best.is_file():
                self.load_model_weights(best)
            epoch = self.best_epoch if self.best_epoch is not None else max(run.max_epoch - 1, 0)  # max_epoch 0: untrained models (knn_caption)
            for split in run.test_splits:
                test_metrics.update(self.evaluate_split(split, epoch, tag="test"))
        self.log.close()
        self.write_report()
        return test_metrics

    def write_report(self):
        """``report.html`` in the run folder (rank 0; ``RSLAVIS_REPORT=0`` skips it); a failure only warns."""
        if not self.is_main or os.environ.get("RSLAVIS_REPORT", "1") == "0":
            return
        try:
            from rslavis.report import write_report

            logger.info("report written to %s", write_report(self.output_dir, datasets=self.datasets, device=str(self.device)))
        except Exception as exc:  # the run's outputs are already on disk: a report problem must not fail it
            logger.warning("the run report could not be written (%s: %s); run python -m rslavis.report %s", type(exc).__name__, exc, self.output_dir)

    def train_epoch(self, epoch, loader, iters):
        run = self.run_cfg
        model = self.model
        model.train()
        self._start_epoch(loader, epoch)
        self.task.before_epoch(epoch)
        accum = max(1, run.accum_grad_iters)
        self.optimizer.zero_grad(set_to_none=True)
        t0 = time.time()
        skipped_before = skipped_images(loader.dataset)
        trained = 0
        data_seconds = 0.0  # time spent waiting for the next batch (bench/data_share.py)
        tw = time.perf_counter()
        it = iter(loader)
        bar = progress(range(iters), desc=f"epoch {epoch}", disable=not self.is_main)
        for i in bar:
            try:
                samples = next(it)
            except StopIteration:  # iters_per_epoch larger than the loader: start it again
                it = iter(loader)
                samples = next(it)
            data_seconds += time.perf_counter() - tw
            lr = self.lr_scheduler.step(epoch, i)
            if not samples:  # every image of the batch was unreadable (skipped and counted)
                self.global_step += 1
                continue
            trained += 1
            samples = self._to_device(samples)
            with self.autocast():
                out = self.task.train_step(model, samples)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise RslavisError(f"loss is {loss.item()} at epoch {epoch}, step {i}: lower run.init_lr or check the data.")
            scaled = loss / accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if (i + 1) % accum == 0 or i == iters - 1:
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                if run.get("grad_clip"):
                    torch.nn.utils.clip_grad_norm_(self.unwrapped.parameters(), run.grad_clip)
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if self.global_step % run.log_freq == 0 or i == iters - 1:
                record = {"epoch": epoch, "step": self.global_step, "loss": float(loss.item()), "lr": lr, "seconds": round(time.time() - t0, 3)}
                record["skipped_images"] = skipped_images(loader.dataset) - skipped_before
                record["data_seconds"] = round(data_seconds, 3)
                for k, v in out.items():
                    if k != "loss" and isinstance(v, (int, float, torch.Tensor)) and (not isinstance(v, torch.Tensor) or v.numel() == 1):
                        record[k] = float(v)
                self.log.log(record, step=self.global_step)
            tw = time.perf_counter()
        if not trained:
            files = getattr(getattr(loader.dataset, "skip_counter", None), "files", [])[:3]
            raise DataError(f"run.train_splits {list(run.train_splits)}: no batch of epoch {epoch} had a readable image"
                            f"{' (e.g. ' + ', '.join(files) + ')' if files else ''}; check the dataset's images folder (build_info).")

    def autocast(self):
        """Autocast at ``run.amp``'s dtype on CUDA; a no-op context otherwise."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def _to_device(self, samples):
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in samples.items()}

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

    def _device_loader(self, loader):
        runner = self

        class _OnDevice:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for samples in loader:
                    yield runner._to_device(samples) if samples else samples

        return _OnDevice()
