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
   sampling (:meth:`sample`), all through :mod:`rslavis.models.decoding`, are exact.
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

import logging
from pathlib import Path

import torch

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.models.base_model import read_hf_config
from rslavis.models.instructblip.parts import IMAGE_TOKEN, InstructBlipBase, load_tokenizers, pad_rows
from rslavis.models.loading import load_weights
from rslavis.models.rs_moe.experts import LLM1B_HINT, ExpertBuilding, VisionFront, _read_json  # noqa: F401  (VisionFront re-exported)
from rslavis.models.rs_moe.mixture import Encoded, MixtureDecoding
from rslavis.models.rs_moe.router import fuse, load_balancing_loss

logger = logging.getLogger(__name__)

ARCH_DIR = "rs_moe_arch"
STAGES = (1, 2)


@registry.register_model("rs_moe")
class RSMoE(ExpertBuilding, MixtureDecoding, InstructBlipBase):
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
    LOCAL_PATH_KEYS = ("tokenizer_path", "init_from", "front_from")  # the saved folder is self-contained

    def __init__(self, cfg, tokenizer=None, qformer_tokenizer=None, hf_config=None):
        super().__init__(cfg)
        c = self.cfg
        self.front = self.router = self.projections = self.experts = None
        self.hf_config = None
        self.stage = int(c.get("stage") or 1)
        if self.stage not in STAGES:
            raise ConfigError(f"model.stage: {c.get('stage')!r} is invalid; valid: 1 (router + projections, LLMs frozen), 2 (LoRA + router).")
        self.num_experts = int(c.get("num_experts") or 3)
        if self.num_experts < 1:
            raise ConfigError(f"model.num_experts: {self.num_experts} must be >= 1.")
        self.fusion = str(c.get("fusion") or "prob")
        fuse([torch.zeros(1, 1)], torch.ones(1, 1), self.fusion)  # validates the rule name early
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
    def instructblip_config(self):
        return self.hf_config

    @property
    def vision_model(self):
        return self.front.vision_model

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

    # ------------------------------------------------------------------ inputs
    def _require_model(self):
        if self.experts is None:
            raise RslavisError("rs_moe: the model is not built yet (set model.tokenizer_path or model.init_from, or call prepare_for_training).")

    def encode(self, samples):
        """Vision front + router for ``samples``: an :class:`Encoded`."""
        self._require_model()
        pixels = self._pixels(samples)
        prompts = self.instructions(samples, len(pixels))
        query = self.front(pixels, *self.qformer_inputs(prompts))
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
        ids, mask = pad_rows(rows, tok.pad_token_id, "left")
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

    def _active(self, gates):
        """Experts some row routes to (all of them unless ``top_k`` is set)."""
        return [k for k in range(self.num_experts) if bool((gates[:, k] > 0).any())]

    def forward(self, samples):
        """Mixture NLL of ``text_output`` (+ ``load_balance_weight`` x load-balancing loss); logs the mean gates."""
        enc = self.encode(samples)
        targets, tmask = self.answer_targets(list(samples["text_output"]))
        logp = self.target_logprobs(enc, targets, tmask)
        nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lm = (nll * tmask).sum() / tmask.sum().clamp(min=1)
        lb = load_balancing_loss(enc.probs)
        loss = lm + self.load_balance_weight * lb if self.load_balance_weight else lm
        out = {"loss": loss, "lm_loss": lm.detach(), "lb_loss": lb.detach()}
        for k, g in enumerate(enc.probs.detach().mean(0)):
            out[f"gate/{k}"] = g
        return out

    # ------------------------------------------------------------------ accounting
    def parameter_summary(self):
        """``{total, trainable, active_per_token}``: active counts the front, router, and the
        projections and LLMs of the ``top_k`` (all K when unset) experts a token goes through."""
        total, trainable = self.count_parameters()
        per_expert = sum(p.numel() for p in self.experts[0].parameters()) + sum(p.numel() for p in self.projections[0].parameters())
        k = self.router.top_k or self.num_experts
        return {"total": total, "trainable": trainable, "active_per_token": total - (self.num_experts - k) * per_expert}

    # ------------------------------------------------------------------ persistence
    # (BaseModel.save_pretrained and InstructBlipBase write config.json, hf_config.json, tokenizer/, model.safetensors)
    def save_architecture(self, directory):
        """``tokenizer/`` and ``rs_moe_arch/{config,hf_config}.json`` in a run folder."""
        from rslavis.common.checkpoint import atomic_write_json, atomic_write_text

        self._require_model()
        d = Path(directory)
        self.save_tokenizers(d / "tokenizer")
        atomic_write_json({"arch": "rs_moe", **self.portable_config()}, d / ARCH_DIR / "config.json", indent=2)
        atomic_write_text(self.hf_config.to_json_string(), d / ARCH_DIR / "hf_config.json")

    @classmethod
    def load(cls, path):
        """An rs_moe from a ``save_pretrained`` directory or a runner checkpoint of an rs_moe run."""
        p = Path(str(path))
        if p.is_dir():
            return cls.from_pretrained(p)
        run = p.parent
        if not (run / ARCH_DIR / "config.json").is_file():
            raise ConfigError(f"{p}: its run folder has no {ARCH_DIR}/ (written by rs_moe runs); cannot rebuild the model.")
        from rslavis.common.checkpoint import load_checkpoint

        if not (load_checkpoint(p).get("model_info") or {}).get("full", True):
            # trained tensors only: the frozen ones come from the run's own init_from/front_from, as in training
            from omegaconf import OmegaConf

            mcfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml").model, resolve=True)
            if not mcfg.get("tokenizer_path") and (run / "tokenizer").is_dir():
                mcfg["tokenizer_path"] = str(run / "tokenizer")
            model = cls(mcfg)
        else:
            cfg = _read_json(run / ARCH_DIR / "config.json")
            cfg.pop("arch", None)
            parts = cls.tokenizer_parts(run / "tokenizer", str(run / "tokenizer"))
            model = cls(cfg, **parts, hf_config=read_hf_config(run / ARCH_DIR / "hf_config.json"))
        return load_weights(model, p, "model.init_from")
