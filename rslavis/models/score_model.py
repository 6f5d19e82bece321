"""``score_model``: a learned quality scorer, one scalar per (image, text) (ScoreRS-style).

Two families (``model.type``):

- ``clip``: a CLIP-style dual encoder; score = ``exp(logit_scale) * cos(image, text)``.
  ``backend: hf`` builds a transformers ``CLIPModel`` from tiny sizes (random; its
  word-level tokenizer is fitted on the training texts in :meth:`prepare_for_training`)
  or loads a local CLIP directory (``pretrained: DIR``, tokenizer files included);
  ``backend: open_clip`` builds open_clip ``clip_arch`` with weights from a local
  ``checkpoint`` file (RemoteCLIP) and ``model_config`` JSON for custom/tiny towers.
- ``vlm``: the ``instructblip`` model (vision front, Q-Former, LLM; config section
  ``vlm``) reads the image and ``[prompt] text``; the LLM's last hidden state at the last
  text token goes through a linear value head.

Interface: :meth:`ScoreModel.scores` (with grad, for training), :meth:`ScoreModel.score`
(batched, ``torch.no_grad``, eval mode), ``save_pretrained``/``from_pretrained`` and
:func:`load_scorer` (a ``save_pretrained`` directory or a training run folder with
``config.yaml`` and ``checkpoint_best.pth``). Images are resized to the scorer's input
size when they differ; they are expected normalised as the rs image processors do.
"""

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.models.base_model import BaseModel
from rslavis.models.encoders import local_path
from rslavis.models.tokenization import fit_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

TYPES = ("clip", "vlm")
BACKENDS = ("hf", "open_clip")


def training_texts(datasets):
    """``(texts, prompts)`` of the training splits (preference candidates or captions)."""
    texts, prompts = [], set()
    for splits in datasets.values():
        ds = splits.get("train")
        if ds is not None and hasattr(ds, "all_captions"):
            texts.extend(ds.all_captions())
            if getattr(ds, "prompt", ""):
                prompts.add(ds.prompt)
    return texts, sorted(prompts)


def tiny_clip_config(cfg, vocab_size, pad_id, bos_id, eos_id):
    from transformers import CLIPConfig

    v, t = dict(cfg.get("vision") or {}), dict(cfg.get("text") or {})
    vision = dict(
        image_size=v.get("image_size", 64), patch_size=v.get("patch_size", 8), hidden_size=v.get("hidden_size", 64),
        num_hidden_layers=v.get("num_layers", 2), num_attention_heads=v.get("num_heads", 4), intermediate_size=v.get("intermediate_size", 128),
    )
    text = dict(
        vocab_size=vocab_size, hidden_size=t.get("hidden_size", 64), num_hidden_layers=t.get("num_layers", 2),
        num_attention_heads=t.get("num_heads", 4), intermediate_size=t.get("intermediate_size", 128),
        max_position_embeddings=int(cfg.get("max_txt_len", 40)) + 2, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
    )
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=int(cfg.get("projection_dim", 64)))


