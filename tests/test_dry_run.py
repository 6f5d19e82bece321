"""``--dry-run``: full-size architectures built on the meta device from their published config
values (no weights exist here, and none is read), counted against the published figures."""

import re

import pytest
import torch

from rslavis.common.config import Config
from rslavis.models.meta import build_model_on_meta, meta_build
from rslavis.models.published import EVA_VIT_G, FLAN_T5_XL, GPT2_BASE, OPT_2_7B, TINYLLAMA_1_1B, VICUNA_7B
from rslavis.models.published import INSTRUCTBLIP_QFORMER as QFORMER
from rslavis.models.tokenization import train_caption_tokenizer
from rslavis.runners.plan import memory_plan
from tests.conftest import run_python


def _tokenizer_dir(d, qformer=False):
    tok = train_caption_tokenizer(["a small stand in vocabulary"])
    tok.save_pretrained(str(d))
    if qformer:
        tok.save_pretrained(str(d / "qformer_tokenizer"))


def _not_weights(d):
    # a weight file that cannot be read: building on meta must never open it
    (d / "model.safetensors").write_bytes(b"not a safetensors file")


def instructblip_dir(tmp_path, name, text, image_token_index):
    from transformers import InstructBlipConfig

    d = tmp_path / name
    d.mkdir()
    InstructBlipConfig(vision_config=EVA_VIT_G, qformer_config=QFORMER, text_config=text, num_query_tokens=32, image_token_index=image_token_index).save_pretrained(str(d))
    _tokenizer_dir(d, qformer=True)
    _not_weights(d)
    return d


def plan_of(model_section, run=None, task="captioning"):
    cfg = Config.from_dict({"model": model_section, "datasets": {"rs_synthetic": {}}, "run": {"task": task, **(run or {})}})
    model, _ = build_model_on_meta(cfg)
    return model, memory_plan(model, cfg.run)


def rows(plan):
    return {r["module"]: r for r in plan["rows"]}


def test_instructblip_flant5xl_cli(tmp_path):
    d = instructblip_dir(tmp_path, "instructblip-flan-t5-xl", FLAN_T5_XL, 32100)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"model: {{arch: instructblip, model_type: flant5xl, pretrained: {d}}}\nrun: {{task: captioning, amp: bf16}}\n")
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), "--dry-run"], env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    total = [l for l in out.stdout.splitlines() if l.startswith("total")][0].split()
    assert total[1] == "3.96B" and total[2] == "187.26M", out.stdout  # published: about 4.0B, 188M trained
    assert "model.language_model" in out.stdout
    best = re.search(r"checkpoint_best\.pth ([\d.]+) MB \(model\)", out.stdout)
    assert best and 749.0 <= float(best.group(1)) < 750.0, out.stdout  # the 187.26M trained parameters in float32 (amp)


def test_instructblip_sizes_and_dtypes(tmp_path):
    d = instructblip_dir(tmp_path, "flant5", FLAN_T5_XL, 32100)
    model, plan = plan_of({"arch": "instructblip", "model_type": "flant5xl", "pretrained": str(d), "dtype": "bfloat16"}, run={"amp": "bf16"})
    assert all(p.is_meta for p in model.parameters())
    r = rows(plan)
    total, trained = r["total"]["params"], r["total"]["trained"]
    assert 3.9e9 < total < 4.05e9 and 186e6 < trained < 189e6
    # trained = Q-Former + query tokens + projection, counted from the transformers modules themselves
    hf = model.model
    expected = sum(p.numel() for m in (hf.qformer, hf.language_projection) for p in m.parameters()) + hf.query_tokens.numel()
    assert trained == expected
    # amp: trained parameters float32 (4 bytes) with float32 grads and 2 AdamW states; frozen ones bfloat16
    assert r["total"]["weights_bytes"] == 4 * trained + 2 * (total - trained)
    assert r["total"]["grads_bytes"] == 4 * trained and r["total"]["adamw_bytes"] == 8 * trained
    ck = plan["checkpoint"]
    assert ck["trained_only_model_bytes"] < 0.1 * ck["full_model_bytes"]  # the frozen ViT and T5 come from `pretrained`
    assert ck["base_sources"] == {"model.": str(d)}

    d7 = instructblip_dir(tmp_path, "vicuna", VICUNA_7B, 32000)
    _, plan7 = plan_of({"arch": "instructblip", "model_type": "vicuna7b", "pretrained": str(d7)})
    assert 7.85e9 < rows(plan7)["total"]["params"] < 7.95e9  # published: about 7.9B
    ck7 = plan7["checkpoint"]
    # "a 7B-LLM run writes checkpoints of megabytes": trained-only model part vs a full bfloat16 state dict
    assert ck7["trained_only_model_bytes"] < 0.5e9 and ck7["full_model_bytes"] > 15e9


