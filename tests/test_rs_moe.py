"""rs_moe: expert prompts, sparsity-safe stage 1, stage-2 LoRA training, fusion, load balancing,
decoding (greedy, beam, SCST sampling), answer ranking, save/load, initialisation sources, errors."""


import pytest
import torch

from rslavis.common.errors import ConfigError
from rslavis.models.rs_moe.model import RSMoE
from rslavis.models.rs_moe.router import fuse, load_balancing_loss
from rslavis.models.tokenization import train_caption_tokenizer
from tests._instructblip_helpers import PROMPTS, TEXTS, TINY, tiny_model, two_images

LLM = dict(type="opt", hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0)
TEMPLATES = {"objects": "list the objects", "counts": "count them", "scene": "name the scene"}


def moe_cfg(**overrides):
    cfg = dict(TINY, arch="rs_moe", model_type="tiny", llm=dict(LLM), num_experts=3, templates=TEMPLATES, lora_dropout=0.0)
    cfg.update(overrides)
    return cfg


def tiny_moe(seed=0, **overrides):
    torch.manual_seed(seed)
    words = TEXTS + PROMPTS + list(TEMPLATES.values())
    return RSMoE(moe_cfg(**overrides), tokenizer=train_caption_tokenizer(words), qformer_tokenizer=train_caption_tokenizer(PROMPTS))


def batch():
    return {"image": two_images(), "text_input": [PROMPTS[0], PROMPTS[2]], "text_output": TEXTS[:2]}


