"""``hf_vlm`` per family (Qwen2-VL, Qwen2.5-VL, LLaVA, Idefics3/SmolVLM, PaliGemma), tiny random
models on synthetic scenes: answer-masked loss that decreases, sample-greedy == generate-greedy,
left-padded batches == single images, save/load, a local checkpoint directory with its own
processor (family read from config.json), a model loaded from such a directory saved and loaded
back without it, LoRA and freezing."""

import json

import pytest
import torch

from rslavis.common.errors import ConfigError
from rslavis.datasets.synthetic.scenes import generate_split
from rslavis.models.hf_vlm.families import FAMILIES, get_family
from rslavis.models.hf_vlm.model import HFVLM, fitted_tokenizer

torch.set_num_threads(1)

FAMS = sorted(FAMILIES)
PROMPTS = ["Describe the image briefly.", "how many planes are there ?", "describe"]


def scenes(n=4, seed=3):
    data = generate_split(n, seed, size=32)
    images = torch.stack([torch.from_numpy(img).permute(2, 0, 1).float() / 255.0 for img, _ in data])
    return images, [m["captions"][0] for _, m in data], [m["captions"] for _, m in data]


def tiny(family, seed=0, **overrides):
    torch.manual_seed(seed)
    _, caps, allcaps = scenes(8)
    cfg = dict(model_type="tiny", family=family, vision=dict(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2),
               llm=dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64), **overrides)
    model = HFVLM(cfg)
    fam = get_family(family)
    tok = fitted_tokenizer([c for cs in allcaps for c in cs] + PROMPTS, fam)
    model._build(fam.build_processor(model.cfg, tok))
    return model


def batch(n=3):
    images, caps, _ = scenes(n)
    return {"image": images, "text_input": [PROMPTS[i % len(PROMPTS)] for i in range(n)], "text_output": caps}


def train(model, samples, steps, lr=3e-3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(samples)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@pytest.fixture(scope="module", params=FAMS)
def trained(request):
    """A tiny model of each family after a few steps, with the batch it learned."""
    model = tiny(request.param)
    samples = batch()
    losses = train(model, samples, 12)
    return request.param, model, samples, losses


def test_loss_finite_and_decreasing(trained):
    family, model, _, losses = trained
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.8 * losses[0], (family, losses)


def test_loss_covers_answer_tokens_only(trained):
    _, model, samples, _ = trained
    base = float(model(samples)["loss"])
    other = dict(samples, text_input=["a different instruction ."] * 3)
    assert float(model(other)["loss"]) != pytest.approx(base)  # the prompt conditions the answer...
    inputs = model.prompt_inputs(samples)
    answers = model._answer_ids(samples["text_output"])
    # ...but only answer tokens are scored: the loss equals the mean NLL of the answer ids re-scored by token_logprobs
    width = max(map(len, answers))
    comp = torch.full((3, width), model.tokenizer.pad_token_id)
    mask = torch.zeros(3, width)
    for i, a in enumerate(answers):
        comp[i, : len(a)] = torch.tensor(a)
        mask[i, : len(a)] = 1
    full = model.extend_inputs(inputs, comp.to(model.device), mask.long())
    with torch.no_grad():
        logits = model.model(**full).logits.float()
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, full["input_ids"][:, 1:, None]).squeeze(-1)
    p = inputs["input_ids"].shape[1]
    answer = nll[:, p - 1 :][mask == 1].mean()
    everything = nll[full["attention_mask"][:, 1:] == 1].mean()  # what an unmasked loss would be
    assert float(answer) == pytest.approx(base, rel=1e-4)
    assert float(everything) != pytest.approx(base, rel=1e-2)


