"""``blip2``: transformers' ``Blip2ForConditionalGeneration`` (OPT or Flan-T5 LLM) behind the rslavis model interface.

BLIP-2 is InstructBLIP without the instruction in the Q-Former: a ViT encodes the image,
``num_query_tokens`` learned queries read it through the Q-Former, and their projection
fills the image placeholders of the LLM prompt (``model.prompt``, LAVIS's ``"a photo of"``,
or a sample's ``text_input``). Inputs, image-token checks, generation, SCST ``sample``,
answer ranking, freezing and persistence are InstructBLIP's (:mod:`rslavis.models.instructblip.model`);
only the Q-Former tokenizer is gone (``QFORMER_TOKENIZER = False``) and a caption's prompt prefix is stripped.

LAVIS names: ``blip2_opt`` and ``blip2_t5`` are aliases of ``blip2``; LAVIS's model types
(``pretrain_opt2.7b``, ``caption_coco_opt2.7b``, ``pretrain_flant5xl``, ...) load a local
directory in the Hugging Face layout (``model.pretrained``: ``config.json``, weights,
tokenizer files; e.g. ``Salesforce/blip2-opt-2.7b`` downloaded elsewhere). ``tiny_opt`` and
``tiny_t5`` build random tiny configs whose tokenizer is fitted on the training text.
"""

import logging

from rslavis.common.registry import registry
from rslavis.models.instructblip.model import DEFAULT_PROMPT, InstructBLIP, add_image_token, tiny_hf_config
from rslavis.models.lavis_keys import LAVIS_MODEL_KEYS

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
    HF_CLASS = "Blip2ForConditionalGeneration"
    PRETRAINED_HINT = PRETRAINED_HINT
    CHECKPOINT_KIND = "a BLIP-2 checkpoint"
    QFORMER_TOKENIZER = False  # the Q-Former reads no text

    def __init__(self, cfg, tokenizer=None, hf_config=None, **unused):
        super().__init__(cfg, tokenizer=tokenizer, hf_config=hf_config)
        prompt = self.cfg.get("prompt")
        self.prompt = str(prompt) if prompt is not None else DEFAULT_PROMPT  # "" (LAVIS's pretrain_* types) stays empty

    def tiny_config(self, tokenizer, qformer_tokenizer=None):
        return tiny_blip2_config(self.cfg, tokenizer, add_image_token(tokenizer))

    def forward(self, samples):
        from rslavis.common.prompts import strip_prompt

        # LAVIS's text processor may already have put the prompt in front of the caption: not twice
        prompts = self.instructions(samples, len(samples["text_output"]))
        targets = [strip_prompt(t, p) for t, p in zip(samples["text_output"], prompts)]
        return {"loss": self.model(**self.build_inputs(samples, targets=targets)).loss}
