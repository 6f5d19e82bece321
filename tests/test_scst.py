"""SCST task: policy-gradient direction on a toy policy, baselines, the V/E loss term in the
loss, logged keys, config errors, model.finetuned."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rslavis.common.errors import ConfigError
from rslavis.models.base_model import BaseModel
from rslavis.models.decoding import sample_tokens
from rslavis.rewards.base_reward import BaseReward
from rslavis.rewards.combine import build_reward
from rslavis.rewards.varentropy import VarentropyTerm
from rslavis.tasks.scst import SCSTTask, leave_one_out_baseline

WORDS = ["<eos>", "a", "b", "c"]


class ToyPolicy(BaseModel):
    """A unigram policy: the same learnable logits at every position, whatever the image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def _decode(self, ids, mask):
        return [" ".join(WORDS[t] for t, m in zip(row.tolist(), ms.tolist()) if m and t != 0) for row, ms in zip(ids, mask)]

    def sample(self, samples, n=1, temperature=1.0, max_len=4, min_len=0, return_logits=False, greedy=False, **kw):
        rows = len(samples["image"]) * n
        logits = self.logits.expand(rows, -1)
        res = sample_tokens(lambda tok, st: (logits, st), logits, None, max_len=max_len, eos_token_id=0, pad_token_id=0,
                            temperature=temperature, min_len=min_len, return_logits=return_logits, greedy=greedy)
        return res.to_sample_output(self._decode(res.token_ids, res.mask))

    @torch.no_grad()
    def generate(self, samples, max_len=4, min_len=1, num_beams=1, **kw):
        return self.sample(samples, max_len=max_len, min_len=min_len, greedy=True).captions

    def prob(self, word):
        return float(torch.softmax(self.logits.detach(), -1)[WORDS.index(word)])


class LikesB(BaseReward):
    def __call__(self, generated, references, **extra):
        return self.as_tensor([sum(w == "b" for w in g.split()) for g in generated])


class Constant(BaseReward):
    def __call__(self, generated, references, **extra):
        return self.as_tensor([1.0] * len(generated))


def make_task(reg, rewards, **run):
    run = {"task": "scst", "scst_max_len": 4, "scst_num_samples": 4, **run}
    task = SCSTTask(SimpleNamespace(run=OmegaConf.create(run)))
    task._reward = build_reward(rewards, reg=reg)
    return task


@pytest.fixture
def reg(fresh_registry):
    fresh_registry.register_reward("likes_b")(LikesB)
    fresh_registry.register_reward("constant")(Constant)
    fresh_registry.register_reward("varentropy")(VarentropyTerm)  # already imported: the lazy index would not re-register it
    return fresh_registry


SAMPLES = {"image": torch.zeros(8, 1), "references": [["a b"]] * 8, "image_id": list(range(8))}


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_a_reward_that_prefers_a_token_raises_its_probability(reg, baseline):
    torch.manual_seed(0)
    model = ToyPolicy([0.0, 0.0, 0.0, 0.0])
    task = make_task(reg, {"likes_b": 1.0}, scst_baseline=baseline)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    before = model.prob("b")
    for _ in range(30):
        out = task.train_step(model, SAMPLES)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert before == pytest.approx(0.25)
    assert model.prob("b") > 0.5, model.prob("b")
    assert model.prob("b") > max(model.prob(w) for w in ("a", "c", "<eos>"))


def test_cross_entropy_before_scst_start_epoch(reg):
    class Forwarding(ToyPolicy):
        def forward(self, samples):
            return {"loss": self.logits.sum() * 0 + 7.0}

    task = make_task(reg, {"likes_b": 1.0}, scst_start_epoch=2)
    model = Forwarding([0.0, 0.0, 0.0, 0.0])
    task.before_epoch(1)
    assert float(task.train_step(model, SAMPLES)["loss"].detach()) == 7.0
    task.before_epoch(2)
    assert "scst/reward" in task.train_step(model, SAMPLES)


def test_leave_one_out_baseline():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    assert torch.allclose(leave_one_out_baseline(r, 3), torch.tensor([2.5, 2.0, 1.5, 4.0, 4.0, 4.0]))


def _spy_samples(model, monkeypatch):
    """Record the sampled (not greedy) outputs of ``model.sample``."""
    seen = []
    real = model.sample

    def spy(*a, **k):
        out = real(*a, **k)
        if not k.get("greedy"):
            seen.append(out)
        return out

    monkeypatch.setattr(model, "sample", spy)
    return seen


