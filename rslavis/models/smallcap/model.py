"""``smallcap``: a vision encoder and a GPT-2 decoder that reads it through cross-attention.

The first, plain form of SmallCap (retrieval prompts and the causal block come with
``smallcap_causal``). The encoder is any of :mod:`rslavis.models.encoders` (a
transformers ViT/CLIP or an open_clip model, tiny random or from local weights); the decoder is GPT-2 with
``add_cross_attention``. Sample keys: ``image``, ``text_input`` (prompt, not
supervised), ``text_output`` (target caption).
"""

import logging

import torch
from torch import nn

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.base_model import BaseModel
from rslavis.models.decoding import generate_kwargs
from rslavis.models.encoders import local_path, build_vision_encoder, freeze
from rslavis.models.tokenization import dataset_texts, fit_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)



DECODERS = ("gpt2", "xglm")
# parameter-name fragments of each decoder family's cross-attention (and its layer norm)
CROSS_ATTENTION_NAMES = ("crossattention", "ln_cross_attn", "encoder_attn")


def decoder_width(config):
    """Hidden size of a GPT-2 (``n_embd``) or XGLM (``d_model``) decoder config."""
    return getattr(config, "n_embd", None) or config.d_model


def cross_attention_layers(decoder):
    """``[(layer, attribute name)]`` of the decoder's cross-attention modules."""
    base = decoder.base_model
    if hasattr(base, "h"):  # GPT-2
        return [(block, "crossattention") for block in base.h]
    return [(layer, "encoder_attn") for layer in base.layers]  # XGLM


