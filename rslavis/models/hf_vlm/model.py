"""``hf_vlm``: transformers' image-text-to-text models (Qwen2-VL, Qwen2.5-VL, LLaVA,
Idefics3/SmolVLM, PaliGemma) behind the rslavis model interface.

Family: ``model.family``, or read from ``config.json`` of ``model.pretrained`` (a local
Hugging Face directory: weights, processor, chat template; nothing is downloaded). Tiny
types (``model_type: tiny``) build the family's own class from a random config of the
sizes in ``model.vision``/``model.llm``, with a tokenizer fitted on the training text in
:meth:`prepare_for_training` and a processor of the family's class built locally
(:mod:`rslavis.models.hf_vlm.families`); the processor is saved to ``<run>/tokenizer``.

Prompt: the instruction (``text_input``, else ``model.prompt``) and the image go through
the processor's chat template as one user turn with the generation prompt
(PaliGemma: the instruction as is). Training appends ``answer + end token`` (Qwen
``<|im_end|>``, Idefics3 ``<end_of_utterance>``, else EOS) and the loss covers those
tokens only. Images arrive resized and normalised by the dataset's ``vis_processor``;
the HF image processor is told not to rescale or normalise again (set the dataset's
``mean``/``std`` to the checkpoint's ``image_mean``/``image_std`` for real weights).

``generate`` is transformers' ``generate`` (greedy/beam, KV cache). ``sample`` draws
with ``generate(do_sample=True)`` (KV cache, full vocabulary: ``top_k=0, top_p=1``) and
re-scores the drawn tokens in one teacher-forced pass with grad (:meth:`token_logprobs`),
the same split TRL makes; positions and masks of that pass are those ``generate`` uses,
which the tests check by greedy sampling equal to greedy generation.
"""

import logging

import torch

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.models.base_model import TOKENIZER_DIR, SampleOutput, local_pretrained_dir
from rslavis.models.decoding import generate_kwargs
from rslavis.models.hf_model import HFModel
from rslavis.models.hf_vlm.families import (  # noqa: F401  (fitted_tokenizer re-exported)
    _read_model_type,
    family_of_model_type,
    fitted_tokenizer,
    get_family,
    load_processor,
)
from rslavis.models.hf_vlm.inputs import VLMInputs
from rslavis.models.tokenization import training_texts

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Describe the image briefly."
PROCESSOR_DIR = TOKENIZER_DIR  # the runner's/SCST's name for the fitted text files beside checkpoints