@registry.register_model("score_model")
class ScoreModel(BaseModel):
    """Learned (image, text) scorer; see module docstring and ``configs/models/score_model/*.yaml``.

    Config keys: ``type`` (clip | vlm), ``backend`` (hf | open_clip), ``pretrained``
    (local CLIP directory), ``clip_arch``/``checkpoint``/``model_config`` (open_clip),
    ``vision``/``text``/``projection_dim`` (tiny CLIP sizes), ``tokenizer_path``,
    ``tokenizer_vocab_size``, ``max_txt_len``, ``vlm`` (an ``instructblip`` config
    section), ``prompt`` (VLM instruction when a sample has none).
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny_clip": "configs/models/score_model/tiny_clip.yaml",
        "tiny_vlm": "configs/models/score_model/tiny_vlm.yaml",
        "clip_local": "configs/models/score_model/clip_local.yaml",
        "remoteclip": "configs/models/score_model/remoteclip.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny_clip"

    def __init__(self, cfg, tokenizer=None, hf_config=None):
        super().__init__(cfg, lazy=True)
        self.kind = str(self.cfg.get("type") or "clip")
        if self.kind not in TYPES:
            raise ConfigError(f"model.type: {self.kind!r} is unknown for score_model; valid: {', '.join(TYPES)}.")
        self.backend = str(self.cfg.get("backend") or "hf")
        if self.backend not in BACKENDS:
            raise ConfigError(f"model.backend: {self.backend!r} is unknown; valid: {', '.join(BACKENDS)}.")
        self.max_txt_len = int(self.cfg.get("max_txt_len", 40))
        self.prompt = self.cfg.get("prompt") or "Describe the image briefly."
        self.clip = self.open_clip = self.vlm = self.value_head = None
        self.tokenizer = None
        if self.kind == "vlm":
            self._init_vlm(hf_config)
        elif self.backend == "open_clip":
            self._init_open_clip()
        else:
            if tokenizer is None and self.cfg.get("tokenizer_path"):
                tokenizer = load_tokenizer(self.cfg["tokenizer_path"])
            if self.cfg.get("pretrained"):
                self._load_hf_clip(tokenizer)
            elif tokenizer is not None:
                self._build_hf_clip(tokenizer, hf_config)

    @property
    def built(self):
        return self.clip is not None or self.open_clip is not None or (self.vlm is not None and self.vlm.model is not None)

    # ------------------------------------------------------------------ building
    def _build_hf_clip(self, tokenizer, hf_config=None):
        from transformers import CLIPModel

        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        if hf_config is None:
            hf_config = tiny_clip_config(self.cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        self.clip = CLIPModel(hf_config).to(self.device)
        self.image_size = int(hf_config.vision_config.image_size)

    def _load_hf_clip(self, tokenizer):
        from transformers import AutoTokenizer, CLIPModel

        path = local_path(self.cfg["pretrained"], "model.pretrained", want_dir=True)
        self.clip = CLIPModel.from_pretrained(path, local_files_only=True)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.max_txt_len = min(self.max_txt_len, int(self.clip.config.text_config.max_position_embeddings) - 2)
        self.image_size = int(self.clip.config.vision_config.image_size)

    def _init_open_clip(self):
        import open_clip

        if self.cfg.get("model_config"):
            open_clip.add_model_config(local_path(self.cfg["model_config"], "model.model_config", want_dir=False))
        arch = str(self.cfg.get("clip_arch") or "ViT-B-32")
        ckpt = self.cfg.get("checkpoint")
        if ckpt:
            ckpt = local_path(ckpt, "model.checkpoint", want_dir=False)
        try:
            self.open_clip = open_clip.create_model(arch, pretrained=ckpt or None)
        except RuntimeError as exc:
            raise ConfigError(f"model: open_clip cannot build {arch!r} from {ckpt}: {exc}") from None
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = self.open_clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def _init_vlm(self, hf_config=None):
        from rslavis.models.instructblip.model import InstructBLIP

        vcfg = dict(self.cfg.get("vlm") or {})
        vcfg.setdefault("model_type", "tiny_opt")
        vcfg.setdefault("prompt", self.prompt)
        if self.cfg.get("tokenizer_path") and not vcfg.get("tokenizer_path"):
            vcfg["tokenizer_path"] = self.cfg["tokenizer_path"]
        tok = qtok = None
        if hf_config is not None:
            from rslavis.models.instructblip.model import load_tokenizers

            tok, qtok = load_tokenizers(vcfg["tokenizer_path"], "model.tokenizer_path")
        self.vlm = InstructBLIP(vcfg, tokenizer=tok, qformer_tokenizer=qtok, hf_config=hf_config)
        if self.vlm.model is not None:
            self._add_value_head()

    def _add_value_head(self):
        text = self.vlm.model.config.text_config
        hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model")
        self.value_head = nn.Linear(int(hidden), 1).to(self.vlm.device)
        nn.init.normal_(self.value_head.weight, std=0.02)
        nn.init.zeros_(self.value_head.bias)
        self.image_size = int(self.vlm.model.config.vision_config.image_size)

    def prepare_for_training(self, datasets, output_dir):
        """Tiny types: fit the tokenizer(s) on the training texts, build the model, save the tokenizer."""
        if self.built:
            return
        if self.kind == "vlm":
            self.vlm.prepare_for_training(datasets, output_dir)  # saves tokenizer/ with qformer_tokenizer/
            self._add_value_head()
            return
        texts, _ = training_texts(datasets)
        tok = fit_tokenizer(texts, self.cfg, "the scorer's tokenizer")
        self._build_hf_clip(tok)
        self.save_run_tokenizers(output_dir)
        logger.info("score_model: fitted a word-level tokenizer on %d texts: %d tokens", len(texts), len(tok))

    # ------------------------------------------------------------------ scoring
    def _require(self):
        if not self.built:
            raise RslavisError("score_model: the model is not built yet (set model.tokenizer_path or call prepare_for_training).")

    def _images(self, images):
        images = images.to(self.device, torch.float32)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def _hf_text_ids(self, texts):
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        eos = tok.eos_token_id
        rows = [bos + tok(t, add_special_tokens=False)["input_ids"][: self.max_txt_len] + [eos] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id if tok.pad_token_id is not None else eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _clip_scores(self, images, texts):
        if self.open_clip is not None:
            img = self.open_clip.encode_image(images)
            txt = self.open_clip.encode_text(self.tokenizer(list(texts)).to(self.device))
            scale = self.open_clip.logit_scale.exp()
        else:
            clip = self.clip
            img = clip.visual_projection(clip.vision_model(pixel_values=images).pooler_output)
            ids, mask = self._hf_text_ids(texts)
            hidden = clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
            # pool at our own EOS (the last attended token): CLIP's argmax-of-ids pooling assumes its own vocabulary
            pooled = hidden[torch.arange(len(ids), device=ids.device), mask.sum(1) - 1]
            txt = clip.text_projection(pooled)
            scale = clip.logit_scale.exp()
        return scale * (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)

    def _vlm_scores(self, images, texts, prompts):
        vlm = self.vlm
        inputs = vlm.build_inputs({"image": images, "text_input": prompts}, targets=list(texts), padding_side="right")
        embeds = vlm._embed(inputs["input_ids"], vlm.image_features(inputs))
        lm = vlm.model.language_model
        if vlm.is_encoder_decoder:
            labels = inputs["labels"]
            mask = (labels != -100).long()
            pad = vlm.tokenizer.pad_token_id
            start = torch.full_like(labels[:, :1], vlm.model.config.text_config.decoder_start_token_id)
            dec_in = torch.cat([start, labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)], 1)
            out = lm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], decoder_input_ids=dec_in,
                     decoder_attention_mask=mask, output_hidden_states=True, return_dict=True)
            hidden = out.decoder_hidden_states[-1]
        else:
            mask = inputs["attention_mask"]
            out = lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, return_dict=True)
            hidden = out.hidden_states[-1]
        last = hidden[torch.arange(len(hidden), device=hidden.device), mask.sum(1) - 1]  # right padded: last text token (EOS)
        return self.value_head(last.float()).squeeze(-1)

    def scores(self, images, texts, prompts=None):
        """Scores (B,) of ``texts[i]`` for ``images[i]`` (B, 3, H, W), with grad."""
        self._require()
        if len(images) != len(texts):
            raise RslavisError(f"score_model: {len(images)} images for {len(texts)} texts; give one text per image row.")
        images = self._images(images)
        if self.kind == "vlm":
            prompts = list(prompts) if prompts is not None else [self.prompt] * len(texts)
            return self._vlm_scores(images, texts, prompts)
        return self._clip_scores(images, texts)

    @torch.no_grad()
    def score(self, images, texts, prompts=None, batch_size=64):
        """Batched :meth:`scores` without grad, in eval mode (the mode is restored); a CPU float tensor."""
        was = self.training
        self.eval()
        try:
            out = []
            for s in range(0, len(texts), batch_size):
                part = None if prompts is None else list(prompts)[s : s + batch_size]
                out.append(self.scores(images[s : s + batch_size], list(texts)[s : s + batch_size], part).float().cpu())
            return torch.cat(out) if out else torch.zeros(0)
        finally:
            self.train(was)

    def forward(self, samples):
        """Bradley-Terry loss of the first two candidates (the ``preference`` task has the full losses)."""
        from rslavis.models.preference_losses import preference_loss

        return preference_loss(self, samples)

    @classmethod
    def load(cls, path, device=None):
        """The scorer at ``path`` (see :func:`load_scorer`); what ``learned_score`` finds by registered name."""
        return load_scorer(path, device)

    # ------------------------------------------------------------------ persistence
    # (BaseModel.save_pretrained writes config.json, hf_config.json, tokenizer/ and model.safetensors)
    def check_built(self):
        self._require()

    def portable_config(self):
        cfg = super().portable_config()
        if self.kind == "vlm":
            cfg["vlm"] = dict(cfg.get("vlm") or {}, tokenizer_path=None, pretrained=None)
        elif self.clip is not None:
            cfg["pretrained"] = None
        else:
            cfg["checkpoint"] = None  # the weights are in model.safetensors
            if cfg.get("model_config"):
                cfg["model_config"] = "open_clip_config.json"
        return cfg

    def hf_config_to_save(self):
        if self.kind == "vlm":
            return self.vlm.model.config
        return self.clip.config if self.clip is not None else None

    def save_tokenizers(self, directory):
        if self.kind == "vlm":
            self.vlm.save_tokenizers(directory)
        elif self.clip is not None:
            self.tokenizer.save_pretrained(str(directory))
        # open_clip: the tokenizer comes with clip_arch

    def save_extras(self, directory):
        if self.open_clip is not None and self.cfg.get("model_config"):
            (Path(directory) / "open_clip_config.json").write_text(Path(self.cfg["model_config"]).read_text())

    @classmethod
    def saved_parts(cls, directory, cfg):
        d = Path(directory)
        kind = cfg.get("type") or "clip"
        if kind == "vlm":
            from transformers import InstructBlipConfig

            cfg["tokenizer_path"] = str(d / "tokenizer")  # the VLM reads both tokenizers from there
            return {"hf_config": InstructBlipConfig.from_json_file(str(d / "hf_config.json"))}
        if (cfg.get("backend") or "hf") == "hf":
            from transformers import CLIPConfig

            return {"tokenizer": load_tokenizer(d / "tokenizer", option=str(d / "tokenizer")),
                    "hf_config": CLIPConfig.from_json_file(str(d / "hf_config.json"))}
        if cfg.get("model_config"):
            cfg["model_config"] = str(d / cfg["model_config"])
        return {}


_CACHE = {}


def load_scorer(path, device=None):
    """A :class:`ScoreModel` in eval mode from ``path`` (cached per path and modification time).

    ``path``: a ``save_pretrained`` directory (``config.json``), a training run folder
    (``config.yaml`` with ``model.arch: score_model``, ``checkpoint_best.pth`` or
    ``checkpoint_latest.pth``, ``tokenizer/``) or one of its checkpoint files.
    """
    from rslavis.models.loading import load_model, run_checkpoint

    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        stamp = p / "model.safetensors"
    elif (p.is_file() and p.suffix in (".pth", ".safetensors")) or (p.is_dir() and (p / "config.yaml").is_file()):
        stamp = run_checkpoint(p, option="scorer")[1]
    else:
        raise ConfigError(f"scorer {p}: not found, or neither a save_pretrained directory (config.json) nor a score_model run folder (config.yaml + checkpoint_best.pth).")
    key = (str(p.resolve()), stamp.stat().st_mtime if stamp.is_file() else 0, str(device))
    if key not in _CACHE:
        model = load_model(p, option="scorer", arch="score_model")[0].eval()
        _CACHE[key] = model.to(device) if device is not None else model
    return _CACHE[key]
