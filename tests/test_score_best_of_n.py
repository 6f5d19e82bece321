"""Best-of-N decoding (captioning and VQA) and the ``learned_score`` reward."""

import pytest
import torch

from rslavis.common.config import Config
from rslavis.common.errors import ConfigError
from rslavis.models.base_model import BaseModel, SampleOutput
from rslavis.tasks.best_of_n import BestOfN
from tests.test_curate import scorer_dir  # noqa: F401  (fixture: a saved random tiny scorer)


class _Stub(BaseModel):
    """Samples and greedy outputs fixed per image, to check the selection alone."""

    def __init__(self, samples_per_image, greedy):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.per_image, self.greedy = samples_per_image, greedy
        self.calls = []

    def sample(self, samples, n=1, temperature=1.0, max_len=30, min_len=0, generator=None, **kw):
        self.calls.append((n, temperature, max_len, generator is not None))
        caps = [c for i in range(len(samples["image_id"])) for c in self.per_image[i][:n]]
        z = torch.zeros(len(caps), 1)
        return SampleOutput(z.long(), z, z, caps)

    def generate(self, samples, **kw):
        return list(self.greedy[: len(samples["image_id"])])


def batch(n=2):
    return {"image": torch.randn(n, 3, 64, 64), "image_id": list(range(n)), "references": [["a plane"]] * n,
            "text_input": [""] * n, "question": ["how many planes ?"] * n}


def test_reward_picks_best_and_greedy_wins_ties():
    model = _Stub([["one two", "one two three four", "x"], ["a b", "c d", "e f"]], greedy=["g h i", "a b"])
    bon = BestOfN({"n": 3, "reward": "length", "temperature": 0.7}, "caption")
    assert bon.select(model, batch(), {"max_len": 9, "min_len": 1}) == ["one two three four", "a b"]
    assert model.calls[-1] == (3, 0.7, 9, True)
    cands, scores = bon.last
    assert cands[1] == ["a b", "a b", "c d", "e f"] and scores[1] == [2.0] * 4
    no_greedy = BestOfN({"n": 2, "reward": {"length": 1.0}, "include_greedy": False}, "caption")
    assert no_greedy.select(model, batch(), {}) == ["one two three four", "a b"]


def test_scorer_picks_its_argmax(scorer_dir):  # noqa: F811
    from rslavis.models.score_model import load_scorer

    model = _Stub([["two planes", "a ship", "three storage tanks"], ["a desert", "two ships", "one plane"]], greedy=["a plane", "sea"])
    b = batch()
    chosen = BestOfN({"n": 3, "scorer": str(scorer_dir)}, "caption").select(model, b, {})
    scorer = load_scorer(scorer_dir)
    for i, cands in enumerate([["a plane", "two planes", "a ship", "three storage tanks"], ["sea", "a desert", "two ships", "one plane"]]):
        s = scorer.score(b["image"][i : i + 1].expand(4, -1, -1, -1), cands)
        assert chosen[i] == cands[int(torch.argmax(s))]
    vqa = BestOfN({"n": 3, "scorer": str(scorer_dir)}, "vqa")
    assert vqa._texts(["two"], [0], b) == ["how many planes ? two"]


def test_config_errors(scorer_dir):  # noqa: F811
    with pytest.raises(ConfigError, match="exactly one of 'scorer'"):
        BestOfN({"n": 2}, "caption")
    with pytest.raises(ConfigError, match="exactly one of 'scorer'"):
        BestOfN({"scorer": str(scorer_dir), "reward": "length"}, "caption")
    with pytest.raises(ConfigError, match="unknown key"):
        BestOfN({"reward": "length", "samples": 3}, "caption")
    with pytest.raises(ConfigError, match="scorer .* not found"):
        BestOfN({"scorer": "/nonexistent"}, "caption")
    with pytest.raises(ConfigError, match="has no sample"):
        BestOfN({"reward": "length"}).select(BaseModel(), batch(), {})
    base = {"model": {"arch": "smallcap"}, "run": {"task": "captioning"}}
    with pytest.raises(ConfigError, match="unknown for captioning"):
        _task(base, ["run.inference_method=beam"])


