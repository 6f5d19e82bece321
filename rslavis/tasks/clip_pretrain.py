"""``clip_pretrain``: contrastive (InfoNCE) pretraining of an image-text dual encoder, recall@k evaluation.

Training: ``model(samples)`` returns the symmetric InfoNCE loss of the batch
(:class:`rslavis.models.clip_dual.ClipDualEncoder`; pairs of one image, or with the same
caption text, are not negatives). Evaluation on every image of a split (each image with
all its captions):

- ``i2t_R@k``: share of images whose k most similar captions include one of its own;
- ``t2i_R@k``: share of captions whose k most similar images include its image;
- ``agg_metrics`` = ``i2t_R@1 + i2t_R@5 + t2i_R@1 + t2i_R@5`` (model selection).

A caption counts as the image's own when its text equals one of the image's captions:
templated captions repeat across scenes with identical content, and a retriever cannot
tell which of two identical strings was written for which image.

Every time the first validation split reaches a new best ``agg_metrics`` (the
runner's model-selection rule, so it matches ``checkpoint_best.pth``), the task writes
the encoder to ``<run folder>/encoder/`` in open_clip's format with ``vision.json``, the
``model.vision`` section that makes ``smallcap_causal``, ``knn_caption`` and the
retrieval datastore load it as their frozen encoder.

Run keys: ``recall_k`` (list, default ``[1, 5, 10]``), ``export_encoder`` (default true).
"""

import logging
from pathlib import Path

import torch

from rslavis.common.checkpoint import atomic_write_json
from rslavis.common.dist_utils import is_main_process
from rslavis.common.errors import ConfigError
from rslavis.common.logger import progress
from rslavis.common.registry import registry
from rslavis.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


def _norm(text):
    return " ".join(str(text).lower().split())


def recall_at_k(image_emb, text_emb, text_owner, image_texts, texts, ks=(1, 5, 10)):
    """Image-to-text and text-to-image recall@k (see module docstring for what counts as a hit).

    ``image_emb`` (I, D), ``text_emb`` (T, D) L2-normalised; ``text_owner[t]`` the image
    index of text t; ``image_texts[i]`` the set of normalised captions of image i;
    ``texts[t]`` the normalised text of caption t.
    """
    sim = image_emb @ text_emb.t()  # (I, T)
    kmax = max(ks)
    out = {}
    top_t = sim.topk(min(kmax, sim.shape[1]), dim=1).indices.tolist()
    top_i = sim.t().topk(min(kmax, sim.shape[0]), dim=1).indices.tolist()
    for k in ks:
        hits = [any(texts[t] in image_texts[i] for t in row[:k]) for i, row in enumerate(top_t)]
        out[f"i2t_R@{k}"] = sum(hits) / len(hits)
        hits = [any(texts[t] in image_texts[i] for i in row[:k]) for t, row in enumerate(top_i)]
        out[f"t2i_R@{k}"] = sum(hits) / len(hits)
    return out


@registry.register_task("clip_pretrain")
class ClipPretrainTask(BaseTask):
    RUN_KEYS = {"recall_k": list, "export_encoder": bool}

    def __init__(self, cfg):
        super().__init__(cfg)
        run = cfg.run
        self.ks = tuple(int(k) for k in (run.get("recall_k") or (1, 5, 10)))
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"run.recall_k must be a list of positive integers, got {list(self.ks)!r}.")
        self.ks = tuple(sorted(set(self.ks) | {1, 5}))  # agg_metrics needs R@1 and R@5
        self.export = bool(run.get("export_encoder", True))
        valid = list(run.get("valid_splits") or [])
        self.select_split = str(valid[0]) if valid else None
        self.best = float("-inf")
        self._model = None

    def build_model(self, cfg):
        model = super().build_model(cfg)
        for name in ("encode_image", "encode_text"):
            if not hasattr(model, name):
                raise ConfigError(f"run.task clip_pretrain needs a dual encoder with encode_image/encode_text (e.g. model.arch: clip_dual_encoder); {cfg.model.arch!r} has no {name}.")
        return model

    @torch.no_grad()
    def evaluation(self, model, data_loader, split):
        model.eval()
        self._model = model
        results = []
        for samples in progress(data_loader, desc=f"eval {split}", disable=not is_main_process()):
            if not samples:
                continue
            img = model.encode_image(samples["image"]).float().cpu()
            refs = [list(r) for r in samples["references"]]
            flat = [c for r in refs for c in r]
            txt = model.encode_text(flat).float().cpu() if flat else torch.zeros(0, img.shape[1])
            start = 0
            for i, image_id in enumerate(samples["image_id"]):
                n = len(refs[i])
                results.append({"image_id": image_id, "image": img[i].tolist(), "texts": txt[start : start + n].tolist(), "captions": refs[i]})
                start += n
        return results

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        if not results:
            raise ConfigError(f"clip_pretrain: split {split} has no readable image to evaluate recall on.")
        image_emb = torch.tensor([r["image"] for r in results])
        text_emb, owner, texts = [], [], []
        for i, r in enumerate(results):
            text_emb.extend(r["texts"])
            owner.extend([i] * len(r["texts"]))
            texts.extend(_norm(c) for c in r["captions"])
        if not texts:
            raise ConfigError(f"clip_pretrain: split {split} has no captions to retrieve.")
        image_texts = [{_norm(c) for c in r["captions"]} for r in results]
        metrics = recall_at_k(image_emb, torch.tensor(text_emb), owner, image_texts, texts, self.ks)
        metrics["agg_metrics"] = metrics["i2t_R@1"] + metrics["i2t_R@5"] + metrics["t2i_R@1"] + metrics["t2i_R@5"]
        metrics["n_images"] = float(len(results))
        atomic_write_json({"epoch": epoch, **metrics}, Path(result_dir) / f"{split}_epoch{epoch}_recall.json", indent=2)
        selecting = self.select_split is not None and (split == self.select_split or split.endswith("_" + self.select_split))
        if self.export and selecting and metrics["agg_metrics"] > self.best and self._model is not None:
            self.best = metrics["agg_metrics"]
            target = Path(result_dir).parent / "encoder"
            vision = self._model.export_encoder(target)
            logger.info("clip_pretrain: new best %s agg_metrics %.4f at epoch %s; encoder written to %s (model.vision: %s)", split, self.best, epoch, target, vision)
        return metrics
