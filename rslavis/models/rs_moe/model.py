"""``rs_moe``: RS-MoE, an Instruction Router over K lightweight LLM experts, on InstructBLIP's vision front.

Pipeline for a batch of images and instructions (``text_input``):

1. Vision front (InstructBLIP's, the same transformers modules): a ViT encodes the image,
   the Q-Former reads it and the instruction through ``num_query_tokens`` queries.
2. Instruction Router (:mod:`rslavis.models.rs_moe.router`): from the pooled query
   outputs, a gate per expert and P soft prompt vectors per expert, conditioned on the
   image. Optionally each expert also reads a text template for its sub-task
   (``expert_templates``: names from ``templates``: objects, counts, layout, scene),
   written before the instruction.
3. Experts: K decoder-only LLMs. Expert k reads
   ``[visual_k (+ prompt_k)] [BOS] template_k instruction`` where ``visual_k`` is its own
   projection of the query outputs (``prompt_mode: add`` adds the prompt to the visual
   tokens through a zero-initialised gate; ``prepend`` inserts it as P more tokens).
4. Fusion (``fusion``): at every step, ``prob`` mixes the experts' next-token
   distributions, ``p(y_t) = sum_k g_k p_k(y_t)`` (default); ``logit`` takes
   ``softmax(sum_k g_k z_k)``. Either way the model is an ordinary autoregressive
   distribution, so teacher forcing, greedy and beam search (:meth:`generate`) and SCST
   sampling (:meth:`sample`, through :mod:`rslavis.models.sampling`) are exact.
   ``top_k`` keeps the k largest gates per sequence: in teacher forcing (training,
   answer ranking) each expert runs only on the rows routed to it; decoding runs an
   expert on the whole batch unless no row uses it.

Two stages (``stage``):

- 1: all experts (and their projections) start as copies of one dense model
  (``init_from``: a saved ``instructblip`` directory or run checkpoint, a Hugging Face
  InstructBLIP directory, or a dense causal-LLM directory with the front taken from
  ``front_from``; null: one random tiny model). The LLMs are frozen; the router and the
  projections train (the ViT/Q-Former too unless ``freeze_vit``/``freeze_qformer``). With
  ``prompt_mode: add`` and no templates the mixture starts *equal* to the dense model,
  whatever the gates.
- 2: ``init_from`` is a stage-1 ``rs_moe`` (run checkpoint ``.pth`` or ``save_pretrained``
  directory). LoRA adapters (peft; ``lora_targets`` default ``ffn``, ``lora_r`` default 1,
  the published rank) are added to every expert; only the adapters and the router train,
  with ``load_balance_weight * load_balancing_loss(gate probabilities)`` added to the loss.

Experts are decoder-only (OPT, LLaMA-family, ...); a T5 InstructBLIP cannot seed them.
A run writes ``<run>/tokenizer/`` (LLM tokenizer, ``qformer_tokenizer/``) and
``<run>/rs_moe_arch/`` (``config.json``, ``hf_config.json``), which is what lets a runner
checkpoint of that run be rebuilt (stage 2's ``init_from``, SCST's ``model.finetuned``).
"""

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch
from torch import nn

from rslavis.common.config import to_plain
from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.models.base_model import BaseModel
from rslavis.models.instructblip.model import (
    DEFAULT_PROMPT,
    IMAGE_TOKEN,
    QFORMER_TOKENIZER_DIR,
    InstructBLIP,
    _pad,
    add_image_token,
    dataset_texts,
    load_tokenizers,
    tiny_hf_config,
)
from rslavis.models.rs_moe.router import InstructionRouter, fuse, load_balancing_loss
from rslavis.models.tokenization import load_tokenizer, train_caption_tokenizer

logger = logging.getLogger(__name__)

