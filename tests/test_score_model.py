"""score_model: CLIP dual encoder (transformers, open_clip) and VLM value head; batched no-grad
scoring, save/load round trips, loading from a run folder, clear errors."""

import json

import pytest
import torch

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.models.score_model import ScoreModel, load_scorer
from rslavis.models.tokenization import train_caption_tokenizer

TEXTS = ["there are two planes in a desert .", "a ship in the sea .", "three storage tanks in farmland .", "a building"]
TINY_CLIP = {"type": "clip", "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
             "text": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}, "projection_dim": 16}
TINY_VLM = {"type": "vlm", "vlm": {
    "model_type": "tiny_opt", "num_query_tokens": 4,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "image_size": 32, "patch_size": 8},
    "qformer": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "llm": {"hidden_size": 32, "ffn_dim": 64, "num_layers": 1, "num_heads": 2}}}


class _DS:
    """The two attributes prepare_for_training reads from a training split."""

    prompt = "Describe the image briefly."
    records = ()

    def all_captions(self):
        return list(TEXTS)


def clip_scorer():
    torch.manual_seed(0)
    return ScoreModel(TINY_CLIP, tokenizer=train_caption_tokenizer(TEXTS))


def test_clip_scores_shape_grad_and_no_grad_batches():
    m = clip_scorer()
    images = torch.randn(4, 3, 64, 64)
    s = m.scores(images, TEXTS)
    assert s.shape == (4,) and s.requires_grad
    s.sum().backward()
    assert m.clip.text_projection.weight.grad is not None
    m.train()
    batched = m.score(images, TEXTS, batch_size=3)  # two batches
    assert not batched.requires_grad and m.training  # mode restored
    m.eval()
    assert torch.allclose(batched, m.scores(images, TEXTS).detach(), atol=1e-5)
    # the text matters, and so does the image
    assert not torch.allclose(m.score(images, TEXTS), m.score(images, TEXTS[::-1]))
    assert not torch.allclose(m.score(images, TEXTS), m.score(images.flip(0), TEXTS))


def test_images_of_another_size_are_resized():
    m = clip_scorer().eval()
    s = m.score(torch.randn(2, 3, 96, 96), TEXTS[:2])
    assert s.shape == (2,) and torch.isfinite(s).all()
    with pytest.raises(RslavisError, match="2 images for 3 texts"):
        m.scores(torch.randn(2, 3, 64, 64), TEXTS[:3])


def test_clip_prepare_fits_tokenizer_and_round_trips(tmp_path):
    m = ScoreModel(TINY_CLIP)
    assert not m.built
    with pytest.raises(RslavisError, match="not built"):
        m.scores(torch.randn(1, 3, 64, 64), ["x"])
    m.prepare_for_training({"d": {"train": _DS()}}, tmp_path / "run")
    assert (tmp_path / "run" / "tokenizer").is_dir()
    images = torch.randn(4, 3, 64, 64)
    before = m.score(images, TEXTS)
    m.save_pretrained(tmp_path / "saved")
    again = ScoreModel.from_pretrained(tmp_path / "saved")
    assert torch.allclose(before, again.score(images, TEXTS), atol=1e-6)
    assert torch.allclose(before, load_scorer(tmp_path / "saved").score(images, TEXTS), atol=1e-6)


@pytest.mark.parametrize("llm", ["opt", "t5"])
def test_vlm_value_head(tmp_path, llm):
    cfg = json.loads(json.dumps(TINY_VLM))
    cfg["vlm"]["model_type"] = f"tiny_{llm}"
    torch.manual_seed(0)
    m = ScoreModel(cfg)
    m.prepare_for_training({"d": {"train": _DS()}}, tmp_path / "run")
    images = torch.randn(4, 3, 32, 32)
    s = m.scores(images, TEXTS)
    assert s.shape == (4,)
    s.sum().backward()
    assert m.value_head.weight.grad is not None
    assert any(p.grad is not None for p in m.vlm.model.vision_model.parameters())  # the image reaches the score
    m.eval()
    before = m.score(images, TEXTS)
    assert not torch.allclose(before, m.score(images, TEXTS[::-1]))
    m.save_pretrained(tmp_path / "saved")
    assert torch.allclose(before, ScoreModel.from_pretrained(tmp_path / "saved").score(images, TEXTS), atol=1e-5)


def test_open_clip_backend_with_tiny_local_config(tmp_path):
    pytest.importorskip("open_clip")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path / "tiny-oc.json"
    path.write_text(json.dumps(config))
    torch.manual_seed(0)
    m = ScoreModel({"type": "clip", "backend": "open_clip", "clip_arch": "tiny-oc", "model_config": str(path)})
    images = torch.randn(3, 3, 32, 32)
    before = m.score(images, TEXTS[:3])
    assert before.shape == (3,)
    m.save_pretrained(tmp_path / "saved")
    assert torch.allclose(before, ScoreModel.from_pretrained(tmp_path / "saved").score(images, TEXTS[:3]), atol=1e-5)


def test_bad_config_and_paths(tmp_path):
    with pytest.raises(ConfigError, match="model.type: 'siamese' is unknown"):
        ScoreModel({"type": "siamese"})
    with pytest.raises(ConfigError, match="model.pretrained: directory .* not found"):
        ScoreModel({"type": "clip", "pretrained": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="neither a save_pretrained directory"):
        load_scorer(tmp_path)
    (tmp_path / "config.yaml").write_text("model: {arch: score_model}\n")
    with pytest.raises(ConfigError, match="without checkpoint_best.pth"):
        load_scorer(tmp_path)
