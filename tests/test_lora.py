"""LoRA helpers: role -> module names per LLM family, injection, frozen base, errors."""

import re

import pytest
import torch

from rslavis.common.errors import ConfigError
from rslavis.models.lora import apply_lora, llm_family, target_regex

torch.set_num_threads(1)


def tiny_llm(kind):
    import transformers as tf

    if kind == "t5":
        return tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu"))
    if kind == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=50, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2, word_embed_proj_dim=16))
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, add_cross_attention=True))
    raise ValueError(kind)


# expected leaf names per family and role (the part after the last dot, with the parent for GPT-2)
EXPECTED = {
    "t5": {"attn": {"q", "k", "v", "o"}, "ffn": {"wi_0", "wi_1", "wo"}},
    "opt": {"attn": {"q_proj", "k_proj", "v_proj", "out_proj"}, "ffn": {"fc1", "fc2"}},
    "llama": {"attn": {"q_proj", "k_proj", "v_proj", "o_proj"}, "ffn": {"gate_proj", "up_proj", "down_proj"}},
    "gpt2": {"attn": {"attn.c_attn", "attn.c_proj", "crossattention.c_attn", "crossattention.q_attn", "crossattention.c_proj"}, "ffn": {"mlp.c_fc", "mlp.c_proj"}},
}


def _matched(model, pattern, family):
    names = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    depth = 2 if family == "gpt2" else 1
    return {".".join(n.split(".")[-depth:]) for n in names}


@pytest.mark.parametrize("family", ["t5", "opt", "llama", "gpt2"])
def test_roles_map_to_the_family_module_names(family):
    model = tiny_llm(family)
    assert llm_family(model) == family
    for role in ("attn", "ffn"):
        assert _matched(model, target_regex(family, role), family) == EXPECTED[family][role]
    assert _matched(model, target_regex(family, "all"), family) == EXPECTED[family]["attn"] | EXPECTED[family]["ffn"]


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_apply_lora_trains_adapters_only_and_starts_as_identity(family):
    torch.manual_seed(0)
    model = tiny_llm(family).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    kwargs = {"encoder_hidden_states": torch.randn(1, 3, 16)} if family == "gpt2" else {}
    before = model(input_ids=ids, **kwargs).logits
    apply_lora(model, r=2, alpha=4, dropout=0.0, targets="all")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.allclose(model(input_ids=ids, **kwargs).logits, before, atol=1e-6)  # lora_B starts at zero
    # one optimiser step moves the output, through the adapters alone
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(input_ids=ids, labels=ids, **kwargs).loss.backward()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt.step()
    opt.step()
    assert not torch.allclose(model(input_ids=ids, **kwargs).logits, before, atol=1e-6)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_explicit_module_list_and_errors():
    model = tiny_llm("opt")
    apply_lora(model, r=2, targets=["fc1"])
    assert {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n} == {"fc1"}
    with pytest.raises(ConfigError, match="lora_targets: 'mlp' is unknown; valid: attn, ffn, all"):
        target_regex("opt", "mlp")
    with pytest.raises(ConfigError, match="no module of the OPTForCausalLM matches"):
        apply_lora(tiny_llm("opt"), r=2, targets=["not_a_layer"])
    with pytest.raises(ConfigError, match="lora_r"):
        apply_lora(tiny_llm("opt"), r=0)

    class Odd(torch.nn.Module):
        config = type("C", (), {"model_type": "bloom"})()

    with pytest.raises(ConfigError, match="no module-name mapping for LLM type 'bloom'"):
        llm_family(Odd())
