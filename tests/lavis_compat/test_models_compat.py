"""blip2 and blip: real transformers models behind LAVIS's names, LAVIS's model keys honoured."""

import pytest
import torch

from rslavis.common.config import Config
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.tokenization import train_caption_tokenizer
from tests._instructblip_helpers import PROMPTS, TEXTS, TINY, overfit

torch.set_num_threads(1)
VOCAB = TEXTS + PROMPTS + ["a photo of", "a picture of"]


def blip2_cfg(llm="opt", **kw):
    cfg = {k: v for k, v in TINY.items() if k != "qformer_max_len"}
    cfg.update(arch="blip2", model_type=f"tiny_{llm}", prompt="a photo of", llm=dict(type=llm, hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0))
    cfg.update(kw)
    return cfg


def blip_cfg(**kw):
    cfg = dict(
        arch="blip", model_type="tiny", prompt="a picture of ",
        vision=dict(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        text=dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=32, dropout=0.0),
    )
    cfg.update(kw)
    return cfg


def build(arch, cfg, seed=0):
    torch.manual_seed(seed)
    return registry.get_model_class(arch)(cfg, tokenizer=train_caption_tokenizer(VOCAB))


CASES = [("blip2_opt", lambda **kw: blip2_cfg("opt", **kw)), ("blip2_t5", lambda **kw: blip2_cfg("t5", **kw)), ("blip_caption", blip_cfg)]


@pytest.mark.parametrize("arch,make", CASES, ids=[c[0] for c in CASES])
def test_learns_generates_samples_and_round_trips(arch, make, tmp_path):
    model = build(arch, make(), seed=1 if arch == "blip2_t5" else 0)  # tiny T5's greedy ties are seed-sensitive
    expected = {"blip2_opt": "Blip2ForConditionalGeneration", "blip2_t5": "Blip2ForConditionalGeneration", "blip_caption": "BlipForConditionalGeneration"}[arch]
    assert type(model.model).__name__ == expected
    samples, loss = overfit(model, steps=60)
    assert model.generate(samples, max_len=8) == TEXTS[:2]  # two images, two captions: learnt, prompt not returned
    out = model.sample(samples, n=3, max_len=8)
    assert out.token_ids.shape[0] == 6 and out.logprobs.requires_grad and len(out.captions) == 6
    assert model.sample(samples, n=1, max_len=8, greedy=True).captions == model.generate(samples, max_len=8)
    model.save_pretrained(tmp_path / "saved")
    again = type(model).from_pretrained(tmp_path / "saved").eval()
    assert again.generate(samples, max_len=8) == TEXTS[:2]


@pytest.mark.parametrize("arch,make", CASES, ids=[c[0] for c in CASES])
def test_local_hugging_face_directory_as_pretrained(arch, make, tmp_path):
    model = build(arch, make(), seed=1 if arch == "blip2_t5" else 0)
    samples, _ = overfit(model, steps=60)
    hf = tmp_path / "hf"
    model.model.save_pretrained(str(hf))  # the layout of Salesforce/blip2-* / blip-image-captioning-*
    model.tokenizer.save_pretrained(str(hf))
    model_type = {"blip2_opt": "pretrain_opt2.7b", "blip2_t5": "pretrain_flant5xl", "blip_caption": "base_coco"}[arch]
    cfg = make(model_type=model_type, pretrained=str(hf))
    cfg.pop("vit_type", None)
    loaded = registry.get_model_class(arch)(cfg).eval()
    assert loaded.generate(samples, max_len=8) == TEXTS[:2]


