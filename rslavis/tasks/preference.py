"""Task ``preference``: train a quality scorer on ranked texts per image.

Items carry ``candidates`` and ``ranks`` (lower is better; see
:mod:`rslavis.datasets.preference`). Losses on the scores ``s`` of one item:

- a pair (two candidates): Bradley-Terry, ``-log sigmoid(s_chosen - s_rejected)``;
- a ranked list (``run.list_loss``): ``plackett_luce`` (ListMLE: the negative
  log-likelihood of the ranking under the Plackett-Luce model; tied candidates keep
  their listed order) or ``pairwise`` (Bradley-Terry averaged over every pair of
  different rank). With two candidates both equal Bradley-Terry.

``run.score_reg`` (0) adds ``score_reg * mean(s^2)``, which keeps scores near zero
(Bradley-Terry only fixes differences).

Evaluation: per item, the share of candidate pairs of different rank that the scorer
orders correctly (ties in score count half). Metrics: ``accuracy`` (over all such
pairs), ``accuracy/<category>`` (per corruption type or file category), ``margin``
(mean ``s_better - s_worse``) and ``top1`` (items whose best-ranked candidate scores
highest); ``agg_metrics`` is ``accuracy``.
"""

import logging
from collections import defaultdict
from pathlib import Path

import torch

from rslavis.common.checkpoint import atomic_write_json
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.models.preference_losses import (  # noqa: F401  (re-exported: the task's losses)
    LIST_LOSSES,
    bradley_terry,
    flat_scores,
    pair_agreement,
    pairwise,
    plackett_luce,
    preference_loss,
)
from rslavis.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


@registry.register_task("preference")
class PreferenceTask(BaseTask):
    RUN_KEYS = {"list_loss": str, "score_reg": float}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.list_loss = str(cfg.run.get("list_loss") or "plackett_luce")
        if self.list_loss not in LIST_LOSSES:
            raise ConfigError(f"run.list_loss: {self.list_loss!r} is unknown; valid: {', '.join(LIST_LOSSES)}.")
        self.score_reg = float(cfg.run.get("score_reg") or 0.0)

    def train_step(self, model, samples):
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        return preference_loss(inner, samples, self.list_loss, self.score_reg)

    def eval_step(self, model, samples):
        return flat_scores(model, samples)

    def records(self, samples, scores):
        out = []
        for i, s in enumerate(scores):
            ranks = samples["ranks"][i]
            c, n, m = pair_agreement(s, ranks)
            best = min(range(len(ranks)), key=lambda k: ranks[k])
            out.append({
                "question_id": samples["pair_id"][i],  # the record id across ranks (see BaseTask.record_id)
                "image_id": samples["image_id"][i],
                "category": samples["corruption"][i],
                "scores": [round(float(x), 5) for x in s],
                "ranks": list(ranks),
                "correct": c,
                "pairs": n,
                "margin": m,
                "top1": bool(int(torch.argmax(s)) == best),
            })
        return out

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        atomic_write_json(results, Path(result_dir) / f"{split}_epoch{epoch}.json")
        return preference_metrics(results)


def preference_metrics(results):
    """Metrics of evaluation results (see module docstring)."""
    by_cat = defaultdict(lambda: [0.0, 0])
    correct = total = 0
    for r in results:
        correct += r["correct"]
        total += r["pairs"]
        if r.get("category"):
            by_cat[r["category"]][0] += r["correct"]
            by_cat[r["category"]][1] += r["pairs"]
    metrics = {
        "accuracy": correct / max(total, 1),
        "margin": sum(r["margin"] for r in results) / max(len(results), 1),
        "top1": sum(r["top1"] for r in results) / max(len(results), 1),
        "items": float(len(results)),
    }
    for cat, (c, n) in sorted(by_cat.items()):
        metrics[f"accuracy/{cat}"] = c / max(n, 1)
    metrics["agg_metrics"] = metrics["accuracy"]
    return metrics