def test_sample_greedy_equals_generate_greedy(trained):
    family, model, samples, _ = trained
    with torch.no_grad():
        gen = model.generate(samples, max_len=8, min_len=1)
        out = model.sample(samples, n=1, greedy=True, max_len=8, min_len=1, return_logits=True)
    assert out.captions == gen, family
    # the teacher-forced re-scoring sees what generate saw: its argmax is the generated token everywhere
    picked = out.logits.argmax(-1)
    assert bool(((picked == out.token_ids) | (out.mask == 0)).all()), family
    # and the very logits generate computed at each step (positions, masks, token types as generate builds them)
    inputs = model.prompt_inputs(samples)
    with torch.no_grad():
        gen_out = model.model.generate(**inputs, max_new_tokens=8, min_new_tokens=1, do_sample=False, eos_token_id=model.eos_ids,
                                       pad_token_id=model.tokenizer.pad_token_id, suppress_tokens=model.suppress_ids,
                                       output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(gen_out.logits, 1).float()[:, : out.logits.shape[1]]
    keep = torch.isfinite(out.logits) & (out.mask[..., None] == 1)
    assert torch.allclose(out.logits[keep], steps[keep], atol=1e-4), (family, (out.logits[keep] - steps[keep]).abs().max())
    ref = torch.log_softmax(out.logits, -1).gather(-1, out.token_ids[..., None]).squeeze(-1)
    assert torch.allclose(out.logprobs[out.mask == 1], ref[out.mask == 1])
    assert bool((out.logprobs[out.mask == 0] == 0).all())


def test_left_padded_batch_equals_single_images(trained):
    family, model, samples, _ = trained
    lens = model.prompt_inputs(samples)["attention_mask"].sum(1)
    assert len(set(lens.tolist())) > 1  # the prompts differ in length, so the batch is padded
    with torch.no_grad():
        together = model.generate(samples, max_len=8)
        alone = [model.generate({k: v[i : i + 1] for k, v in samples.items()}, max_len=8)[0] for i in range(3)]
        beams = model.generate(samples, max_len=8, num_beams=2)
    assert together == alone, family
    assert len(beams) == 3 and all(isinstance(b, str) for b in beams)


def test_sample_rows_masks_and_grad(trained):
    family, model, samples, _ = trained
    torch.manual_seed(0)
    model.train()
    out = model.sample(samples, n=2, temperature=1.0, max_len=6, min_len=2, return_logits=True)
    model.eval()
    assert out.token_ids.shape[0] == 6 and len(out.captions) == 6
    assert out.logprobs.requires_grad
    assert bool((out.mask[:, :2] == 1).all())  # min_len bars the end token
    assert bool((out.logprobs[out.mask == 0] == 0).all())
    for tid in model.suppress_ids:  # no image placeholder is ever sampled
        assert not bool((out.token_ids[out.mask == 1] == tid).any()), (family, tid)
    (-(out.logprobs.sum())).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_save_load_round_trip(trained, tmp_path):
    family, model, samples, _ = trained
    model.save_pretrained(tmp_path / "m")
    again = HFVLM.from_pretrained(tmp_path / "m").eval()
    assert again.family.name == family
    with torch.no_grad():
        assert again.generate(samples, max_len=8) == model.generate(samples, max_len=8)
        assert float(again(samples)["loss"]) == pytest.approx(float(model(samples)["loss"]), rel=1e-5)


def test_local_checkpoint_directory_family_from_config(trained, tmp_path):
    """``pretrained: DIR`` in the Hugging Face layout: weights, processor and chat template read from DIR."""
    family, model, samples, _ = trained
    d = tmp_path / "hf"
    model.model.save_pretrained(str(d))
    model.processor.save_pretrained(str(d))
    loaded = HFVLM({"pretrained": str(d), "dtype": "float32"}).eval()
    assert loaded.family.name == family
    with torch.no_grad():
        assert loaded.generate(samples, max_len=8) == model.generate(samples, max_len=8)
    with pytest.raises(ConfigError, match="contradicts"):
        HFVLM({"pretrained": str(d), "family": "llava" if family != "llava" else "paligemma"})


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_lora_trains_only_adapters(family):
    model = tiny(family, lora_r=4, freeze_vision=True, freeze_projector=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, batch(), 2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)


def test_freezing_by_config():
    model = tiny("qwen2_5_vl", freeze_vision=True)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    vision = [n for n in grads if ".visual." in n and ".merger." not in n]
    merger = [n for n in grads if ".visual.merger." in n]
    llm = [n for n in grads if ".language_model." in n]
    assert vision and not any(grads[n] for n in vision)
    assert merger and all(grads[n] for n in merger)  # the projector stays trainable unless freeze_projector
    assert llm and all(grads[n] for n in llm)
    model = tiny("llava", freeze_llm=True, freeze_projector=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".vision_tower." in n for n in trainable)


def test_bad_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.family"):
        HFVLM({"family": "blip9"})
    with pytest.raises(ConfigError, match="directory not found"):
        HFVLM({"pretrained": str(tmp_path / "absent")})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not supported by hf_vlm"):
        HFVLM({"pretrained": str(tmp_path / "x")})
    with pytest.raises(ConfigError, match="model_type 'local'"):
        HFVLM({"model_type": "local"})


def test_two_line_model_section_loads_a_local_checkpoint(tmp_path):
    """README: `arch: hf_vlm` + `pretrained: DIR` is a whole model section; local.yaml's defaults apply
    (LoRA on the LLM's attention, vision tower and LLM frozen, family from DIR/config.json)."""
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    model = tiny("qwen2_5_vl")
    d = tmp_path / "Qwen2.5-VL-tiny"
    model.model.save_pretrained(str(d))
    model.processor.save_pretrained(str(d))
    project = tmp_path / "p.yaml"
    project.write_text(f"model:\n  arch: hf_vlm\n  pretrained: {d}\ndatasets:\n  rs_synthetic: {{}}\nrun:\n  task: captioning\n")
    cfg = Config.from_file(str(project), ["model.dtype=float32"])
    built = registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    assert built.family.name == "qwen2_5_vl"
    trainable = {n for n, p in built.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".merger." in n for n in trainable)
    assert any("lora_" in n for n in trainable) and any(".merger." in n for n in trainable)


@pytest.mark.parametrize("family", FAMS)
def test_a_model_loaded_from_a_local_directory_saves_self_contained(family, tmp_path):
    """save_pretrained of a model read from `pretrained: DIR` (local.yaml's defaults: LoRA on the LLM, vision
    tower and LLM frozen, bfloat16): the saved folder rebuilds it without DIR (hf_config.json, processor,
    adapters and freezing from config.json), the same tensors, dtypes, trainable set and captions."""
    import shutil

    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    d = tmp_path / "hf"
    source = tiny(family)
    source.model.save_pretrained(str(d))
    source.processor.save_pretrained(str(d))
    project = tmp_path / "p.yaml"
    project.write_text(f"model:\n  arch: hf_vlm\n  pretrained: {d}\ndatasets:\n  rs_synthetic: {{}}\nrun:\n  task: captioning\n")
    cfg = Config.from_file(str(project), [])
    loaded = registry.get_model_class(cfg.model.arch).from_config(cfg.model).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # adapters that change the captions (lora_B starts at zero)
        for name, p in loaded.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    loaded.save_pretrained(tmp_path / "saved")
    shutil.rmtree(d)  # the saved folder must not need the directory the model came from
    again = HFVLM.from_pretrained(tmp_path / "saved").eval()
    assert again.family.name == family and again.cfg.get("pretrained") is None
    config = lambda m: {k: v for k, v in m.model.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert config(again) == config(loaded)
    mine, theirs = loaded.state_dict(), again.state_dict()
    assert any("lora_" in k for k in mine) and mine.keys() == theirs.keys()
    assert all(mine[k].dtype == theirs[k].dtype == torch.bfloat16 and torch.equal(mine[k], theirs[k]) for k in mine)
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(again) == trainable(loaded) and any("lora_" in n for n in trainable(loaded))
    samples = batch()
    with torch.no_grad():
        assert again.generate(samples, max_len=8) == loaded.generate(samples, max_len=8)


def test_repeated_inputs_keep_each_images_pixels(trained):
    """Sampling n answers per image repeats each image's pixel rows next to its prompt (Qwen: patch rows)."""
    family, model, samples, _ = trained
    inputs = model.prompt_inputs(samples)
    rep = model.repeat_inputs(inputs, 2)
    for i in range(3):
        alone = model.prompt_inputs({k: v[i : i + 1] for k, v in samples.items()})
        for j in (2 * i, 2 * i + 1):
            if model.family.uses_mrope:
                counts = rep["image_grid_thw"].prod(-1).tolist()
                assert torch.equal(rep["pixel_values"].split(counts)[j], alone["pixel_values"])
            else:
                assert torch.equal(rep["pixel_values"][j], alone["pixel_values"][0])
