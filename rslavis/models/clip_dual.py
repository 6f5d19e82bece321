"""``clip_dual_encoder``: an open_clip image-text dual encoder trained with InfoNCE.

The ``clip_pretrain`` task (:mod:`rslavis.tasks.clip_pretrain`) trains it on
image-caption data; :meth:`ClipDualEncoder.export_encoder` writes it in open_clip's own
format (``<arch>.json`` model config + ``<arch>.pt`` state dict), which is what a
``vision: {type: open_clip, arch, model_config, checkpoint}`` section loads (see
:mod:`rslavis.models.encoders`): ``smallcap_causal``, ``knn_caption`` and the retrieval
datastore then use the pretrained encoder, frozen.

Config keys (``configs/models/clip_dual_encoder/tiny.yaml``): ``clip_arch``,
``model_config`` (JSON; a relative path is looked up in the rslavis package first),
``checkpoint`` (optional local state dict to start from), ``mask_duplicates``.
"""

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.base_model import PACKAGE_ROOT, BaseModel
from rslavis.models.contrastive import info_nce
from rslavis.models.encoders import local_path

logger = logging.getLogger(__name__)


def resolve_model_config(path):
    """A model-config JSON path: as given when it exists, else inside the rslavis package."""
    p = Path(str(path)).expanduser()
    if not p.is_file() and not p.is_absolute() and (PACKAGE_ROOT / p).is_file():
        p = PACKAGE_ROOT / p
    return local_path(p, "model.model_config", want_dir=False)


@registry.register_model("clip_dual_encoder")
class ClipDualEncoder(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {"tiny": "configs/models/clip_dual_encoder/tiny.yaml"}
    DEFAULT_MODEL_TYPE = "tiny"

    def __init__(self, cfg):
        super().__init__(cfg)
        import open_clip

        self.arch = str(self.cfg.get("clip_arch") or "rs_clip_tiny")
        self.model_config = None
        if self.cfg.get("model_config"):
            self.model_config = resolve_model_config(self.cfg["model_config"])
            if Path(self.model_config).stem != self.arch:
                raise ConfigError(f"model.model_config {self.model_config}: open_clip names the architecture after the file, so model.clip_arch must be {Path(self.model_config).stem!r}, not {self.arch!r}.")
            open_clip.add_model_config(self.model_config)
        ckpt = self.cfg.get("checkpoint")
        if ckpt:
            ckpt = local_path(ckpt, "model.checkpoint", want_dir=False)
        try:
            self.clip = open_clip.create_model(self.arch, pretrained=ckpt or None)
        except RuntimeError as exc:
            raise ConfigError(f"model: open_clip cannot build {self.arch!r} from {ckpt}: {exc}") from None
        self.tokenizer = open_clip.get_tokenizer(self.arch)
        self.mask_duplicates = bool(self.cfg.get("mask_duplicates", True))
        size = self.clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode_image(self, images):
        """L2-normalised image embeddings (B, D)."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ConfigError(f"clip_dual_encoder: images are {tuple(images.shape[-2:])}, the model takes {self.image_size}x{self.image_size}; set the dataset's vis_processor image_size to {self.image_size}.")
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, texts):
        """L2-normalised text embeddings (B, D)."""
        return F.normalize(self.clip.encode_text(self.tokenizer(list(texts)).to(self.device)), dim=-1)

    def forward(self, samples):
        texts = list(samples["text_output"])
        img, txt = self.encode_image(samples["image"]), self.encode_text(texts)
        same = None
        if self.mask_duplicates:
            # templated captions repeat across scenes, and a batch can hold two captions of one image:
            # such pairs are true matches, not negatives
            ids = [str(i) for i in samples.get("image_id", range(len(texts)))]
            same = torch.tensor([[a == b or s == t for b, t in zip(ids, texts)] for a, s in zip(ids, texts)], device=img.device)
        loss = info_nce(img, txt, self.clip.logit_scale.exp(), same)
        return {"loss": loss, "logit_scale": self.clip.logit_scale.exp().detach()}

    def export_encoder(self, directory):
        """Write ``<arch>.json``, ``<arch>.pt`` and ``vision.json`` (the ``model.vision`` section that loads them) to ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.model_config is not None:
            cfg_file = d / f"{self.arch}.json"
            tmp = cfg_file.with_suffix(".json.tmp")
            tmp.write_text(Path(self.model_config).read_text())
            os.replace(tmp, cfg_file)
        ckpt = d / f"{self.arch}.pt"
        tmp = d / f".{self.arch}.pt.tmp"
        torch.save({k: v.detach().cpu() for k, v in self.clip.state_dict().items()}, tmp)
        os.replace(tmp, ckpt)
        vision = {"type": "open_clip", "arch": self.arch, "checkpoint": str(ckpt.resolve()), "image_size": self.image_size, "freeze": True}
        if self.model_config is not None:
            vision["model_config"] = str((d / f"{self.arch}.json").resolve())
        tmp = d / ".vision.json.tmp"
        tmp.write_text(json.dumps(vision, indent=2))
        os.replace(tmp, d / "vision.json")
        return vision
