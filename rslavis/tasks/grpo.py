"""Group relative policy optimisation (GRPO) on registered rewards: task ``grpo``.

Same rewards (``run.rewards``: CIDEr, SDE, count, NKL, length, learned_score, plugins and
loss terms such as ``varentropy``), datasets, evaluation and schedule as :mod:`rslavis.tasks.scst`
(``grpo_start_epoch``: cross-entropy before it; ``model.finetuned``: start from a
cross-entropy checkpoint). Each GRPO step, per image:

1. a group of ``G = grpo_group_size`` answers is sampled at ``grpo_temperature``
   (``model.sample``), keeping the sampling-time per-token log-probs as the old policy;
2. each answer gets the weighted reward sum ``r``; advantages are normalised within the
   group (:func:`group_advantages`): ``A = r - mean_group(r)``, divided by
   ``std_group(r) + 1e-4`` when ``grpo_scale_rewards: group`` (``batch``: the batch's std;
   ``none``: not divided, Dr. GRPO);
3. the loss is :func:`grpo_loss`, TRL's: the PPO-clipped ratio
   ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)`` per token, ``rho = exp(logp - logp_old)``,
   plus ``beta`` times the k3 estimate ``exp(ref - logp) - (ref - logp) - 1`` of the KL to
   a frozen reference (``grpo_beta`` > 0; the policy as GRPO started), aggregated by
   ``grpo_loss_agg``: ``sequence`` (mean over each answer's tokens, then over answers: TRL's
   ``grpo``), ``token`` (mean over all tokens of the batch: TRL's ``bnpo``/DAPO) or
   ``dr_grpo`` (sum over tokens / (answers x ``grpo_max_len``): Dr. GRPO).

``grpo_mu`` optimisation passes are made on each sampled batch, one per training step (as
TRL's ``num_iterations``, whose sampler repeats each batch ``mu`` times): the next
``mu - 1`` steps re-score the stored answers under the updated policy (the loader's new
batch waits: an epoch of ``N`` steps samples ``ceil(N / mu)`` batches). With ``mu = 1`` and
``beta = 0`` any model with ``sample`` works; otherwise it must re-score answers
(``sample_inputs`` and ``token_logprobs``, as ``hf_vlm`` has).

Logged per step (under ``train/``): ``grpo/reward`` and ``grpo/reward_std`` (of the
weighted sum), ``grpo/reward/<name>`` and ``grpo/reward_std/<name>`` per component,
``grpo/kl`` (k3, when ``beta`` > 0), ``grpo/clip_fraction`` (tokens whose ratio is clipped,
TRL's ``clip_ratio/region_mean``), ``grpo/entropy``, ``grpo/advantage_abs``,
``grpo/zero_std_groups`` (share of groups whose answers all got the same reward: no
signal), ``grpo/caption_len`` and ``grpo/pass``.

Resume is exact: the reward state (as SCST) and the reference policy's trainable weights
are in :meth:`GRPOTask.state_dict`; the rollout of a batch never spans an epoch boundary.
"""

import copy
import logging

import torch

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.tasks.scst import SCSTTask, _unwrap, call_through_ddp as _call

logger = logging.getLogger(__name__)

SCALE_REWARDS = ("group", "batch", "none")
LOSS_AGGREGATIONS = ("sequence", "token", "dr_grpo")


