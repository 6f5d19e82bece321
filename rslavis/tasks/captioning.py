"""Captioning: cross-entropy training, greedy/beam decoding, pycocoevalcap metrics."""

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from rslavis.common.checkpoint import atomic_write_json
from rslavis.common.dist_utils import is_main_process
from rslavis.common.registry import registry
from rslavis.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


@registry.register_task("captioning")
class CaptionTask(BaseTask):
    """``agg_metrics`` = CIDEr + Bleu_4, as LAVIS's caption task uses for model selection."""

    def __init__(self, cfg):
        super().__init__(cfg)
        run = cfg.run
        self.max_len = run.get("max_len") or 30
        self.min_len = run.get("min_len") or 1
        self.num_beams = run.get("num_beams") or 1
        self.repetition_penalty = run.get("repetition_penalty") or 1.0
        self.length_penalty = run.get("length_penalty") or 1.0
        self.report_metric = run.get("report_metric", True)

    def generation_kwargs(self):
        return dict(
            max_len=self.max_len,
            min_len=self.min_len,
            num_beams=self.num_beams,
            repetition_penalty=self.repetition_penalty,
            length_penalty=self.length_penalty,
        )

    @torch.no_grad()
    def evaluation(self, model, data_loader, split):
        model.eval()
        results = []
        for samples in tqdm(data_loader, desc=f"eval {split}", leave=False, disable=not is_main_process()):
            if not samples:
                continue
            captions = model.generate(samples, **self.generation_kwargs())
            results.extend({"image_id": i, "caption": c} for i, c in zip(samples["image_id"], captions))
        return results

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        result_file = Path(result_dir) / f"{split}_epoch{epoch}.json"
        atomic_write_json(results, result_file)
        if not self.report_metric:
            return {"agg_metrics": 0.0}
        from rslavis.metrics.coco_caption import caption_metrics

        refs = dataset.references()
        preds = {r["image_id"]: r["caption"] for r in results}
        metrics = caption_metrics(refs, preds)
        metrics["agg_metrics"] = metrics["CIDEr"] + metrics["Bleu_4"]
        return metrics
