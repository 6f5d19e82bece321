"""What InstructBLIP and the models built on its vision front (RS-MoE, the VLM scorer) share.

Module functions: the tiny ``InstructBlipConfig`` of a config section, the image
placeholder token, the LLM + Q-Former tokenizer pair (load, save), padding.
:class:`InstructBlipBase`: fitting the tokenizer pair on the training text, token ids,
pixel checks, Q-Former inputs, persistence of the tokenizer pair and ``hf_config.json``,
and answer ranking over the hooks ``answer_context`` and ``candidate_logprobs``.
"""

import logging
from pathlib import Path

import torch

from rslavis.common.errors import ConfigError
from rslavis.models.base_model import BaseModel
from rslavis.models.encoders import local_path
from rslavis.models.tokenization import dataset_texts, load_tokenizer, train_caption_tokenizer, training_texts  # noqa: F401  (dataset_texts re-exported)

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"  # the subfolder name InstructBlipProcessor uses
TINY_LLM = {"tiny_t5": "t5", "tiny_opt": "opt"}
DEFAULT_PROMPT = "Describe the image briefly."
PRETRAINED_HINT = {
    "flant5xl": "Salesforce/instructblip-flan-t5-xl",
    "vicuna7b": "Salesforce/instructblip-vicuna-7b",
    "flant5xxl": "Salesforce/instructblip-flan-t5-xxl",
    "vicuna13b": "Salesforce/instructblip-vicuna-13b",
}



def _section(cfg, key):
    return dict(cfg.get(key) or {})


def tiny_hf_config(cfg, tokenizer, qformer_tokenizer, image_token_id):
    """An ``InstructBlipConfig`` from the ``vision``/``qformer``/``llm`` sections of a tiny model type."""
    from transformers import InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig, OPTConfig, T5Config

    v, q, l = _section(cfg, "vision"), _section(cfg, "qformer"), _section(cfg, "llm")
    llm_type = l.get("type") or TINY_LLM.get(cfg.get("model_type"), "opt")
    dropout = float(l.get("dropout", 0.1))
    def tower(section):  # the sizes both transformer towers name alike
        return dict(
            hidden_size=section.get("hidden_size", 64), intermediate_size=section.get("intermediate_size", 128),
            num_hidden_layers=section.get("num_layers", 2), num_attention_heads=section.get("num_heads", 4),
        )

    image_size = int(cfg.get("image_size") or v.get("image_size", 64))  # LAVIS's model.image_size wins
    vision = InstructBlipVisionConfig(**tower(v), image_size=image_size, patch_size=v.get("patch_size", 8))
    qformer = InstructBlipQFormerConfig(
        **tower(q),
        vocab_size=len(qformer_tokenizer),
        cross_attention_frequency=q.get("cross_attention_frequency", 1),
        max_position_embeddings=q.get("max_position_embeddings", 64),
        pad_token_id=qformer_tokenizer.pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    hidden = l.get("hidden_size", 64)
    heads = l.get("num_heads", 4)
    if llm_type == "t5":
        text = T5Config(
            vocab_size=len(tokenizer),
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=l.get("ffn_dim", 128),
            num_layers=l.get("num_layers", 2),
            num_decoder_layers=l.get("num_layers", 2),
            num_heads=heads,
            relative_attention_num_buckets=8,
            dropout_rate=dropout,
            feed_forward_proj="gated-gelu",  # Flan-T5's feed-forward
            tie_word_embeddings=True,  # scales decoder output by d_model**-0.5: sane logits at random init
            decoder_start_token_id=tokenizer.pad_token_id,
            **special,
        )
    elif llm_type == "opt":
        text = OPTConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            ffn_dim=l.get("ffn_dim", 128),
            num_hidden_layers=l.get("num_layers", 2),
            num_attention_heads=heads,
            word_embed_proj_dim=hidden,
            max_position_embeddings=l.get("max_position_embeddings", 128),
            dropout=dropout,
            attention_dropout=dropout,
            **special,
        )
    else:
        raise ConfigError(f"model.llm.type: {llm_type!r} is unknown for a tiny InstructBLIP; valid: t5, opt.")
    return InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=int(cfg.get("num_query_tokens", 8)),
        image_token_index=image_token_id,
    )


def add_image_token(tokenizer):
    """Id of the image placeholder token, added to ``tokenizer`` as a special token when missing."""
    from tokenizers import AddedToken

    token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, normalized=False, special=True)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(token)


def load_tokenizers(directory, option):
    """``(llm_tokenizer, qformer_tokenizer)`` from ``directory`` and ``directory/qformer_tokenizer``."""
    d = Path(local_path(directory, option, want_dir=True))
    qdir = d / QFORMER_TOKENIZER_DIR
    if not qdir.is_dir():
        raise ConfigError(f"{option}: {d} has no {QFORMER_TOKENIZER_DIR}/ folder (the Q-Former's tokenizer, as InstructBlipProcessor saves it).")
    from transformers import AutoTokenizer

    llm_tok = load_tokenizer(d, option=option)
    # the Q-Former's BERT tokenizer has no BOS/EOS; only a pad token is needed, so no token is added
    q_tok = AutoTokenizer.from_pretrained(str(qdir), local_files_only=True)
    if q_tok.pad_token is None:
        raise ConfigError(f"{option}: the Q-Former tokenizer in {qdir} has no pad token.")
    return llm_tok, q_tok


def save_tokenizer_pair(directory, tokenizer, qformer_tokenizer):
    """The LLM tokenizer in ``directory`` and the Q-Former's in ``directory/qformer_tokenizer``."""
    d = Path(directory)
    tokenizer.save_pretrained(str(d))
    qformer_tokenizer.save_pretrained(str(d / QFORMER_TOKENIZER_DIR))


