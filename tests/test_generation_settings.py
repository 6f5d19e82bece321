"""Generation settings read in one place (tasks/generation.py) and BaseTask's evaluation loop.

Every key: unset takes the default, a value given is kept as given (0 and 0.0 included),
an impossible value is a one-line ConfigError naming the key and the valid range; the
captioning and VQA tasks hand exactly these settings to ``model.generate``.
"""

import pytest
import torch

from rslavis.common.config import Config
from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.tasks.base_task import BaseTask
from rslavis.tasks.generation import DEFAULTS, generation_settings


def test_unset_keys_take_the_defaults():
    assert generation_settings({}) == DEFAULTS
    assert generation_settings({"max_len": None, "num_beams": None}) == DEFAULTS
    assert generation_settings({}, max_len=10)["max_len"] == 10


@pytest.mark.parametrize(
    "key, value",
    [("max_len", 1), ("max_len", 300), ("min_len", 0), ("min_len", 5), ("num_beams", 1), ("num_beams", 5),
     ("repetition_penalty", 1.3), ("repetition_penalty", 0.5), ("length_penalty", 0.0), ("length_penalty", -1.0)],
)
def test_a_given_value_is_kept(key, value):
    got = generation_settings({key: value, "max_len": 300} if key == "min_len" else {key: value})
    assert got[key] == value and type(got[key]) is type(DEFAULTS[key])


@pytest.mark.parametrize(
    "run, key, valid",
    [
        ({"max_len": 0}, "max_len", ">= 1"),
        ({"max_len": -3}, "max_len", ">= 1"),
        ({"min_len": -1}, "min_len", ">= 0"),
        ({"min_len": 12, "max_len": 10}, "min_len", "<= run.max_len"),
        ({"num_beams": 0}, "num_beams", ">= 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty", "> 0"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty", "> 0"),
        ({"length_penalty": float("nan")}, "length_penalty", "finite"),
        ({"max_len": "long"}, "max_len", "integer"),
        ({"num_beams": 2.5}, "num_beams", "integer"),
        ({"num_beams": True}, "num_beams", "integer"),
    ],
)
def test_impossible_values_name_the_key_and_the_range(run, key, valid):
    with pytest.raises(ConfigError) as err:
        generation_settings(run)
    message = str(err.value)
    assert message.startswith(f"run.{key}: ") and valid in message and "\n" not in message


class _Recorder:
    """A model that records the generation keyword arguments it is called with."""

    def __init__(self):
        self.calls = []

    def eval(self):
        return self

    def generate(self, samples, **kwargs):
        self.calls.append(kwargs)
        return [f"c{i}" for i in samples["image_id"]]


def _task(task, options):
    cfg = Config.from_dict({"model": {"arch": "smallcap"}, "run": {"task": task}}, options)
    return registry.get_task_class(task).setup_task(cfg)


@pytest.mark.parametrize("task", ["captioning", "vqa", "scst"])
def test_tasks_pass_the_settings_to_generate(task):
    options = ["run.min_len=0", "run.length_penalty=0.0", "run.num_beams=3", "run.max_len=7", "run.repetition_penalty=1.2"]
    model = _Recorder()
    samples = {"image_id": [1, 2], "question_id": [10, 11], "image": torch.zeros(2, 3, 4, 4)}
    records = _task(task, options).evaluation(model, [samples, {}], "test")  # the empty batch is skipped
    assert model.calls == [dict(max_len=7, min_len=0, num_beams=3, repetition_penalty=1.2, length_penalty=0.0)]
    assert len(records) == 2
    assert model.calls[0]["min_len"] == 0 and model.calls[0]["length_penalty"] == 0.0


def test_vqa_and_captioning_defaults():
    assert _task("vqa", []).generation_kwargs()["max_len"] == 10
    assert _task("captioning", []).generation_kwargs() == DEFAULTS
    with pytest.raises(ConfigError, match=r"run\.min_len: 40 is invalid; valid: .*<= run\.max_len.*max_len is 30"):
        _task("captioning", ["run.min_len=40"])


class _Echo(BaseTask):
    def eval_step(self, model, samples):
        return model(samples["x"])

    def records(self, samples, outputs):
        return [{"image_id": i, "y": float(y)} for i, y in zip(samples["image_id"], outputs)]


def test_the_evaluation_loop_and_gather():
    task = _Echo(None)
    net = torch.nn.Identity()
    net.train()
    batches = [{"x": torch.tensor([1.0, 2.0]), "image_id": [1, 2]}, {}, {"x": torch.tensor([3.0]), "image_id": [1]}]
    records = task.evaluation(net, batches, "val")
    assert not net.training  # evaluation runs in eval mode
    assert records == [{"image_id": 1, "y": 1.0}, {"image_id": 2, "y": 2.0}, {"image_id": 1, "y": 3.0}]
    assert task.gather(records) == records[:2]  # one record per id: the first (DistributedSampler repeats)
