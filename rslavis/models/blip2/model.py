"""``blip2``: transformers' ``Blip2ForConditionalGeneration`` (OPT or Flan-T5 LLM) behind the rslavis model interface.

BLIP-2 is InstructBLIP without the instruction in the Q-Former: a ViT encodes the image,
``num_query_tokens`` learned queries read it through the Q-Former, and their projection
fills the image placeholders of the LLM prompt (``model.prompt``, LAVIS's ``"a photo of"``,
or a sample's ``text_input``). Inputs, image-token checks, generation, SCST ``sample``,
answer ranking and freezing are InstructBLIP's (:mod:`rslavis.models.instructblip.model`);
only the Q-Former tokenizer is gone.

LAVIS names: ``blip2_opt`` and ``blip2_t5`` are aliases of ``blip2``; LAVIS's model types
(``pretrain_opt2.7b``, ``caption_coco_opt2.7b``, ``pretrain_flant5xl``, ...) load a local
directory in the Hugging Face layout (``model.pretrained``: ``config.json``, weights,
tokenizer files; e.g. ``Salesforce/blip2-opt-2.7b`` downloaded elsewhere). ``tiny_opt`` and
``tiny_t5`` build random tiny configs whose tokenizer is fitted on the training text.
"""

import json
import logging
import os
from pathlib import Path

import torch

from rslavis.common.config import to_plain
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.base_model import BaseModel, local_pretrained_dir, model_dtype
from rslavis.models.instructblip.model import DEFAULT_PROMPT, TINY_LLM, InstructBLIP, add_image_token, dataset_texts, tiny_hf_config
from rslavis.models.lavis_keys import LAVIS_MODEL_KEYS
from rslavis.models.tokenization import load_tokenizer, train_caption_tokenizer

logger = logging.getLogger(__name__)

PRETRAINED_HINT = {
    "pretrain_opt2.7b": "Salesforce/blip2-opt-2.7b",
    "caption_coco_opt2.7b": "Salesforce/blip2-opt-2.7b-coco",
    "pretrain_opt6.7b": "Salesforce/blip2-opt-6.7b",
    "caption_coco_opt6.7b": "Salesforce/blip2-opt-6.7b-coco",
    "pretrain_flant5xl": "Salesforce/blip2-flan-t5-xl",
    "caption_coco_flant5xl": "Salesforce/blip2-flan-t5-xl-coco",
    "pretrain_flant5xxl": "Salesforce/blip2-flan-t5-xxl",
}


def tiny_blip2_config(cfg, tokenizer, image_token_id):
    """A ``Blip2Config`` with the sizes of the ``vision``/``qformer``/``llm`` sections (as InstructBLIP's tiny types)."""
    from transformers import Blip2Config

    ib = tiny_hf_config(cfg, tokenizer, tokenizer, image_token_id)
    parts = {}
    for key in ("vision_config", "qformer_config"):
        d = getattr(ib, key).to_dict()
        d.pop("model_type", None)
        parts[key] = d
    return Blip2Config(
        vision_config=parts["vision_config"],
        qformer_config=parts["qformer_config"],
        text_config=ib.text_config.to_dict(),
        num_query_tokens=ib.num_query_tokens,
        image_token_index=image_token_id,
    )