def train_steps(model, samples, steps=1, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(samples)["loss"].backward()
        opt.step()
    return opt


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def capture_expert_inputs(model, fn):
    """``inputs_embeds`` each expert receives during ``fn()``."""
    seen, hooks = {}, []
    for k, expert in enumerate(model.experts):
        def hook(module, args, kwargs, k=k):
            if kwargs.get("inputs_embeds") is not None:
                seen[k] = kwargs["inputs_embeds"].detach().clone()
        hooks.append(expert.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    """A tiny dense instructblip (OPT), briefly trained, saved with save_pretrained."""
    from tests._instructblip_helpers import overfit

    blip = tiny_model("opt", seed=1)
    overfit(blip, steps=15)
    d = tmp_path_factory.mktemp("dense") / "blip"
    blip.save_pretrained(d)
    return d


# ---------------------------------------------------------------------- router, fusion, balance
def test_load_balancing_loss_is_lowest_at_uniform_routing():
    k = 3
    uniform = torch.full((8, k), 1 / k, requires_grad=True)
    lb = load_balancing_loss(uniform)
    assert float(lb.detach()) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.softmax(3 * torch.randn(8, k, generator=g), -1)
        assert float(load_balancing_loss(other)) > float(lb.detach())
    assert float(load_balancing_loss(torch.eye(k)[[0] * 8])) == pytest.approx(k)  # everything to one expert
    lb.backward()
    grad = uniform.grad - uniform.grad.mean(-1, keepdim=True)  # component along the probability simplex
    assert grad.abs().max() < 1e-6


@pytest.mark.parametrize("rule", ["prob", "logit"])
def test_fusion_of_identical_experts_is_the_dense_distribution(rule):
    z = torch.randn(4, 5, 11)
    gates = torch.softmax(torch.randn(4, 3), -1)
    assert torch.allclose(fuse([z, z, z], gates, rule), torch.log_softmax(z, -1), atol=1e-5)
    a, b = torch.randn(4, 11), torch.randn(4, 11)
    one_hot = torch.tensor([[1.0, 0.0]] * 4, requires_grad=True)  # top-1 routing: gate 0 for expert b
    out = fuse([a, b], one_hot, rule)
    assert torch.allclose(out, torch.log_softmax(a, -1), atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(one_hot.grad).all()
    with pytest.raises(ConfigError, match="fusion"):
        fuse([a], one_hot[:, :1], "max")


def test_mixture_of_identical_experts_equals_the_dense_model(dense_dir):
    """Stage 1 from a saved instructblip: whatever the gates, the mixture's next-token log-probs,
    its loss and its greedy captions are the dense model's."""
    from rslavis.models.instructblip.model import InstructBLIP

    blip = InstructBLIP.from_pretrained(dense_dir).eval()
    samples = batch()
    for rule in ("prob", "logit"):
        torch.manual_seed(3)
        moe = RSMoE(moe_cfg(init_from=str(dense_dir), fusion=rule)).eval()
        with torch.no_grad():
            torch.nn.init.normal_(moe.router.gate.weight, std=2.0)  # far from uniform routing
            enc = moe.encode(samples)
            assert enc.gates.std() > 0.05
            targets, tmask = moe.answer_targets(samples["text_output"])
            mixed = moe.target_logprobs(enc, targets, tmask)
            inputs = blip.build_inputs(samples, padding_side="left")
            dense = blip._lm_logits(blip.image_features(inputs), inputs["input_ids"], inputs["attention_mask"], targets)
            assert torch.allclose(mixed, torch.log_softmax(dense, -1), atol=1e-4)
            assert float(moe(samples)["lm_loss"]) == pytest.approx(float(blip(samples)["loss"]), abs=1e-4)
        assert moe.generate(samples, max_len=8) == blip.generate(samples, max_len=8)


def test_init_from_a_dense_llm_directory_with_a_separate_front(dense_dir, tmp_path):
    """The llm1b path at tiny size: experts from a causal-LLM directory, ViT/Q-Former/projection
    from an instructblip directory; the mixture is again the dense model."""
    from rslavis.models.instructblip.model import InstructBLIP

    blip = InstructBLIP.from_pretrained(dense_dir).eval()
    llm_dir = tmp_path / "llm"
    blip.model.language_model.save_pretrained(llm_dir)
    blip.tokenizer.save_pretrained(llm_dir)
    moe = RSMoE(moe_cfg(model_type="llm1b", init_from=str(llm_dir), front_from=str(dense_dir))).eval()
    samples = batch()
    with torch.no_grad():
        assert float(moe(samples)["lm_loss"]) == pytest.approx(float(blip(samples)["loss"]), abs=1e-4)


# ---------------------------------------------------------------------- prompts
def test_experts_receive_different_prompts():
    model = tiny_moe().eval()
    samples = batch()
    # at initialisation the prompt gate is closed: every expert reads the dense model's input
    start = capture_expert_inputs(model, lambda: model(samples))
    assert torch.equal(start[0], start[1]) and torch.equal(start[1], start[2])
    with torch.no_grad():
        model.router.prompt_scale.fill_(0.5)
    seen = capture_expert_inputs(model, lambda: model(samples))
    assert sorted(seen) == [0, 1, 2]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(seen[i], seen[j], atol=1e-4), (i, j)
    # the prompts are conditioned on the image: two images, two different prompts per expert
    enc = model.encode(samples)
    q = model.num_query_tokens
    visual = [model.projections[k](model.front(*_front_inputs(model, samples))) for k in range(3)]
    prompts = [enc.features[k][:, :q] - visual[k] for k in range(3)]
    assert not torch.allclose(prompts[0][0], prompts[0][1], atol=1e-5)


def _front_inputs(model, samples):
    enc = model.qformer_tokenizer(model.instructions(samples, 2), padding="longest", return_tensors="pt")
    return model._pixels(samples), enc["input_ids"], enc["attention_mask"]


def test_text_templates_and_prepended_prompts():
    model = tiny_moe(expert_templates=["objects", "counts", "scene"], prompt_mode="prepend", num_prompt_tokens=3).eval()
    samples = batch()
    rows = [model.prefix_ids(k, model.instructions(samples, 2))[0] for k in range(3)]
    texts = [model.tokenizer.decode(r[0], skip_special_tokens=True) for r in rows]
    assert [t.split(PROMPTS[0].split()[0].lower())[0].strip() for t in texts] == list(TEMPLATES.values())
    assert all(int((r == model.image_token_id).sum(1)[0]) == model.num_query_tokens + 3 for r in rows)
    seen = capture_expert_inputs(model, lambda: model(samples))
    assert seen[0].shape != seen[1].shape or not torch.allclose(seen[0], seen[1])
    with pytest.raises(ConfigError, match="expert_templates"):
        tiny_moe(expert_templates=["objects", "counts"])
    with pytest.raises(ConfigError, match="'layout' is not in model.templates"):
        tiny_moe(expert_templates=["objects", "counts", "layout"])


# ---------------------------------------------------------------------- two stages
def test_stage1_trains_router_and_projections_with_frozen_llms():
    model = tiny_moe()
    samples = batch()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"front", "router", "projections"}
    assert all(not p.requires_grad for p in model.experts.parameters())
    model.train()
    model(samples)["loss"].backward()
    router_grad = sum(float(p.grad.abs().sum()) for p in model.router.parameters() if p.grad is not None)
    assert router_grad > 0
    before = snapshot(model)
    model.zero_grad()
    train_steps(model, samples, steps=2)
    moved = changed(model, before)
    assert not any(n.startswith("experts.") for n in moved)
    assert any(n.startswith("router.") for n in moved) and any(n.startswith("projections.") for n in moved)
    # once the experts' inputs differ, the gate itself receives gradient
    model.zero_grad()
    model(samples)["loss"].backward()
    assert float(model.router.gate.weight.grad.abs().sum()) > 0


def test_stage2_trains_only_lora_and_router(tmp_path):
    stage1 = tiny_moe()
    train_steps(stage1, batch(), steps=2)
    stage1.save_pretrained(tmp_path / "s1")
    model = RSMoE(moe_cfg(stage=2, init_from=str(tmp_path / "s1"), lora_r=1, load_balance_weight=0.5))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("router.") for n in names)
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".fc1." in n or ".fc2." in n for n in lora)  # FFN targets
    assert all(model.experts[0].get_submodule(n.split(".lora_")[0].split("experts.0.", 1)[-1]).r["default"] == 1
               for n in lora if n.startswith("experts.0."))
    # LoRA starts at zero: stage 2 begins exactly where stage 1 ended
    samples = batch()
    stage1.eval(), model.eval()
    with torch.no_grad():
        assert float(model(samples)["lm_loss"]) == pytest.approx(float(stage1(samples)["lm_loss"]), abs=1e-5)
    out = model(samples)
    assert float(out["loss"].detach()) == pytest.approx(float(out["lm_loss"] + 0.5 * out["lb_loss"]), abs=1e-5)
    before = snapshot(model)
    train_steps(model, samples, steps=2)
    moved = changed(model, before)
    assert moved and all("lora_" in n or n.startswith("router.") for n in moved)
    assert any("lora_B" in n for n in moved) and any(n.startswith("router.") for n in moved)