def test_loss_is_advantage_weighted_log_likelihood(reg, monkeypatch):
    """loss = -mean((r - b) * sum_t logp), with b the greedy caption's reward (here 4, so a
    loss without the baseline, or with the wrong sign, differs)."""
    torch.manual_seed(3)
    model = ToyPolicy([0.0, 0.5, 1.0, -0.5])  # greedy caption: "b b b b" (reward 4)
    task = make_task(reg, {"likes_b": 1.0})
    seen = _spy_samples(model, monkeypatch)
    logs = task.train_step(model, SAMPLES)
    out = seen[0]
    r = torch.tensor([float(c.split().count("b")) for c in out.captions])
    assert logs["scst/reward_greedy"] == 4.0
    assert float(r.max()) < 4.0 or float(r.min()) < 4.0  # samples differ from the baseline
    expected = -((r - 4.0) * (out.logprobs * out.mask).sum(1)).mean()
    assert float(logs["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert logs["scst/advantage_abs"] == pytest.approx(float((r - 4.0).abs().mean()), rel=1e-6)
    assert logs["scst/reward"] == pytest.approx(float(r.mean()))
    assert logs["scst/reward/likes_b"] == pytest.approx(float(r.mean()))
    assert logs["scst/caption_len"] == pytest.approx(sum(len(c.split()) for c in out.captions) / len(out.captions))


def test_nkl_window_holds_sampled_captions_only(reg, monkeypatch):
    """Inside SCST steps the NKL window receives the sampled captions' tokens, never the
    greedy baseline's (scored with update_stats=False)."""
    from rslavis.rewards.nkl import NKLReward

    reg.register_reward("nkl")(NKLReward)
    torch.manual_seed(0)
    model = ToyPolicy([-1.0, 0.5, 1.0, 0.0])
    task = make_task(reg, {"likes_b": 1.0})
    task._reward = build_reward({"likes_b": 1.0, "nkl": {"weight": 0.5, "window": 10000}}, reg=reg, corpus=[["a b c"], ["b c"]])
    nkl = task._reward.components["nkl"][1]
    seen = _spy_samples(model, monkeypatch)
    for step in range(3):
        logs = task.train_step(model, SAMPLES)
        sampled = sum(len(c.split()) for out in seen for c in out.captions)
        assert len(nkl._recent) == sampled, (step, len(nkl._recent), sampled)
        assert "scst/reward/nkl" in logs and math.isfinite(logs["scst/reward/nkl"])
    greedy = model.generate(SAMPLES)
    assert sum(len(c.split()) for c in greedy) > 0  # the greedy captions have tokens that would have entered


def test_varentropy_term_enters_the_loss_with_its_documented_value(reg):
    """p = (1/2, 1/4, 1/4) at every step: H = 1.5 ln 2, V = (ln 2)^2 / 4, term = lam * V / H = lam * ln 2 / 6.

    The term's own formula is tested in tests/test_rewards.py; here: the task feeds it the
    sampling distribution over the generated positions and adds it to the loss."""
    torch.manual_seed(0)
    logits = [float("-inf"), math.log(0.5), math.log(0.25), math.log(0.25)]  # never EOS: every row runs 4 steps
    lam = 0.3
    task = make_task(reg, {"constant": 1.0, "varentropy": {"weight": 1.0, "lam": lam}})
    logs = task.train_step(ToyPolicy(logits), SAMPLES)  # constant reward: zero advantage, the loss is the term alone
    ln2 = math.log(2)
    assert logs["scst/entropy"] == pytest.approx(1.5 * ln2, rel=1e-5)
    assert logs["scst/varentropy"] == pytest.approx(ln2**2 / 4, rel=1e-5)
    assert float(logs["loss"].detach()) == pytest.approx(lam * ln2 / 6, rel=1e-5)
    assert logs["scst/varentropy_term"] == pytest.approx(lam * ln2 / 6, rel=1e-5)
    # without the term: same statistics logged, nothing added to the loss
    plain = make_task(reg, {"constant": 1.0}).train_step(ToyPolicy(logits), SAMPLES)
    assert float(plain["loss"]) == 0.0 and "scst/varentropy_term" not in plain
    assert plain["scst/entropy"] == pytest.approx(1.5 * ln2, rel=1e-5)


@pytest.mark.parametrize(
    "run, message",
    [
        ({"scst_baseline": "beam"}, "scst_baseline 'beam' is invalid; valid: greedy, mean"),
        ({"scst_baseline": "mean", "scst_num_samples": 1}, ">= 2 with scst_baseline: mean"),
        ({"scst_temperature": 0.0}, "scst_temperature"),
        ({"rewards": {"cidr": 1.0}}, "run.rewards: .*cidr"),
        ({"rewards": []}, "run.rewards must be a non-empty mapping"),
    ],
)
def test_config_errors(run, message):
    with pytest.raises(ConfigError, match=message):
        SCSTTask(SimpleNamespace(run=OmegaConf.create({"task": "scst", **run})))


def test_run_keys_are_validated_by_the_config():
    from rslavis.common.config import Config

    base = {"model": {"arch": "smallcap"}, "datasets": {"rs_synthetic": None}}
    cfg = Config.from_dict({**base, "run": {"task": "scst", "scst_num_samples": 3, "rewards": {"cider": 1.0, "count": 0.5}}})
    assert cfg.run.rewards.count == 0.5
    with pytest.raises(ConfigError, match="scst_num_sample.*Did you mean 'scst_num_samples'"):
        Config.from_dict({**base, "run": {"task": "scst", "scst_num_sample": 3}})
    with pytest.raises(ConfigError, match="run.scst_num_samples must be an integer"):
        Config.from_dict({**base, "run": {"task": "scst", "scst_num_samples": "five"}})


@pytest.mark.parametrize("parser", [None, "rules", {"name": "rules"}])
def test_eval_rewards_parse_with_the_training_rewards_parser(parser):
    # run.eval_rewards' object rewards read scst_reward_parser, as the trained rewards do
    from rslavis.text import build_parser, default_parser_name

    run = {"task": "scst", "eval_rewards": ["count", "sde", "length"]}
    if parser is not None:
        run["scst_reward_parser"] = parser
    task = SCSTTask(SimpleNamespace(run=OmegaConf.create(run)))
    expected = build_parser(parser) if parser is not None else build_parser(default_parser_name())
    assert task.eval_rewards["count"].parser is expected and task.eval_rewards["sde"].parser is expected
    assert set(task.eval_rewards) == {"count", "sde", "length"}
