"""``blip``: transformers' ``BlipForConditionalGeneration`` behind the rslavis model interface.

A ViT encodes the image; a BERT-style text decoder cross-attends to its patch embeddings
and writes ``[BOS] prompt caption [SEP]``. As in LAVIS's ``blip_caption``, the prompt
(``model.prompt``, ``"a picture of "``) is a prefix that is not trained (its labels are
-100) and generation continues after it, so captions come back without it. Per-sample
instructions (``text_input``) are not read: BLIP is not instruction-tuned (a warning says
so once when samples carry one).

Model types: ``tiny`` builds a random tiny config whose tokenizer is fitted on the
training captions; LAVIS's ``base_coco`` / ``large_coco`` load a local directory in the
Hugging Face layout (``model.pretrained``: ``config.json``, weights, tokenizer files, e.g.
``Salesforce/blip-image-captioning-base`` / ``-large`` downloaded elsewhere). LAVIS's
``blip_caption`` is an alias of this model.
"""

import logging

import torch

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.decoding import generate_kwargs
from rslavis.models.hf_model import HFModel
from rslavis.models.instructblip.parts import pad_rows
from rslavis.models.tokenization import train_caption_tokenizer, training_texts

logger = logging.getLogger(__name__)

PRETRAINED_HINT = {"base_coco": "Salesforce/blip-image-captioning-base", "large_coco": "Salesforce/blip-image-captioning-large"}
VIT_WIDTH = {"base": 768, "large": 1024}
# LAVIS blip_caption keys and how they are honoured (see BLIP.__init__ / _attach)
LAVIS_BLIP_KEYS = ("vit_type", "vit_grad_ckpt", "vit_ckpt_layer", "image_size", "med_config_path", "use_grad_checkpoint", "vit_precision", "drop_path_rate")


def tiny_blip_config(cfg, tokenizer):
    from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

    v, t = dict(cfg.get("vision") or {}), dict(cfg.get("text") or {})
    vision = BlipVisionConfig(
        hidden_size=v.get("hidden_size", 64),
        intermediate_size=v.get("intermediate_size", 128),
        num_hidden_layers=v.get("num_layers", 2),
        num_attention_heads=v.get("num_heads", 4),
        image_size=int(cfg.get("image_size") or v.get("image_size", 64)),
        patch_size=v.get("patch_size", 8),
    )
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=t.get("hidden_size", 64),
        encoder_hidden_size=vision.hidden_size,
        intermediate_size=t.get("intermediate_size", 128),
        num_hidden_layers=t.get("num_layers", 2),
        num_attention_heads=t.get("num_heads", 4),
        max_position_embeddings=t.get("max_position_embeddings", 64),
        hidden_dropout_prob=t.get("dropout", 0.1),
        attention_probs_dropout_prob=t.get("dropout", 0.1),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