@registry.register_model("hf_vlm")
class HFVLM(VLMInputs, HFModel):
    """Config keys (see ``configs/models/hf_vlm/*.yaml``): ``family``, ``pretrained`` (local HF
    directory), ``tokenizer_path`` (a saved processor), ``vision``/``llm`` (tiny sizes),
    ``tokenizer_vocab_size``, ``prompt``, ``max_output_txt_len`` (answer tokens in
    training; instructions are never cut, so the image tokens stay whole), ``freeze_vision``, ``freeze_projector``, ``freeze_llm``, ``lora_r`` (0:
    off), ``lora_alpha``, ``lora_dropout``, ``lora_targets`` (attn | ffn | all | module names),
    ``dtype`` (float32 | bfloat16 | float16), ``answer_end_token`` (override of the family's).
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/hf_vlm/tiny.yaml",
        "local": "configs/models/hf_vlm/local.yaml",
    }
    DEFAULT_MODEL_TYPE = "local"  # `arch: hf_vlm` + `pretrained: DIR` is a whole model section
    HF_CLASS = "AutoModelForImageTextToText"
    TOKENIZER_ARG = "processor"
    CHECKPOINT_KIND = "a Hugging Face image-text-to-text checkpoint"

    def __init__(self, cfg, processor=None, hf_config=None):
        super().__init__(cfg)
        self.processor = None
        self.prompt = self.cfg.get("prompt") or DEFAULT_PROMPT
        self.max_output_txt_len = int(self.cfg.get("max_output_txt_len") or 40)
        if self.cfg.get("pretrained"):
            p = self.pretrained_dir()
            self.family = family_of_model_type(_read_model_type(p, "model.pretrained"), f"model.pretrained {p}")
            if self.cfg.get("family") and get_family(self.cfg["family"]).name != self.family.name:
                raise ConfigError(f"model.family {self.cfg['family']!r} contradicts {p}/config.json (a {self.family.name} model).")
        else:
            self.family = get_family(self.cfg.get("family") or "qwen2_5_vl")
        self.build_or_load(hf_config, processor=processor)

    # ------------------------------------------------------------------ building
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def pretrained_dir(self):
        return local_pretrained_dir(self.cfg["pretrained"], "Qwen/Qwen2.5-VL-3B-Instruct", what=self.CHECKPOINT_KIND)

    def _build(self, processor, hf_config=None):
        if hf_config is None:
            hf_config = self.family.build_config(self.cfg, processor.tokenizer, self._end_id(processor.tokenizer))
        self._attach(self.hf_class().from_config(hf_config), processor)

    def fitted_tokenizers(self, datasets):
        """A processor of the family around a tokenizer fitted on the training text."""
        targets, instructions = training_texts(datasets, self.prompt)
        texts = targets + instructions
        tok = fitted_tokenizer(texts, self.family, int(self.cfg.get("tokenizer_vocab_size") or 2000))
        logger.info("hf_vlm %s: fitted a %d-token tokenizer on %d texts", self.family.name, len(tok), len(texts))
        return {"processor": self.family.build_processor(self.cfg, tok)}

    def _end_id(self, tok):
        token = self.cfg.get("answer_end_token") or self.family.end_token
        if token is None:
            return tok.eos_token_id
        tid = tok.convert_tokens_to_ids(token)
        if tid is None or tid == tok.unk_token_id:
            raise ConfigError(f"model.answer_end_token: {token!r} is not a token of the tokenizer.")
        return tid

    def _attach(self, model, processor):
        """Special ids, generation settings, LoRA and freezing on a built transformers model."""
        tok = processor.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        self.processor = processor
        self.end_id = self._end_id(tok)
        self.eos_ids = sorted({self.end_id, tok.eos_token_id} - {None})
        gen = model.generation_config
        gen.pad_token_id, gen.eos_token_id = tok.pad_token_id, self.eos_ids
        self.suppress_ids = self._placeholder_ids(model.config, tok)
        r = int(self.cfg.get("lora_r") or 0)
        if r > 0:
            from rslavis.models.lora import apply_lora

            targets = self.cfg.get("lora_targets") or "attn"
            apply_lora(self._module(model, self.family.llm[0]), r=r, alpha=self.cfg.get("lora_alpha", 16),
                       dropout=self.cfg.get("lora_dropout", 0.05), targets=targets, family="llama")
            for p in model.lm_head.parameters():  # the LM head belongs to the LLM (LLaVA's is not tied to the embeddings)
                p.requires_grad = False
        frozen = {"freeze_vision": self.family.vision, "freeze_projector": self.family.projector, "freeze_llm": self.family.llm}
        projector = tuple(self.family.projector)
        for key, paths in frozen.items():
            if not self.cfg.get(key, False):
                continue
            for path in paths:
                for name, p in self._module(model, path).named_parameters(prefix=path):
                    if "lora_" in name:  # adapters stay trainable in a frozen LLM
                        continue
                    if key == "freeze_vision" and name.startswith(projector):  # Qwen's merger lives in the vision tower
                        continue
                    p.requires_grad = False
            if key == "freeze_llm":
                for name, p in model.lm_head.named_parameters():
                    p.requires_grad = False
        self.model = model.to(self.device)

    def _placeholder_ids(self, config, tok):
        """Tokens an answer must never contain: image/video placeholders (a sampled one would be taken for
        an image slot when the answer is re-scored) and padding."""
        ids = {getattr(config, k, None) for k in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
        for t in ("<fake_token_around_image>", "<global-img>", "<image>", "<|image_pad|>", "<|video_pad|>"):
            if t in tok.get_vocab():
                ids.add(tok.convert_tokens_to_ids(t))
        ids.add(tok.pad_token_id)
        return sorted(i for i in ids if i is not None and i not in self.eos_ids and i < len(tok))

    @staticmethod
    def _module(model, path):
        m = model.model
        for part in path.split("."):
            if not hasattr(m, part):
                raise RslavisError(f"hf_vlm: {type(model).__name__} has no module {path!r}; the family table does not match this transformers version.")
            m = getattr(m, part)
        return m

    # ------------------------------------------------------------------ training / generation
    def forward(self, samples):
        inputs = self.prompt_inputs(samples)
        answers = self._answer_ids(list(samples["text_output"]))
        width = max(len(a) for a in answers)
        pad = self.tokenizer.pad_token_id
        comp = torch.full((len(answers), width), pad, dtype=torch.long)
        cmask = torch.zeros((len(answers), width), dtype=torch.long)
        for i, a in enumerate(answers):
            comp[i, : len(a)] = torch.tensor(a)
            cmask[i, : len(a)] = 1
        comp, cmask = comp.to(self.device), cmask.to(self.device)
        full = self.extend_inputs(inputs, comp, cmask)
        logits = self.model(**full, logits_to_keep=width + 1).logits[:, :-1]
        labels = comp.masked_fill(cmask == 0, -100)  # loss on the answer (and its end token) only
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return {"loss": loss}

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, repetition_penalty=1.0, length_penalty=1.0, **kwargs):
        """Greedy or beam-search answers with transformers' ``generate`` (KV cache)."""
        inputs = self.prompt_inputs(samples)
        width = inputs["input_ids"].shape[1]
        out = self.model.generate(
            **inputs, **generate_kwargs(max_len, min_len, num_beams, repetition_penalty, length_penalty),
            eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id, suppress_tokens=self.suppress_ids,
        )
        return self._decode(out[:, width:])

    def token_logprobs(self, inputs, tokens, mask, temperature=1.0, min_len=0, return_logits=False):
        """Per-token log-probs (with grad) of ``tokens`` (R, T) after the prompts ``inputs``, under
        ``softmax(logits / temperature)`` with placeholder tokens barred and the end tokens barred
        before ``min_len`` (the distribution ``sample`` draws from). Returns ``(logprobs * mask,
        logits or None)``."""
        width = tokens.shape[1]
        full = self.extend_inputs(inputs, tokens, mask)
        logits = self.model(**full, logits_to_keep=width + 1).logits[:, :-1].float() / float(temperature)
        logits = logits.clone()
        logits[..., self.suppress_ids] = float("-inf")
        if min_len > 0:
            logits[:, : int(min_len), self.eos_ids] = float("-inf")
        logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        logp = torch.where(mask > 0, logp, torch.zeros_like(logp))  # padding is barred (-inf): never multiply it by 0
        return logp, (logits if return_logits else None)

    def sample(self, samples, n=1, temperature=1.0, max_len=30, min_len=0, return_logits=False, greedy=False, generator=None, **kwargs):
        """``n`` answers per image (rows image-major), :class:`SampleOutput` conventions (see
        :mod:`rslavis.models.decoding`): drawn by ``generate`` from the full distribution at
        ``temperature`` (``greedy``: argmax), re-scored with grad by :meth:`token_logprobs`."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; use greedy=True for argmax decoding.")
        inputs = self.repeat_inputs(self.prompt_inputs(samples), n)
        width = inputs["input_ids"].shape[1]
        tok = self.tokenizer
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        with torch.no_grad():
            gen = self.model.generate(
                **inputs, max_new_tokens=int(max_len), min_new_tokens=int(min_len), num_beams=1, repetition_penalty=1.0,
                eos_token_id=self.eos_ids, pad_token_id=tok.pad_token_id, suppress_tokens=self.suppress_ids, **sampling,
            )
        tokens = gen[:, width:]
        mask = self.completion_mask(tokens)
        tokens = tokens.masked_fill(mask == 0, tok.pad_token_id)
        logp, logits = self.token_logprobs(inputs, tokens, mask, temperature, min_len, return_logits)
        return SampleOutput(tokens, logp, mask, self._decode(tokens), logits)

    # ------------------------------------------------------------------ persistence
    # (BaseModel.save_pretrained writes config.json, hf_config.json, tokenizer/ (the processor), model.safetensors)
    def portable_config(self):
        return dict(super().portable_config(), family=self.family.name)

    def save_tokenizers(self, directory):
        self.processor.save_pretrained(str(directory))

    @classmethod
    def tokenizer_parts(cls, directory, option):
        return {"processor": load_processor(directory, option)}
