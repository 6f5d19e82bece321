"""What an ``hf_vlm`` model reads: chat-template prompts with the image, processor outputs on the
model's device, prompts extended by completions (positions as ``generate`` computes them),
prompts repeated per sample, and the completion masks after the end token.

:class:`VLMInputs` is a part of :class:`rslavis.models.hf_vlm.model.HFVLM` (it reads the model's
``processor``, ``family``, ``model``, ``eos_ids`` and ``end_id``).
"""

import torch

from rslavis.common.errors import ConfigError, RslavisError


class VLMInputs:
    def prompt_text(self, instruction):
        """The instruction as one user turn with the image, through the processor's chat template."""
        if self.family.chat_template is None and not getattr(self.processor, "chat_template", None):
            return self.processor.image_token + instruction  # PaliGemma: the processor expands it, adds BOS and the newline
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _images(self, samples):
        if "image" not in samples:
            raise ConfigError("hf_vlm needs samples with 'image' (a feature cache's image_features cannot feed its vision tower).")
        return [im.float().cpu() for im in samples["image"]]

    def prompt_inputs(self, samples):
        """Left-padded processor outputs of the prompts (ids, mask, pixel values, grid sizes...)."""
        self._require_model()
        images = self._images(samples)
        texts = [self.prompt_text(p) for p in self.instructions(samples, len(images))]
        kwargs = {}
        if self.family.name == "idefics3":
            kwargs["images"] = [[im] for im in images]
        else:
            kwargs["images"] = images
        enc = self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)
        enc = {k: v for k, v in enc.items() if k != "labels"}  # PaliGemma's processor adds prompt labels; the answer is appended here
        dtype = self.model.dtype
        out = {}
        for k, v in enc.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        self._check_image_tokens(out)
        return out

    def _image_token_id(self):
        cfg = self.model.config
        for key in ("image_token_id", "image_token_index"):
            if getattr(cfg, key, None) is not None:
                return int(getattr(cfg, key))
        return None

    def _check_image_tokens(self, inputs):
        image_id = self._image_token_id()
        counts = (inputs["input_ids"] == image_id).sum(1)
        if bool((counts == 0).any()):
            raise RslavisError(
                f"hf_vlm: a prompt has no image token (id {image_id}); the chat template of {type(self.processor).__name__} "
                "did not place the image, so transformers would ignore it."
            )

    def _answer_ids(self, answers):
        tok = self.tokenizer
        return [tok(a, add_special_tokens=False)["input_ids"][: self.max_output_txt_len] + [self.end_id] for a in answers]

    def extend_inputs(self, inputs, completions, completion_mask, answer_type=True):
        """``inputs`` (left-padded prompts) followed by ``completions`` (R, T): ids, attention mask,
        position ids as ``generate`` computes them, and the token-type rows of the family."""
        ids = torch.cat([inputs["input_ids"], completions], 1)
        mask = torch.cat([inputs["attention_mask"], completion_mask.to(inputs["attention_mask"].dtype)], 1)
        out = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        out.update(input_ids=ids, attention_mask=mask)
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in inputs:
                fill = self.family.answer_token_type if (key == "token_type_ids" and self.family.answer_token_type is not None and answer_type) else 0
                out[key] = torch.cat([inputs[key], torch.full_like(completions, fill)], 1)
        if not self.family.uses_mrope:  # Qwen computes its 3-D positions from the mask itself
            pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            out["position_ids"] = pos + self.family.position_offset
        return out

    def completion_mask(self, tokens):
        """1 up to and including the first end token of each row, 0 after it."""
        is_end = torch.zeros_like(tokens, dtype=torch.bool)
        for e in self.eos_ids:
            is_end |= tokens == e
        after = (is_end.long().cumsum(1) - is_end.long()) > 0  # strictly after the first end token
        return (~after).float()

    def repeat_inputs(self, inputs, n):
        """Each image's prompt inputs ``n`` times, image-major (pixel rows follow their images)."""
        if n == 1:
            return inputs
        out = {}
        for k, v in inputs.items():
            if not isinstance(v, torch.Tensor):
                out[k] = v
            elif k == "pixel_values" and self.family.uses_mrope:  # Qwen: patches of all images, concatenated
                counts = inputs["image_grid_thw"].prod(-1).tolist()
                out[k] = torch.cat([part for part in v.split(counts) for _ in range(n)])
            else:
                out[k] = v.repeat_interleave(n, 0)
        return out

    def sample_inputs(self, samples, n):
        """Prompt inputs repeated ``n`` times, for re-scoring samples with ``token_logprobs`` (GRPO)."""
        return self.repeat_inputs(self.prompt_inputs(samples), n)