def test_stage_sources_are_checked(dense_dir, tmp_path):
    with pytest.raises(ConfigError, match="stage 2 needs model.init_from"):
        RSMoE(moe_cfg(stage=2))
    with pytest.raises(ConfigError, match="stage 2 starts from a stage-1 rs_moe"):
        RSMoE(moe_cfg(stage=2, init_from=str(dense_dir)))
    with pytest.raises(ConfigError, match="llm1b.*nothing is downloaded"):
        RSMoE(moe_cfg(model_type="llm1b", init_from=str(tmp_path / "weights" / "llm-1b")))
    with pytest.raises(ConfigError, match="model.init_from is not set for model_type 'llm1b'"):
        RSMoE(moe_cfg(model_type="llm1b"))
    with pytest.raises(ConfigError, match="model.stage"):
        RSMoE(moe_cfg(stage=3))
    with pytest.raises(ConfigError, match="top_k"):
        tiny_moe(top_k=4)
    t5 = tiny_model("t5")
    t5.save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="decoder-only"):
        RSMoE(moe_cfg(init_from=str(tmp_path / "t5")))


# ---------------------------------------------------------------------- decoding
@pytest.fixture(scope="module")
def trained_moe():
    """Stage 1 with a trainable tiny front, taught two image -> caption pairs."""
    model = tiny_moe(seed=2)
    for p in model.experts.parameters():  # unfreeze so that a handful of steps can fit the pairs
        p.requires_grad = True
    samples = {"image": two_images(), "text_input": [PROMPTS[0]] * 2, "text_output": TEXTS[:2]}
    train_steps(model, samples, steps=60, lr=3e-3)
    return model.eval(), samples


