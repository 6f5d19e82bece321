"""``smallcap_causal``: SmallCap with retrieval prompts, token attention, a causal block and a contrastive loss.

Extends :class:`~rslavis.models.smallcap.model.SmallCap` (tokenizer fitting, generation,
SCST ``sample``, persistence are inherited); every part can be switched off by config
for ablations, and none fails silently.

What the decoder reads (``encode_image``): encoder patch tokens -> ``vision_proj`` ->
:class:`~rslavis.models.causal_block.TokenAttention` (``token_attention``) ->
:class:`~rslavis.models.causal_block.CausalBlock` (``causal_block.enabled``) ->
GPT-2 cross-attention.

Config keys (defaults in ``configs/models/smallcap_causal/tiny.yaml``):

- ``attention_size``: 28, 14, 7, 3.5 or 1.75 (SmallCap's names, millions of
  cross-attention parameters in GPT-2 base): the query/key/value widths of every
  cross-attention layer are divided by 1, 2, 4, 8 or 16. The modules are GPT-2's (XGLM's)
  own attention class with narrower projections (:mod:`rslavis.models.smallcap.attention`).
- ``train_decoder``: false trains GPT-2's cross-attention only (SmallCap), plus the
  vision side and the blocks above; true trains the whole decoder.
- ``disable_rag``: true prompts with ``prompt.plain`` only. Otherwise each image's prompt
  is ``prompt.template`` filled with ``retrieval.k`` retrieved captions (loss masked over
  the prompt). ``retrieval``: ``k``, ``index`` (flat | ivf | hnsw), ``index_options``,
  ``encoder``, ``cache_dir``, ``max_caption_words``, ``batch_size``.
- ``retrieval.encoder``: ``model`` uses the captioner's vision encoder when it is frozen
  (SmallCap's design: retrieval with frozen CLIP features); when that encoder trains (the
  tiny demo), a frozen copy of it taken at initialisation, so the datastore is computed
  once before training and stays valid while the captioner's encoder changes. A mapping
  (a ``vision`` config, e.g. open_clip with a checkpoint) builds a separate frozen
  encoder. The retrieval encoder's weights are saved with the model.
- ``causal_block``: ``enabled``; ``type``: ``intervention`` (default: the batch-permuted
  context intervention, :class:`~rslavis.models.causal_block.CausalBlock`, keys
  ``weights`` [context, object, counterfactual], ``hidden``, ``momentum``) or
  ``backdoor`` (backdoor adjustment over k-means context prototypes of the training
  images, :class:`~rslavis.models.backdoor_block.BackdoorBlock`, keys
  ``num_prototypes``, ``hidden``; the dictionary is built in ``prepare_for_training``).
  ``token_attention``: true/false.
- ``contrastive``: ``enabled``, ``dim`` (256), ``temperature`` (0.07), ``weight`` (0.1):
  InfoNCE between the mean of the tokens the decoder reads and the mean of the caption's
  hidden states from a text-only decoder pass (no cross-attention, so the caption side
  cannot see the image).

Retrieved captions reach the prompt from, in order: a ``retrieved_captions`` sample key,
the retrieved-captions JSON of the run (by ``image_id``), or a search of the datastore
with the batch's images (new images, e.g. ``python -m rslavis.caption``).
"""

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rslavis.common.config import to_plain
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.causal_block import CausalBlock, TokenAttention
from rslavis.models.contrastive import info_nce
from rslavis.models.encoders import build_vision_encoder, encode_pooled, freeze
from rslavis.models.smallcap.attention import ATTENTION_SIZES, make_reduced_cross_attention, make_reduced_xglm_cross_attention
from rslavis.models.smallcap.model import CROSS_ATTENTION_NAMES, DECODERS, SmallCap, cross_attention_layers, decoder_width

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Similar images show {captions}. This image shows"
DEFAULT_PLAIN = "This image shows"
CAUSAL_BLOCK_TYPES = ("intervention", "backdoor")


class _Texts:
    """A stand-in 'train split' whose captions are the prompt template's words (tokenizer fitting)."""

    def __init__(self, texts):
        self.texts = texts

    def all_captions(self):
        return list(self.texts)


