"""GRPO: the loss against TRL's own ``GRPOTrainer._compute_loss``, group advantages against TRL's
formula, and the ``grpo`` task's step with a tiny ``hf_vlm`` (passes, reference KL, logs, errors)."""

import types
from collections import defaultdict

import pytest
import torch

from rslavis.common.errors import ConfigError
from rslavis.tasks.grpo import GRPOTask, group_advantages, grpo_loss

torch.set_num_threads(1)


def fixed_batch(seed=0, rows=6, steps=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, steps, generator=g) * 3
    new = old + 0.4 * torch.randn(rows, steps, generator=g)  # ratios well outside [0.8, 1.2] for some tokens
    ref = old + 0.3 * torch.randn(rows, steps, generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 6, 4])[:rows]
    mask = (torch.arange(steps)[None] < lengths[:, None]).float()
    adv = torch.randn(rows, generator=g)
    return new, old, ref, mask, adv


def trl_loss(new, old, ref, mask, adv, loss_type, beta, eps_low, eps_high, max_len):
    """TRL's ``GRPOTrainer._compute_loss`` (trl/trainer/grpo_trainer.py) run as it is, on fixed
    log-probs: only the policy forward is replaced (it returns ``new``) and the trainer's state
    is a namespace holding the settings that method reads."""
    trl = pytest.importorskip("trl", reason="trl (test-only dependency: pip install -e '.[dev]') is not installed")
    from trl.trainer.grpo_trainer import GRPOTrainer

    accel = types.SimpleNamespace(num_processes=1, reduce=lambda x, reduction="sum": x, gather=lambda x: x, gather_for_metrics=lambda x: x)
    args = types.SimpleNamespace(delta=None, use_bias_correction_kl=False)
    fake = types.SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, aux_loss_enabled=False, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, args=args, use_vllm=False,
        vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)}, accelerator=accel,
    )
    fake._get_per_token_logps_and_entropies = lambda *a, **k: (new, torch.zeros_like(new), None)
    rows, steps = new.shape
    inputs = {
        "prompt_ids": torch.zeros(rows, 2, dtype=torch.long), "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
        "completion_ids": torch.zeros(rows, steps, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
    }
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, fake._metrics["train"], trl.__version__


@pytest.mark.parametrize(
    "agg,loss_type,beta,eps_high",
    [("sequence", "grpo", 0.0, 0.2), ("sequence", "grpo", 0.04, 0.28), ("token", "bnpo", 0.1, 0.2), ("dr_grpo", "dr_grpo", 0.04, 0.2)],
)
def test_loss_equals_trl(agg, loss_type, beta, eps_high):
    new, old, ref, mask, adv = fixed_batch()
    ours, stats = grpo_loss(new, old, adv, mask, ref, beta=beta, epsilon_low=0.2, epsilon_high=eps_high, aggregation=agg, max_len=7)
    theirs, metrics, version = trl_loss(new, old, ref, mask, adv, loss_type, beta, 0.2, eps_high, max_len=7)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6, abs=1e-7), version
    assert stats["clip_fraction"] == pytest.approx(metrics["clip_ratio/region_mean"][0], abs=1e-7)
    assert 0 < stats["clip_fraction"] < 1  # the fixed ratios exercise both sides of the clip
    if beta:
        assert stats["kl"] == pytest.approx(metrics["kl"][0], rel=1e-6)


def test_loss_gradient_is_the_clipped_policy_gradient():
    new, old, ref, mask, adv = fixed_batch(1)
    new = old.clone().requires_grad_(True)  # first pass: ratio 1, nothing clipped
    loss, stats = grpo_loss(new, old, adv, mask, aggregation="sequence")
    loss.backward()
    # d/dlogp of -A * exp(logp - old) at ratio 1 is -A, averaged per answer then over answers
    expected = -(adv[:, None] * mask / mask.sum(1, keepdim=True)) / len(adv)
    assert torch.allclose(new.grad, expected, atol=1e-7)
    assert stats["clip_fraction"] == 0.0