@pytest.mark.parametrize("arch,make", CASES, ids=[c[0] for c in CASES])
def test_a_model_loaded_from_a_checkpoint_saves_self_contained(arch, make, tmp_path):
    """save_pretrained of a model read from model.pretrained: hf_config.json (not the config's tiny sizes) rebuilds it."""
    hf = tmp_path / "hf"
    built = build(arch, make())
    built.model.save_pretrained(str(hf))
    built.tokenizer.save_pretrained(str(hf))
    model_type = {"blip2_opt": "pretrain_opt2.7b", "blip2_t5": "pretrain_flant5xl", "blip_caption": "base_coco"}[arch]
    cfg = {k: v for k, v in make(model_type=model_type, pretrained=str(hf)).items() if k not in ("vision", "qformer", "llm", "text", "vit_type")}
    loaded = registry.get_model_class(arch)(cfg)
    loaded.save_pretrained(tmp_path / "saved")
    again = type(loaded).from_pretrained(tmp_path / "saved")
    config = lambda m: {k: v for k, v in m.model.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert again.cfg.get("pretrained") is None and config(again) == config(loaded)
    mine, theirs = loaded.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_prompt_in_training_text_is_not_learnt_twice():
    # LAVIS's text processor writes "a photo of <caption>" and the model's prompt is "a photo of"
    a, b = build("blip2_opt", blip2_cfg()), build("blip2_opt", blip2_cfg())
    samples = {"image": torch.rand(1, 3, 32, 32), "text_input": [""], "text_output": ["a photo of three cars"]}
    plain = dict(samples, text_output=["three cars"])
    assert torch.allclose(a(samples)["loss"], b(plain)["loss"])
    c, d = build("blip_caption", blip_cfg()), build("blip_caption", blip_cfg())
    assert torch.allclose(c(dict(samples, text_output=["a picture of three cars"]))["loss"], d(plain)["loss"])


@pytest.mark.parametrize("arch,make", CASES, ids=[c[0] for c in CASES])
def test_lavis_model_keys_are_honoured(arch, make):
    m = build(arch, make(use_grad_checkpoint=True, vit_precision="fp16", freeze_vit=True))
    vision = m.model.vision_model
    assert vision.encoder.gradient_checkpointing
    assert next(vision.parameters()).dtype == torch.float16 and not any(p.requires_grad for p in vision.parameters())
    m.train()
    loss = m({"image": torch.rand(2, 3, 32, 32), "text_input": ["", ""], "text_output": TEXTS[:2]})["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert build(arch, make(image_size=48)).model.config.vision_config.image_size == 48


def test_empty_prompt_is_kept():
    assert build("blip2_t5", blip2_cfg("t5", prompt="")).prompt == ""
    assert build("blip_caption", blip_cfg(prompt="")).prompt == ""
    m = build("blip2_t5", blip2_cfg("t5", prompt=""))
    assert len(m.generate({"image": torch.rand(1, 3, 32, 32), "text_input": [""]}, max_len=3)) == 1


def test_num_query_token_reaches_the_q_former(tmp_path):
    project = tmp_path / "p.yaml"
    project.write_text("model:\n  arch: blip2_opt\n  model_type: tiny_opt\n  num_query_token: 4\nrun:\n  task: captioning\n")
    cfg = Config.from_file(project)
    model = registry.get_model_class(cfg.model.arch)(cfg.model, tokenizer=train_caption_tokenizer(VOCAB))
    assert model.num_query_tokens == 4 and model.model.query_tokens.shape[1] == 4


def test_refusals_name_the_key():
    with pytest.raises(ConfigError, match="model.drop_path_rate: 0.1 is not supported"):
        build("blip2_opt", blip2_cfg(drop_path_rate=0.1))
    with pytest.raises(ConfigError, match="model.t5_model: 'google/flan-t5-xl' names a T5 LLM, but this blip2 model has a decoder-only LLM"):
        build("blip2_opt", blip2_cfg(t5_model="google/flan-t5-xl"))
    with pytest.raises(ConfigError, match="model.vit_precision: 'fp8' is unknown"):
        build("blip_caption", blip_cfg(vit_precision="fp8"))
    with pytest.raises(ConfigError, match="model.med_config_path"):
        build("blip_caption", blip_cfg(med_config_path="configs/models/med_config.json"))
    with pytest.raises(ConfigError, match=r"model.pretrained is not set for model_type 'caption_coco_opt2.7b'.*Salesforce/blip2-opt-2.7b-coco"):
        registry.get_model_class("blip2")(blip2_cfg(model_type="caption_coco_opt2.7b"))


@pytest.mark.parametrize("arch,model_type", [("blip2_opt", "tiny_opt"), ("blip_caption", "tiny")])
def test_scst_trains_blip_family(tmp_path, root, arch, model_type):
    import json

    from rslavis.train import main

    code = main([
        "--cfg-path", str(root / "projects" / "instructblip" / "synthetic_scst.yaml"), "--options",
        f"model.arch={arch}", f"model.model_type={model_type}", f"run.output_dir={tmp_path}", "run.job_id=s",
        "datasets.rs_synthetic.build_info.sizes.train=8", "datasets.rs_synthetic.build_info.sizes.val=2",
        "datasets.rs_synthetic.build_info.sizes.test=2", f"datasets.rs_synthetic.build_info.cache_dir={tmp_path}/cache",
        "run.batch_size_train=4", "run.batch_size_eval=2", "run.max_epoch=1", "run.iters_per_epoch=1", "run.scst_start_epoch=0",
        "run.scst_num_samples=2", "run.scst_max_len=6", "run.max_len=6", "run.skip_metrics=[METEOR,SPICE]", "run.eval_rewards=[]",
    ])
    assert code == 0
    steps = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps and "scst/reward" in steps[0] and "scst/reward/cider" in steps[0]
