"""Vision encoders chosen by config, behind one interface.

``build_vision_encoder(cfg)`` returns a :class:`VisionEncoder` whose forward gives
``(tokens (B, N, D), pooled (B, P))``: patch tokens for cross-attention and a pooled
vector for retrieval and contrastive losses. ``cfg.type``:

- ``vit`` / ``clip``: a transformers ViT or CLIP vision model, built from a tiny config
  (random; the default for tests and demos) or loaded with ``from_pretrained`` from a
  local directory (``pretrained: DIR``).
- ``open_clip``: an open_clip model ``arch`` (``ViT-B-32``, ``RN50``, ...) with weights
  from a local ``checkpoint: FILE.pt`` (RemoteCLIP publishes open_clip-format state
  dicts). ``model_config: FILE.json`` registers a custom architecture first. Only an
  existing file is accepted: a pretrained *tag* would make open_clip download.
"""

from pathlib import Path

import torch
from torch import nn

from rslavis.common.errors import ConfigError


def _get(cfg, key, default=None):
    value = cfg.get(key, default) if cfg is not None else default
    return default if value is None else value


def local_path(path, option, want_dir):
    p = Path(str(path)).expanduser()
    ok = p.is_dir() if want_dir else p.is_file()
    if not ok:
        kind = "directory (written by save_pretrained)" if want_dir else "file"
        raise ConfigError(f"{option}: {kind} not found: {p}. Weights load from local paths only; nothing is downloaded.")
    return str(p)


class VisionEncoder(nn.Module):
    """``forward(pixel_values) -> (tokens, pooled)``; ``hidden_size``, ``pooled_size``, ``mean``, ``std``."""

    hidden_size: int
    pooled_size: int
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)


class HFVisionEncoder(VisionEncoder):
    def __init__(self, model, hidden_size, pooled_from="cls"):
        super().__init__()
        self.model = model
        self.hidden_size = self.pooled_size = hidden_size
        self.pooled_from = pooled_from

    def forward(self, pixel_values):
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        pooled = hidden[:, 0] if self.pooled_from == "cls" else hidden.mean(1)
        return hidden, pooled


class OpenCLIPVisionEncoder(VisionEncoder):
    """open_clip's visual tower; ViTs give patch tokens, ResNets their last feature map."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.pooled_size = int(getattr(visual, "output_dim"))
        if hasattr(visual, "output_tokens"):
            visual.output_tokens = True
            self.kind = "vit"
            self.hidden_size = int(visual.transformer.width)
        else:
            self.kind = "resnet"
            self.hidden_size = int(visual.attnpool.c_proj.in_features) if hasattr(visual, "attnpool") else self.pooled_size
        self.mean = tuple(getattr(visual, "image_mean", None) or VisionEncoder.mean)
        self.std = tuple(getattr(visual, "image_std", None) or VisionEncoder.std)

    def forward(self, pixel_values):
        if self.kind == "vit":
            pooled, tokens = self.visual(pixel_values)
            return tokens, pooled
        v = self.visual
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(pixel_values)))))
        pooled = v.attnpool(x)
        return x.flatten(2).transpose(1, 2), pooled


def build_vision_encoder(cfg):
    """A :class:`VisionEncoder` from the ``vision`` config section (see module docstring)."""
    kind = _get(cfg, "type", "vit")
    if kind in ("vit", "clip"):
        from transformers import AutoModel, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

        if _get(cfg, "pretrained"):
            path = local_path(cfg["pretrained"], "model.vision.pretrained", want_dir=True)
            model = CLIPVisionModel.from_pretrained(path, local_files_only=True) if kind == "clip" else AutoModel.from_pretrained(path, local_files_only=True)
            return HFVisionEncoder(model, model.config.hidden_size)
        common = dict(
            image_size=_get(cfg, "image_size", 64),
            patch_size=_get(cfg, "patch_size", 8),
            hidden_size=_get(cfg, "hidden_size", 128),
            num_hidden_layers=_get(cfg, "num_layers", 3),
            num_attention_heads=_get(cfg, "num_heads", 4),
            intermediate_size=_get(cfg, "intermediate_size", 256),
        )
        if kind == "vit":
            return HFVisionEncoder(ViTModel(ViTConfig(**common), add_pooling_layer=False), common["hidden_size"])
        return HFVisionEncoder(CLIPVisionModel(CLIPVisionConfig(**common)), common["hidden_size"])
    if kind == "open_clip":
        import open_clip

        if _get(cfg, "model_config"):
            open_clip.add_model_config(local_path(cfg["model_config"], "model.vision.model_config", want_dir=False))
        arch = _get(cfg, "arch", "ViT-B-32")
        checkpoint = _get(cfg, "checkpoint")
        if checkpoint:
            checkpoint = local_path(checkpoint, "model.vision.checkpoint", want_dir=False)
        try:
            model = open_clip.create_model(arch, pretrained=checkpoint or None)
        except RuntimeError as exc:
            raise ConfigError(f"model.vision: open_clip cannot build {arch!r} from {checkpoint}: {exc}") from None
        return OpenCLIPVisionEncoder(model.visual)
    raise ConfigError(f"model.vision.type {kind!r} is unknown; valid: vit, clip, open_clip.")


def freeze(module):
    for p in module.parameters():
        p.requires_grad = False
    module.eval()
    return module


def l2_normalise(x, eps=1e-12):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


@torch.no_grad()
def encode_pooled(encoder, pixel_values):
    """L2-normalised pooled features (retrieval keys)."""
    return l2_normalise(encoder(pixel_values)[1].float())
