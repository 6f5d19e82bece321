"""smallcap_causal: the causal block runs and permutes the batch, retrieval prompts are masked, parts switch off."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.causal_block import CausalBlock
from rslavis.models.tokenization import train_caption_tokenizer
from tests.conftest import run_python

CAPTIONS = ["there are two planes on concrete .", "a green meadow with a tree .", "three ships in the sea .", "a house in farmland ."]
PROMPT_WORDS = ["similar images show this image shows"]


def tiny_model(**overrides):
    cls = registry.get_model_class("smallcap_causal")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.vision.update(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    cfg.decoder.update(n_layer=1, n_embd=32, n_head=2)
    cfg.merge_with(overrides)
    torch.manual_seed(0)
    return cls.from_config(cfg, tokenizer=train_caption_tokenizer(CAPTIONS + PROMPT_WORDS))


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, 64, 64, generator=g),
        "image_id": [f"img{i}" for i in range(n)],
        "text_input": [""] * n,
        "text_output": CAPTIONS[:n],
        "retrieved_captions": [[CAPTIONS[(i + 1) % n], CAPTIONS[(i + 2) % n]] for i in range(n)],
    }


def logits(model, b):
    enc = model.encode_image(b["image"])
    ids, attn, _ = model._tokenize(model._prompts(b, len(b["image"])), b["text_output"])
    return model.decoder(input_ids=ids, attention_mask=attn, encoder_hidden_states=enc).logits


def test_causal_block_is_on_the_forward_path():
    model = tiny_model().eval()
    b = batch()
    before = logits(model, b)
    with torch.no_grad():
        model.causal_block.object_proj.weight.add_(0.5)
    assert not torch.allclose(before, logits(model, b), atol=1e-5)
    loss = model.train()(b)["loss"]
    loss.backward()
    assert model.causal_block.weight_mlp[0].weight.grad.abs().sum() > 0  # the split weights get gradients


def test_counterfactual_uses_a_permutation_of_the_batch():
    torch.manual_seed(0)
    block = CausalBlock(8).train()
    x = torch.randn(5, 3, 8)
    perm = torch.tensor([2, 0, 4, 1, 3])
    out = block(x, permutation=perm)
    obj, ctx = block.split(x)
    expected = 0.3 * ctx + 0.3 * obj + 0.4 * (obj + ctx[perm])
    assert torch.allclose(out, expected, atol=1e-6)
    # a random permutation: item i depends on item perm[i]'s context, and on nothing else outside itself
    torch.manual_seed(1)
    out = block(x)
    p = block.last_permutation
    assert sorted(p.tolist()) == list(range(5))
    moved = next(i for i in range(5) if p[i] != i)
    x2 = x.clone()
    x2[p[moved]] += 1.0
    torch.manual_seed(1)
    out2 = block(x2)
    assert torch.equal(block.last_permutation, p)
    assert not torch.allclose(out[moved], out2[moved])
    untouched = [i for i in range(5) if i != p[moved] and p[i] != p[moved]]
    assert torch.allclose(out[untouched], out2[untouched], atol=1e-6)


def test_eval_is_deterministic_and_independent_of_the_batch():
    model = tiny_model()
    b = batch()
    model.train()
    model(b)  # training updates the running context mean that eval uses
    model.eval()
    a = model.encode_image(b["image"])
    assert torch.equal(a, model.encode_image(b["image"]))
    alone = model.encode_image(b["image"][:1])
    assert torch.allclose(a[:1], alone, atol=1e-5)  # no shuffling across the batch in eval
    assert model.generate(b, max_len=5) == model.generate(b, max_len=5)


def test_disabling_parts_removes_them():
    model = tiny_model(causal_block={"enabled": False}, token_attention=False, contrastive={"enabled": False}, disable_rag=True)
    assert model.causal_block is None and model.token_attention is None and model.image_proj is None
    keys = model.state_dict().keys()
    assert not any(k.startswith(("causal_block", "token_attention", "image_proj", "retrieval_encoder")) for k in keys)
    b = batch()
    out = model(b)
    assert set(out) == {"loss", "loss_ce"}
    assert model._prompts(b, 4) == ["This image shows"] * 4  # plain prefix, retrieved captions ignored
    model.eval()
    enc = model.encode_image(b["image"])
    assert torch.allclose(enc, model.vision_proj(model.visual_encoder(b["image"])[0]))


def test_retrieval_prompt_is_built_and_not_supervised():
    model = tiny_model()
    b = batch(2)
    prompts = model._prompts(b, 2)
    assert prompts[0] == "Similar images show a green meadow with a tree. there are two planes on concrete. This image shows"
    ids, attn, labels = model._tokenize(prompts, b["text_output"])
    n_prompt = 1 + len(model.tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
    n_target = len(model.tokenizer(b["text_output"][0], add_special_tokens=False)["input_ids"]) + 1
    assert (labels[0, :n_prompt] == -100).all()
    assert (labels[0, n_prompt : n_prompt + n_target] != -100).all()
    # the run's retrieved-captions map (by image id) is used when the sample carries none
    model.retrieved = {"img0": ["three ships in the sea ."]}
    b2 = dict(b)
    del b2["retrieved_captions"]
    assert model._prompts(b2, 2)[0] == "Similar images show three ships in the sea. This image shows"


def test_contrastive_loss_is_part_of_the_loss():
    model = tiny_model().train()
    torch.manual_seed(0)
    out = model(batch())
    assert out["loss_contrastive"] > 0
    assert torch.allclose(out["loss"].detach(), out["loss_ce"] + 0.1 * out["loss_contrastive"], atol=1e-5)
    out["loss"].backward()
    assert model.text_proj.weight.grad.abs().sum() > 0


def test_attention_size_narrows_cross_attention_and_freezing():
    full = tiny_model(attention_size=28)
    small = tiny_model(attention_size=1.75, train_decoder=False)
    ca_full, ca_small = full.decoder.transformer.h[0].crossattention, small.decoder.transformer.h[0].crossattention
    assert ca_full.q_attn.weight.shape == (32, 32) and ca_small.q_attn.weight.shape == (32, 2)
    assert ca_small.c_attn.weight.shape == (32, 4) and ca_small.c_proj.weight.shape == (2, 32)
    assert small(batch())["loss"].isfinite()
    trainable = [n for n, p in small.decoder.named_parameters() if p.requires_grad]
    assert trainable and all("crossattention" in n or "ln_cross_attn" in n for n in trainable)
    assert all(p.requires_grad for p in small.causal_block.parameters())
    with pytest.raises(ConfigError, match="attention_size"):
        tiny_model(attention_size=5)


def test_save_and_from_pretrained_keep_retrieval_encoder_and_datastore(tmp_path):
    from rslavis.retrieval.datastore import Datastore

    model = tiny_model().eval()
    b = batch()
    feats = model.retrieval_features(b["image"]).numpy()
    model.datastore = Datastore(feats, b["image_id"], [[c] for c in CAPTIONS], index="flat")
    model.save_pretrained(tmp_path / "m")
    loaded = registry.get_model_class("smallcap_causal").from_pretrained(tmp_path / "m").eval()
    assert loaded.datastore is not None and len(loaded.datastore) == 4
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    plain = {"image": b["image"], "text_input": [""] * 4}  # no ids, no captions: searched in the datastore
    caps = loaded.retrieved_captions(plain, 4)
    assert caps[0][0] == CAPTIONS[0]  # the nearest training image of an image is itself here
    assert model.generate(plain, max_len=6) == loaded.generate(plain, max_len=6)


def test_remoteclip_type_without_weights_is_a_clear_error(tmp_path):
    cls = registry.get_model_class("smallcap_causal")
    cfg = OmegaConf.load(cls.default_config_path("remoteclip_vitb32_gpt2")).model
    cfg.vision.checkpoint = str(tmp_path / "RemoteCLIP-ViT-B-32.pt")
    with pytest.raises(ConfigError, match=r"model\.vision\.checkpoint.*not found.*nothing is downloaded"):
        cls.from_config(cfg)
    with pytest.raises(ConfigError, match="decoder.type"):
        tiny_model(decoder={"type": "opt"})


def test_real_data_projects_fail_clearly_without_data(tmp_path):
    for name in ("ucm", "rsicd"):
        out = run_python(["-m", "rslavis.train", "--cfg-path", f"projects/smallcap_causal/{name}.yaml", "--options", f"run.output_dir={tmp_path / name}"], env={"HF_HUB_OFFLINE": "1"})
        if out.returncode == 0:  # the real data and weights are present: the run must have scored its test split
            found = list((tmp_path / name).rglob("metrics_test.json"))
            assert found and "CIDEr" in json.loads(found[-1].read_text()), out.stderr[-2000:]
            continue
        assert out.returncode == 2, out.stderr[-2000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("rslavis: error:") and ("data" in last or "weights" in last), last


def test_xglm_decoder_with_reduced_cross_attention():
    """XGLM (a decoder with cross-attention in transformers) by config; OPT is refused clearly."""
    model = tiny_model(decoder={"type": "xglm"}, attention_size=7, train_decoder=False)
    assert type(model.decoder).__name__ == "XGLMForCausalLM"
    ca = model.decoder.base_model.layers[0].encoder_attn
    assert ca.q_proj.weight.shape == (8, 32) and ca.out_proj.weight.shape == (32, 8)  # 32 / 4
    trainable = [n for n, p in model.decoder.named_parameters() if p.requires_grad]
    assert trainable and all("encoder_attn" in n for n in trainable)
    model.eval()
    b = batch()
    assert model(b)["loss"].isfinite()
    before = logits(model, b)
    with torch.no_grad():
        model.causal_block.object_proj.weight.add_(0.5) if hasattr(model.causal_block, "object_proj") else next(model.causal_block.parameters()).add_(0.5)
    assert not torch.allclose(before, logits(model, b))  # the causal block feeds XGLM's cross-attention
    out = model.sample(b, n=2, max_len=4)
    assert out.logprobs.shape[0] == 8 and len(model.generate(b, max_len=4)) == 4
    assert len(model.generate(b, max_len=4, num_beams=2)) == 4
    with pytest.raises(ConfigError, match="OPT decoder has no cross-attention"):
        registry.get_model_class("smallcap").from_config({"decoder": {"type": "opt"}}, tokenizer=train_caption_tokenizer(CAPTIONS))