def pad_rows(rows, value, side):
    """``(ids, mask)`` long tensors of ``rows`` padded with ``value`` on ``side``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            continue
        if side == "left":
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        else:
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
    return ids, mask


class InstructBlipBase(BaseModel):
    """Shared pieces of the InstructBLIP family (see module docstring). A subclass sets
    ``instructblip_config`` (its ``InstructBlipConfig``), ``vision_model`` and ``_require_model``."""

    SAVED_FILES = ("config.json", "hf_config.json")
    QFORMER_TOKENIZER = True  # False: the Q-Former reads no text (BLIP-2), there is one tokenizer

    def __init__(self, cfg):
        super().__init__(cfg, lazy=True)  # parameters appear only once the tokenizers exist
        self.tokenizer = self.qformer_tokenizer = None
        self.prompt = self.cfg.get("prompt") or DEFAULT_PROMPT
        self.max_txt_len = int(self.cfg.get("max_txt_len", 64))
        self.max_output_txt_len = int(self.cfg.get("max_output_txt_len", 40))
        self.qformer_max_len = int(self.cfg.get("qformer_max_len", 64))

    @property
    def num_query_tokens(self):
        return int(self.instructblip_config.num_query_tokens)

    # ------------------------------------------------------------------ tokenizers
    def fit_tokenizers(self, datasets, extra_texts=()):
        """``(llm_tokenizer, qformer_tokenizer)`` fitted on the training text: the LLM's on targets,
        instructions and ``extra_texts``, the Q-Former's (None without :attr:`QFORMER_TOKENIZER`) on instructions."""
        targets, instructions = training_texts(datasets, self.prompt, "tokenizers" if self.QFORMER_TOKENIZER else "tokenizer")
        vocab = int(self.cfg.get("tokenizer_vocab_size", 2000))
        tok = train_caption_tokenizer(targets + instructions + list(extra_texts), vocab_size=vocab)
        qtok = train_caption_tokenizer(instructions, vocab_size=vocab) if self.QFORMER_TOKENIZER else None
        logger.info("fitted tokenizers: LLM %d tokens (%d texts), Q-Former %s tokens", len(tok), len(targets) + len(instructions), len(qtok) if qtok else "no")
        return tok, qtok

    # ------------------------------------------------------------------ inputs
    def _pixels(self, samples):
        name = self.registry_name()
        if "image" not in samples:
            raise ConfigError(f"{name} needs samples with 'image' (a feature cache's image_features cannot feed its ViT).")
        image = samples["image"].to(self.device)
        expected = int(self.instructblip_config.vision_config.image_size)
        if tuple(image.shape[-2:]) != (expected, expected):
            raise ConfigError(
                f"{name}: images are {tuple(image.shape[-2:])} but the ViT expects {expected}x{expected}; "
                f"set the dataset's vis_processor image_size to {expected} (or model.vision.image_size for tiny types)."
            )
        return image.to(next(self.vision_model.parameters()).dtype)

    def _ids(self, text, limit):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][:limit] if text else []

    def qformer_inputs(self, prompts):
        enc = self.qformer_tokenizer(list(prompts), padding="longest", truncation=True, max_length=self.qformer_max_len, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def answer_targets(self, texts):
        """``(ids, mask)`` of ``text [EOS]`` per text, right-padded, on the model's device."""
        tok = self.tokenizer
        rows = [self._ids(t, self.max_output_txt_len) + [tok.eos_token_id] for t in texts]
        ids, mask = pad_rows(rows, tok.pad_token_id, "right")
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _position_ids(attention_mask):
        """Left padding: positions count attended tokens, as transformers' generate() does."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    # ------------------------------------------------------------------ ranking
    def answer_context(self, samples):
        """``(context, batch size)``: what :meth:`candidate_logprobs` conditions on."""
        raise NotImplementedError

    def candidate_logprobs(self, context, targets, target_mask, c):
        """Log-probabilities (b*c, T) of ``targets`` (row ``i*c + j``: sample i, candidate j)."""
        raise NotImplementedError

    @torch.no_grad()
    def rank_answers(self, samples, candidates, chunk=64):
        """For each sample, the candidate with the highest summed log-probability (answer + EOS)."""
        if not candidates:
            raise ConfigError(f"{self.registry_name()}.rank_answers: the candidate answer list is empty.")
        context, b = self.answer_context(samples)
        scores = []
        for start in range(0, len(candidates), chunk):
            targets, tmask = self.answer_targets(candidates[start : start + chunk])
            c = len(targets)
            logp = self.candidate_logprobs(context, targets.repeat(b, 1), tmask.repeat(b, 1), c)
            scores.append((logp * tmask.repeat(b, 1)).sum(1).view(b, c))
        best = torch.cat(scores, 1).argmax(1).tolist()
        return [candidates[i] for i in best]

    # ------------------------------------------------------------------ persistence
    def check_built(self):
        self._require_model()

    def hf_config_to_save(self):
        return self.instructblip_config

    def save_tokenizers(self, directory):
        if self.qformer_tokenizer is None:
            self.tokenizer.save_pretrained(str(directory))
        else:
            save_tokenizer_pair(directory, self.tokenizer, self.qformer_tokenizer)

    @classmethod
    def tokenizer_parts(cls, directory, option):
        if not cls.QFORMER_TOKENIZER:
            return {"tokenizer": load_tokenizer(directory, option=option)}
        tok, qtok = load_tokenizers(directory, option)
        return {"tokenizer": tok, "qformer_tokenizer": qtok}
