"""``instructblip``: transformers' ``InstructBlipForConditionalGeneration`` behind the rslavis model interface.

A ViT encodes the image, the Q-Former reads the image *and* the instruction
(``text_input``) through ``num_query_tokens`` learned queries, and their projection
fills the image placeholders of the LLM prompt. The LLM is a T5 encoder-decoder
(the instruction goes to the encoder, the target is decoded) or a decoder-only model
(OPT, Vicuna/LLaMA: ``[image]*Q [BOS] instruction target [EOS]``).

The pitfall this class guards: transformers writes the query outputs into the
embeddings of the image token (``config.image_token_index``) with ``masked_scatter``.
A prompt without those tokens leaves the image out *silently*, and a prompt with too
few uses only part of it. Every LLM input built here carries exactly
``num_query_tokens`` image tokens, and :meth:`check_image_tokens` verifies it before
each forward or generation.

Model types: ``tiny_t5`` and ``tiny_opt`` build random tiny configs whose tokenizers
are fitted on the training text in :meth:`prepare_for_training` (LLM tokenizer on
instructions and targets, Q-Former tokenizer on instructions) and saved with the run;
``flant5xl`` and ``vicuna7b`` load a local InstructBLIP directory (``model.pretrained``,
the Hugging Face layout: ``config.json``, weights, LLM tokenizer files and
``qformer_tokenizer/``). Nothing is downloaded.

Sample keys: ``image``, ``text_input`` (instruction; ``model.prompt`` when empty),
``text_output`` (target, training).
"""

import logging

import torch
from torch.nn import functional as F

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.models.lavis_keys import LAVIS_MODEL_KEYS
from rslavis.models.decoding import generate_kwargs
from rslavis.models.hf_model import HFModel
from rslavis.models.instructblip.parts import (  # noqa: F401  (re-exported for callers of the first version)
    DEFAULT_PROMPT,
    IMAGE_TOKEN,
    PRETRAINED_HINT,
    QFORMER_TOKENIZER_DIR,
    TINY_LLM,
    InstructBlipBase,
    add_image_token,
    dataset_texts,
    load_tokenizers,
    pad_rows,
    save_tokenizer_pair,
    tiny_hf_config,
)

logger = logging.getLogger(__name__)


