"""README's "Add a model" example, run as written: a model file with only its architecture, loss
and ``step`` trains, generates (greedy and beam search), samples for SCST and round-trips through
``save_pretrained``/``from_pretrained``, all from ``BaseModel``."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from rslavis.common.registry import registry
from rslavis.models.base_model import BaseModel
from rslavis.models.tokenization import train_caption_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"
CAPTIONS = ["a red square", "two blue circles", "a green field", "three white planes"]


def _example_source():
    section = README.read_text().split("### Add a model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def gru_class(tmp_path_factory):
    path = tmp_path_factory.mktemp("readme") / "readme_gru_captioner.py"
    path.write_text(_example_source())
    spec = importlib.util.spec_from_file_location("readme_gru_captioner", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.GRUCaptioner
    registry._classes["model"].pop("gru_captioner", None)  # leave the registry as the other tests expect it


def _batch():
    colours = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [1.0, 1.0, 1.0]])
    image = colours[:, :, None, None].expand(4, 3, 16, 16).clone()
    return {"image": image, "text_output": list(CAPTIONS), "image_id": list(range(4))}


@pytest.fixture(scope="module")
def trained(gru_class, tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tok")
    train_caption_tokenizer(CAPTIONS).save_pretrained(str(tok_dir))
    torch.manual_seed(0)
    model = gru_class({"tokenizer_path": str(tok_dir), "width": 32})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    samples = _batch()
    losses = []
    for _ in range(150):
        loss = model(samples)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


def test_the_example_trains_and_generates_what_it_learnt(trained):
    model, losses = trained
    assert losses[-1] < 0.1 * losses[0]
    samples = _batch()
    assert model.generate(samples, max_len=8) == CAPTIONS  # BaseModel.generate: greedy over step
    assert model.generate(samples, max_len=8, num_beams=3) == CAPTIONS  # beam search over the same step
    assert model.sample(samples, greedy=True, max_len=8).captions == CAPTIONS


def test_the_example_samples_for_scst(trained):
    model, _ = trained
    model.train()
    out = model.sample(_batch(), n=3, temperature=1.0, max_len=8, generator=torch.Generator().manual_seed(0))
    model.eval()
    assert out.token_ids.shape[0] == 12 and len(out.captions) == 12
    assert out.logprobs.requires_grad and bool((out.logprobs <= 0).all())
    assert bool((out.logprobs[out.mask == 0] == 0).all())
    assert type(model).can_sample()


def test_the_example_round_trips_through_save_pretrained(trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "saved")
    again = type(model).from_pretrained(tmp_path / "saved").eval()
    assert again.generate(_batch(), max_len=8) == CAPTIONS
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_model_without_step_cannot_sample():
    class NoStep(BaseModel):
        pass

    assert not NoStep.can_sample()
    with pytest.raises(NotImplementedError, match="cannot be trained with SCST"):
        NoStep().sample({"image": torch.zeros(1, 3, 4, 4)})


def test_the_task_example_evaluates_the_model_example(trained, tmp_path):
    """README's "Add a task": BaseTask's loop calls eval_step and records, gather merges, after_evaluation scores."""
    from omegaconf import OmegaConf

    section = README.read_text().split("### Add a task", 1)[1]
    path = tmp_path / "readme_word_gap.py"
    path.write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    spec = importlib.util.spec_from_file_location("readme_word_gap", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        task = module.WordGap(OmegaConf.create({"run": {"task": "word_gap", "max_len": 8, "num_beams": 2}}))
        model, _ = trained
        assert float(task.train_step(model, _batch())["loss"].detach()) < 0.5
        records = task.gather(task.evaluation(model, [_batch()], "val"))
        assert [r["caption"] for r in records] == CAPTIONS
        assert task.after_evaluation(records, "val", 0, None, tmp_path) == {"agg_metrics": -0.0, "word_gap": 0.0}
        short = OmegaConf.create({"run": {"task": "word_gap", "max_len": 1}})  # run.max_len reaches generate
        assert task.after_evaluation(module.WordGap(short).evaluation(model, [_batch()], "val"), "val", 0, None, tmp_path)["word_gap"] > 1
    finally:
        registry._classes["task"].pop("word_gap", None)
