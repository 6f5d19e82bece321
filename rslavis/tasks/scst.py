"""Self-critical sequence training (SCST) on registered rewards: task ``scst``.

Works with any registered model implementing ``sample`` and ``generate`` (see
:class:`rslavis.models.base_model.BaseModel`). Each training step, per image:

1. ``n = scst_num_samples`` captions are sampled at ``scst_temperature``
   (``model.sample(..., return_logits=True)``), with per-token log-probs;
2. each is scored by the weighted reward sum of ``run.rewards`` (built by
   :func:`rslavis.rewards.combine.build_reward`; ``cider``/``nkl`` get the training
   split's references as corpus, ``sde``/``count`` the parser ``scst_reward_parser`` (the
   ``run.eval_rewards`` reported on evaluation too) and the samples' ``count_dict``);
3. baseline ``scst_baseline``: ``greedy`` (self-critical: the reward of the model's own
   greedy caption, decoded in eval mode without grad) or ``mean`` (for each sample, the
   mean reward of the image's other samples; needs ``n >= 2``, no greedy decode);
4. ``loss = -mean_i[(r_i - b_i) * sum_t logp_it * mask_it]`` plus the loss terms of
   ``run.rewards`` (e.g. ``varentropy``) on the sampling logits.

Schedule: epochs before ``scst_start_epoch`` train with cross-entropy (the model's
``forward``), later ones with SCST; the runner tells the task the epoch through
:meth:`BaseTask.before_epoch`. To start from a cross-entropy run instead, set
``model.finetuned`` to its ``checkpoint_best.pth`` (a ``tokenizer/`` folder next to it
is used when ``model.tokenizer_path`` is unset) or to a ``save_pretrained`` directory.

Logged per SCST step (``log.jsonl``/TensorBoard, under ``train/``): ``scst/reward``
(mean sample reward), ``scst/reward_greedy`` (greedy baseline only),
``scst/reward/<name>`` per component (sample mean, before weighting),
``scst/entropy``, ``scst/varentropy`` (per-token, of the sampling distribution),
``scst/varentropy_term`` when configured, ``scst/caption_len`` (mean words per sample)
and ``scst/advantage_abs`` (mean |advantage|).

Evaluation is the captioning task's (greedy/beam decoding, pycocoevalcap metrics).

Resume is exact: the rewards' state (the ``nkl`` window, running normalisation of
``normalize: true``) is saved in every checkpoint through :meth:`SCSTTask.state_dict`.

Non-finite rewards: by default a NaN or inf from any reward stops the run with an error
naming the reward and the caption; ``run.nonfinite_rewards: skip`` drops such samples
from the loss instead (with the ``greedy`` baseline, also when the greedy caption's
reward is not finite) and logs their number per step as ``scst/nonfinite_skipped``.
"""

import logging
import torch

from rslavis.common.errors import ConfigError, RegistryKeyError
from rslavis.common.registry import registry
from rslavis.tasks.captioning import CaptionTask

logger = logging.getLogger(__name__)

BASELINES = ("greedy", "mean")


def leave_one_out_baseline(rewards, n):
    """Per sample, the mean reward of the other ``n - 1`` samples of its image (rows image-major)."""
    r = rewards.view(-1, n)
    return ((r.sum(1, keepdim=True) - r) / (n - 1)).reshape(-1)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def call_through_ddp(model, method, *args, **kwargs):
    """``model.<method>(...)``; under DDP/FSDP through the wrapper's forward so gradients are
    all-reduced (DDP) and sharded parameters are gathered (FSDP's hooks run on forward)."""
    from torch.distributed.fsdp import FSDPModule

    fsdp = isinstance(model, FSDPModule)
    if not fsdp and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return getattr(model, method)(*args, **kwargs)
    inner = model if fsdp else model.module
    inner.forward = getattr(inner, method)  # instance attribute shadows the class's forward for this call
    try:
        return model(*args, **kwargs)
    finally:
        del inner.forward


