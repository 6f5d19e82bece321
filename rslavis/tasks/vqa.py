"""Visual question answering: cross-entropy on the answers, then answer by generation or ranking.

Run keys (on top of the generation keys ``max_len``, ``min_len``, ``num_beams``, ...):

- ``inference_method``: ``generate`` (decode an answer) or ``rank`` (score every
  candidate answer with the model and keep the most likely; needs ``rank_answers``).
- ``answer_list``: candidates for ``rank``: a list, or a path to a JSON list / text file
  (one answer per line); null takes the distinct answers of the training splits.
- ``rank_chunk``: candidates scored per forward pass (memory).
- ``inference_method: best_of_n`` with ``best_of_n: {n, scorer | reward, ...}``: keep
  the best of n sampled answers (:mod:`rslavis.tasks.best_of_n`; the scorer reads
  ``"{question} {caption}"``).

Results (``result/<split>_epoch<N>.json``) hold ``question_id``, ``image_id``,
``question``, ``answer`` and ``question_type``; metrics (:mod:`rslavis.metrics.vqa`):
``accuracy`` overall, ``accuracy/<type>`` per question type, ``average_type_accuracy``;
``agg_metrics`` is the overall accuracy.
"""

import json
import logging
from pathlib import Path

from rslavis.common.checkpoint import atomic_write_json
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.tasks.generation import GenerativeTask

logger = logging.getLogger(__name__)

INFERENCE_METHODS = ("generate", "rank", "best_of_n")


def read_answer_list(value, option="run.answer_list"):
    """Candidate answers from a list or a file (``.json`` list, otherwise one answer per line)."""
    if isinstance(value, str):
        p = Path(value).expanduser()
        if not p.is_file():
            raise ConfigError(f"{option}: file not found: {p} (a JSON list or a text file with one answer per line).")
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            if not isinstance(data, list):
                raise ConfigError(f"{option}: {p} must hold a JSON list of answers.")
            answers = [str(a) for a in data]
        else:
            answers = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    else:
        answers = [str(a) for a in value]
    answers = list(dict.fromkeys(a.strip() for a in answers if str(a).strip()))
    if not answers:
        raise ConfigError(f"{option}: the candidate answer list is empty.")
    return answers


@registry.register_task("vqa")
class VQATask(GenerativeTask):
    RUN_KEYS = {"inference_method": str, "answer_list": object, "rank_chunk": int, "best_of_n": object}
    DEFAULT_MAX_LEN = 10
    BEST_OF_N_KIND = "vqa"

    def __init__(self, cfg):
        super().__init__(cfg)
        run = cfg.run
        self.inference_method = str(run.get("inference_method") or "generate")
        if self.inference_method not in INFERENCE_METHODS:
            raise ConfigError(f"run.inference_method: {self.inference_method!r} is unknown; valid: {', '.join(INFERENCE_METHODS)}.")
        self.rank_chunk = int(run.get("rank_chunk") or 64)
        # LAVIS's run.prompt ("Question: {} Short answer:") wraps each question at inference
        self.prompt = run.get("prompt") or ""
        if self.prompt and "{}" not in self.prompt:
            raise ConfigError(f"run.prompt: {self.prompt!r} must contain {{}} where the question goes (LAVIS: \"Question: {{}} Short answer:\").")
        answer_list = run.get("answer_list")
        if answer_list is not None and not isinstance(answer_list, str):
            from omegaconf import OmegaConf

            answer_list = OmegaConf.to_container(answer_list) if OmegaConf.is_config(answer_list) else list(answer_list)
        self.candidates = read_answer_list(answer_list) if answer_list is not None else None

    def build_datasets(self, cfg):
        datasets = super().build_datasets(cfg)
        if self.inference_method == "rank" and self.candidates is None:
            answers = []
            for splits in datasets.values():
                train = splits.get("train")
                if train is not None and hasattr(train, "answers"):
                    answers.extend(a for ans in train.answers().values() for a in ans)
            if not answers:
                raise ConfigError("run.inference_method is rank but run.answer_list is not set and no training split has answers to rank.")
            self.candidates = read_answer_list(answers, option="training answers")
            logger.info("ranking over %d candidate answers from the training splits", len(self.candidates))
        return datasets

    def eval_step(self, model, samples):
        if self.prompt and "text_input" in samples:
            samples = dict(samples, text_input=[self.prompt.format(t) for t in samples["text_input"]])
        if self.inference_method == "rank":
            if not hasattr(model, "rank_answers"):
                raise ConfigError(f"run.inference_method rank: {type(model).__name__} has no rank_answers(); use generate.")
            return model.rank_answers(samples, self.candidates, chunk=self.rank_chunk)
        return self.decode(model, samples)

    def records(self, samples, answers):
        return [
            {
                "question_id": samples["question_id"][i],
                "image_id": samples["image_id"][i],
                "question": samples["question"][i] if "question" in samples else None,
                "answer": a,
                "question_type": samples["question_type"][i] if "question_type" in samples else "",
            }
            for i, a in enumerate(answers)
        ]

    def after_evaluation(self, results, split, epoch, dataset, result_dir):
        from rslavis.metrics.vqa import vqa_accuracy

        atomic_write_json(results, Path(result_dir) / f"{split}_epoch{epoch}.json")
        preds = {r["question_id"]: r["answer"] for r in results}
        answers = dataset.answers()
        types = dataset.question_types() if hasattr(dataset, "question_types") else None
        metrics = vqa_accuracy(preds, answers, types)
        metrics["agg_metrics"] = metrics["accuracy"]
        return metrics