def test_blip2_opt27b_on_meta():
    # BLIP-2 through transformers directly, from the published values of Salesforce/blip2-opt-2.7b
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    qf = {k: v for k, v in QFORMER.items() if k != "vocab_size"}
    with meta_build():
        m = Blip2ForConditionalGeneration(Blip2Config(vision_config=EVA_VIT_G, qformer_config=qf, text_config=OPT_2_7B, num_query_tokens=32))
    total = sum(p.numel() for p in m.parameters())
    assert all(p.is_meta for p in m.parameters())
    assert 3.7e9 < total < 3.85e9  # published: about 3.8B


def test_rs_moe_llm1b_with_k_experts(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = tmp_path / "tinyllama"
    llm.mkdir()
    LlamaConfig(**{k: v for k, v in TINYLLAMA_1_1B.items() if k != "model_type"}).save_pretrained(str(llm))
    _tokenizer_dir(llm)
    _not_weights(llm)
    front = instructblip_dir(tmp_path, "vicuna", VICUNA_7B, 32000)
    with meta_build():
        dense = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINYLLAMA_1_1B.items() if k != "model_type"})).parameters())
    assert 1.05e9 < dense < 1.15e9  # TinyLlama: 1.1B
    for k in (1, 3):
        model, plan = plan_of({"arch": "rs_moe", "model_type": "llm1b", "init_from": str(llm), "front_from": str(front), "num_experts": k})
        r = rows(plan)
        assert r["experts"]["params"] == k * dense and r["experts"]["trained"] == 0  # stage 1: experts frozen
        assert r["front"]["trained"] == 0  # freeze_vit, freeze_qformer in llm1b.yaml
        assert r["total"]["trained"] == r["router"]["params"] + r["projections"]["params"]
        assert r["projections"]["params"] == k * (768 * 2048 + 2048)


SMALLCAP_CROSS = {28: 28_348_416, 14: 14_178_816, 7: 7_094_016, 3.5: 3_551_616, 1.75: 1_780_416}


@pytest.mark.parametrize("size", sorted(SMALLCAP_CROSS))
def test_smallcap_cross_attention_at_gpt2_base(tmp_path, size):
    from transformers import GPT2Config

    d = tmp_path / "gpt2"
    d.mkdir()
    GPT2Config(**GPT2_BASE).save_pretrained(str(d))
    _not_weights(d)
    tok = tmp_path / "tok"
    _tokenizer_dir(tok)
    model, plan = plan_of({
        "arch": "smallcap_causal", "model_type": "tiny", "attention_size": size, "train_decoder": False, "disable_rag": True,
        "decoder": {"type": "gpt2", "pretrained": str(d)}, "tokenizer_path": str(tok),
    })
    cross = sum(p.numel() for n, p in model.decoder.named_parameters() if "crossattention" in n)
    # q: 768 -> w, k and v: 768 -> 2w, output: w -> 768 (w = 768 / reduction), with biases, in 12 layers
    w = int(768 / {28: 1, 14: 2, 7: 4, 3.5: 8, 1.75: 16}[size])
    assert cross == 12 * ((768 * w + w) + (768 * 2 * w + 2 * w) + (w * 768 + 768)) == SMALLCAP_CROSS[size]
    dec = {n for n, p in model.decoder.named_parameters() if p.requires_grad}
    assert dec and all("crossattention" in n or "ln_cross_attn" in n for n in dec)  # train_decoder false: GPT-2 frozen but its cross-attention


def test_meta_counts_equal_a_real_build(tmp_path):
    """The demo config on meta has exactly the parameters of the same model built for real."""
    from rslavis.common.registry import registry
    from rslavis.models.meta import StandInCaptions

    cfg = Config.from_file("projects/smallcap/synthetic_demo.yaml")
    meta_model, _ = build_model_on_meta(cfg)
    real = registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    real.prepare_for_training({"x": {"train": StandInCaptions(int(cfg.model.get("tokenizer_vocab_size", 2000)))}}, None)
    assert meta_model.count_parameters() == real.count_parameters()
    plan = memory_plan(meta_model, cfg.run)
    path = tmp_path / "c.pth"
    torch.save({k: v for k, v in real.state_dict().items()}, path)
    # the planned model part of a checkpoint is the real state dict's size (+ torch.save's small overhead)
    assert abs(path.stat().st_size - plan["checkpoint"]["trained_only_model_bytes"]) < 0.05 * path.stat().st_size