@registry.register_model("blip2")
class Blip2(InstructBLIP):
    """BLIP-2; config keys: those of ``instructblip`` without ``qformer_max_len`` (the
    Q-Former reads no text), plus LAVIS's (:mod:`rslavis.models.lavis_keys`)."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny_opt": "configs/models/blip2/tiny_opt.yaml",
        "tiny_t5": "configs/models/blip2/tiny_t5.yaml",
        **{t: f"configs/models/blip2/{t}.yaml" for t in PRETRAINED_HINT},
    }
    DEFAULT_MODEL_TYPE = "tiny_opt"
    KEY_ALIASES = {"num_query_token": "num_query_tokens"}
    MODEL_KEYS = LAVIS_MODEL_KEYS
    ARCH = "blip2"

    def __init__(self, cfg, tokenizer=None, hf_config=None, **unused):
        BaseModel.__init__(self)
        self.cfg = dict(to_plain(cfg) or {})
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self.model = None
        self.tokenizer = None
        self.qformer_tokenizer = None
        prompt = self.cfg.get("prompt")
        self.prompt = str(prompt) if prompt is not None else DEFAULT_PROMPT  # "" (LAVIS's pretrain_* types) stays empty
        self.max_txt_len = int(self.cfg.get("max_txt_len", 64))
        self.max_output_txt_len = int(self.cfg.get("max_output_txt_len", 40))
        from rslavis.models import lavis_keys

        lavis_keys.check_static(self.cfg, self.ARCH)
        model_type = self.cfg.get("model_type") or self.DEFAULT_MODEL_TYPE
        if tokenizer is None and self.cfg.get("tokenizer_path"):
            tokenizer = load_tokenizer(self.cfg["tokenizer_path"], "model.tokenizer_path")
        pretrained = self.cfg.get("pretrained")
        if pretrained and hf_config is None:
            self._load_pretrained_blip2(pretrained, model_type, tokenizer)
        elif tokenizer is not None:
            self._build_blip2(tokenizer, hf_config)
        elif model_type not in TINY_LLM:
            hint = PRETRAINED_HINT.get(model_type, "a BLIP-2 checkpoint")
            raise ConfigError(f"model.pretrained is not set for model_type {model_type!r}: give a local directory holding {hint} (Hugging Face layout; nothing is downloaded).")

    # ------------------------------------------------------------------ building
    def _load_pretrained_blip2(self, pretrained, model_type, tokenizer):
        hint = PRETRAINED_HINT.get(model_type, "a BLIP-2 checkpoint")
        p = local_pretrained_dir(pretrained, hint)
        from transformers import Blip2ForConditionalGeneration

        if tokenizer is None:
            tokenizer = load_tokenizer(p, option="model.pretrained")
        dtype = model_dtype(self.cfg)
        self._attach(Blip2ForConditionalGeneration.from_pretrained(str(p), local_files_only=True, dtype=dtype), tokenizer, None)

    def _build_blip2(self, tokenizer, hf_config=None):
        from transformers import Blip2ForConditionalGeneration

        if hf_config is None:
            hf_config = tiny_blip2_config(self.cfg, tokenizer, add_image_token(tokenizer))
        self._attach(Blip2ForConditionalGeneration(hf_config), tokenizer, None)

    def prepare_for_training(self, datasets, output_dir):
        """Tiny types: fit the LLM tokenizer on the training text, build the model, save the tokenizer."""
        if self.model is not None:
            return
        targets, instructions = dataset_texts(datasets)
        if not targets:
            raise ConfigError("model.tokenizer_path is not set and no training texts were found to fit the tokenizer on.")
        texts = targets + sorted(set(instructions) | {self.prompt})
        tok = train_caption_tokenizer(texts, vocab_size=int(self.cfg.get("tokenizer_vocab_size", 2000)))
        self._build_blip2(tok)
        if output_dir is not None:
            from rslavis.common.dist_utils import is_main_process

            if is_main_process():
                self.save_tokenizers(Path(output_dir) / "tokenizer")
        logger.info("fitted the LLM tokenizer: %d tokens (%d texts)", len(tok), len(texts))

    def save_tokenizers(self, directory):
        self.tokenizer.save_pretrained(str(directory))

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, samples, targets=None, padding_side="right"):
        """Keyword arguments of ``self.model(...)``/``self.model.generate(...)``: no Q-Former text."""
        self._require_model()
        pixels = self._pixels(samples)
        prompts = self.instructions(samples, len(pixels))
        llm = self.llm_inputs(prompts, targets, padding_side)
        self.check_image_tokens(llm["input_ids"])
        return {"pixel_values": pixels, **llm}

    def forward(self, samples):
        from rslavis.common.prompts import strip_prompt

        # LAVIS's text processor may already have put the prompt in front of the caption: not twice
        prompts = self.instructions(samples, len(samples["text_output"]))
        targets = [strip_prompt(t, p) for t, p in zip(samples["text_output"], prompts)]
        return {"loss": self.model(**self.build_inputs(samples, targets=targets)).loss}

    def image_features(self, inputs):
        """Projected Q-Former outputs ``(B, num_query_tokens, D_llm)``: what fills the image tokens."""
        return self.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory):
        """``config.json`` (rslavis config), ``hf_config.json``, ``model.safetensors``, ``tokenizer/``."""
        from safetensors.torch import save_model

        from rslavis.common.checkpoint import atomic_write_json

        self._require_model()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.cfg, tokenizer_path=None, pretrained=None)
        atomic_write_json({"arch": self.ARCH, **cfg}, d / "config.json", indent=2)
        (d / "hf_config.json").write_text(self.model.config.to_json_string())
        self.save_tokenizers(d / "tokenizer")
        tmp = d / ".model.safetensors.tmp"
        save_model(self, str(tmp))
        os.replace(tmp, d / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory):
        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "hf_config.json").is_file():
            raise ConfigError(f"{d}: not a saved {cls.ARCH} model (config.json/hf_config.json missing); write one with save_pretrained.")
        from safetensors.torch import load_model
        from transformers import Blip2Config

        cfg = json.loads((d / "config.json").read_text())
        cfg.pop("arch", None)
        tok = load_tokenizer(d / "tokenizer", option=str(d / "tokenizer"))
        model = cls(cfg, tokenizer=tok, hf_config=Blip2Config.from_json_file(str(d / "hf_config.json")))
        load_model(model, str(d / "model.safetensors"))
        return model
