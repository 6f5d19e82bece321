"""instructblip: image tokens, generation, SCST sampling, ranking, freezing/LoRA, save/load, local checkpoints."""

import pytest
import torch

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.models.instructblip.model import InstructBLIP, load_tokenizers
from tests._instructblip_helpers import PROMPTS, TEXTS, overfit, tiny_model, two_images

LLMS = ["opt", "t5"]


@pytest.fixture(scope="module", params=LLMS)
def trained(request):
    """A tiny model of each LLM family taught two image -> caption pairs (same instruction)."""
    model = tiny_model(request.param)
    samples, loss = overfit(model)
    assert loss < 0.5
    return model, samples


def test_prompt_carries_exactly_num_query_tokens_image_tokens(trained):
    model, samples = trained
    for side in ("left", "right"):
        inputs = model.build_inputs({**samples, "text_input": ["", PROMPTS[2]]}, padding_side=side)
        counts = (inputs["input_ids"] == model.image_token_id).sum(1)
        assert counts.tolist() == [model.num_query_tokens] * 2
    with pytest.raises(RslavisError, match="num_query_tokens"):
        model.build_inputs({**samples, "text_input": ["look at <image> here", PROMPTS[0]]})


def test_two_images_give_different_logits_and_greedy_captions(trained):
    model, samples = trained
    a, b = samples["image"][:1], samples["image"][1:]
    one = {"text_input": [PROMPTS[0]], "text_output": ["a red house"]}
    with torch.no_grad():
        la = model.model(**model.build_inputs({**one, "image": a}, targets=one["text_output"])).logits
        lb = model.model(**model.build_inputs({**one, "image": b}, targets=one["text_output"])).logits
    assert not torch.allclose(la, lb, atol=1e-3)
    caps = model.generate({"image": samples["image"], "text_input": [PROMPTS[0]] * 2}, max_len=10)
    assert caps == TEXTS[:2]


def test_without_image_tokens_transformers_ignores_the_image(trained):
    """The pitfall itself: the same call without placeholders gives identical logits for both images."""
    model, samples = trained
    inputs = model.build_inputs({**samples, "text_input": [PROMPTS[0]] * 2}, targets=["a red house"] * 2)
    keep = inputs["input_ids"][0] != model.image_token_id
    stripped = dict(inputs, input_ids=inputs["input_ids"][:, keep], attention_mask=inputs["attention_mask"][:, keep])
    if "labels" in stripped and not model.is_encoder_decoder:
        stripped["labels"] = inputs["labels"][:, keep]
    with torch.no_grad():
        logits = model.model(**stripped).logits
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def test_stepwise_sampling_matches_generate_and_teacher_forcing(trained):
    """The KV-cache sampling loop sees the same inputs as generate (left padding, positions),
    and its log-probs equal those of one teacher-forced pass over the sampled tokens."""
    model, samples = trained
    mixed = {"image": samples["image"], "text_input": [PROMPTS[0], PROMPTS[0] + " answer in full ."]}
    greedy = model.generate(mixed, max_len=10)
    out = model.sample(mixed, n=2, max_len=10, greedy=True)
    assert out.captions == [greedy[0], greedy[0], greedy[1], greedy[1]]
    torch.manual_seed(0)
    out = model.sample(mixed, n=2, temperature=1.5, max_len=10)
    inputs = model.build_inputs(mixed, padding_side="left")
    with torch.no_grad():
        feats = model.image_features(inputs).repeat_interleave(2, 0)
        rep = lambda t: t.repeat_interleave(2, 0)  # noqa: E731
        logits = model._lm_logits(feats, rep(inputs["input_ids"]), rep(inputs["attention_mask"]), out.token_ids) / 1.5
    tf = torch.log_softmax(logits, -1).gather(-1, out.token_ids.unsqueeze(-1)).squeeze(-1) * out.mask
    assert torch.allclose(tf, out.logprobs.detach(), atol=1e-4)


def test_sample_output_contract(trained):
    model, samples = trained
    model.train()
    try:
        torch.manual_seed(0)
        out = model.sample({"image": samples["image"], "text_input": [PROMPTS[0]] * 2}, n=3, temperature=1.0, max_len=12, return_logits=True)
    finally:
        model.eval()
    rows, width = out.token_ids.shape
    assert rows == 6 and out.logprobs.shape == out.mask.shape == (6, width) and len(out.captions) == 6
    assert out.logits.shape[:2] == (6, width)
    eos, pad = model.tokenizer.eos_token_id, model.tokenizer.pad_token_id
    ended = 0
    for r in range(rows):
        ids = out.token_ids[r].tolist()
        if eos in ids:
            ended += 1
            k = ids.index(eos)
            assert out.mask[r, : k + 1].eq(1).all() and out.mask[r, k + 1 :].eq(0).all()
            assert all(t == pad for t in ids[k + 1 :])
        else:
            assert out.mask[r].eq(1).all()
    assert ended >= 3  # the trained model stops after its caption
    assert (out.logprobs[out.mask == 0] == 0).all() and (out.logprobs[out.mask == 1] <= 0).all()
    # gradients reach the Q-Former: SCST trains the same parameters as cross-entropy
    model.zero_grad()
    (-(out.logprobs.sum())).backward()
    assert model.model.qformer.encoder.layer[0].attention.attention.query.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_samples_follow_the_model_distribution():
    """First-token frequencies of many samples match softmax(logits / T), with the logits
    from a separate teacher-forced pass (not from the sampling call), at a temperature
    whose distribution is far from T = 1's, so ignoring the temperature fails."""
    model = tiny_model("opt", seed=3).eval()
    image = two_images()[:1]
    samples = {"image": image, "text_input": [PROMPTS[0]]}
    temperature, n = 0.2, 2000
    inputs = model.build_inputs(samples, padding_side="left")
    with torch.no_grad():
        feats = model.image_features(inputs)
        first = torch.zeros(1, 1, dtype=torch.long)
        logits = model._lm_logits(feats, inputs["input_ids"], inputs["attention_mask"], first)[0, 0]
    probs = torch.softmax(logits / temperature, -1)
    assert (probs - torch.softmax(logits, -1)).abs().max() > 0.15  # the test can tell T = 0.2 from T = 1
    torch.manual_seed(0)
    out = model.sample(samples, n=n, temperature=temperature, max_len=1, return_logits=True)
    freq = torch.bincount(out.token_ids[:, 0], minlength=probs.numel()).float() / n
    assert (freq - probs).abs().max() < 0.045  # > 4 standard deviations of a frequency at p <= 0.5
    # log-probs returned are those of the sampled tokens under the same distribution
    assert torch.allclose(out.logprobs[:, 0].exp(), probs[out.token_ids[:, 0]], atol=1e-5)