ARCH_DIR = "rs_moe_arch"
STAGES = (1, 2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LLM1B_HINT = "a 1B-class causal LLM in Hugging Face layout (e.g. TinyLlama-1.1B, Qwen2.5-1.5B, OPT-1.3B)"


class VisionFront(nn.Module):
    """InstructBLIP's ViT, query tokens and Q-Former (the transformers modules), without projection or LLM."""

    def __init__(self, vision_model, qformer, query_tokens):
        super().__init__()
        self.vision_model, self.qformer, self.query_tokens = vision_model, qformer, query_tokens

    @classmethod
    def from_config(cls, config):
        """Randomly initialised modules of an ``InstructBlipConfig`` (weights loaded afterwards)."""
        from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel, InstructBlipVisionModel

        query = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        return cls(InstructBlipVisionModel._from_config(config.vision_config), InstructBlipQFormerModel._from_config(config.qformer_config), query)

    @classmethod
    def take(cls, hf_model):
        """The front of a built ``InstructBlipForConditionalGeneration`` (modules are shared, not copied)."""
        return cls(hf_model.vision_model, hf_model.qformer, hf_model.query_tokens)

    def forward(self, pixel_values, qformer_input_ids, qformer_attention_mask):
        """Query outputs (B, Q, Hq), as ``InstructBlipForConditionalGeneration.get_image_features`` computes them."""
        image = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        query = self.query_tokens.expand(image.shape[0], -1, -1)
        mask = torch.cat([torch.ones(query.shape[:-1], dtype=torch.long, device=image.device), qformer_attention_mask], 1)
        out = self.qformer(
            input_ids=qformer_input_ids, attention_mask=mask, query_embeds=query,
            encoder_hidden_states=image, encoder_attention_mask=image_mask, return_dict=True,
        )
        return out.last_hidden_state[:, : query.shape[1]]


@dataclass
class Encoded:
    """What the experts condition on, per row: instructions, gates and each expert's visual/prompt tokens."""

    prompts: List[str]
    gates: torch.Tensor  # (R, K) fusion weights
    probs: torch.Tensor  # (R, K) full softmax (load balancing)
    features: List[torch.Tensor]  # K x (R, S, D): what fills the image slots of expert k

    def repeat_interleave(self, n):
        if n == 1:
            return self
        return Encoded(
            [p for p in self.prompts for _ in range(n)], self.gates.repeat_interleave(n, 0), self.probs.repeat_interleave(n, 0),
            [f.repeat_interleave(n, 0) for f in self.features],
        )


def _read_tensors(directory, prefixes):
    """``{name: tensor}`` of the tensors in ``directory``'s safetensors files whose names start with
    one of ``prefixes`` (a leading ``model.`` wrapper is dropped); reads only those tensors."""
    from safetensors import safe_open

    d = Path(directory)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{d}: no *.safetensors weights found (only safetensors checkpoints are read).")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                bare = name[len("model."):] if name.startswith("model.") else name
                if bare.startswith(tuple(prefixes)):
                    out[bare] = st.get_tensor(name)
    return out


def _load_weights(model, path, option):
    """Weights of a runner checkpoint into ``model``; a mismatch names ``option``."""
    from rslavis.common.checkpoint import load_checkpoint, load_model_state

    return load_model_state(model, load_checkpoint(path), f"{option} {path}")


def _embedding_std(llm):
    w = llm.get_input_embeddings().weight
    return 0.02 if w.is_meta else float(w.detach().float().std())  # meta (--dry-run): sizes only


def _read_json(path):
    return json.loads(Path(path).read_text())


def _source_kind(path, option):
    """What a dense/stage-1 source is: ``rs_moe``, ``instructblip`` (rslavis save dir, HF dir, or run
    checkpoint), ``instructblip_hf`` or ``llm`` (a causal-LLM directory)."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        cfg_yaml = p.parent / "config.yaml"
        if not cfg_yaml.is_file():
            raise ConfigError(f"{option} {p}: a checkpoint file, but its run folder has no config.yaml to rebuild the model from.")
        from omegaconf import OmegaConf

        arch = OmegaConf.load(cfg_yaml).get("model", {}).get("arch")
        if arch not in ("rs_moe", "instructblip"):
            raise ConfigError(f"{option} {p}: a checkpoint of a {arch!r} run; valid sources: rs_moe or instructblip runs.")
        return arch
    if not p.is_dir():
        raise ConfigError(f"{option}: not found: {p} (stage 1: a dense instructblip run checkpoint .pth or save directory, or a local model directory; stage 2: a stage-1 rs_moe run checkpoint or save directory).")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{option} {p}: no config.json (expected a save_pretrained directory or a Hugging Face model directory).")
    cfg = _read_json(p / "config.json")
    if cfg.get("arch") in ("rs_moe", "instructblip"):
        return cfg["arch"]
    if cfg.get("model_type") == "instructblip":
        return "instructblip_hf"
    return "llm"


@registry.register_model("rs_moe")
class RSMoE(BaseModel):
    """RS-MoE (see module docstring); config keys (``configs/models/rs_moe/*.yaml``):

    ``stage`` (1 | 2), ``init_from``, ``front_from``, ``tokenizer_path``, ``num_experts``,
    ``vision``/``qformer``/``llm``/``num_query_tokens`` (tiny sizes), ``prompt_mode``
    (add | prepend), ``num_prompt_tokens`` (prepend), ``templates``, ``expert_templates``,
    ``fusion`` (prob | logit), ``top_k``, ``gate_temperature``, ``load_balance_weight``,
    ``freeze_vit``, ``freeze_qformer`` (stage 1), ``lora_r``, ``lora_alpha``,
    ``lora_dropout``, ``lora_targets`` (stage 2), ``prompt``, ``max_txt_len``,
    ``max_output_txt_len``, ``qformer_max_len``, ``dtype``.
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/rs_moe/tiny.yaml",
        "llm1b": "configs/models/rs_moe/llm1b.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny"

    def __init__(self, cfg, tokenizer=None, qformer_tokenizer=None, hf_config=None):
        super().__init__()
        self.cfg = dict(to_plain(cfg) or {})
        c = self.cfg
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self.front = self.router = self.projections = self.experts = None
        self.tokenizer = self.qformer_tokenizer = self.hf_config = None
        self.stage = int(c.get("stage") or 1)
        if self.stage not in STAGES:
            raise ConfigError(f"model.stage: {c.get('stage')!r} is invalid; valid: 1 (router + projections, LLMs frozen), 2 (LoRA + router).")
        self.num_experts = int(c.get("num_experts") or 3)
        if self.num_experts < 1:
            raise ConfigError(f"model.num_experts: {self.num_experts} must be >= 1.")
        self.fusion = str(c.get("fusion") or "prob")
        fuse([torch.zeros(1, 1)], torch.ones(1, 1), self.fusion)  # validates the rule name early
        self.prompt = c.get("prompt") or DEFAULT_PROMPT
        self.max_txt_len = int(c.get("max_txt_len", 64))
        self.max_output_txt_len = int(c.get("max_output_txt_len", 40))
        self.qformer_max_len = int(c.get("qformer_max_len", 64))
        self.load_balance_weight = float(c.get("load_balance_weight") or 0.0)
        self.expert_templates = self._templates()
        self.ddp_find_unused_parameters = c.get("top_k") is not None  # skipped experts get no gradient

        model_type = c.get("model_type") or self.DEFAULT_MODEL_TYPE
        init_from = c.get("init_from")
        if tokenizer is None and c.get("tokenizer_path"):
            tokenizer, qformer_tokenizer = load_tokenizers(c["tokenizer_path"], "model.tokenizer_path")
        if hf_config is not None:  # rebuilding a saved model: skeleton only, weights come next
            self._skeleton(hf_config, tokenizer, qformer_tokenizer)
        elif init_from:
            self._init_from(init_from, tokenizer, qformer_tokenizer)
        elif model_type != "tiny":
            raise ConfigError(
                f"model.init_from is not set for model_type {model_type!r}: give a local directory holding {LLM1B_HINT} "
                "(and model.front_from: a local InstructBLIP directory for the ViT and Q-Former); nothing is downloaded."
            )
        elif self.stage == 2:
            raise ConfigError("model.stage 2 needs model.init_from: a stage-1 rs_moe run checkpoint (.pth) or save_pretrained directory.")
        elif tokenizer is not None:
            self._build_tiny(tokenizer, qformer_tokenizer)
        # else: tiny, built in prepare_for_training once the tokenizers are fitted

    @property
    def num_query_tokens(self):
        return int(self.hf_config.num_query_tokens)

    @property
    def num_image_slots(self):
        return self.num_query_tokens + (self.router.num_prompt_tokens if self.router.prompt_mode == "prepend" else 0)

    def _templates(self):
        names = self.cfg.get("expert_templates")
        if not names:
            return [""] * self.num_experts
        table = dict(self.cfg.get("templates") or {})
        if len(names) != self.num_experts:
            raise ConfigError(f"model.expert_templates: {len(names)} names for num_experts={self.num_experts}; give one per expert (or null).")
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ConfigError(f"model.expert_templates: {unknown[0]!r} is not in model.templates; valid: {', '.join(sorted(table)) or '(none)'}.")
        return [str(table[n]).strip() for n in names]

    # ------------------------------------------------------------------ building
    def _skeleton(self, hf_config, tokenizer, qformer_tokenizer, llm=None, front=None, projection=None):
        """Front, K experts (copies of ``llm`` or of one random LLM), K projections, router; then the stage's freezing."""
        from transformers import AutoModelForCausalLM

        if tokenizer is None or qformer_tokenizer is None:
            raise ConfigError("rs_moe needs an LLM tokenizer and a Q-Former tokenizer (model.tokenizer_path with qformer_tokenizer/).")
        if not hf_config.use_decoder_only_language_model:
            raise ConfigError("rs_moe: the experts must be decoder-only LLMs (OPT, LLaMA, ...); this source has an encoder-decoder (T5) LLM.")
        if hf_config.image_token_index is None:
            hf_config.image_token_index = add_image_token(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.hf_config, self.tokenizer, self.qformer_tokenizer = hf_config, tokenizer, qformer_tokenizer
        self.image_token_id = int(hf_config.image_token_index)
        self.front = front if front is not None else VisionFront.from_config(hf_config)
        if llm is None:
            llm = AutoModelForCausalLM.from_config(hf_config.text_config)
        if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(tokenizer))
        self.experts = nn.ModuleList([llm] + [copy.deepcopy(llm) for _ in range(self.num_experts - 1)])
        q_dim, d = hf_config.qformer_config.hidden_size, llm.get_input_embeddings().embedding_dim
        if projection is None or projection.out_features != d:
            projection = nn.Linear(q_dim, d)
        self.projections = nn.ModuleList([projection] + [copy.deepcopy(projection) for _ in range(self.num_experts - 1)])
        mode = self.cfg.get("prompt_mode") or "add"
        self.router = InstructionRouter(
            q_dim, d, self.num_experts,
            num_prompt_tokens=self.num_query_tokens if mode == "add" else int(self.cfg.get("num_prompt_tokens") or 8),
            prompt_mode=mode, top_k=self.cfg.get("top_k"), temperature=float(self.cfg.get("gate_temperature") or 1.0),
            init_std=_embedding_std(llm),
        )
        self._configure_stage()
        self.to(self.device)

    def _configure_stage(self):
        for p in self.parameters():
            p.requires_grad = False
        for p in self.router.parameters():
            p.requires_grad = True
        if self.stage == 1:
            for p in self.projections.parameters():
                p.requires_grad = True
            if not self.cfg.get("freeze_vit", False):
                for p in self.front.vision_model.parameters():
                    p.requires_grad = True
            if not self.cfg.get("freeze_qformer", False):
                for p in self.front.qformer.parameters():
                    p.requires_grad = True
                self.front.query_tokens.requires_grad = True
            return
        from rslavis.models.lora import apply_lora

        for expert in self.experts:
            if not any("lora_" in n for n, _ in expert.named_parameters()):  # a stage-2 source already has them
                apply_lora(
                    expert, r=int(self.cfg.get("lora_r") or 1), alpha=self.cfg.get("lora_alpha", 2),
                    dropout=self.cfg.get("lora_dropout", 0.05), targets=self.cfg.get("lora_targets") or "ffn",
                )
            for n, p in expert.named_parameters():
                p.requires_grad = "lora_" in n

    def _build_tiny(self, tokenizer, qformer_tokenizer):
        """One random dense tiny InstructBLIP (OPT LLM), copied into every expert."""
        from transformers import InstructBlipForConditionalGeneration

        cfg = dict(self.cfg, model_type="tiny_opt")
        cfg["llm"] = dict(cfg.get("llm") or {}, type=(cfg.get("llm") or {}).get("type", "opt"))
        hf_config = tiny_hf_config(cfg, tokenizer, qformer_tokenizer, add_image_token(tokenizer))
        dense = InstructBlipForConditionalGeneration(hf_config)
        self._skeleton(hf_config, tokenizer, qformer_tokenizer, llm=dense.language_model, front=VisionFront.take(dense), projection=dense.language_projection)

    def _init_from(self, path, tokenizer, qformer_tokenizer):
        option = "model.init_from"
        p = Path(str(path)).expanduser()
        if self.cfg.get("model_type") == "llm1b" and not p.exists():
            raise ConfigError(
                f"{option}: not found: {p}. model_type llm1b reads {LLM1B_HINT} from a local directory "
                f"(e.g. `huggingface-cli download TinyLlama/TinyLlama-1.1B-Chat-v1.0 --local-dir {p}` on a machine with internet); nothing is downloaded."
            )
        kind = _source_kind(p, option)
        if self.stage == 2 and kind != "rs_moe":
            raise ConfigError(f"{option} {p}: stage 2 starts from a stage-1 rs_moe (run checkpoint or save_pretrained directory), not a {kind} model.")
        if self.stage == 1 and kind == "rs_moe":
            raise ConfigError(f"{option} {p}: an rs_moe model; stage 1 starts from one dense model (instructblip or an LLM directory). Use stage: 2.")
        if kind == "rs_moe":
            src = RSMoE.load(p)
            if src.num_experts != self.num_experts:
                raise ConfigError(f"model.num_experts {self.num_experts} differs from the {src.num_experts} experts of {p}.")
            if src.router.prompt_mode != (self.cfg.get("prompt_mode") or "add"):
                raise ConfigError(f"model.prompt_mode differs from {p}'s {src.router.prompt_mode!r}.")
            self.hf_config, self.tokenizer, self.qformer_tokenizer = src.hf_config, src.tokenizer, src.qformer_tokenizer
            self.image_token_id = src.image_token_id
            self.front, self.experts, self.projections, self.router = src.front, src.experts, src.projections, src.router  # skeleton's order
            # routing settings are not weights: this config's values apply
            top_k = self.cfg.get("top_k")
            if top_k is not None and not 1 <= int(top_k) <= self.num_experts:
                raise ConfigError(f"model.top_k: {top_k} must be between 1 and num_experts={self.num_experts} (null: every expert).")
            self.router.top_k = None if top_k is None else int(top_k)
            self.router.temperature = float(self.cfg.get("gate_temperature") or 1.0)
            self._configure_stage()
            self.to(self.device)
        elif kind in ("instructblip", "instructblip_hf"):
            blip = self._load_instructblip(p, kind)
            m = blip.model
            self._skeleton(copy.deepcopy(m.config), blip.tokenizer, blip.qformer_tokenizer, llm=m.language_model, front=VisionFront.take(m), projection=m.language_projection)
        else:
            self._init_from_llm(p)
        logger.info("rs_moe stage %d: %d experts initialised from %s (%s)", self.stage, self.num_experts, p, kind)

    def _load_instructblip(self, p, kind):
        from rslavis.models.instructblip.model import InstructBLIP

        if kind == "instructblip_hf":
            return InstructBLIP({"pretrained": str(p), "model_type": "rs_moe_source", "dtype": self.cfg.get("dtype") or "float32"})
        if p.is_dir():
            return InstructBLIP.from_pretrained(p)
        from omegaconf import OmegaConf

        mcfg = OmegaConf.to_container(OmegaConf.load(p.parent / "config.yaml").model, resolve=True)
        tok_dir = p.parent / "tokenizer"
        if not mcfg.get("tokenizer_path") and tok_dir.is_dir():
            mcfg["tokenizer_path"] = str(tok_dir)
        return _load_weights(InstructBLIP(mcfg), p, "model.init_from")

    def _init_from_llm(self, p):
        """A dense causal LLM directory; the ViT/Q-Former (and their tokenizer) come from ``front_from``."""
        from transformers import AutoModelForCausalLM, InstructBlipConfig

        front_dir = self.cfg.get("front_from")
        if not front_dir:
            raise ConfigError(f"model.init_from {p} is an LLM directory: set model.front_from to a local InstructBLIP directory (ViT + Q-Former + qformer_tokenizer/).")
        fd = Path(str(front_dir)).expanduser()
        if not fd.is_dir():
            raise ConfigError(f"model.front_from: directory not found: {fd} (a local InstructBLIP in Hugging Face layout, or an instructblip save_pretrained directory).")
        dtype = DTYPES.get(str(self.cfg.get("dtype") or "float32"))
        if dtype is None:
            raise ConfigError(f"model.dtype: {self.cfg.get('dtype')!r} is unknown; valid: {', '.join(DTYPES)}.")
        llm = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=dtype)
        tok = load_tokenizer(p, option="model.init_from")
        qtok = load_tokenizers(fd, "model.front_from")[1] if (fd / QFORMER_TOKENIZER_DIR).is_dir() else load_tokenizers(fd / "tokenizer", "model.front_from")[1]
        front_cfg = InstructBlipConfig.from_json_file(str(fd / ("hf_config.json" if (fd / "hf_config.json").is_file() else "config.json")))
        hf_config = InstructBlipConfig(
            vision_config=front_cfg.vision_config.to_dict(), qformer_config=front_cfg.qformer_config.to_dict(),
            text_config=llm.config.to_dict(), num_query_tokens=front_cfg.num_query_tokens, image_token_index=add_image_token(tok),
        )
        front = VisionFront.from_config(hf_config)
        from rslavis.models.meta import on_meta

        tensors = {} if on_meta() else _read_tensors(fd, ("vision_model.", "qformer.", "query_tokens", "language_projection."))  # --dry-run reads no weights
        missing, _ = front.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("language_projection.")}, strict=False)
        if missing and not on_meta():
            raise ConfigError(f"model.front_from {fd}: weights missing for {missing[0]} (and {len(missing) - 1} more); is it an InstructBLIP checkpoint?")
        proj_state = {k[len("language_projection."):]: v for k, v in tensors.items() if k.startswith("language_projection.")}
        projection = None
        if proj_state and proj_state["weight"].shape[0] == llm.get_input_embeddings().embedding_dim:
            projection = nn.Linear(*reversed(proj_state["weight"].shape))
            projection.load_state_dict(proj_state)
        self._skeleton(hf_config, tok, qtok, llm=llm, front=front, projection=projection)

    def base_weight_sources(self):
        src = self.cfg.get("init_from")
        if not src:
            return {}
        return {"experts.": str(src), "projections.": str(src), "front.": str(self.cfg.get("front_from") or src)}

    def prepare_for_training(self, datasets, output_dir):
        """Tiny types without tokenizers: fit them on the training text and build; always save the
        tokenizers and the architecture beside the run's checkpoints."""
        if self.experts is None:
            targets, instructions = dataset_texts(datasets)
            if not targets:
                raise ConfigError("model.tokenizer_path is not set and no training texts were found to fit the tokenizers on.")
            instructions = sorted(set(instructions) | {self.prompt})
            vocab = int(self.cfg.get("tokenizer_vocab_size", 2000))
            templates = [t for t in (self.cfg.get("templates") or {}).values() if t]
            tok = train_caption_tokenizer(targets + instructions + templates, vocab_size=vocab)
            qtok = train_caption_tokenizer(instructions, vocab_size=vocab)
            self._build_tiny(tok, qtok)
        if output_dir is not None:
            from rslavis.common.dist_utils import is_main_process

            if is_main_process():
                self.save_architecture(output_dir)

    # ------------------------------------------------------------------ inputs
    def _require_model(self):
        if self.experts is None:
            raise RslavisError("rs_moe: the model is not built yet (set model.tokenizer_path or model.init_from, or call prepare_for_training).")

    def _pixels(self, samples):
        if "image" not in samples:
            raise ConfigError("rs_moe needs samples with 'image' (its ViT reads pixels).")
        image = samples["image"].to(self.device)
        expected = int(self.hf_config.vision_config.image_size)
        if tuple(image.shape[-2:]) != (expected, expected):
            raise ConfigError(
                f"rs_moe: images are {tuple(image.shape[-2:])} but the ViT expects {expected}x{expected}; "
                f"set the dataset's vis_processor image_size to {expected} (or model.vision.image_size for the tiny type)."
            )
        return image.to(next(self.front.parameters()).dtype)

    # same instruction defaulting and token-id helper as the dense model (use self.prompt, self.tokenizer)
    instructions = InstructBLIP.instructions
    _ids = InstructBLIP._ids

    def encode(self, samples):
        """Vision front + router for ``samples``: an :class:`Encoded`."""
        self._require_model()
        pixels = self._pixels(samples)
        prompts = self.instructions(samples, len(pixels))
        enc = self.qformer_tokenizer(list(prompts), padding="longest", truncation=True, max_length=self.qformer_max_len, return_tensors="pt")
        query = self.front(pixels, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        gates, probs, soft = self.router(query)
        features = []
        for k, proj in enumerate(self.projections):
            visual = proj(query.to(proj.weight.dtype))
            if self.router.prompt_mode == "add":
                features.append(visual + soft[:, k].to(visual.dtype))
            else:
                features.append(torch.cat([visual, soft[:, k].to(visual.dtype)], 1))
        return Encoded(list(prompts), gates, probs, features)

    def prefix_ids(self, k, prompts):
        """Left-padded ``[image]*S [BOS] template_k instruction`` of expert ``k``: ``(ids, mask)``."""
        tok = self.tokenizer
        image = [self.image_token_id] * self.num_image_slots
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        template = self.expert_templates[k]
        rows = [image + bos + self._ids(f"{template} {p}".strip(), self.max_txt_len) for p in prompts]
        ids, mask = _pad(rows, tok.pad_token_id, "left")
        counts = (ids == self.image_token_id).sum(1)
        if bool((counts != self.num_image_slots).any()):
            row = int((counts != self.num_image_slots).nonzero()[0])
            raise RslavisError(
                f"rs_moe: LLM input row {row} has {int(counts[row])} image tokens, expected {self.num_image_slots}; "
                f"does an instruction or template contain {IMAGE_TOKEN!r}?"
            )
        return ids.to(self.device), mask.to(self.device)

    def _embed(self, k, ids, features):
        emb = self.experts[k].get_input_embeddings()(ids)
        mask = (ids == self.image_token_id).unsqueeze(-1)
        return emb.masked_scatter(mask, features.to(emb.dtype))

    @staticmethod
    def _positions(mask):
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    def _active(self, gates):
        """Experts some row routes to (all of them unless ``top_k`` is set)."""
        return [k for k in range(self.num_experts) if bool((gates[:, k] > 0).any())]

    # ------------------------------------------------------------------ teacher forcing
    def expert_target_logits(self, enc, targets, target_mask, experts=None):
        """Per expert, logits (R, T, V) predicting ``targets`` (R, T) after its prefix.

        With ``top_k`` routing only the rows routed to expert k go through it (the other
        rows get zero logits, which their gate of 0 removes from the mixture)."""
        out = {}
        for k in experts if experts is not None else self._active(enc.gates):
            rows = (enc.gates[:, k] > 0).nonzero().flatten()
            part = len(rows) < len(enc.prompts)
            pick = (lambda t: t[rows]) if part else (lambda t: t)  # noqa: E731
            ids, mask = self.prefix_ids(k, [enc.prompts[i] for i in rows.tolist()] if part else enc.prompts)
            expert = self.experts[k]
            emb = torch.cat([self._embed(k, ids, pick(enc.features[k])), expert.get_input_embeddings()(pick(targets))], 1)
            full = torch.cat([mask, pick(target_mask)], 1)
            width = ids.shape[1]
            logits = expert(inputs_embeds=emb, attention_mask=full, position_ids=self._positions(full)).logits
            logits = logits[:, width - 1 : width - 1 + targets.shape[1]]
            if part:
                logits = logits.new_zeros(len(enc.prompts), *logits.shape[1:]).index_copy(0, rows, logits)
            out[k] = logits
        return out

    def target_logprobs(self, enc, targets, target_mask):
        """Mixture log-probabilities (R, T, V) of the next token at each target position."""
        per = self.expert_target_logits(enc, targets, target_mask)
        ks = sorted(per)
        return fuse([per[k] for k in ks], enc.gates[:, ks], self.fusion)

    def _targets(self, texts):
        tok = self.tokenizer
        rows = [self._ids(t, self.max_output_txt_len) + [tok.eos_token_id] for t in texts]
        ids, mask = _pad(rows, tok.pad_token_id, "right")
        return ids.to(self.device), mask.to(self.device)

    def forward(self, samples):
        """Mixture NLL of ``text_output`` (+ ``load_balance_weight`` x load-balancing loss); logs the mean gates."""
        enc = self.encode(samples)
        targets, tmask = self._targets(list(samples["text_output"]))
        logp = self.target_logprobs(enc, targets, tmask)
        nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lm = (nll * tmask).sum() / tmask.sum().clamp(min=1)
        lb = load_balancing_loss(enc.probs)
        loss = lm + self.load_balance_weight * lb if self.load_balance_weight else lm
        out = {"loss": loss, "lm_loss": lm.detach(), "lb_loss": lb.detach()}
        for k, g in enumerate(enc.probs.detach().mean(0)):
            out[f"gate/{k}"] = g
        return out

    # ------------------------------------------------------------------ decoding
    def _start(self, enc):
        """First mixture log-probs (R, V) after every active expert's prefix, and the decoding state."""
        ks = self._active(enc.gates)
        logits, caches = [], {}
        for k in ks:
            ids, mask = self.prefix_ids(k, enc.prompts)
            pos = self._positions(mask)
            o = self.experts[k](inputs_embeds=self._embed(k, ids, enc.features[k]), attention_mask=mask, position_ids=pos, use_cache=True)
            logits.append(o.logits[:, -1])
            caches[k] = (mask, pos[:, -1:], o.past_key_values)
        gates = enc.gates[:, ks]
        return fuse(logits, gates, self.fusion), (caches, gates)

    def _step(self, tokens, state):
        caches, gates = state
        logits, new = [], {}
        for k, (mask, last, cache) in caches.items():
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            last = last + 1
            o = self.experts[k](input_ids=tokens[:, None], attention_mask=mask, position_ids=last, past_key_values=cache, use_cache=True)
            logits.append(o.logits[:, -1])
            new[k] = (mask, last, o.past_key_values)
        return fuse(logits, gates, self.fusion), (new, gates)

    @staticmethod
    def _reorder(state, index):
        caches, gates = state
        out = {}
        for k, (mask, last, cache) in caches.items():
            cache.reorder_cache(index)
            out[k] = (mask[index], last[index], cache)
        return out, gates[index]

    def _decode(self, ids):
        return [c.strip() for c in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def sample(self, samples, n=1, temperature=1.0, max_len=30, min_len=0, return_logits=False, greedy=False, generator=None, **kwargs):
        """``n`` captions per image (image-major rows) sampled from the mixture with
        :func:`rslavis.models.sampling.sample_tokens`; ``logprobs``/``logits`` are those of the
        mixture (scaled by ``temperature``), with gradients to the router, the projections,
        the trainable front and the LoRA adapters."""
        from rslavis.models.sampling import sample_tokens

        enc = self.encode(samples).repeat_interleave(n)
        first, state = self._start(enc)
        tok = self.tokenizer
        res = sample_tokens(
            self._step, first, state, max_len=int(max_len), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            temperature=float(temperature), min_len=int(min_len), return_logits=return_logits, greedy=greedy, generator=generator,
        )
        return res.to_sample_output(self._decode(res.token_ids))

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        """Beam search over the mixture's log-probabilities (``num_beams=1``: greedy).

        Finished beams stay in the beam set, extended by padding at no cost; the best
        final beam maximises ``sum log p / length**length_penalty``. ``repetition_penalty``
        multiplies the (negative) log-probability of tokens already in the beam, then
        renormalises.
        """
        enc = self.encode(samples)
        b, nb = len(enc.prompts), max(1, int(num_beams))
        enc = enc.repeat_interleave(nb)
        tok = self.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        logp, state = self._start(enc)
        rows = b * nb
        scores = torch.zeros(b, nb, device=logp.device)
        scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
        seqs = torch.zeros(rows, 0, dtype=torch.long, device=logp.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=logp.device)
        for t in range(int(max_len)):
            logp = logp.float().clone()
            if repetition_penalty != 1.0 and seqs.shape[1]:
                seen = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, seqs, True)
                logp = torch.log_softmax(torch.where(seen, logp * float(repetition_penalty), logp), -1)
            if t < int(min_len):
                logp[:, eos] = float("-inf")
            logp[finished] = float("-inf")
            logp[finished, pad] = 0.0
            vocab = logp.shape[1]
            top, idx = (scores.reshape(rows, 1) + logp).view(b, nb * vocab).topk(nb, 1)
            src = (torch.arange(b, device=idx.device)[:, None] * nb + idx // vocab).reshape(-1)
            token = (idx % vocab).reshape(-1)
            seqs = torch.cat([seqs[src], token[:, None]], 1)
            finished = finished[src] | (token == eos)
            scores = top
            if bool(finished.all()) or t == int(max_len) - 1:
                break
            logp, state = self._step(token, self._reorder(state, src))
        is_eos = seqs == eos
        after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # positions after the first EOS
        lengths = (~after).sum(1).clamp(min=1).float()
        final = scores.reshape(-1) / lengths.pow(float(length_penalty))
        best = final.view(b, nb).argmax(1) + torch.arange(b, device=final.device) * nb
        out = seqs[best].masked_fill(after[best], pad)
        return self._decode(out)

    @torch.no_grad()
    def rank_answers(self, samples, candidates, chunk=64):
        """For each sample, the candidate with the highest mixture log-probability (answer + EOS)."""
        if not candidates:
            raise ConfigError("rs_moe.rank_answers: the candidate answer list is empty.")
        enc = self.encode(samples)
        b = len(enc.prompts)
        scores = []
        for start in range(0, len(candidates), chunk):
            part = candidates[start : start + chunk]
            targets, tmask = self._targets(part)
            c = len(part)
            logp = self.target_logprobs(enc.repeat_interleave(c), targets.repeat(b, 1), tmask.repeat(b, 1))
            tok_lp = logp.gather(-1, targets.repeat(b, 1).unsqueeze(-1)).squeeze(-1)
            scores.append((tok_lp * tmask.repeat(b, 1)).sum(1).view(b, c))
        best = torch.cat(scores, 1).argmax(1).tolist()
        return [candidates[i] for i in best]

    # ------------------------------------------------------------------ accounting
    def parameter_summary(self):
        """``{total, trainable, active_per_token}``: active counts the front, router, and the
        projections and LLMs of the ``top_k`` (all K when unset) experts a token goes through."""
        total, trainable = self.count_parameters()
        per_expert = sum(p.numel() for p in self.experts[0].parameters()) + sum(p.numel() for p in self.projections[0].parameters())
        k = self.router.top_k or self.num_experts
        return {"total": total, "trainable": trainable, "active_per_token": total - (self.num_experts - k) * per_expert}

    # ------------------------------------------------------------------ persistence
    def _portable_cfg(self):
        return dict(self.cfg, tokenizer_path=None, init_from=None, front_from=None)  # the saved folder is self-contained

    def save_architecture(self, directory):
        """``tokenizer/`` and ``rs_moe_arch/{config,hf_config}.json`` in a run folder."""
        from rslavis.common.checkpoint import atomic_write_json, atomic_write_text

        self._require_model()
        d = Path(directory)
        self.save_tokenizers(d / "tokenizer")
        atomic_write_json({"arch": "rs_moe", **self._portable_cfg()}, d / ARCH_DIR / "config.json", indent=2)
        atomic_write_text(self.hf_config.to_json_string(), d / ARCH_DIR / "hf_config.json")

    def save_tokenizers(self, directory):
        d = Path(directory)
        self.tokenizer.save_pretrained(str(d))
        self.qformer_tokenizer.save_pretrained(str(d / QFORMER_TOKENIZER_DIR))

    def save_pretrained(self, directory):
        """``config.json``, ``hf_config.json``, ``tokenizer/`` and ``model.safetensors``."""
        from safetensors.torch import save_model

        from rslavis.common.checkpoint import atomic_write_json, atomic_write_text

        self._require_model()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json({"arch": "rs_moe", **self._portable_cfg()}, d / "config.json", indent=2)
        atomic_write_text(self.hf_config.to_json_string(), d / "hf_config.json")
        self.save_tokenizers(d / "tokenizer")
        tmp = d / ".model.safetensors.tmp"
        save_model(self, str(tmp))
        os.replace(tmp, d / "model.safetensors")

    @classmethod
    def _from_arch(cls, cfg_file, hf_file, tok_dir):
        from transformers import InstructBlipConfig

        cfg = _read_json(cfg_file)
        cfg.pop("arch", None)
        tok, qtok = load_tokenizers(tok_dir, option=str(tok_dir))
        return cls(cfg, tokenizer=tok, qformer_tokenizer=qtok, hf_config=InstructBlipConfig.from_json_file(str(hf_file)))

    @classmethod
    def from_pretrained(cls, directory):
        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "hf_config.json").is_file():
            raise ConfigError(f"{d}: not a saved rs_moe model (config.json/hf_config.json missing); write one with save_pretrained.")
        from safetensors.torch import load_model

        model = cls._from_arch(d / "config.json", d / "hf_config.json", d / "tokenizer")
        load_model(model, str(d / "model.safetensors"))
        return model

    @classmethod
    def load(cls, path):
        """An rs_moe from a ``save_pretrained`` directory or a runner checkpoint of an rs_moe run."""
        p = Path(str(path))
        if p.is_dir():
            return cls.from_pretrained(p)
        run = p.parent
        if not (run / ARCH_DIR / "config.json").is_file():
            raise ConfigError(f"{p}: its run folder has no {ARCH_DIR}/ (written by rs_moe runs); cannot rebuild the model.")
        from rslavis.common.checkpoint import load_checkpoint, load_model_state

        ckpt = load_checkpoint(p)
        if not (ckpt.get("model_info") or {}).get("full", True):
            # trained tensors only: the frozen ones come from the run's own init_from/front_from, as in training
            from omegaconf import OmegaConf

            mcfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml").model, resolve=True)
            if not mcfg.get("tokenizer_path") and (run / "tokenizer").is_dir():
                mcfg["tokenizer_path"] = str(run / "tokenizer")
            model = cls(mcfg)
        else:
            model = cls._from_arch(run / ARCH_DIR / "config.json", run / ARCH_DIR / "hf_config.json", run / "tokenizer")
        return load_model_state(model, ckpt, f"model.init_from {p}")