def test_greedy_beam_and_sampling_agree(trained_moe):
    model, samples = trained_moe
    assert model.generate(samples, max_len=10) == TEXTS[:2]
    assert model.generate(samples, max_len=10, num_beams=3) == TEXTS[:2]
    greedy = model.sample(samples, n=1, max_len=10, greedy=True)
    assert greedy.captions == TEXTS[:2]


def test_sampled_logprobs_match_teacher_forcing(trained_moe):
    """The KV-cache step sees the inputs teacher forcing sees (left padding, positions, gates)."""
    model, _ = trained_moe
    samples = {"image": two_images(), "text_input": [PROMPTS[1], PROMPTS[0]]}  # prompts of different lengths
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = model.sample(samples, n=2, max_len=6, temperature=1.0, return_logits=True, generator=g)
        enc = model.encode(samples).repeat_interleave(2)
        logp = model.target_logprobs(enc, out.token_ids, out.mask.long())
    tf = logp.gather(-1, out.token_ids.unsqueeze(-1)).squeeze(-1) * out.mask
    assert torch.allclose(tf, out.logprobs, atol=1e-4)
    assert out.logits.shape[:2] == out.token_ids.shape and len(out.captions) == 4


def test_sample_has_gradients_for_scst():
    model = tiny_moe()
    model.train()
    out = model.sample(batch(), n=2, max_len=5)
    (out.logprobs * out.mask).sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.router.parameters())


def test_top_k_routing_skips_experts():
    model = tiny_moe(top_k=1).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.router.gate.weight, std=1.0)
    samples = batch()
    enc = model.encode(samples)
    assert ((enc.gates > 0).sum(1) == 1).all()
    calls = []
    hooks = [e.register_forward_pre_hook(lambda m, a, k=k: calls.append(k)) for k, e in enumerate(model.experts)]
    model(samples)
    for h in hooks:
        h.remove()
    assert set(calls) == set(int(i) for i in enc.gates.argmax(1))
    # rows go only to their expert, and the mixture is that expert's distribution
    enc.gates = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # two rows, two different experts
    with torch.no_grad():
        targets, tmask = model.answer_targets(samples["text_output"])
        logp = model.target_logprobs(enc, targets, tmask)
        for row, k in enumerate(enc.gates.argmax(1).tolist()):
            alone = model.expert_target_logits(enc, targets, tmask, experts=[k])[k][row]
            assert torch.allclose(logp[row], torch.log_softmax(alone, -1), atol=1e-5)
    summary = model.parameter_summary()
    per_expert = sum(p.numel() for p in model.experts[0].parameters()) + sum(p.numel() for p in model.projections[0].parameters())
    assert summary["total"] - summary["active_per_token"] == 2 * per_expert
    assert model.generate(samples, max_len=4, num_beams=2)


def test_rank_answers(trained_moe):
    model, samples = trained_moe
    assert model.rank_answers(samples, ["three cars", TEXTS[1], TEXTS[0]]) == TEXTS[:2]


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("overrides", [dict(stage=2), dict(prompt_mode="prepend", num_prompt_tokens=2, expert_templates=["objects", "counts", "scene"], top_k=2, fusion="logit")])
def test_save_and_from_pretrained_round_trip(tmp_path, overrides):
    model = tiny_moe(**{k: v for k, v in overrides.items() if k != "stage"})
    train_steps(model, batch(), steps=1)
    if overrides.get("stage") == 2:
        model.save_pretrained(tmp_path / "s1")
        model = RSMoE(moe_cfg(stage=2, init_from=str(tmp_path / "s1")))
        train_steps(model, batch(), steps=2)  # LoRA B moves away from zero
    model.save_pretrained(tmp_path / "saved")
    again = RSMoE.from_pretrained(tmp_path / "saved")
    model.eval(), again.eval()
    samples = batch()
    with torch.no_grad():
        assert float(again(samples)["loss"]) == pytest.approx(float(model(samples)["loss"]), abs=1e-6)
    assert again.generate(samples, max_len=6, num_beams=2) == model.generate(samples, max_len=6, num_beams=2)
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert again.stage == model.stage and again.router.prompt_mode == model.router.prompt_mode
    with pytest.raises(ConfigError, match="not a saved rs_moe"):
        RSMoE.from_pretrained(tmp_path)
