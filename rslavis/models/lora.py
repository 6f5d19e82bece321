"""LoRA on a language model through peft, with targets named by role.

``targets`` is ``attn`` (attention projections, self and cross), ``ffn`` (feed-forward
layers), ``all`` (both) or an explicit list of module-name suffixes. Roles map to
module names per LLM family (``LORA_MODULES``), because each family names its layers
differently (T5 ``q/k/v/o`` and ``wi/wo``; OPT ``q_proj..out_proj`` and ``fc1/fc2``;
LLaMA/Vicuna/Mistral/Qwen2 ``q_proj..o_proj`` and ``gate/up/down_proj``; GPT-2
``c_attn/c_proj`` in ``attn`` and ``c_fc/c_proj`` in ``mlp``, which share a name and are
therefore told apart by their parent).

Adapters are injected in place (``peft.inject_adapter_in_model``), so the wrapped model
keeps its own forward/generate and its state dict simply gains ``lora_A``/``lora_B``
entries; a model rebuilt with the same settings loads that state dict back.
"""

import re

from rslavis.common.errors import ConfigError

# family -> role -> regular expressions matched against the tail of a module's name
LORA_MODULES = {
    "t5": {"attn": [r"(SelfAttention|EncDecAttention)\.(q|k|v|o)"], "ffn": [r"DenseReluDense\.(wi|wi_0|wi_1|wo)"]},
    "opt": {"attn": [r"(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)"], "ffn": [r"fc1", r"fc2"]},
    "llama": {"attn": [r"self_attn\.(q_proj|k_proj|v_proj|o_proj)"], "ffn": [r"mlp\.(gate_proj|up_proj|down_proj)"]},
    "gpt2": {"attn": [r"(attn|crossattention)\.(c_attn|q_attn|c_proj)"], "ffn": [r"mlp\.(c_fc|c_proj)"]},
}
# transformers model_type -> family
FAMILY_OF = {
    "t5": "t5", "mt5": "t5", "umt5": "t5",
    "opt": "opt",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama", "gemma2": "llama",
    "gpt2": "gpt2",
}
TARGET_ROLES = ("attn", "ffn", "all")


def llm_family(model_or_config):
    """LoRA family (``t5``, ``opt``, ``llama``, ``gpt2``) of a transformers model or config."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILY_OF:
        raise ConfigError(
            f"LoRA: no module-name mapping for LLM type {model_type!r}; known: {', '.join(sorted(FAMILY_OF))}. "
            "Give lora_targets as an explicit list of module names instead."
        )
    return FAMILY_OF[model_type]


def target_regex(family, targets="attn"):
    """A regular expression for peft's ``target_modules`` (full match on module names)."""
    if isinstance(targets, str):
        if targets not in TARGET_ROLES:
            raise ConfigError(f"lora_targets: {targets!r} is unknown; valid: {', '.join(TARGET_ROLES)} or a list of module names.")
        if family not in LORA_MODULES:
            raise ConfigError(f"LoRA: unknown LLM family {family!r}; known: {', '.join(LORA_MODULES)}.")
        roles = ("attn", "ffn") if targets == "all" else (targets,)
        parts = [p for role in roles for p in LORA_MODULES[family][role]]
    else:
        parts = [re.escape(str(t)) for t in targets]
        if not parts:
            raise ConfigError("lora_targets: the list of module names is empty.")
    return r"(.*\.)?(" + "|".join(f"(?:{p})" for p in parts) + r")"


def apply_lora(llm, r=8, alpha=16, dropout=0.05, targets="attn", family=None):
    """Inject LoRA adapters into ``llm`` in place and return it.

    peft leaves only the adapters trainable inside ``llm`` (its base weights are frozen);
    modules outside ``llm`` are untouched. Raises :class:`ConfigError` when nothing matches.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if int(r) <= 0:
        raise ConfigError(f"lora_r: {r} must be a positive rank (0 or null turns LoRA off).")
    if isinstance(targets, str) and targets in TARGET_ROLES:
        family = family or llm_family(llm)
    pattern = target_regex(family, targets)
    if not any(re.fullmatch(pattern, name) for name, _ in llm.named_modules()):
        raise ConfigError(f"lora_targets {targets!r}: no module of the {type(llm).__name__} matches {pattern!r}.")
    # GPT-2's Conv1D stores weights transposed; tell peft instead of letting it warn and guess
    conv1d = getattr(getattr(llm, "config", None), "model_type", None) == "gpt2"
    config = LoraConfig(
        r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=pattern, bias="none", fan_in_fan_out=conv1d
    )
    llm = inject_adapter_in_model(config, llm)
    for name, p in llm.named_parameters():
        p.requires_grad = "lora_" in name
    return llm


def lora_parameter_names(module):
    return [n for n, _ in module.named_parameters() if "lora_" in n]
