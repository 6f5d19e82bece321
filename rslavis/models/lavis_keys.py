"""LAVIS's model-section keys, honoured on the transformers models behind the BLIP family.

A LAVIS project or model YAML sets these; each is either applied or refused with one line:

* ``use_grad_checkpoint``: transformers' ``gradient_checkpointing_enable`` (LAVIS checkpoints
  only the ViT; transformers checkpoints every sub-model that supports it);
* ``vit_precision``: ``fp32`` | ``fp16`` | ``bf16``: the ViT's weights in that dtype, its
  input cast to it and its output cast back to the Q-Former's dtype (LAVIS keeps EVA-CLIP in fp16);
* ``image_size``: the ViT's input size; a tiny type builds with it, a checkpoint must match it;
* ``drop_path_rate``: transformers' ViTs have no stochastic depth: only 0 is accepted;
* ``t5_model`` / ``opt_model`` / ``llm_model``: the LLM the checkpoint must hold (its family is
  checked; the weights come from ``pretrained``, nothing is downloaded);
* ``qformer_text_input`` (InstructBLIP): only true, as transformers' InstructBLIP always reads it.
"""

import torch

from rslavis.common.errors import ConfigError

LAVIS_MODEL_KEYS = ("use_grad_checkpoint", "vit_precision", "image_size", "drop_path_rate", "t5_model", "opt_model", "llm_model", "qformer_text_input")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_static(cfg, arch):
    """Refusals that need no model: unsupported values of LAVIS keys."""
    rate = cfg.get("drop_path_rate")
    if rate not in (None, 0, 0.0):
        raise ConfigError(f"model.drop_path_rate: {rate!r} is not supported by {arch} (transformers' ViT has no stochastic depth); set it to 0.")
    if cfg.get("qformer_text_input") is False:
        raise ConfigError(f"model.qformer_text_input: false is not supported by {arch} (transformers' InstructBLIP always feeds the instruction to the Q-Former); use blip2 for a Q-Former without text.")
    precision = cfg.get("vit_precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"model.vit_precision: {precision!r} is unknown; valid: {', '.join(PRECISIONS)}.")


def _cast_output(output, dtype):
    for key in ("last_hidden_state", "pooler_output"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            output[key] = value.to(dtype)
    return output


def set_vit_precision(vision, precision, outer_dtype):
    """Weights of ``vision`` in ``precision``; inputs cast in, outputs cast back to ``outer_dtype``."""
    dtype = PRECISIONS[str(precision)]
    if dtype == outer_dtype:
        return
    vision.to(dtype)

    def cast_in(module, args, kwargs):
        args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        if isinstance(kwargs.get("pixel_values"), torch.Tensor):
            kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype)
        return args, kwargs

    vision.register_forward_pre_hook(cast_in, with_kwargs=True)
    vision.register_forward_hook(lambda module, args, output: _cast_output(output, outer_dtype))


def apply(cfg, model, vision, arch, encoder_decoder=None):
    """Apply the LAVIS keys of ``cfg`` to the built transformers ``model`` (``vision``: its ViT)."""
    check_static(cfg, arch)
    size = cfg.get("image_size")
    built = int(model.config.vision_config.image_size)
    if size is not None and int(size) != built:
        raise ConfigError(f"model.image_size: {size} but the {arch} ViT takes {built}x{built} images; set model.image_size to {built} (and the vis_processor image_size).")
    want = {"t5_model": True, "opt_model": False, "llm_model": False}
    for key, is_enc_dec in want.items():
        if cfg.get(key) and encoder_decoder is not None and encoder_decoder != is_enc_dec:
            kind = "an encoder-decoder (T5)" if encoder_decoder else "a decoder-only"
            raise ConfigError(f"model.{key}: {cfg[key]!r} names a {'T5' if is_enc_dec else 'decoder-only'} LLM, but this {arch} model has {kind} LLM; remove model.{key} or pick a matching model_type.")
    if cfg.get("use_grad_checkpoint"):
        # transformers' gradient checkpointing (renamed activation_checkpointing_enable in v5)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision = cfg.get("vit_precision")
    if precision is not None:
        set_vit_precision(vision, precision, next(model.language_model.parameters()).dtype if hasattr(model, "language_model") else torch.float32)