def _nanstd(x, dim=None, keepdim=False):
    """Unbiased standard deviation ignoring NaNs (TRL's ``nanstd``)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    std = torch.sqrt(var * count / (count - 1))
    return std if keepdim else (std.squeeze(dim) if dim is not None else std.reshape(()))


def group_advantages(rewards, group_size, scale="group", eps=1e-4):
    """``(advantages, std)`` of ``rewards`` (rows image-major, ``group_size`` per image).

    ``A = r - mean_group(r)``, divided by ``std + eps`` for ``scale`` ``group`` (the group's
    unbiased std) or ``batch`` (the whole batch's); ``none`` leaves it unscaled. NaN rewards
    (unscorable answers) are left out of the statistics and get advantage 0, as in TRL.
    Returns the per-row std used (group or batch) for logging.
    """
    if scale not in SCALE_REWARDS:
        raise ConfigError(f"run.grpo_scale_rewards {scale!r} is invalid; valid: {', '.join(SCALE_REWARDS)}.")
    r = rewards.float().view(-1, group_size)
    mean = torch.nanmean(r, dim=1, keepdim=True)
    std = _nanstd(r, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    adv = r - mean
    if scale == "batch":
        std = _nanstd(r.reshape(-1)).expand_as(r) if r.numel() > 1 else torch.zeros_like(r)
    std = std.expand_as(r)
    if scale != "none":
        adv = adv / (std + eps)
    return torch.nan_to_num(adv, nan=0.0).reshape(-1), std.reshape(-1)


def grpo_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs=None, beta=0.0, epsilon_low=0.2, epsilon_high=None,
              aggregation="sequence", max_len=None):
    """The GRPO loss, in one place (TRL ``GRPOTrainer._compute_loss``, token-level importance sampling).

    ``logprobs`` (R, T): current policy, with grad; ``old_logprobs`` (R, T): at sampling time;
    ``advantages`` (R,); ``mask`` (R, T): 1 on answer tokens; ``ref_logprobs`` (R, T): frozen
    reference (needed when ``beta`` > 0); ``aggregation``: ``sequence`` | ``token`` |
    ``dr_grpo`` (divides by ``R * max_len``). Returns ``(loss, stats)`` with ``kl`` (masked
    mean k3, when beta > 0), ``clip_fraction``, ``clip_low``, ``clip_high`` and ``ratio``.
    """
    if aggregation not in LOSS_AGGREGATIONS:
        raise ConfigError(f"run.grpo_loss_agg {aggregation!r} is invalid; valid: {', '.join(LOSS_AGGREGATIONS)}.")
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats = {}
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logprobs.")
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    n_tok = mask.sum().clamp(min=1.0)
    if aggregation == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif aggregation == "token":
        loss = (per_token * mask).sum() / n_tok
    else:
        if not max_len:
            raise ValueError("grpo_loss: aggregation dr_grpo needs max_len (the maximum answer length).")
        loss = (per_token * mask).sum() / (per_token.shape[0] * int(max_len))
    with torch.no_grad():
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        stats["clip_low"] = float((low * mask).sum() / n_tok)
        stats["clip_high"] = float((high * mask).sum() / n_tok)
        stats["clip_fraction"] = float((torch.clamp(low + high, max=1) * mask).sum() / n_tok)
        stats["ratio"] = float((ratio * mask).sum() / n_tok)
        if beta != 0.0:
            stats["kl"] = float((kl * mask).sum() / n_tok)
    return loss, stats


@registry.register_task("grpo")
class GRPOTask(SCSTTask):
    """GRPO (see module docstring)."""

    RUN_KEYS = {
        **SCSTTask.RUN_KEYS,
        "grpo_start_epoch": int,
        "grpo_group_size": int,
        "grpo_temperature": float,
        "grpo_max_len": int,
        "grpo_min_len": int,
        "grpo_mu": int,
        "grpo_epsilon": float,
        "grpo_epsilon_high": float,
        "grpo_beta": float,
        "grpo_scale_rewards": object,  # group | batch | none (true = group, false = none)
        "grpo_loss_agg": str,
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        self.start_epoch = int(self.run_value("grpo_start_epoch", 0))
        self.group_size = int(self.run_value("grpo_group_size", 4))
        self.temperature = float(self.run_value("grpo_temperature", 1.0))
        self.sample_max_len = int(self.run_value("grpo_max_len", self.generation["max_len"]))
        self.sample_min_len = int(self.run_value("grpo_min_len", 0))
        self.mu = int(self.run_value("grpo_mu", 1))
        self.epsilon_low = float(self.run_value("grpo_epsilon", 0.2))
        self.epsilon_high = float(self.run_value("grpo_epsilon_high", self.epsilon_low))
        self.beta = float(self.run_value("grpo_beta", 0.0))
        scale = self.run_value("grpo_scale_rewards", "group")
        self.scale_rewards = {True: "group", False: "none"}.get(scale, scale) if isinstance(scale, bool) else str(scale)
        self.loss_agg = str(self.run_value("grpo_loss_agg", "sequence"))
        checks = [
            (self.group_size >= 2, f"run.grpo_group_size {self.group_size} must be >= 2 (advantages are relative to the group)."),
            (self.mu >= 1, f"run.grpo_mu {self.mu} must be >= 1."),
            (self.temperature > 0, f"run.grpo_temperature {self.temperature} must be > 0."),
            (self.epsilon_low > 0 and self.epsilon_high > 0, "run.grpo_epsilon / grpo_epsilon_high must be > 0."),
            (self.beta >= 0, f"run.grpo_beta {self.beta} must be >= 0."),
            (self.start_epoch >= 0, f"run.grpo_start_epoch {self.start_epoch} must be >= 0."),
            (self.sample_max_len >= 1, f"run.grpo_max_len {self.sample_max_len} must be >= 1."),
            (self.scale_rewards in SCALE_REWARDS, f"run.grpo_scale_rewards {scale!r} is invalid; valid: {', '.join(SCALE_REWARDS)} (or true/false)."),
            (self.loss_agg in LOSS_AGGREGATIONS, f"run.grpo_loss_agg {self.loss_agg!r} is invalid; valid: {', '.join(LOSS_AGGREGATIONS)}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.ref = None
        self._ref_state = None  # reference weights restored by load_state_dict, applied when the model is known
        self._rollout = None

    def build_model(self, cfg):
        model = super().build_model(cfg)
        if (self.mu > 1 or self.beta > 0) and not (hasattr(model, "token_logprobs") and hasattr(model, "sample_inputs")):
            raise ConfigError(
                f"run.grpo_mu {self.mu} / grpo_beta {self.beta}: {type(model).__name__} cannot re-score sampled answers "
                "(no token_logprobs/sample_inputs); use grpo_mu: 1 and grpo_beta: 0 with it, or a model such as hf_vlm."
            )
        return model

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        if self.ref is not None:
            state["ref"] = {k: v.detach().cpu() for k, v in self.ref.named_parameters() if k in self._ref_trained}
        return state

    def load_state_dict(self, state):
        state = dict(state)
        self._ref_state = state.pop("ref", None)
        super().load_state_dict(state)

    def before_epoch(self, epoch):
        super().before_epoch(epoch)
        self._rollout = None  # a rollout never spans epochs: checkpoints fall between them

    def reference(self, model):
        """The frozen reference policy: the model as GRPO started (restored on resume)."""
        if self.ref is None:
            m = _unwrap(model)
            self._ref_trained = {n for n, p in m.named_parameters() if p.requires_grad}  # frozen weights never move
            ref = copy.deepcopy(m).eval()
            if self._ref_state is not None:
                params = dict(ref.named_parameters())
                with torch.no_grad():
                    for k, v in self._ref_state.items():
                        params[k].copy_(v)
                self._ref_state = None
            elif self.epoch > self.start_epoch:
                logger.warning("grpo: the reference policy is taken at epoch %d, not where GRPO started (no reference in the checkpoint).", self.epoch)
            for p in ref.parameters():
                p.requires_grad_(False)
            self.ref = ref
        return self.ref

    # ------------------------------------------------------------------ training
    def train_step(self, model, samples):
        if not self.scst_active:
            return super(SCSTTask, self).train_step(model, samples)
        return self.grpo_step(model, samples)

    def _rollout_batch(self, model, samples):
        """Sample G answers per image, score them, compute advantages (and reference log-probs)."""
        g = self.group_size
        out = _call(model, "sample", samples, n=g, temperature=self.temperature, max_len=self.sample_max_len,
                    min_len=self.sample_min_len, return_logits=True)
        rep_refs = [r for r in samples["references"] for _ in range(g)]
        total, parts = self.reward.compute(out.captions, rep_refs, **self._reward_extra(samples, g))
        valid = getattr(self.reward, "last_valid", None)
        device = out.logprobs.device
        rewards = total.to(device).float()
        if valid is not None and not bool(valid.all()):  # run.nonfinite_rewards: skip
            rewards = torch.where(valid.to(device), rewards, torch.full_like(rewards, float("nan")))
        adv, std = group_advantages(rewards, g, self.scale_rewards)
        mask = out.mask.to(out.logprobs.dtype)
        roll = {"tokens": out.token_ids, "mask": mask, "old": out.logprobs.detach(), "adv": adv, "passes": 0, "inputs": None, "ref": None}
        m = _unwrap(model)
        if self.mu > 1 or self.beta > 0:
            roll["inputs"] = m.sample_inputs(samples, g)
        if self.beta > 0:
            with torch.no_grad():
                roll["ref"], _ = self.reference(model).token_logprobs(roll["inputs"], out.token_ids, mask, self.temperature, self.sample_min_len)
        r = rewards.view(-1, g)
        logs = {
            "grpo/reward": float(torch.nanmean(rewards)),
            "grpo/reward_std": float(_nanstd(rewards)),
            "grpo/advantage_abs": float(adv.abs().mean()),
            "grpo/zero_std_groups": float((torch.nan_to_num(_nanstd(r, dim=1), nan=0.0) < 1e-8).float().mean()),
            "grpo/caption_len": sum(len(c.split()) for c in out.captions) / max(1, len(out.captions)),
        }
        for name, values in parts.items():
            v = values.float()
            logs[f"grpo/reward/{name}"] = float(v.mean())
            logs[f"grpo/reward_std/{name}"] = float(v.std()) if v.numel() > 1 else 0.0
        if self.nonfinite == "skip" and valid is not None:
            logs["grpo/nonfinite_skipped"] = int((~valid).sum())
        roll["logs"] = logs
        return roll, out

    def grpo_step(self, model, samples):
        """One GRPO optimisation pass (see module docstring)."""
        if self._rollout is None or self._rollout["passes"] >= self.mu:
            roll, out = self._rollout_batch(model, samples)
            logprobs, logits = out.logprobs, out.logits  # first pass: the sampling graph itself (ratio 1)
            self._rollout = roll
        else:
            roll = self._rollout
            logprobs, logits = _call(model, "token_logprobs", roll["inputs"], roll["tokens"], roll["mask"], self.temperature,
                                     self.sample_min_len, return_logits=True)
        roll["passes"] += 1
        mask = roll["mask"]
        loss, stats = grpo_loss(logprobs, roll["old"], roll["adv"], mask, roll["ref"], self.beta, self.epsilon_low,
                                self.epsilon_high, self.loss_agg, self.sample_max_len)
        dist = logits if logits is not None else logprobs
        reward = self.reward
        if reward.loss_terms:
            term, vstats = reward.loss_term(dist, mask)
            loss = loss + term.to(loss.device)
        else:
            from rslavis.rewards.varentropy import VarentropyTerm

            with torch.no_grad():
                _, vstats = VarentropyTerm(lam=0.0)(dist.detach(), mask)
            vstats.pop("varentropy_term", None)
        logs = {"loss": loss, **roll["logs"], "grpo/pass": roll["passes"]}
        for k, v in stats.items():
            logs[f"grpo/{k}"] = v
        for k, v in vstats.items():
            logs[f"grpo/{k}"] = float(v)
        return logs