def test_rank_answers_prefers_the_trained_answer(trained):
    model, samples = trained
    cands = ["yes", TEXTS[1], "no", TEXTS[0], "three cars"]
    assert model.rank_answers({"image": samples["image"], "text_input": [PROMPTS[0]] * 2}, cands, chunk=2) == TEXTS[:2]


@pytest.mark.parametrize("llm", LLMS)
def test_save_and_load_round_trip(tmp_path, llm):
    model = tiny_model(llm, lora_r=2, lora_targets="all")
    overfit(model, steps=5)
    images = {"image": two_images(), "text_input": [PROMPTS[0], PROMPTS[1]]}
    before = model.generate(images, max_len=8)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer" / "qformer_tokenizer").is_dir()
    loaded = InstructBLIP.from_pretrained(tmp_path / "m").eval()
    assert loaded.generate(images, max_len=8) == before
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and any("lora_A" in k for k in sd)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_freezing_flags_and_lora():
    model = tiny_model("opt", freeze_vit=True, freeze_qformer=True, freeze_llm=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.language_projection") for n in trainable)
    lora = tiny_model("t5", freeze_vit=True, lora_r=4, lora_targets="ffn")
    names = {n for n, p in lora.named_parameters() if p.requires_grad}
    llm_trainable = {n for n in names if n.startswith("model.language_model")}
    assert llm_trainable and all("lora_" in n and "DenseReluDense" in n for n in llm_trainable)
    assert not any(n.startswith("model.vision_model") for n in names)
    assert any(n.startswith("model.qformer") for n in names)


def test_local_pretrained_directory_loads_and_missing_one_names_the_option(tmp_path):
    """A Hugging Face-layout InstructBLIP directory (as flant5xl/vicuna7b use) loads offline."""
    model = tiny_model("t5").eval()
    hf_dir = tmp_path / "instructblip-local"
    model.model.save_pretrained(str(hf_dir))
    model.save_tokenizers(hf_dir)
    local = InstructBLIP({"arch": "instructblip", "model_type": "flant5xl", "pretrained": str(hf_dir), "max_txt_len": 24, "max_output_txt_len": 16}).eval()
    images = {"image": two_images(), "text_input": [PROMPTS[0], PROMPTS[1]]}
    assert local.generate(images, max_len=6) == model.generate(images, max_len=6)
    with pytest.raises(ConfigError, match=r"model\.pretrained: directory not found: .*instructblip-flan-t5-xl"):
        InstructBLIP({"model_type": "flant5xl", "pretrained": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="model.pretrained is not set"):
        InstructBLIP({"model_type": "vicuna7b"})
    with pytest.raises(ConfigError, match="qformer_tokenizer"):
        load_tokenizers(tmp_path, "model.tokenizer_path")


def test_wrong_image_size_is_a_clear_error():
    model = tiny_model("opt")
    with pytest.raises(ConfigError, match="image_size to 32"):
        model.generate({"image": torch.zeros(1, 3, 64, 64), "text_input": [""]})


def test_default_yamls_build_after_fitting_tokenizers(tmp_path):
    from omegaconf import OmegaConf

    from rslavis.models.base_model import PACKAGE_ROOT

    class Train:
        prompt = ""
        records = [{"question": "how many cars ?"}]
        text_processor = staticmethod(lambda q: f"Question: {q} Answer:")

        def all_captions(self):
            return ["three", "a red house"]

    for mt in ("tiny_opt", "tiny_t5"):
        cfg = OmegaConf.load(PACKAGE_ROOT / "configs/models/instructblip" / f"{mt}.yaml").model
        model = InstructBLIP.from_config(cfg)
        assert model.model is None
        model.prepare_for_training({"x": {"train": Train()}}, tmp_path / mt)
        assert model.model is not None and (tmp_path / mt / "tokenizer" / "qformer_tokenizer").is_dir()
        q_vocab = model.qformer_tokenizer.get_vocab()
        assert "question" in q_vocab and "briefly" in q_vocab  # instructions and the default prompt
        out = model(
            {"image": torch.rand(2, 3, 64, 64), "text_input": ["Question: how many cars ? Answer:", ""], "text_output": ["three", "a red house"]}
        )
        assert torch.isfinite(out["loss"])