def trl_advantages(rewards, g, scale):
    """TRL 1.16 ``_generate_and_score_completions`` ("sum_then_normalize"), written out from its source
    (trl/trainer/grpo_trainer.py; it is not callable on its own), with TRL's own ``nanstd``."""
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(scale):
    pytest.importorskip("trl")
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.3, 2.0, 2.0, 2.0, 2.0, -1.0, 0.0, float("nan"), 1.0])
    ours, _ = group_advantages(rewards, 4, scale)
    assert torch.allclose(ours, trl_advantages(rewards, 4, scale), atol=1e-6)
    assert bool((ours[4:8] == 0).all())  # a group with one reward: no signal
    assert ours[10] == 0  # an unscorable answer gets no advantage


# ---------------------------------------------------------------------------- task
def task(**run):
    from omegaconf import OmegaConf

    base = dict(task="grpo", max_len=6, grpo_group_size=3, grpo_max_len=6, scst_reward_parser="rules", rewards={"cider": 1.0, "count": 0.5})
    base.update(run)
    cfg = OmegaConf.create({"run": base, "model": {"arch": "hf_vlm"}})
    t = GRPOTask(cfg)
    t.corpus = [["a red car near two trees"], ["three planes on the runway"]]
    return t


def tiny_policy():
    from tests.test_hf_vlm import batch, tiny, train

    model = tiny("qwen2_5_vl")
    samples = batch(2)
    train(model, samples, 6)
    samples = dict(samples, references=[[c] for c in samples["text_output"]], count_dict=[{"plane": 2}, {"car": 1}])
    return model, samples


def step(t, model, samples, opt):
    model.train()
    out = t.train_step(model, samples)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    return out


def test_task_step_passes_reference_and_logs():
    torch.manual_seed(0)
    model, samples = tiny_policy()
    t = task(grpo_mu=2, grpo_beta=0.1, grpo_temperature=1.5)
    t.before_epoch(0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    first = step(t, model, samples, opt)
    for key in ["grpo/reward", "grpo/reward_std", "grpo/reward/cider", "grpo/reward_std/cider", "grpo/reward/count", "grpo/kl",
                "grpo/clip_fraction", "grpo/entropy", "grpo/advantage_abs", "grpo/zero_std_groups", "grpo/pass"]:
        assert key in first, key
    assert first["grpo/pass"] == 1 and first["grpo/ratio"] == pytest.approx(1.0) and first["grpo/clip_fraction"] == 0.0
    assert first["grpo/kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy as GRPO starts
    tokens = t._rollout["tokens"].clone()
    second = step(t, model, samples, opt)  # same answers, re-scored under the updated policy
    assert second["grpo/pass"] == 2 and torch.equal(t._rollout["tokens"], tokens)
    assert second["grpo/ratio"] != pytest.approx(1.0, abs=1e-6) and second["grpo/kl"] > 0
    assert second["grpo/reward"] == first["grpo/reward"]
    third = step(t, model, samples, opt)  # mu passes done: a new group is sampled
    assert third["grpo/pass"] == 1
    state = t.state_dict()
    assert state["ref"] and all(torch.equal(v, dict(t.ref.named_parameters())[k]) for k, v in state["ref"].items())
    # a resumed task takes its reference from the checkpoint, not from the (already updated) policy
    t2 = task(grpo_mu=2, grpo_beta=0.1)
    t2.load_state_dict(state)
    ref2 = t2.reference(model)
    assert all(torch.equal(p, dict(ref2.named_parameters())[k]) for k, p in t.ref.named_parameters())


def test_task_config_errors():
    with pytest.raises(ConfigError, match="grpo_group_size"):
        task(grpo_group_size=1)
    with pytest.raises(ConfigError, match="grpo_scale_rewards"):
        task(grpo_scale_rewards="median")
    with pytest.raises(ConfigError, match="grpo_loss_agg"):
        task(grpo_loss_agg="mean")
    t = task(grpo_scale_rewards=False)
    assert t.scale_rewards == "none"
