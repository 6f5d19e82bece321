"""RS-MoE's experts and how they are initialised: the InstructBLIP vision front, K copies of one
dense LLM (a tiny random one, an ``instructblip`` save or run, a Hugging Face InstructBLIP, or
a causal-LLM directory with a separate front), one projection per expert, the router, and the
freezing of each stage (1: LLMs frozen; 2: LoRA on every expert). See :mod:`rslavis.models.rs_moe.model`.
"""

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn

from rslavis.common.errors import ConfigError
from rslavis.models.base_model import model_dtype
from rslavis.models.instructblip.parts import QFORMER_TOKENIZER_DIR, add_image_token, load_tokenizers, tiny_hf_config
from rslavis.models.loading import load_weights
from rslavis.models.rs_moe.router import InstructionRouter
from rslavis.models.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

LLM1B_HINT = "a 1B-class causal LLM in Hugging Face layout (e.g. TinyLlama-1.1B, Qwen2.5-1.5B, OPT-1.3B)"



def _embedding_std(llm):
    w = llm.get_input_embeddings().weight
    return 0.02 if w.is_meta else float(w.detach().float().std())  # meta (--dry-run): sizes only

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


class ExpertBuilding:
    """The building half of :class:`~rslavis.models.rs_moe.model.RSMoE` (a mixin: it sets
    ``front``, ``experts``, ``projections``, ``router``, the tokenizers and ``hf_config``)."""

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
            src = type(self).load(p)
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
        return load_weights(InstructBLIP(mcfg), p, "model.init_from")

    def _init_from_llm(self, p):
        """A dense causal LLM directory; the ViT/Q-Former (and their tokenizer) come from ``front_from``."""
        from transformers import AutoModelForCausalLM, InstructBlipConfig

        front_dir = self.cfg.get("front_from")
        if not front_dir:
            raise ConfigError(f"model.init_from {p} is an LLM directory: set model.front_from to a local InstructBLIP directory (ViT + Q-Former + qformer_tokenizer/).")
        fd = Path(str(front_dir)).expanduser()
        if not fd.is_dir():
            raise ConfigError(f"model.front_from: directory not found: {fd} (a local InstructBLIP in Hugging Face layout, or an instructblip save_pretrained directory).")
        dtype = model_dtype(self.cfg)
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
            templates = [t for t in (self.cfg.get("templates") or {}).values() if t]
            self._build_tiny(*self.fit_tokenizers(datasets, extra_texts=templates))
        if output_dir is not None:
            from rslavis.common.dist_utils import is_main_process

            if is_main_process():
                self.save_architecture(output_dir)
