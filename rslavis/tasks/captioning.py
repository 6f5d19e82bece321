"""Captioning: cross-entropy training, greedy/beam decoding, pycocoevalcap metrics."""

import logging
from pathlib import Path

from rslavis.common.checkpoint import atomic_write_json
from rslavis.common.errors import ConfigError
from rslavis.common.prompts import strip_prompt
from rslavis.common.registry import registry
from rslavis.tasks.generation import GenerativeTask

logger = logging.getLogger(__name__)


def output_prompt(splits):
    """The prompt a text processor of these splits prepends to captions (train first), or ""."""
    for name in ["train", *[s for s in splits if s != "train"]]:
        prompt = getattr(getattr(splits.get(name), "text_processor", None), "prompt", "")
        if isinstance(prompt, str) and prompt.strip():
            return prompt
    return ""


@registry.register_task("captioning")
class CaptionTask(GenerativeTask):
    """``agg_metrics`` = CIDEr + Bleu_4, as LAVIS's caption task uses for model selection.

    ``run.eval_rewards: [name, ...]`` also reports the mean of each registered reward
    on the evaluated split (key ``reward/<name>``); ``run.skip_metrics: [METEOR, SPICE]``
    leaves out metrics that need a Java start (tests use it to stay fast).
    ``run.inference_method: best_of_n`` with ``run.best_of_n: {n, scorer | reward, ...}``
    keeps the best of n sampled captions (:mod:`rslavis.tasks.best_of_n`).
    """

    RUN_KEYS = {"eval_rewards": list, "skip_metrics": list, "inference_method": str, "best_of_n": object}

    def __init__(self, cfg):
        super().__init__(cfg)
        run = cfg.run
        self.report_metric = run.get("report_metric", True)
        if run.get("prompt"):
            raise ConfigError(f"run.prompt ({run.prompt!r}) is read by the vqa task only; for captions set model.prompt (the instruction) or the text_processor's prompt.")
        self.skip_metrics = {str(m).upper() for m in (run.get("skip_metrics") or [])}
        shared = self._eval_reward_options(run)
        self.eval_rewards = {name: self._eval_reward(name, shared) for name in (run.get("eval_rewards") or [])}
        method = str(run.get("inference_method") or "generate")
        if method not in ("generate", "best_of_n"):
            raise ConfigError(f"run.inference_method: {method!r} is unknown for captioning; valid: generate, best_of_n.")

    def _eval_reward_options(self, run):
        """Options every ``run.eval_rewards`` entry gets when its class takes them (a subclass hook:
        the SCST task passes its ``scst_reward_parser``, so reported and trained rewards parse alike)."""
        return {}

    @staticmethod
    def _eval_reward(name, shared):
        from rslavis.rewards.combine import shared_options

        cls = registry.get_reward_class(name)
        return cls.from_config(shared_options(cls, shared))

    def state_dict(self):
        state = {f"eval_reward/{n}": r.state_dict() for n, r in self.eval_rewards.items() if r.state_dict()}
        if self.best_of_n is not None:
            state["best_of_n"] = self.best_of_n.state_dict()
        return state

    def load_state_dict(self, state):
        for key, value in state.items():
            if key.startswith("eval_reward/") and key[len("eval_reward/"):] in self.eval_rewards:
                self.eval_rewards[key[len("eval_reward/"):]].load_state_dict(value)
            elif key == "best_of_n" and self.best_of_n is not None:
                self.best_of_n.load_state_dict(value)

    def build_datasets(self, cfg):
        datasets = super().build_datasets(cfg)
        for splits in datasets.values():
            prompt = output_prompt(splits)
            for ds in splits.values():
                ds.output_prompt = prompt
        return datasets

    def eval_step(self, model, samples):
        return self.decode(model, samples)

    def records(self, samples, captions):
        return [{"image_id": i, "caption": c} for i, c in zip(samples["image_id"], captions)]

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        prompt = getattr(dataset, "output_prompt", "")
        if prompt:
            results = [dict(r, caption=strip_prompt(r["caption"], prompt)) for r in results]
        result_file = Path(result_dir) / f"{split}_epoch{epoch}.json"
        atomic_write_json(results, result_file)
        if not self.report_metric:
            return {"agg_metrics": 0.0}
        from rslavis.metrics.coco_caption import caption_metrics

        refs = dataset.references()
        preds = {r["image_id"]: r["caption"] for r in results}
        metrics = caption_metrics(refs, preds, meteor="METEOR" not in self.skip_metrics, spice="SPICE" not in self.skip_metrics)
        metrics["agg_metrics"] = metrics["CIDEr"] + metrics["Bleu_4"]
        ids = [i for i in preds if i in refs]
        for name, reward in self.eval_rewards.items():
            values = reward([preds[i] for i in ids], [refs[i] for i in ids])
            metrics[f"reward/{name}"] = float(values.float().mean())
        return metrics
