"""Checkpoints of a run and exact resume.

A checkpoint holds the trained weights (or, with ``run.save_full``, all of them), the
optimizer and scheduler, every rank's RNG states, the task's state
(:meth:`BaseTask.state_dict`: reward windows, running normalisation) and the offset of
``log.jsonl``; resuming restores all of them and cuts the log back to the checkpoint, so
no step is logged twice. ``checkpoint_best.pth`` keeps the model only.
"""

import logging
import math

from rslavis.common import dist_utils
from rslavis.common.checkpoint import atomic_torch_save, base_identity, load_checkpoint, load_model_state, model_checkpoint, rng_state, set_rng_state
from rslavis.common.errors import ConfigError

logger = logging.getLogger(__name__)


class CheckpointMixin:
    """Saving, resuming and loading weights for :class:`~rslavis.runners.runner_base.RunnerBase`
    (reads its model, optimizer, scheduler, task, log and run state)."""

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
