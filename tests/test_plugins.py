"""A model and a reward from a plugin module outside the package, used by name from YAML."""

import json
import textwrap

from tests.conftest import run_python

PLUGIN = '''
import torch
from rslavis import registry
from rslavis.models.base_model import BaseModel
from rslavis.rewards.base_reward import BaseReward


@registry.register_model("plugin_constant")
class ConstantCaptioner(BaseModel):
    """Says the same caption for every image; one parameter so the optimizer has work."""

    PRETRAINED_MODEL_CONFIG_DICT = {"default": "__DEFAULT_YAML__"}
    DEFAULT_MODEL_TYPE = "default"

    def __init__(self, caption):
        super().__init__()
        self.caption = caption
        self.w = torch.nn.Parameter(torch.ones(1))

    @classmethod
    def from_config(cls, cfg, **kwargs):
        return cls(cfg.caption)

    def forward(self, samples):
        return {"loss": (self.w ** 2).sum() + 0.0 * samples["image"].mean()}

    @torch.no_grad()
    def generate(self, samples, **kwargs):
        return [self.caption] * len(samples["image"])


@registry.register_reward("plugin_word_count")
class WordCount(BaseReward):
    def __init__(self, word="plane"):
        self.word = word

    def __call__(self, generated, references, **extra):
        return self.as_tensor([sum(w.startswith(self.word) for w in g.split()) for g in generated])
'''

PROJECT = """
plugins: [my_rs_plugin]
model:
  arch: plugin_constant
  caption: there are two planes and a plane in a desert .
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {cache}
      sizes: {{train: 4, val: 2, test: 3}}
run:
  task: captioning
  max_epoch: 1
  batch_size_train: 4
  output_dir: {out}
  job_id: plug
  eval_rewards: [plugin_word_count]
  skip_metrics: [METEOR, SPICE]
"""


def test_plugin_model_and_reward_from_yaml(tmp_path):
    plug_dir = tmp_path / "site"
    plug_dir.mkdir()
    default_yaml = tmp_path / "plugin_default.yaml"
    default_yaml.write_text("model:\n  arch: plugin_constant\n  caption: default caption\n")
    (plug_dir / "my_rs_plugin.py").write_text(PLUGIN.replace("__DEFAULT_YAML__", str(default_yaml)))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(PROJECT.format(cache=tmp_path / "cache", out=tmp_path / "out")))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg)], env={"PYTHONPATH": f"{plug_dir}"})
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "plug" / "metrics_test.json").read_text())
    assert metrics["reward/plugin_word_count"] == 2.0  # "planes" and "plane"
    preds = json.loads(next((tmp_path / "out" / "plug" / "result").glob("test_*.json")).read_text())
    assert {p["caption"] for p in preds} == {"there are two planes and a plane in a desert ."}


def test_plugin_that_cannot_be_imported_is_a_clear_error(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(PROJECT.format(cache=tmp_path / "cache", out=tmp_path / "out")).replace("my_rs_plugin", "no_such_plugin_mod"))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg)])
    assert out.returncode == 2
    assert "Plugin module 'no_such_plugin_mod'" in out.stderr and "Traceback" not in out.stderr
