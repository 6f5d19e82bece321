"""What differs between image-text-to-text families: config classes, tiny sizes, special tokens,
processor, chat template, module names (vision tower / projector / LLM) and LoRA targets.

Everything else (prompting through the chat template, answer-masked loss, generation,
sampling, LoRA, freezing, persistence) is written once in :mod:`rslavis.models.hf_vlm.model`.

A tiny model of a family is the family's own transformers class built from a random config
of the sizes in ``model.vision`` / ``model.llm``, with a word-level tokenizer fitted on the
training text plus the family's special tokens, and a processor of the family's own class
whose chat template (written here) follows the layout of the family's released template.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from rslavis.common.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: Tuple[str, ...]  # transformers config.model_type values of local checkpoints
    special_tokens: Tuple[str, ...]  # added to a fitted tokenizer
    end_token: Optional[str]  # token closing an answer (None: the tokenizer's EOS)
    template_words: Tuple[str, ...]  # words of the tiny chat template the fitted tokenizer must know
    chat_template: Optional[str]  # tiny processor's template; None: the prompt is used as is (PaliGemma)
    vision: Tuple[str, ...]  # module paths under the HF model's ``.model``
    projector: Tuple[str, ...]
    llm: Tuple[str, ...]
    lora: Dict[str, List[str]] = field(default_factory=dict)  # role -> regexes on names inside the LLM
    position_offset: int = 0  # PaliGemma counts positions from 1
    uses_mrope: bool = False  # Qwen2-VL: 3-D positions computed by the model itself
    answer_token_type: Optional[int] = None  # value of token_type_ids on answer tokens (PaliGemma's suffix)
    build_config: Optional[Callable] = None
    build_processor: Optional[Callable] = None


LLAMA_LORA = {"attn": [r"self_attn\.(q_proj|k_proj|v_proj|o_proj)"], "ffn": [r"mlp\.(gate_proj|up_proj|down_proj)"]}

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (  # llava-1.5-hf's layout: "USER: <image>\n{text} ASSISTANT:"
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IDEFICS3_TEMPLATE = (  # SmolVLM/Idefics3's layout: "User:<image>{text}<end_of_utterance>\nAssistant:"
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _sizes(cfg, key):
    return dict(cfg.get(key) or {})


def _text_kwargs(l, tok, eos_id, **extra):
    hidden = int(l.get("hidden_size", 32))
    heads = int(l.get("num_heads", 2))
    return dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=int(l.get("intermediate_size", 2 * hidden)),
        num_hidden_layers=int(l.get("num_layers", 1)),
        num_attention_heads=heads,
        num_key_value_heads=int(l.get("num_kv_heads", heads)),
        max_position_embeddings=int(l.get("max_position_embeddings", 256)),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_id,
        **extra,
    )


def _tok_id(tok, token):
    return tok.convert_tokens_to_ids(token)


# ---------------------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL
def _qwen_config(version):
    def build(cfg, tok, eos_id):
        v, l = _sizes(cfg, "vision"), _sizes(cfg, "llm")
        hidden = int(l.get("hidden_size", 32))
        head_dim = hidden // int(l.get("num_heads", 2))
        half = head_dim // 2  # mrope splits the rotary half-dimension into temporal, height, width
        section = [half - 2 * (half // 3), half // 3, half // 3]
        text = _text_kwargs(
            l, tok, eos_id, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
        )
        vhidden = int(v.get("hidden_size", 32))
        common = dict(
            depth=int(v.get("num_layers", 1)), num_heads=int(v.get("num_heads", 2)), patch_size=int(v.get("patch_size", 8)),
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        )
        ids = dict(
            image_token_id=_tok_id(tok, "<|image_pad|>"), video_token_id=_tok_id(tok, "<|video_pad|>"),
            vision_start_token_id=_tok_id(tok, "<|vision_start|>"), vision_end_token_id=_tok_id(tok, "<|vision_end|>"),
        )
        if version == 2:
            from transformers import Qwen2VLConfig

            vision = dict(common, embed_dim=vhidden, hidden_size=hidden, mlp_ratio=2)
            return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        from transformers import Qwen2_5_VLConfig

        vision = dict(
            common, hidden_size=vhidden, intermediate_size=int(v.get("intermediate_size", 2 * vhidden)), out_hidden_size=hidden,
            window_size=int(v.get("patch_size", 8)) * 2 * 2, fullatt_block_indexes=[int(v.get("num_layers", 1)) - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)

    return build


def _qwen_processor(version):
    def build(cfg, tok):
        from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        v = _sizes(cfg, "vision")
        patch, size = int(v.get("patch_size", 8)), int(v.get("image_size", 32))
        # the dataset's image processor already resized and normalised the tensor
        image = Qwen2VLImageProcessor(
            patch_size=patch, temporal_patch_size=2, merge_size=2, min_pixels=size * size, max_pixels=size * size,
            do_rescale=False, do_normalize=False,
        )
        video = Qwen2VLVideoProcessor(patch_size=patch, temporal_patch_size=2, merge_size=2)
        if version == 2:
            from transformers import Qwen2VLProcessor as P
        else:
            from transformers import Qwen2_5_VLProcessor as P
        return P(image_processor=image, tokenizer=tok, video_processor=video, chat_template=QWEN_TEMPLATE)

    return build


# ---------------------------------------------------------------------------- LLaVA
def _vision_kwargs(v):
    """ViT sizes of a tiny vision tower (CLIP / SigLIP-style configs) from the ``vision`` section."""
    vh = int(v.get("hidden_size", 32))
    return dict(
        hidden_size=vh, intermediate_size=int(v.get("intermediate_size", 2 * vh)), num_hidden_layers=int(v.get("num_layers", 1)),
        num_attention_heads=int(v.get("num_heads", 2)), image_size=int(v.get("image_size", 32)), patch_size=int(v.get("patch_size", 8)),
    )


def _llava_config(cfg, tok, eos_id):
    from transformers import CLIPVisionConfig, LlavaConfig

    v, l = _sizes(cfg, "vision"), _sizes(cfg, "llm")
    vision = _vision_kwargs(v)
    vision = CLIPVisionConfig(**vision, projection_dim=vision["hidden_size"])
    size, patch = int(v.get("image_size", 32)), int(v.get("patch_size", 8))
    return LlavaConfig(
        vision_config=vision.to_dict(), text_config=dict(_text_kwargs(l, tok, eos_id), model_type="llama"),
        image_token_index=_tok_id(tok, "<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_seq_length=(size // patch) ** 2,
    )


def _llava_processor(cfg, tok):
    from transformers import CLIPImageProcessor, LlavaProcessor

    v = _sizes(cfg, "vision")
    size = int(v.get("image_size", 32))
    image = CLIPImageProcessor(
        size={"height": size, "width": size}, crop_size={"height": size, "width": size}, do_center_crop=False,
        do_rescale=False, do_normalize=False, do_convert_rgb=False,
    )
    return LlavaProcessor(
        image_processor=image, tokenizer=tok, patch_size=int(v.get("patch_size", 8)), vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE, image_token="<image>", num_additional_image_tokens=1,
    )


# ---------------------------------------------------------------------------- Idefics3 / SmolVLM
def _idefics3_config(cfg, tok, eos_id):
    from transformers import Idefics3Config

    v, l = _sizes(cfg, "vision"), _sizes(cfg, "llm")
    vision = _vision_kwargs(v)
    text = dict(_text_kwargs(l, tok, eos_id), model_type="llama")
    return Idefics3Config(vision_config=vision, text_config=text, image_token_id=_tok_id(tok, "<image>"), scale_factor=2, pad_token_id=tok.pad_token_id)


def _idefics3_processor(cfg, tok):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    v = _sizes(cfg, "vision")
    size, patch = int(v.get("image_size", 32)), int(v.get("patch_size", 8))
    image = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": size}, max_image_size={"longest_edge": size},
        do_rescale=False, do_normalize=False, do_convert_rgb=False,
    )
    return Idefics3Processor(image_processor=image, tokenizer=tok, image_seq_len=(size // patch) ** 2 // 4, chat_template=IDEFICS3_TEMPLATE)


# ---------------------------------------------------------------------------- PaliGemma
def _paligemma_config(cfg, tok, eos_id):
    from transformers import PaliGemmaConfig, SiglipVisionConfig

    v, l = _sizes(cfg, "vision"), _sizes(cfg, "llm")
    vh = int(v.get("hidden_size", 32))
    hidden = int(l.get("hidden_size", 32))
    vision = SiglipVisionConfig(
        hidden_size=vh, intermediate_size=int(v.get("intermediate_size", 2 * vh)), num_hidden_layers=int(v.get("num_layers", 1)),
        num_attention_heads=int(v.get("num_heads", 2)), image_size=int(v.get("image_size", 32)), patch_size=int(v.get("patch_size", 8)),
        projection_dim=hidden,
    )
    text = dict(_text_kwargs(l, tok, eos_id), model_type="gemma", head_dim=hidden // int(l.get("num_heads", 2)))
    return PaliGemmaConfig(
        vision_config=vision.to_dict(), text_config=text, image_token_index=_tok_id(tok, "<image>"), projection_dim=hidden,
        hidden_size=hidden, vocab_size=len(tok),
    )


def _paligemma_processor(cfg, tok):
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    v = _sizes(cfg, "vision")
    size, patch = int(v.get("image_size", 32)), int(v.get("patch_size", 8))
    image = SiglipImageProcessor(size={"height": size, "width": size}, do_rescale=False, do_normalize=False, do_convert_rgb=False)
    image.image_seq_length = (size // patch) ** 2
    return PaliGemmaProcessor(image_processor=image, tokenizer=tok)


FAMILIES = {
    "qwen2_vl": Family(
        "qwen2_vl", ("qwen2_vl",), ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        "<|im_end|>", ("user", "assistant"), QWEN_TEMPLATE, ("visual",), ("visual.merger",), ("language_model",), LLAMA_LORA,
        uses_mrope=True, build_config=_qwen_config(2), build_processor=_qwen_processor(2),
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl", ("qwen2_5_vl",), ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        "<|im_end|>", ("user", "assistant"), QWEN_TEMPLATE, ("visual",), ("visual.merger",), ("language_model",), LLAMA_LORA,
        uses_mrope=True, build_config=_qwen_config(2.5), build_processor=_qwen_processor(2.5),
    ),
    "llava": Family(
        "llava", ("llava",), ("<image>",), None, ("user", "assistant", ":"), LLAVA_TEMPLATE,
        ("vision_tower",), ("multi_modal_projector",), ("language_model",), LLAMA_LORA,
        build_config=_llava_config, build_processor=_llava_processor,
    ),
    "idefics3": Family(
        "idefics3", ("idefics3", "smolvlm"), ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        "<end_of_utterance>", ("user", "assistant", ":"), IDEFICS3_TEMPLATE, ("vision_model",), ("connector",), ("text_model",),
        LLAMA_LORA, build_config=_idefics3_config, build_processor=_idefics3_processor,
    ),
    "paligemma": Family(
        "paligemma", ("paligemma",), ("<image>",), None, (), None, ("vision_tower",), ("multi_modal_projector",), ("language_model",),
        LLAMA_LORA, position_offset=1, answer_token_type=1, build_config=_paligemma_config, build_processor=_paligemma_processor,
    ),
}
ALIASES = {"smolvlm": "idefics3", "qwen2.5_vl": "qwen2_5_vl", "qwen2.5-vl": "qwen2_5_vl", "qwen2-vl": "qwen2_vl"}


def get_family(name, option="model.family"):
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in FAMILIES:
        raise ConfigError(f"{option}: {name!r} is not a known hf_vlm family; valid: {', '.join(FAMILIES)} (smolvlm is idefics3).")
    return FAMILIES[key]


def family_of_model_type(model_type, source):
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise ConfigError(f"{source}: config.json model_type {model_type!r} is not supported by hf_vlm; supported: {known} (or set model.family).")


# ---------------------------------------------------------------------------- local files
def _read_model_type(path, option):
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{option}: {path} has no config.json (a local Hugging Face model directory is expected).")
    try:
        return json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option}: {cfg_file} is not valid JSON ({exc}).") from None


def fitted_tokenizer(texts, family, vocab_size=2000):
    """Word-level tokenizer on ``texts`` plus the family's special tokens (added, never split)."""
    from tokenizers import AddedToken

    from rslavis.models.tokenization import train_caption_tokenizer

    tok = train_caption_tokenizer(list(texts) + list(family.template_words), vocab_size=vocab_size)
    tok.add_tokens([AddedToken(t, normalized=False, special=True) for t in family.special_tokens], special_tokens=True)
    return tok


def load_processor(directory, option):
    p = Path(str(directory)).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{option}: processor directory not found: {p} (written by save_pretrained of a processor).")
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(p), local_files_only=True)