def build_decoder(dcfg, vocab_size, tokenizer):
    """A causal LM with cross-attention: ``type: gpt2`` (default) or ``xglm``.

    transformers' OPT has no cross-attention layers, so ``opt`` is refused with a clear
    error rather than silently ignoring the image.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, XGLMConfig, XGLMForCausalLM

    kind = dcfg.get("type", "gpt2") or "gpt2"
    if kind not in DECODERS:
        hint = " (transformers' OPT decoder has no cross-attention layers to read the image)" if kind == "opt" else ""
        raise ConfigError(f"model.decoder.type {kind!r} is not supported{hint}; valid: {', '.join(DECODERS)}.")
    cls = GPT2LMHeadModel if kind == "gpt2" else XGLMForCausalLM
    if dcfg.get("pretrained"):
        path = local_path(dcfg["pretrained"], "model.decoder.pretrained", want_dir=True)
        dec = cls.from_pretrained(path, add_cross_attention=True, local_files_only=True)
        if dec.config.vocab_size < len(tokenizer):
            dec.resize_token_embeddings(len(tokenizer))
        return dec
    dropout = dcfg.get("dropout", 0.1)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    width, layers, heads = dcfg.get("n_embd", 128), dcfg.get("n_layer", 3), dcfg.get("n_head", 4)
    if kind == "xglm":
        config = XGLMConfig(
            vocab_size=vocab_size, max_position_embeddings=dcfg.get("n_positions", 64), d_model=width, num_layers=layers,
            attention_heads=heads, ffn_dim=4 * width, dropout=dropout, attention_dropout=dropout, activation_dropout=0.0,
            add_cross_attention=True, decoder_start_token_id=tokenizer.bos_token_id, **ids,
        )
        return XGLMForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=dcfg.get("n_positions", 64), n_embd=width, n_layer=layers, n_head=heads,
        add_cross_attention=True, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, loss_type="ForCausalLM", **ids,
    )
    return GPT2LMHeadModel(config)


@registry.register_model("smallcap")
class SmallCap(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {"tiny": "configs/models/smallcap/tiny.yaml"}
    DEFAULT_MODEL_TYPE = "tiny"

    def __init__(self, cfg, tokenizer=None):
        super().__init__(cfg)
        self.max_txt_len = int(self.cfg.get("max_txt_len", 40))
        vcfg = self.cfg.get("vision", {}) or {}
        self.visual_encoder = build_vision_encoder(vcfg)
        if vcfg.get("freeze", False):
            freeze(self.visual_encoder)
        self._vision_width = self.visual_encoder.hidden_size
        self.tokenizer = None
        self.decoder = None
        self.vision_proj = None
        if tokenizer is None and self.cfg.get("tokenizer_path"):
            tokenizer = load_tokenizer(self.cfg["tokenizer_path"])
        if tokenizer is not None:
            self._build_text_side(tokenizer)

    def _build_text_side(self, tokenizer):
        self.tokenizer = tokenizer
        tokenizer.padding_side = "right"
        self.decoder = build_decoder(self.cfg.get("decoder", {}) or {}, len(tokenizer), tokenizer)
        n_embd = decoder_width(self.decoder.config)
        self.vision_proj = nn.Identity() if n_embd == self._vision_width else nn.Linear(self._vision_width, n_embd)
        if not self.cfg.get("train_decoder", True):
            for name, p in self.decoder.named_parameters():
                p.requires_grad = any(part in name for part in CROSS_ATTENTION_NAMES)

    def base_weight_sources(self):
        out = {}
        v = self.cfg.get("vision") or {}
        if v.get("pretrained") or v.get("checkpoint"):
            out["visual_encoder."] = str(v.get("pretrained") or v.get("checkpoint"))
        d = self.cfg.get("decoder") or {}
        if d.get("pretrained"):
            out["decoder."] = str(d["pretrained"])
        return out

    def prepare_for_training(self, datasets, output_dir):
        """Fit a tokenizer on the training captions when none is configured, then build the decoder."""
        if self.tokenizer is not None:
            return
        captions, _ = dataset_texts(datasets)
        tok = fit_tokenizer(captions, self.cfg, kind="captions")
        self._build_text_side(tok)
        self.to(next(self.visual_encoder.parameters()).device)
        self.save_run_tokenizers(output_dir)
        logger.info("trained a word-level tokenizer on %d captions: %d tokens", len(captions), len(tok))

    # ------------------------------------------------------------------ encoding
    def encode_image(self, image):
        tokens, _ = self.visual_encoder(image)
        return self.vision_proj(tokens)

    def _tokenize(self, prompts, targets=None):
        """Token ids ``[BOS] prompt target [EOS]`` with labels on the target only."""
        tok = self.tokenizer
        bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        seqs, labels = [], []
        for i, prompt in enumerate(prompts):
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            t_ids = tok(targets[i], add_special_tokens=False)["input_ids"] + [eos] if targets is not None else []
            ids = ([bos] + p_ids + t_ids)[: self.max_txt_len]
            lab = ([-100] * (1 + len(p_ids)) + t_ids)[: self.max_txt_len]
            seqs.append(ids)
            labels.append(lab)
        width = max(len(s) for s in seqs)
        device = self.device
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        lab_t = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
            lab_t[i, : len(l)] = torch.tensor(l)
        return input_ids.to(device), attn.to(device), lab_t.to(device)

    def _prompts(self, samples, n):
        prompts = samples.get("text_input")
        return list(prompts) if prompts is not None else [""] * n

    def forward(self, samples):
        image = samples["image"]
        enc = self.encode_image(image)
        input_ids, attn, labels = self._tokenize(self._prompts(samples, len(image)), samples["text_output"])
        out = self.decoder(input_ids=input_ids, attention_mask=attn, encoder_hidden_states=enc, labels=labels)
        return {"loss": out.loss}

    def _left_padded_prompts(self, samples, n_images):
        """``[BOS] prompt`` ids left-padded so every prompt ends at the last column (decoder-only generation)."""
        input_ids, attn, _ = self._tokenize(self._prompts(samples, n_images))
        lengths = attn.sum(1)
        width = input_ids.shape[1]
        left = torch.full_like(input_ids, self.tokenizer.pad_token_id)
        left_attn = torch.zeros_like(attn)
        for i, n in enumerate(lengths.tolist()):
            left[i, width - n :] = input_ids[i, :n]
            left_attn[i, width - n :] = 1
        return left, left_attn

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        image = samples["image"]
        enc = self.encode_image(image)
        left, left_attn = self._left_padded_prompts(samples, len(image))
        width = left.shape[1]
        extra = {}
        if not hasattr(self.decoder.config, "n_embd"):
            # XGLM keeps cross-attention keys in their own cache; generate's default cache would mix them in
            from transformers import DynamicCache, EncoderDecoderCache

            extra["past_key_values"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder.generate(
            **extra,
            input_ids=left,
            attention_mask=left_attn,
            encoder_hidden_states=enc,
            **generate_kwargs(max_len, min_len, num_beams, repetition_penalty, length_penalty),
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        return self._decode(out[:, width:])

    def decoding_start(self, samples, n):
        """SCST sampling (``BaseModel.sample``) runs the decoder one token at a time with its KV
        cache; gradients flow into ``logprobs``/``logits`` (encoder included), dropout follows
        the module's train/eval mode."""
        enc = self.encode_image(samples["image"]).repeat_interleave(n, 0)
        ids, attn = self._left_padded_prompts(samples, len(samples["image"]))
        ids, attn = ids.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)
        # left padding: positions count attended tokens, as generate() computes them
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        out = self.decoder(input_ids=ids, attention_mask=attn, position_ids=pos, encoder_hidden_states=enc, use_cache=True)
        return out.logits[:, -1], (attn, pos[:, -1:], out.past_key_values, enc)

    def step(self, tokens, state):
        attn, last_pos, cache, enc = state
        attn = torch.cat([attn, attn.new_ones(len(attn), 1)], 1)
        last_pos = last_pos + 1
        o = self.decoder(input_ids=tokens[:, None], attention_mask=attn, position_ids=last_pos, encoder_hidden_states=enc,
                         past_key_values=cache, use_cache=True)
        return o.logits[:, -1], (attn, last_pos, o.past_key_values, enc)