@registry.register_model("blip")
class BLIP(HFModel):
    """BLIP captioner; config keys (``configs/models/blip/*.yaml``): ``pretrained``,
    ``tokenizer_path``, ``vision``/``text`` (tiny sizes), ``prompt``, ``max_txt_len``,
    ``label_smoothing`` (LAVIS: 0.1), ``freeze_vit``, ``dtype``, and LAVIS's ``vit_type``
    (checked against the checkpoint), ``vit_grad_ckpt``/``use_grad_checkpoint``
    (gradient checkpointing), ``vit_ckpt_layer`` (0 only), ``image_size``, ``vit_precision``."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/blip/tiny.yaml",
        "base_coco": "configs/models/blip/base_coco.yaml",
        "large_coco": "configs/models/blip/large_coco.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny"
    MODEL_KEYS = LAVIS_BLIP_KEYS
    HF_CLASS = "BlipForConditionalGeneration"
    PRETRAINED_HINT = PRETRAINED_HINT
    CHECKPOINT_KIND = "a BLIP captioning checkpoint"

    def __init__(self, cfg, tokenizer=None, hf_config=None):
        super().__init__(cfg)
        self.tokenizer = None
        self.prompt = str(self.cfg.get("prompt") if self.cfg.get("prompt") is not None else "a picture of ")
        self.max_txt_len = int(self.cfg.get("max_txt_len") or 40)
        self._warned_text_input = False
        if self.cfg.get("med_config_path"):
            raise ConfigError("model.med_config_path: LAVIS's BERT config file is not read; the text decoder's config comes from model.pretrained (config.json) or model.text for the tiny type. Remove the key.")
        if int(self.cfg.get("vit_ckpt_layer") or 0) != 0:
            raise ConfigError(f"model.vit_ckpt_layer: {self.cfg['vit_ckpt_layer']} is not supported: transformers checkpoints every layer; set 0 (with vit_grad_ckpt: true).")
        from rslavis.models import lavis_keys

        lavis_keys.check_static(self.cfg, "blip")
        self.build_or_load(hf_config, tokenizer=tokenizer)

    # ------------------------------------------------------------------ building
    def _build(self, tokenizer, hf_config=None):
        self._attach(self.hf_class()(hf_config or tiny_blip_config(self.cfg, tokenizer)), tokenizer)

    def fitted_tokenizers(self, datasets):
        """The tokenizer fitted on the training captions and the prompt."""
        targets, _ = training_texts(datasets, self.prompt)
        tok = train_caption_tokenizer(targets + [self.prompt], vocab_size=int(self.cfg.get("tokenizer_vocab_size", 2000)))
        logger.info("fitted the BLIP tokenizer: %d tokens", len(tok))
        return {"tokenizer": tok}

    def _attach(self, model, tokenizer):
        text = model.config.text_config
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ConfigError(f"blip: the tokenizer has {len(tokenizer)} tokens but the text decoder only {model.get_input_embeddings().num_embeddings}.")
        self.tokenizer = tokenizer
        self.bos_id, self.sep_id, self.pad_id = int(text.bos_token_id), int(text.sep_token_id), int(text.pad_token_id)
        vit_type = self.cfg.get("vit_type")
        width = int(model.config.vision_config.hidden_size)
        if vit_type is not None and self.cfg.get("pretrained") and VIT_WIDTH.get(str(vit_type)) != width:
            raise ConfigError(f"model.vit_type: {vit_type!r} but the checkpoint's ViT is {width} wide ({'large' if width == 1024 else 'base'}); fix vit_type or model.pretrained.")
        model.text_decoder.label_smoothing = float(self.cfg.get("label_smoothing", 0.1))
        if self.cfg.get("freeze_vit"):
            for p in model.vision_model.parameters():
                p.requires_grad = False
        cfg = dict(self.cfg, use_grad_checkpoint=bool(self.cfg.get("use_grad_checkpoint") or self.cfg.get("vit_grad_ckpt")))
        from rslavis.models import lavis_keys

        lavis_keys.apply(cfg, model, model.vision_model, "blip")
        self.model = model.to(self.device)

    # ------------------------------------------------------------------ inputs
    def _pixels(self, samples):
        self._require_model()
        if "image" not in samples:
            raise ConfigError("blip needs samples with 'image' (a feature cache's image_features cannot feed its ViT).")
        image = samples["image"].to(self.device)
        expected = int(self.model.config.vision_config.image_size)
        if tuple(image.shape[-2:]) != (expected, expected):
            raise ConfigError(
                f"blip: images are {tuple(image.shape[-2:])} but the ViT expects {expected}x{expected}; set the dataset's "
                f"vis_processor image_size to {expected} (or model.image_size for the tiny type)."
            )
        prompts = samples.get("text_input") or []
        if not self._warned_text_input and any(p and str(p).strip() and str(p) != self.prompt for p in prompts):
            self._warned_text_input = True
            logger.warning("blip reads no per-sample instruction (text_input); it captions after model.prompt %r, as LAVIS's blip_caption does", self.prompt)
        return image.to(self.model.dtype)

    def _ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self):
        return [self.bos_id] + self._ids(self.prompt)

    def _train_inputs(self, targets):
        from rslavis.common.prompts import strip_prompt

        prefix = self.prompt_ids()
        # LAVIS's text processor already put the prompt in front of the caption: not twice
        rows = [prefix + self._ids(strip_prompt(t, self.prompt))[: self.max_txt_len] + [self.sep_id] for t in targets]
        ids, mask = pad_rows(rows, self.pad_id, "right")
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, : len(prefix)] = -100  # the prompt is given, not learnt (LAVIS)
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    # ------------------------------------------------------------------ training / generation
    def forward(self, samples):
        pixels = self._pixels(samples)
        ids, mask, labels = self._train_inputs(list(samples["text_output"]))
        return {"loss": self.model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels).loss}

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        pixels = self._pixels(samples)
        prefix = self.prompt_ids()
        ids = torch.tensor([prefix + [self.sep_id]] * len(pixels), device=self.device)  # generate drops the last token
        settings = generate_kwargs(max_len, min_len, num_beams, repetition_penalty, length_penalty)
        out = self.model.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
        return self._decode(out[:, len(prefix) :])

    def _special_ids(self):
        return dict(eos_token_id=self.sep_id, pad_token_id=self.pad_id)

    def decoding_start(self, samples, n):
        """SCST sampling (``BaseModel.sample``) runs the text decoder with its KV cache after ``[BOS] prompt``."""
        pixels = self._pixels(samples)
        image = self.model.vision_model(pixel_values=pixels).last_hidden_state.repeat_interleave(n, 0)
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        ids = torch.tensor([self.prompt_ids()] * len(image), device=self.device)
        out = self.model.text_decoder(input_ids=ids, encoder_hidden_states=image, encoder_attention_mask=image_mask, use_cache=True)
        return out.logits[:, -1], (out.past_key_values, image, image_mask)

    def step(self, tokens, state):
        cache, image, image_mask = state
        o = self.model.text_decoder(input_ids=tokens[:, None], encoder_hidden_states=image, encoder_attention_mask=image_mask,
                                    past_key_values=cache, use_cache=True)
        return o.logits[:, -1], (o.past_key_values, image, image_mask)