@registry.register_model("smallcap_causal")
class SmallCapCausal(SmallCap):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/smallcap_causal/tiny.yaml",
        "remoteclip_vitb32_gpt2": "configs/models/smallcap_causal/remoteclip_vitb32_gpt2.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny"

    def __init__(self, cfg, tokenizer=None):
        plain = dict(to_plain(cfg) or {})
        dtype = (plain.get("decoder") or {}).get("type") or "gpt2"
        if dtype not in DECODERS:
            raise ConfigError(f"model.decoder.type {dtype!r} is not implemented for smallcap_causal; valid: {', '.join(DECODERS)}.")
        size = float(plain.get("attention_size", 28))
        if size not in ATTENTION_SIZES:
            raise ConfigError(f"model.attention_size {plain.get('attention_size')!r} is not one of SmallCap's sizes: 28, 14, 7, 3.5, 1.75.")
        super().__init__(plain, tokenizer=tokenizer)
        self.disable_rag = bool(self.cfg.get("disable_rag", False))
        rcfg = self.cfg.get("retrieval") or {}
        self.k = int(rcfg.get("k", 4))
        self.retrieval_encoder = None
        self._retrieval_shares_encoder = False
        self.datastore = None
        self.retrieved = {}
        self._warned_no_datastore = False
        if not self.disable_rag:
            enc_cfg = rcfg.get("encoder", "model") or "model"
            if enc_cfg == "model":
                if (self.cfg.get("vision") or {}).get("freeze", False):
                    self._retrieval_shares_encoder = True
                else:
                    self.retrieval_encoder = freeze(copy.deepcopy(self.visual_encoder))
            elif isinstance(enc_cfg, dict):
                self.retrieval_encoder = freeze(build_vision_encoder(enc_cfg))
            else:
                raise ConfigError(f"model.retrieval.encoder {enc_cfg!r}: use 'model' or a vision encoder config (type, arch, checkpoint...).")

    # ------------------------------------------------------------------ building
    def _build_text_side(self, tokenizer):
        super()._build_text_side(tokenizer)
        cfg = self.cfg
        reduce = ATTENTION_SIZES[float(cfg.get("attention_size", 28))]
        dconf = self.decoder.config
        make = make_reduced_cross_attention if hasattr(dconf, "n_embd") else make_reduced_xglm_cross_attention
        for i, (layer, name) in enumerate(cross_attention_layers(self.decoder)):
            setattr(layer, name, make(dconf, i, reduce))  # trainable in every setting
        width = decoder_width(dconf)
        self.token_attention = TokenAttention(width) if cfg.get("token_attention", True) else None
        ccfg = cfg.get("causal_block") or {}
        self.causal_block = None
        kind = ccfg.get("type") or "intervention"
        if kind not in CAUSAL_BLOCK_TYPES:
            raise ConfigError(f"model.causal_block.type {kind!r} is unknown; valid: {', '.join(CAUSAL_BLOCK_TYPES)}.")
        if ccfg.get("enabled", True) and kind == "backdoor":
            from rslavis.models.backdoor_block import BackdoorBlock

            self.causal_block = BackdoorBlock(width, self._vision_width, num_prototypes=ccfg.get("num_prototypes", 8), hidden=ccfg.get("hidden"))
        elif ccfg.get("enabled", True):
            self.causal_block = CausalBlock(width, hidden=ccfg.get("hidden"), weights=tuple(ccfg.get("weights", (0.3, 0.3, 0.4))), momentum=ccfg.get("momentum", 0.1))
        kcfg = cfg.get("contrastive") or {}
        self.contrastive = bool(kcfg.get("enabled", True)) and float(kcfg.get("weight", 0.1)) > 0
        self.image_proj = self.text_proj = None
        if self.contrastive:
            dim = int(kcfg.get("dim", 256))
            self.image_proj = nn.Linear(width, dim)
            self.text_proj = nn.Linear(width, dim)
            self.temperature = float(kcfg.get("temperature", 0.07))
            self.contrastive_weight = float(kcfg.get("weight", 0.1))
        cross = sum(p.numel() for n, p in self.decoder.named_parameters() if any(part in n for part in CROSS_ATTENTION_NAMES[::2]))
        total, trainable = self.count_parameters()
        logger.info(
            "smallcap_causal: cross-attention %s parameters (attention_size %s: widths / %d); %s of %s parameters trainable (train_decoder %s)",
            f"{cross:,}", cfg.get("attention_size", 28), reduce, f"{trainable:,}", f"{total:,}", bool(cfg.get("train_decoder", True)),
        )

    def train(self, mode=True):
        super().train(mode)
        if self.retrieval_encoder is not None:
            self.retrieval_encoder.eval()  # frozen: no dropout, features identical to the datastore's
        return self

    # ------------------------------------------------------------------ encoding
    def encode_image(self, image):
        tokens = super().encode_image(image)
        if self.token_attention is not None:
            tokens = self.token_attention(tokens)
        if self.causal_block is not None:
            tokens = self.causal_block(tokens)
        return tokens

    def _retrieval_encoder(self):
        return self.visual_encoder if self._retrieval_shares_encoder else self.retrieval_encoder

    @torch.no_grad()
    def retrieval_features(self, image):
        """L2-normalised pooled features of the retrieval encoder (datastore keys)."""
        enc = self._retrieval_encoder()
        was = enc.training
        enc.eval()
        try:
            return encode_pooled(enc, image)
        finally:
            enc.train(was)

    def retrieved_captions(self, samples, n):
        """k captions per sample: the sample key, the run's retrieved-captions map, or a datastore search."""
        given = samples.get("retrieved_captions")
        if given is not None:
            return [list(c) for c in given]
        ids = samples.get("image_id")
        out = [None] * n
        if ids is not None and self.retrieved:
            out = [self.retrieved.get(str(i)) for i in ids]
        missing = [i for i, c in enumerate(out) if c is None]
        if missing:
            if self.datastore is None or samples.get("image") is None:
                if not self._warned_no_datastore:
                    self._warned_no_datastore = True
                    logger.warning("smallcap_causal: no retrieved captions and no datastore for some images; their prompt has no captions.")
                for i in missing:
                    out[i] = []
            else:
                feats = self.retrieval_features(samples["image"][missing]).cpu().numpy()
                for i, caps in zip(missing, self.datastore.retrieve(feats, self.k)):
                    out[i] = caps
        return out

    def build_prompt(self, captions):
        pcfg = self.cfg.get("prompt") or {}
        if self.disable_rag:
            return pcfg.get("plain", DEFAULT_PLAIN)
        max_words = int((self.cfg.get("retrieval") or {}).get("max_caption_words", 25))
        cleaned = [" ".join(c.strip().rstrip(".").split()[:max_words]) for c in captions[: self.k]]
        return pcfg.get("template", DEFAULT_TEMPLATE).format(captions=". ".join(c for c in cleaned if c))

    def _prompts(self, samples, n):
        base = super()._prompts(samples, n)
        caps = [[]] * n if self.disable_rag else self.retrieved_captions(samples, n)
        return [" ".join(p for p in (b, self.build_prompt(c)) if p) for b, c in zip(base, caps)]

    # ------------------------------------------------------------------ training
    def _text_features(self, captions):
        """Mean hidden state of ``[BOS] caption [EOS]`` from a decoder pass without cross-attention."""
        ids, attn, _ = self._tokenize([""] * len(captions), captions)
        hidden = self.decoder.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        m = attn.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def contrastive_loss(self, enc, captions, image_ids=None):
        """Symmetric InfoNCE; pairs of the same image (several captions of it in a batch) are not negatives."""
        img = F.normalize(self.image_proj(enc.mean(1)), dim=-1)
        txt = F.normalize(self.text_proj(self._text_features(captions)), dim=-1)
        same = None
        if image_ids is not None:
            ids = [str(i) for i in image_ids]
            same = torch.tensor([[a == b for b in ids] for a in ids], device=img.device)
        return info_nce(img, txt, 1.0 / self.temperature, same)

    def forward(self, samples):
        image = samples["image"]
        enc = self.encode_image(image)
        input_ids, attn, labels = self._tokenize(self._prompts(samples, len(image)), samples["text_output"])
        out = self.decoder(input_ids=input_ids, attention_mask=attn, encoder_hidden_states=enc, labels=labels)
        result = {"loss": out.loss, "loss_ce": out.loss.detach()}
        if self.contrastive and len(image) > 1:
            nce = self.contrastive_loss(enc, samples["text_output"], samples.get("image_id"))
            result["loss"] = out.loss + self.contrastive_weight * nce
            result["loss_contrastive"] = nce.detach()
        return result

    def prepare_for_training(self, datasets, output_dir):
        """Fit the tokenizer (captions and prompt words), then build or reuse the retrieval datastore."""
        if self.tokenizer is None:
            pcfg = self.cfg.get("prompt") or {}
            words = [pcfg.get("template", DEFAULT_TEMPLATE).replace("{captions}", " "), pcfg.get("plain", DEFAULT_PLAIN)]
            super().prepare_for_training({**datasets, "__prompt__": {"train": _Texts(words)}}, output_dir)
        if self.causal_block is not None and hasattr(self.causal_block, "set_dictionary") and not bool(self.causal_block.built):
            self.build_confounder_dictionary(datasets)
        if not self.disable_rag:
            self.build_retrieval(datasets, output_dir)

    def build_confounder_dictionary(self, datasets):
        """The backdoor block's context prototypes: faiss k-means over the frozen encoder's features of the training images only."""
        from rslavis.models.backdoor_block import build_dictionary, training_context_features

        if not (self.cfg.get("vision") or {}).get("freeze", False):
            logger.warning("smallcap_causal: the backdoor block's dictionary comes from the encoder as it is now; with model.vision.freeze false the encoder drifts from it while training.")
        feats, paths = training_context_features(self.visual_encoder, datasets, self.default_image_processor(), self.device)
        block = self.causal_block
        seed = int(torch.initial_seed() % (2**31))
        protos, prior = build_dictionary(feats, block.num_prototypes, seed=seed)
        block.set_dictionary(protos, prior)
        self.dictionary_sources = paths
        logger.info("smallcap_causal: backdoor dictionary of %d context prototypes from %d training images (prior %s)", block.num_prototypes, len(paths), np.round(prior, 3).tolist())
        return protos, prior

    def base_weight_sources(self):
        out = super().base_weight_sources()
        enc = (self.cfg.get("retrieval") or {}).get("encoder", "model") or "model"
        if self.retrieval_encoder is not None:
            src = out.get("visual_encoder.") if enc == "model" else (enc.get("pretrained") or enc.get("checkpoint"))
            if src:
                out["retrieval_encoder."] = str(src)  # a frozen copy of the file's weights
        return out

    def build_for_dry_run(self, datasets):
        SmallCap.prepare_for_training(self, datasets, None)  # the text side only: no datastore on the meta device

    # ------------------------------------------------------------------ retrieval
    def build_retrieval(self, datasets, output_dir=None, progress=True):
        """Build (or reuse) the datastore and retrieved captions; copy them to ``output_dir/retrieval``."""
        from rslavis.common import dist_utils
        from rslavis.retrieval.datastore import build_retrieval, encoder_fingerprint

        rcfg = self.cfg.get("retrieval") or {}
        enc = self._retrieval_encoder()
        enc_cfg = rcfg.get("encoder", "model")
        fingerprint = encoder_fingerprint(enc, self.cfg.get("vision") if enc_cfg in (None, "model") else enc_cfg)
        with dist_utils.main_process_first():
            built = build_retrieval(
                enc, fingerprint, datasets, cache_dir=rcfg.get("cache_dir", "cache/retrieval"), k=self.k,
                index=rcfg.get("index", "flat"), index_options=rcfg.get("index_options") or {},
                processor=self.default_image_processor(), device=self.device, batch_size=int(rcfg.get("batch_size", 64)), progress=progress,
            )
        if not built:
            raise ConfigError("model.retrieval: no dataset has a train split to build the retrieval datastore from; set model.disable_rag: true to train without it.")
        self.retrieved = {}
        for name, res in built.items():
            clash = set(self.retrieved) & set(res["retrieved"])
            if clash:
                logger.warning("retrieval: %d image ids of %s also occur in another dataset; the later dataset's captions win for them.", len(clash), name)
            self.retrieved.update(res["retrieved"])
        first = next(iter(built.values()))
        self.datastore = first["datastore"]  # new images are searched in the first dataset's datastore
        if output_dir is not None and dist_utils.is_main_process():
            target = Path(output_dir) / "retrieval"
            self.datastore.save(target)
            with open(target / "retrieved_captions.json", "w") as f:
                json.dump(self.retrieved, f)
        return built

    def load_retrieval(self, folder):
        """Use the datastore (and retrieved captions, when present) saved in ``folder``."""
        from rslavis.retrieval.datastore import Datastore

        self.datastore = Datastore.load(folder)
        return self.datastore

    def default_image_processor(self):
        """An eval processor at the encoder's image size and statistics (when no dataset gives one)."""
        from rslavis.processors.image_processors import RSImageEvalProcessor

        vcfg = self.cfg.get("vision") or {}
        enc = self.visual_encoder
        return RSImageEvalProcessor(image_size=int(vcfg.get("image_size") or 224), mean=enc.mean, std=enc.std)

    # ------------------------------------------------------------------ persistence
    def save_extras(self, directory):
        """The retrieval datastore in ``retrieval/`` (what generation searches for new images)."""
        if self.datastore is not None:
            self.datastore.save(Path(directory) / "retrieval")

    def load_extras(self, directory):
        folder = Path(directory) / "retrieval"
        if not self.disable_rag and folder.is_dir():
            self.load_retrieval(folder)