def _task(data, options):
    from rslavis.common.registry import registry

    cfg = Config.from_dict(data, options)
    return registry.get_task_class(cfg.run.task).setup_task(cfg)


def test_caption_and_vqa_tasks_use_best_of_n():
    model = _Stub([["one two three", "x"], ["y", "four five six seven"]], greedy=["g", "h"])
    task = _task({"model": {"arch": "smallcap"}, "run": {"task": "captioning"}},
                 ["run.inference_method=best_of_n", "run.best_of_n={n: 2, reward: length}"])
    results = task.evaluation(model, [batch()], "test")
    assert [r["caption"] for r in results] == ["one two three", "four five six seven"]
    plain = _task({"model": {"arch": "smallcap"}, "run": {"task": "captioning"}}, [])
    assert [r["caption"] for r in plain.evaluation(model, [batch()], "test")] == ["g", "h"]
    vqa = _task({"model": {"arch": "instructblip"}, "run": {"task": "vqa"}},
                ["run.inference_method=best_of_n", "run.best_of_n={n: 2, reward: length, include_greedy: false}"])
    b = dict(batch(), question_id=[10, 11], question_type=["count", "count"])
    assert [r["answer"] for r in vqa.evaluation(model, [b], "test")] == ["one two three", "four five six seven"]


def test_best_of_n_with_a_real_captioner(scorer_dir):  # noqa: F811
    from rslavis.models.smallcap.model import SmallCap
    from rslavis.models.tokenization import train_caption_tokenizer

    torch.manual_seed(0)
    cfg = {"vision": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
           "decoder": {"n_layer": 1, "n_embd": 32, "n_head": 2}}
    model = SmallCap(cfg, tokenizer=train_caption_tokenizer(["there are two planes in a desert .", "a ship in the sea ."])).eval()
    bon = BestOfN({"n": 4, "scorer": str(scorer_dir), "seed": 3}, "caption")
    b = batch()
    bon.start()
    first = bon.select(model, b, {"max_len": 6, "min_len": 1})
    cands, scores = bon.last
    assert all(c in cs for c, cs in zip(first, cands)) and all(len(s) == 5 for s in scores)
    bon.start()  # re-seeded: the same samples, the same choice
    assert bon.select(model, b, {"max_len": 6, "min_len": 1}) == first and bon.last[0] == cands


def test_learned_score_reward(scorer_dir):  # noqa: F811
    from rslavis.models.score_model import load_scorer
    from rslavis.rewards.combine import build_reward

    reward = build_reward({"learned_score": {"path": str(scorer_dir), "scale": 2.0}, "length": 0.5})
    images = torch.randn(3, 3, 64, 64)
    caps = ["two planes", "a ship in the sea", "three storage tanks"]
    total, parts = reward.compute(caps, [["x"]] * 3, images=images)
    expected = 2.0 * load_scorer(scorer_dir).score(images, caps)
    assert torch.allclose(parts["learned_score"], expected, atol=1e-5)
    assert torch.allclose(total, expected + 0.5 * parts["length"], atol=1e-5)
    with pytest.raises(ConfigError, match="needs the images"):
        reward.compute(caps, [["x"]] * 3)
    with pytest.raises(ConfigError, match="path is not set"):
        build_reward({"learned_score": 1.0})


def test_scst_passes_images_to_rewards():
    task = _task({"model": {"arch": "smallcap"}, "run": {"task": "scst", "rewards": {"length": 1.0}}}, [])
    b = batch(2)
    extra = task._reward_extra(b, 3)
    assert extra["images"].shape == (6, 3, 64, 64) and torch.equal(extra["images"][3], b["image"][1])