@registry.register_model("instructblip")
class InstructBLIP(InstructBlipBase, HFModel):
    """InstructBLIP; config keys (see ``configs/models/instructblip/*.yaml``):

    ``pretrained`` (local InstructBLIP directory), ``tokenizer_path`` (LLM tokenizer with a
    ``qformer_tokenizer/`` subfolder), ``vision``/``qformer``/``llm`` (tiny sizes),
    ``num_query_tokens``, ``freeze_vit``, ``freeze_qformer``, ``freeze_projection``,
    ``freeze_llm``, ``lora_r`` (0: off), ``lora_alpha``, ``lora_dropout``, ``lora_targets``
    (attn | ffn | all | list of module names), ``prompt`` (instruction used when a sample
    has none), ``max_txt_len`` (instruction tokens), ``max_output_txt_len`` (target
    tokens), ``qformer_max_len``, ``dtype`` (float32 | bfloat16 | float16, pretrained only).
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny_t5": "configs/models/instructblip/tiny_t5.yaml",
        "tiny_opt": "configs/models/instructblip/tiny_opt.yaml",
        "flant5xl": "configs/models/instructblip/flant5xl.yaml",
        "vicuna7b": "configs/models/instructblip/vicuna7b.yaml",
        "flant5xxl": "configs/models/instructblip/flant5xxl.yaml",
        "vicuna13b": "configs/models/instructblip/vicuna13b.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny_opt"
    KEY_ALIASES = {"num_query_token": "num_query_tokens"}  # LAVIS's spelling
    MODEL_KEYS = LAVIS_MODEL_KEYS
    ARCH = "instructblip"
    HF_CLASS = "InstructBlipForConditionalGeneration"
    TINY_TYPES = tuple(TINY_LLM)
    PRETRAINED_HINT = PRETRAINED_HINT
    CHECKPOINT_KIND = "an InstructBLIP checkpoint"

    def __init__(self, cfg, tokenizer=None, qformer_tokenizer=None, hf_config=None):
        super().__init__(cfg)
        from rslavis.models import lavis_keys

        lavis_keys.check_static(self.cfg, self.ARCH)
        self.build_or_load(hf_config, tokenizer=tokenizer, qformer_tokenizer=qformer_tokenizer)

    @property
    def is_encoder_decoder(self):
        return not self.model.config.use_decoder_only_language_model

    @property
    def instructblip_config(self):
        return self.model.config

    @property
    def vision_model(self):
        return self.model.vision_model

    # ------------------------------------------------------------------ building
    def tiny_config(self, tokenizer, qformer_tokenizer):
        return tiny_hf_config(self.cfg, tokenizer, qformer_tokenizer, add_image_token(tokenizer))

    def _build(self, tokenizer, qformer_tokenizer=None, hf_config=None):
        if qformer_tokenizer is None and self.QFORMER_TOKENIZER:
            raise ConfigError("instructblip needs a Q-Former tokenizer too (tokenizer_path/qformer_tokenizer).")
        config = hf_config if hf_config is not None else self.tiny_config(tokenizer, qformer_tokenizer)
        self._attach(self.hf_class()(config), tokenizer, qformer_tokenizer)

    def fitted_tokenizers(self, datasets):
        tok, qtok = self.fit_tokenizers(datasets)
        return {"tokenizer": tok, "qformer_tokenizer": qtok}

    def _attach(self, model, tokenizer, qformer_tokenizer=None):
        """Image token, vocabulary size, LoRA and freezing on a built transformers model."""
        config = model.config
        if config.image_token_index is None:  # checkpoints saved before transformers used an image token
            config.image_token_index = add_image_token(tokenizer)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.image_token_id = int(config.image_token_index)
        self.tokenizer, self.qformer_tokenizer = tokenizer, qformer_tokenizer
        # generation must know the special tokens (a random config has no generation_config of its own)
        for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
            setattr(model.generation_config, key, getattr(tokenizer, key))
        if not config.use_decoder_only_language_model:
            model.generation_config.decoder_start_token_id = config.text_config.decoder_start_token_id

        r = int(self.cfg.get("lora_r") or 0)
        if r > 0:
            from rslavis.models.lora import apply_lora

            apply_lora(
                model.language_model,
                r=r,
                alpha=self.cfg.get("lora_alpha", 16),
                dropout=self.cfg.get("lora_dropout", 0.05),
                targets=self.cfg.get("lora_targets") or "attn",
            )
        groups = {
            "freeze_vit": [model.vision_model],
            "freeze_qformer": [model.qformer],
            "freeze_projection": [model.language_projection],
            "freeze_llm": [model.language_model],
        }
        for key, modules in groups.items():
            if self.cfg.get(key, False):
                for m in modules:
                    for name, p in m.named_parameters():
                        if "lora_" not in name:  # LoRA adapters stay trainable in a frozen LLM
                            p.requires_grad = False
        if self.cfg.get("freeze_qformer", False):
            model.query_tokens.requires_grad = False
        want = self.cfg.get("num_query_tokens")
        if want is not None and int(want) != int(config.num_query_tokens):
            raise ConfigError(f"model.num_query_tokens: {want} but the checkpoint has {config.num_query_tokens} Q-Former queries; set it to {config.num_query_tokens}.")
        from rslavis.models import lavis_keys

        lavis_keys.apply(self.cfg, model, model.vision_model, self.ARCH, encoder_decoder=not config.use_decoder_only_language_model)
        self.model = model.to(self.device)

    def base_weight_sources(self):
        p = self.cfg.get("pretrained")
        return {"model.": str(p)} if p else {}

    # ------------------------------------------------------------------ inputs
    def llm_inputs(self, prompts, targets=None, padding_side="right"):
        """LLM ids with exactly ``num_query_tokens`` image tokens first.

        Decoder-only: ``[image]*Q [BOS] prompt (target [EOS])``, labels on the target only.
        T5: encoder ``[image]*Q prompt [EOS]``; labels ``target [EOS]`` (decoder side).
        Returns ``{input_ids, attention_mask[, labels]}`` (T5 labels padded with -100).
        """
        tok = self.tokenizer
        image = [self.image_token_id] * self.num_query_tokens
        eos, pad = tok.eos_token_id, tok.pad_token_id
        rows, labels, dec = [], [], []
        for i, prompt in enumerate(prompts):
            p_ids = self._ids(prompt, self.max_txt_len)
            t_ids = self._ids(targets[i], self.max_output_txt_len) + [eos] if targets is not None else None
            if self.is_encoder_decoder:
                rows.append(image + p_ids + [eos])
                if t_ids is not None:
                    dec.append(t_ids)
            else:
                bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
                prefix = image + bos + p_ids
                rows.append(prefix + (t_ids or []))
                if t_ids is not None:
                    labels.append([-100] * len(prefix) + t_ids)
        out = dict(zip(("input_ids", "attention_mask"), pad_rows(rows, pad, padding_side)))
        if targets is not None:
            if self.is_encoder_decoder:
                out["labels"] = pad_rows(dec, -100, "right")[0]
            else:
                out["labels"] = pad_rows(labels, -100, padding_side)[0]
        return {k: v.to(self.device) for k, v in out.items()}

    def check_image_tokens(self, input_ids):
        """Every row must carry exactly ``num_query_tokens`` image tokens, or the image would be (partly) ignored."""
        counts = (input_ids == self.image_token_id).sum(1)
        bad = (counts != self.num_query_tokens).nonzero().flatten().tolist()
        if bad:
            raise RslavisError(
                f"{self.ARCH}: LLM input row {bad[0]} has {int(counts[bad[0]])} image tokens, expected num_query_tokens="
                f"{self.num_query_tokens}; transformers would silently drop the image. Does an instruction contain {IMAGE_TOKEN!r}?"
            )

    def build_inputs(self, samples, targets=None, padding_side="right"):
        """Keyword arguments of ``self.model(...)``/``self.model.generate(...)`` for ``samples``."""
        self._require_model()
        pixels = self._pixels(samples)
        prompts = self.instructions(samples, len(pixels))
        llm = self.llm_inputs(prompts, targets, padding_side)
        self.check_image_tokens(llm["input_ids"])
        if not self.QFORMER_TOKENIZER:  # BLIP-2: the Q-Former reads the image only
            return {"pixel_values": pixels, **llm}
        q_ids, q_mask = self.qformer_inputs(prompts)
        return {"pixel_values": pixels, "qformer_input_ids": q_ids, "qformer_attention_mask": q_mask, **llm}

    # ------------------------------------------------------------------ training / generation
    def forward(self, samples):
        inputs = self.build_inputs(samples, targets=list(samples["text_output"]))
        out = self.model(**inputs)
        return {"loss": out.loss}

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        """Greedy or beam-search answers/captions to the ``text_input`` instructions."""
        inputs = self.build_inputs(samples, padding_side="left")
        width = inputs["input_ids"].shape[1]
        settings = generate_kwargs(max_len, min_len, num_beams, repetition_penalty, length_penalty)
        out = self.model.generate(**inputs, **settings, **self._special_ids())
        # decoder-only models return the prompt first; T5 returns decoder ids only
        return self._decode(out if self.is_encoder_decoder else out[:, width:])

    def image_features(self, inputs):
        """Projected Q-Former outputs ``(B, num_query_tokens, D_llm)``: what fills the image tokens."""
        qformer = {k: inputs[k] for k in ("qformer_input_ids", "qformer_attention_mask") if k in inputs}
        return self.model.get_image_features(pixel_values=inputs["pixel_values"], **qformer, return_dict=True).pooler_output

    def _embed(self, input_ids, features):
        """LLM input embeddings with the image tokens replaced by ``features`` (as transformers does)."""
        embeds = self.model.get_input_embeddings()(input_ids)
        mask = (input_ids == self.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def _lm_logits(self, features, input_ids, attention_mask, targets):
        """Teacher-forced logits predicting ``targets`` (B, T) after the prompt ``input_ids``."""
        lm = self.model.language_model
        embeds = self._embed(input_ids, features)
        if self.is_encoder_decoder:
            start = torch.full_like(targets[:, :1], self.model.config.text_config.decoder_start_token_id)
            dec_in = torch.cat([start, targets[:, :-1]], 1)
            return lm(inputs_embeds=embeds, attention_mask=attention_mask, decoder_input_ids=dec_in).logits
        width = input_ids.shape[1]
        tgt_mask = torch.ones_like(targets)
        full_mask = torch.cat([attention_mask, tgt_mask], 1)
        full = torch.cat([embeds, self.model.get_input_embeddings()(targets)], 1)
        out = lm(inputs_embeds=full, attention_mask=full_mask, position_ids=self._position_ids(full_mask))
        return out.logits[:, width - 1 : width - 1 + targets.shape[1]]

    def decoding_start(self, samples, n):
        """SCST sampling (``BaseModel.sample``) runs the LLM token by token with its KV cache;
        gradients reach ``logprobs``/``logits`` through the LLM, the projection and the
        Q-Former; dropout follows the module's train/eval mode."""
        inputs = self.build_inputs(samples, padding_side="left")
        features = self.image_features(inputs).repeat_interleave(n, 0)
        ids = inputs["input_ids"].repeat_interleave(n, 0)
        attn = inputs["attention_mask"].repeat_interleave(n, 0)
        embeds = self._embed(ids, features)
        lm = self.model.language_model
        if self.is_encoder_decoder:
            encoded = lm.get_encoder()(inputs_embeds=embeds, attention_mask=attn, return_dict=True)
            start = ids.new_full((len(ids), 1), self.model.config.text_config.decoder_start_token_id)
            out = lm(encoder_outputs=encoded, attention_mask=attn, decoder_input_ids=start, use_cache=True)
            return out.logits[:, -1], (encoded, attn, out.past_key_values)
        pos = self._position_ids(attn)  # left padding: positions count attended tokens, as generate() does
        out = lm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=True)
        return out.logits[:, -1], (attn, pos[:, -1:], out.past_key_values)

    def step(self, tokens, state):
        lm = self.model.language_model
        if self.is_encoder_decoder:
            encoded, attn, cache = state
            o = lm(encoder_outputs=encoded, attention_mask=attn, decoder_input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
            return o.logits[:, -1], (encoded, attn, o.past_key_values)
        mask, last_pos, cache = state
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
        last_pos = last_pos + 1
        o = lm(input_ids=tokens[:, None], attention_mask=mask, position_ids=last_pos, past_key_values=cache, use_cache=True)
        return o.logits[:, -1], (mask, last_pos, o.past_key_values)

    def answer_context(self, samples):
        inputs = self.build_inputs(samples, padding_side="left")
        features = self.image_features(inputs)
        return (inputs, features), features.shape[0]

    def candidate_logprobs(self, context, targets, target_mask, c):
        inputs, features = context
        rep = lambda t: t.repeat_interleave(c, 0)  # noqa: E731  (row b*c + j: sample b, candidate j)
        logits = self._lm_logits(rep(features), rep(inputs["input_ids"]), rep(inputs["attention_mask"]), targets)
        return F.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