@registry.register_task("scst")
class SCSTTask(CaptionTask):
    """Self-critical sequence training (see module docstring)."""

    RUN_KEYS = {
        **CaptionTask.RUN_KEYS,
        "scst_start_epoch": int,
        "scst_num_samples": int,
        "scst_temperature": float,
        "scst_baseline": str,
        "scst_max_len": int,
        "scst_min_len": int,
        "scst_reward_parser": object,  # parser name or mapping for sde/count
        "rewards": object,  # mapping name -> weight or {weight, normalize, options}
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        run = cfg.run
        self.start_epoch = int(self.run_value("scst_start_epoch", 0))
        self.num_samples = int(self.run_value("scst_num_samples", 5))
        self.temperature = float(self.run_value("scst_temperature", 1.0))
        self.baseline = str(self.run_value("scst_baseline", "greedy"))
        self.sample_max_len = int(self.run_value("scst_max_len", self.generation["max_len"]))
        self.sample_min_len = int(self.run_value("scst_min_len", 0))
        self.reward_parser = self._reward_parser(run)
        if self.baseline not in BASELINES:
            raise ConfigError(f"run.scst_baseline {self.baseline!r} is invalid; valid: {', '.join(BASELINES)}.")
        if self.num_samples < 1 or (self.baseline == "mean" and self.num_samples < 2):
            raise ConfigError(f"run.scst_num_samples {self.num_samples}: must be >= 1, and >= 2 with scst_baseline: mean.")
        if self.temperature <= 0:
            raise ConfigError(f"run.scst_temperature {self.temperature} must be > 0.")
        if self.start_epoch < 0:
            raise ConfigError(f"run.scst_start_epoch {self.start_epoch} must be >= 0.")
        if self.sample_max_len < 1 or not 0 <= self.sample_min_len <= self.sample_max_len:
            raise ConfigError(f"run.scst_max_len {self.sample_max_len} / run.scst_min_len {self.sample_min_len}: "
                              "the sampled caption length needs 1 <= scst_max_len and 0 <= scst_min_len <= scst_max_len.")
        self.rewards_cfg = self._rewards_mapping(run.get("rewards"))
        from rslavis.rewards.combine import NONFINITE

        self.nonfinite = str(self.run_value("nonfinite_rewards", "error"))
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"run.nonfinite_rewards {self.nonfinite!r} is invalid; valid: {', '.join(NONFINITE)}.")
        self.corpus = None
        self._reward = None
        self.epoch = 0

    @staticmethod
    def _reward_parser(run):
        """``run.scst_reward_parser`` as a name, a plain mapping or None (the default parser)."""
        parser = run.get("scst_reward_parser")
        if parser is not None and not isinstance(parser, str):
            from omegaconf import OmegaConf

            parser = OmegaConf.to_container(parser, resolve=True) if OmegaConf.is_config(parser) else dict(parser)
        return parser

    def _eval_reward_options(self, run):
        return {"parser": self._reward_parser(run)}

    @staticmethod
    def _rewards_mapping(spec):
        if spec is None:
            return {"cider": 1.0}
        from omegaconf import OmegaConf

        if OmegaConf.is_config(spec):
            spec = OmegaConf.to_container(spec, resolve=True)
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"run.rewards must be a non-empty mapping name: weight (e.g. {{cider: 1.0, count: 0.5}}), got {spec!r:.100}.")
        for name in spec:
            try:
                registry.get_reward_class(name)
            except RegistryKeyError as exc:
                raise ConfigError(f"run.rewards: {exc}") from None
        return spec

    # ------------------------------------------------------------------ setup
    def build_datasets(self, cfg):
        """The datasets, plus the training references as the CIDEr/NKL corpus."""
        datasets = super().build_datasets(cfg)
        corpus = []
        for splits in datasets.values():
            for split in cfg.run.get("train_splits") or ["train"]:
                ds = splits.get(split)
                if ds is not None and hasattr(ds, "references"):
                    corpus.extend(ds.references().values())
        self.corpus = corpus or None
        return datasets

    @property
    def reward(self):
        """The :class:`~rslavis.rewards.combine.CombinedReward`, built on first use (after the corpus is known)."""
        if self._reward is None:
            from rslavis.rewards.combine import build_reward

            self._reward = build_reward(self.rewards_cfg, corpus=self.corpus, parser=self.reward_parser, nonfinite=self.nonfinite)
        return self._reward

    def state_dict(self):
        state = super().state_dict()
        if self._reward is not None:
            state["reward"] = self._reward.state_dict()
        return state

    def load_state_dict(self, state):
        state = dict(state)
        reward = state.pop("reward", None)
        super().load_state_dict(state)
        if reward is not None:
            self.reward.load_state_dict(reward)

    def before_epoch(self, epoch):
        self.epoch = epoch

    @property
    def scst_active(self):
        return self.epoch >= self.start_epoch

    # ------------------------------------------------------------------ training
    def train_step(self, model, samples):
        if not self.scst_active:
            return super().train_step(model, samples)
        return self.scst_step(model, samples)

    def _reward_extra(self, samples, n):
        extra = {}
        if samples.get("count_dict") is not None:
            extra["count_dicts"] = [d for d in samples["count_dict"] for _ in range(n)]
        if samples.get("image_id") is not None:
            extra["image_ids"] = [i for i in samples["image_id"] for _ in range(n)]
        if isinstance(samples.get("image"), torch.Tensor):  # for image-reading rewards (learned_score)
            extra["images"] = samples["image"].repeat_interleave(n, 0)
        return extra

    def greedy_captions(self, model, samples):
        """The model's greedy captions in eval mode (no dropout), restoring its mode after."""
        from rslavis.common.dist_utils import full_parameters

        m = _unwrap(model)
        was_training = m.training
        m.eval()
        try:
            with torch.no_grad(), full_parameters(m):
                return m.generate(samples, max_len=self.sample_max_len, min_len=max(1, self.sample_min_len), num_beams=1)
        finally:
            m.train(was_training)

    def scst_step(self, model, samples, timings=None):
        """One SCST loss (see module docstring); ``timings`` (a dict) receives seconds per phase."""
        import time

        n = self.num_samples
        reward = self.reward
        refs = samples["references"]
        t0 = time.perf_counter()
        out = call_through_ddp(model, "sample", samples, n=n, temperature=self.temperature, max_len=self.sample_max_len,
                           min_len=self.sample_min_len, return_logits=True)
        greedy = self.greedy_captions(model, samples) if self.baseline == "greedy" else None
        t1 = time.perf_counter()
        rep_refs = [r for r in refs for _ in range(n)]
        total, parts = reward.compute(out.captions, rep_refs, **self._reward_extra(samples, n))
        valid = reward.last_valid
        if greedy is not None:
            g_total, _ = reward.compute(greedy, refs, update_stats=False, **self._reward_extra(samples, 1))
            valid = valid & reward.last_valid.repeat_interleave(n)
            base = g_total.repeat_interleave(n)
        elif bool(valid.all()):
            base = leave_one_out_baseline(total, n)
        else:  # the mean of the image's other samples with a finite reward
            v = valid.view(-1, n).to(total.dtype)
            r = total.view(-1, n) * v
            others = v.sum(1, keepdim=True) - v
            base = ((r.sum(1, keepdim=True) - r) / others.clamp(min=1)).reshape(-1)
            valid = valid & (others > 0).reshape(-1)
        t2 = time.perf_counter()
        device = out.logprobs.device
        adv = (total - base).to(device)
        mask = out.mask.to(out.logprobs.dtype)
        seq_logp = (out.logprobs * mask).sum(1)
        skipped = int((~valid).sum())
        if skipped:  # run.nonfinite_rewards: skip (with "error" the reward raised already)
            keep = valid.to(device=device, dtype=seq_logp.dtype)
            loss = -(adv * keep * seq_logp).sum() / keep.sum().clamp(min=1)
        else:
            loss = -(adv * seq_logp).mean()
        dist = out.logits if out.logits is not None else out.logprobs
        if reward.loss_terms:
            term, stats = reward.loss_term(dist, mask)
            loss = loss + term.to(device)
        else:
            from rslavis.rewards.varentropy import VarentropyTerm

            with torch.no_grad():
                _, stats = VarentropyTerm(lam=0.0)(dist.detach(), mask)
            stats.pop("varentropy_term", None)
        if timings is not None:
            timings["sample"] = timings.get("sample", 0.0) + t1 - t0
            timings["reward"] = timings.get("reward", 0.0) + t2 - t1
        logs = {
            "loss": loss,
            "scst/reward": float(total.mean()),
            "scst/advantage_abs": float(adv.abs().mean()),
            "scst/caption_len": sum(len(c.split()) for c in out.captions) / max(1, len(out.captions)),
        }
        if greedy is not None:
            logs["scst/reward_greedy"] = float(g_total.mean())
        if self.nonfinite == "skip":
            logs["scst/nonfinite_skipped"] = skipped
        for name, values in parts.items():
            logs[f"scst/reward/{name}"] = float(values.float().mean())
        for k, v in stats.items():
            logs[f"scst/{k}"] = float(v)
        return logs
