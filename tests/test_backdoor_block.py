"""Backdoor causal block: NWGM expectation under the prior, on smallcap_causal's forward path, dictionary from training images only."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.backdoor_block import BackdoorBlock, build_dictionary
from rslavis.models.tokenization import train_caption_tokenizer

CAPTIONS = ["there are two planes in a paved area .", "a green meadow with a tree .", "three ships in the sea .", "a house in farmland ."]


def test_nwgm_expectation_matches_the_formula_and_follows_the_prior():
    torch.manual_seed(0)
    block = BackdoorBlock(6, 5, num_prototypes=3)
    z = torch.randn(3, 5)
    prior = torch.tensor([0.5, 0.3, 0.2])
    block.set_dictionary(z, prior)
    x = torch.randn(2, 4, 6)
    a = torch.softmax(block.query(x) @ block.key(z).t() / np.sqrt(3), -1)  # hidden = dim // 2 = 3
    w = a * prior
    w = w / w.sum(-1, keepdim=True)  # sum_z a_z P(z) z / sum_z a_z P(z)
    expected = x + w @ block.value(z)
    assert torch.allclose(block(x), expected, atol=1e-5)
    # a prototype of (almost) zero prior gets (almost) no weight, whatever the attention says
    block.set_dictionary(z, torch.tensor([1 - 2e-9, 1e-9, 1e-9]))
    block(x)
    assert block.last_weights[..., 1:].max() < 1e-6


def test_refuses_to_run_without_a_dictionary_and_bad_dictionaries():
    block = BackdoorBlock(4, 4, num_prototypes=2)
    with pytest.raises(ConfigError, match="dictionary is not built"):
        block(torch.randn(1, 2, 4))
    with pytest.raises(ConfigError, match="probability"):
        block.set_dictionary(torch.zeros(2, 4), torch.tensor([0.9, 0.9]))
    with pytest.raises(ConfigError, match="expected"):
        block.set_dictionary(torch.zeros(3, 4), torch.tensor([0.5, 0.25, 0.25]))


def test_kmeans_dictionary_recovers_clusters_and_their_shares():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    sizes = [10, 20, 30]
    x = np.concatenate([c + 0.1 * rng.normal(size=(n, 3)) for c, n in zip(centres, sizes)])
    protos, prior = build_dictionary(x, 3, seed=0)
    order = [int(np.argmin(np.linalg.norm(protos - c, axis=1))) for c in centres]
    assert sorted(order) == [0, 1, 2]
    assert np.allclose(protos[order], centres, atol=0.1)
    assert np.allclose(prior[order], np.array(sizes) / 60, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 8"):
        build_dictionary(x[:5], 8)


def tiny_model(**overrides):
    cls = registry.get_model_class("smallcap_causal")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.vision.update(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, image_size=32, freeze=True)
    cfg.decoder.update(n_layer=1, n_embd=32, n_head=2)
    cfg.causal_block.update(type="backdoor", num_prototypes=3)
    cfg.update(disable_rag=True, token_attention=False)
    cfg.contrastive.enabled = False
    cfg.merge_with(overrides)
    torch.manual_seed(0)
    return cls.from_config(cfg, tokenizer=train_caption_tokenizer(CAPTIONS + ["this image shows"]))


def test_backdoor_block_is_on_the_forward_path():
    model = tiny_model()
    assert isinstance(model.causal_block, BackdoorBlock)
    b = {"image": torch.randn(4, 3, 32, 32), "image_id": list("abcd"), "text_input": [""] * 4, "text_output": CAPTIONS}
    with pytest.raises(ConfigError, match="dictionary is not built"):
        model(b)
    model.causal_block.set_dictionary(torch.randn(3, 32), torch.tensor([0.2, 0.3, 0.5]))

    def logits():
        enc = model.encode_image(b["image"])
        ids, attn, _ = model._tokenize(model._prompts(b, 4), b["text_output"])
        return model.decoder(input_ids=ids, attention_mask=attn, encoder_hidden_states=enc).logits

    model.eval()
    before = logits()
    model.causal_block.set_dictionary(torch.randn(3, 32), torch.tensor([0.2, 0.3, 0.5]))
    assert not torch.allclose(before, logits(), atol=1e-5)  # the dictionary changes what the decoder reads
    loss = model.train()(b)["loss"]
    loss.backward()
    assert model.causal_block.value.weight.grad.abs().sum() > 0
    assert model.causal_block.query.weight.grad.abs().sum() > 0


def _datasets(tmp_path, seed):
    from rslavis.datasets.builders.base_builder import PACKAGE_ROOT

    base = OmegaConf.load(PACKAGE_ROOT / "configs/datasets/rs_synthetic/confounded.yaml").datasets.rs_synthetic
    cfg = OmegaConf.merge(base, {
        "vis_processor": {"train": {"image_size": 32}, "eval": {"image_size": 32}},
        "build_info": {"cache_dir": str(tmp_path), "seed": seed, "image_size": 32, "sizes": {"train": 24, "val": 6, "test": 6}},
    })
    return registry.get_builder_class("rs_synthetic")(cfg, "rs_synthetic").build_datasets()


def test_dictionary_is_built_from_training_images_only(tmp_path):
    a, b = _datasets(tmp_path, 0), _datasets(tmp_path, 1)

    def dictionary(splits):
        model = tiny_model()
        torch.manual_seed(5)  # the k-means seed
        model.prepare_for_training({"rs_synthetic": splits}, None)
        return model.causal_block.dictionary.clone(), model.causal_block.prior.clone(), model.dictionary_sources

    d1, p1, sources = dictionary(a)
    assert bool(torch.isfinite(d1).all()) and abs(float(p1.sum()) - 1) < 1e-5
    assert set(sources) == {r["image"] for r in a["train"].records}
    # other validation and test images: the same dictionary
    d2, p2, _ = dictionary({"train": a["train"], "val": b["val"], "test": b["test"]})
    assert torch.equal(d1, d2) and torch.equal(p1, p2)
    # other training images: another dictionary
    d3, _, _ = dictionary({"train": b["train"], "val": a["val"], "test": a["test"]})
    assert not torch.allclose(d1, d3)


def test_unknown_block_type_is_refused():
    with pytest.raises(ConfigError, match="causal_block.type 'frontdoor' is unknown; valid: intervention, backdoor"):
        tiny_model(causal_block={"type": "frontdoor"})
