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
with ``seed + e`` (not from the global RNG; :mod:`rslavis.runners.loaders`), the learning
rate is a function of ``(epoch, step)``, and the checkpoint holds every RNG state and the
task's state (:mod:`rslavis.runners.checkpointing`), so a resumed run repeats the
uninterrupted one bit for bit on CPU; ``log.jsonl`` is cut back to the checkpoint, so no
step is logged twice.

By role: this module builds the run (device, DDP/FSDP wrapping, output folder and its
lock, optimizer) and runs the loop; ``loaders`` feeds it, ``checkpointing`` saves and
resumes, ``evaluation`` scores splits and writes their metrics.
"""

import atexit
import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch

from rslavis.common import dist_utils
from rslavis.common.checkpoint import atomic_write_text, base_identity, seed_everything
from rslavis.common.errors import ConfigError, DataError, RslavisError
from rslavis.common.logger import RunLogger, progress
from rslavis.common.registry import registry
from rslavis.datasets.image_io import skipped_images
from rslavis.runners.checkpointing import CheckpointMixin
from rslavis.runners.evaluation import EvaluationMixin
from rslavis.runners.loaders import LoaderMixin
from rslavis.runners.precision import AMP_DTYPES, resolve_amp, trained_to_float32

logger = logging.getLogger(__name__)


@registry.register_runner("runner_base")
class RunnerBase(LoaderMixin, CheckpointMixin, EvaluationMixin):
    """The epoch loop of one run: ``train()`` trains, validates, checkpoints and tests (folder above)."""

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

    def build_optimizer(self):
        run = self.run_cfg
        decay, no_decay = [], []
        for name, p in self.unwrapped.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "bias" in name or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": run.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=run.init_lr, betas=(0.9, run.beta2))

    def close(self):
        """Release the run folder's lock (also done at exit)."""
        self.log.close()
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ train / eval
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

