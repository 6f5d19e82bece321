"""SmallCap: the image reaches the decoder, save/from_pretrained round trip, clear errors."""

import pytest
import torch
from omegaconf import OmegaConf

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.tokenization import train_caption_tokenizer

CAPTIONS = ["there are two planes in a desert .", "a green meadow with a tree .", "three ships in the sea ."]


def tiny_model(**overrides):
    cls = registry.get_model_class("smallcap")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.vision.update(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    cfg.decoder.update(n_layer=1, n_embd=48, n_head=2)
    cfg.merge_with(overrides)
    torch.manual_seed(0)
    return cls.from_config(cfg, tokenizer=train_caption_tokenizer(CAPTIONS))


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text_input": [""] * n, "text_output": CAPTIONS[:n]}


def test_loss_depends_on_image_and_trains():
    model = tiny_model()
    model.eval()
    b = batch()
    l1 = model(b)["loss"]
    b2 = dict(b, image=b["image"] * -1.0)
    assert not torch.allclose(l1, model(b2)["loss"])  # the image goes through cross-attention
    l1.backward()
    assert model.visual_encoder.model.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_prompt_is_not_supervised():
    model = tiny_model()
    ids, attn, labels = model._tokenize(["similar images show a plane ."], ["two planes ."])
    n_prompt = 1 + len(model.tokenizer("similar images show a plane .", add_special_tokens=False)["input_ids"])
    assert (labels[0, :n_prompt] == -100).all()
    assert (labels[0, n_prompt:] != -100).all()


def test_generate_returns_strings_and_respects_max_len():
    model = tiny_model().eval()
    caps = model.generate(batch(), max_len=5, min_len=2, num_beams=2)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    assert all(len(c.split()) <= 5 for c in caps)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "m")
    loaded = registry.get_model_class("smallcap").from_pretrained(tmp_path / "m").eval()
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    b = batch()
    assert model.generate(b, max_len=6) == loaded.generate(b, max_len=6)


def test_pretrained_paths_load_local_hf_dirs(tmp_path):
    """A transformers ViT and GPT-2 saved to local directories load through the config."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    gpt.save_pretrained(tmp_path / "gpt2")
    model = tiny_model(vision={"pretrained": str(tmp_path / "vit")}, decoder={"pretrained": str(tmp_path / "gpt2")})
    assert torch.equal(model.visual_encoder.model.embeddings.patch_embeddings.projection.weight, vit.embeddings.patch_embeddings.projection.weight)
    assert torch.equal(model.decoder.transformer.h[0].attn.c_attn.weight, gpt.transformer.h[0].attn.c_attn.weight)
    assert model.decoder.config.add_cross_attention
    assert model(batch())["loss"].isfinite()


def test_missing_local_paths_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.vision.pretrained: directory .*not found"):
        tiny_model(vision={"pretrained": str(tmp_path / "nope")})
    cls = registry.get_model_class("smallcap")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.tokenizer_path = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="model.tokenizer_path: tokenizer directory not found"):
        cls.from_config(cfg)
    with pytest.raises(ConfigError, match="not a saved smallcap model"):
        registry.get_model_class("smallcap").from_pretrained(tmp_path)


def test_open_clip_encoder_from_local_checkpoint(tmp_path):
    """An open_clip model saved as a state dict (RemoteCLIP's format) loads through the config."""
    import json

    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (extra 'clip')")

    from rslavis.models.encoders import build_vision_encoder

    cfg_file = tmp_path / "tiny-oc-vit.json"
    cfg_file.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32}, "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(str(cfg_file))
    reference = open_clip.create_model("tiny-oc-vit", pretrained=None)
    torch.save(reference.state_dict(), tmp_path / "remoteclip_tiny.pt")
    enc = build_vision_encoder({"type": "open_clip", "arch": "tiny-oc-vit", "model_config": str(cfg_file), "checkpoint": str(tmp_path / "remoteclip_tiny.pt")})
    assert torch.equal(enc.visual.conv1.weight, reference.visual.conv1.weight)
    tokens, pooled = enc(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 16, 64) and pooled.shape == (2, 32)
    model = tiny_model(vision={"type": "open_clip", "arch": "tiny-oc-vit", "model_config": str(cfg_file), "checkpoint": str(tmp_path / "remoteclip_tiny.pt"), "freeze": True})
    assert model(batch())["loss"].isfinite()
    assert not any(p.requires_grad for p in model.visual_encoder.parameters())
    with pytest.raises(ConfigError, match="model.vision.checkpoint: file not found"):
        build_vision_encoder({"type": "open_clip", "arch": "ViT-B-32", "checkpoint": str(tmp_path / "missing.pt")})
