"""Config merging and every config error: one line naming file and key, exit 2."""

import textwrap

import pytest

from rslavis.common.config import Config
from rslavis.common.errors import ConfigError
from tests.conftest import run_python

BASE = """
model:
  arch: smallcap
  model_type: tiny
datasets:
  rs_synthetic:
    build_info:
      sizes: {train: 8, val: 4, test: 4}
run:
  task: captioning
  max_epoch: 1
"""


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_merge_order_defaults_project_options(tmp_path):
    p = write(tmp_path, BASE + "  init_lr: 0.5\n")
    cfg = Config.from_file(p, ["run.batch_size_train=3"])
    assert cfg.run.init_lr == 0.5  # project over default.yaml
    assert cfg.run.batch_size_train == 3  # options over project
    assert cfg.run.weight_decay == 0.05  # default.yaml
    assert cfg.model.decoder.n_layer == 3  # model default YAML
    assert cfg.datasets.rs_synthetic.build_info.sizes.train == 8  # project over dataset default
    assert cfg.datasets.rs_synthetic.build_info.image_size == 64  # dataset default


def test_model_type_option_switches_default_yaml(tmp_path, monkeypatch):
    from rslavis.models.smallcap.model import SmallCap

    alt = tmp_path / "alt.yaml"
    alt.write_text("model:\n  arch: smallcap\n  marker: alt\n  decoder: {n_layer: 1}\n")
    monkeypatch.setitem(SmallCap.PRETRAINED_MODEL_CONFIG_DICT, "alt", str(alt))
    p = write(tmp_path, BASE)
    cfg = Config.from_file(p, ["model.model_type=alt"])
    assert cfg.model.model_type == "alt"
    assert cfg.model.marker == "alt"
    assert cfg.model.decoder.n_layer == 1
    assert "marker" not in Config.from_file(p).model


def expect_error(tmp_path, text, *fragments, options=None):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.from_file(p, options)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="project config not found: .*nope.yaml"):
        Config.from_file(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    expect_error(tmp_path, "model:\n  arch: smallcap\nrun: [unclosed\n", "p.yaml", "YAML syntax error", "line")


def test_unknown_section(tmp_path):
    expect_error(tmp_path, BASE + "rnu:\n  x: 1\n", "unknown top-level section 'rnu'", "Did you mean 'run'?")


def test_unknown_run_key_suggests(tmp_path):
    expect_error(tmp_path, BASE + "  max_epochs: 3\n", "p.yaml", "unknown run key 'max_epochs'", "Did you mean 'max_epoch'?")


def test_unknown_run_key_from_options_names_options(tmp_path):
    expect_error(tmp_path, BASE, "--options", "init_lrr", options=["run.init_lrr=0.1"])


def test_wrong_type(tmp_path):
    expect_error(tmp_path, BASE + "  max_epoch: three\n", "run.max_epoch must be an integer", "'three'")
    expect_error(tmp_path, BASE + "  init_lr: fast\n", "run.init_lr must be a number")
    expect_error(tmp_path, BASE + "  save_last: 3\n", "run.save_last must be true or false")


@pytest.mark.parametrize(
    "old,new,frag",
    [
        ("arch: smallcap", "arch: smalcap", "Unknown model 'smalcap'. Did you mean 'smallcap'?"),
        ("rs_synthetic:", "rs_synthtic:", "Unknown builder 'rs_synthtic'. Did you mean 'rs_synthetic'?"),
        ("task: captioning", "task: captionning", "Unknown task 'captionning'. Did you mean 'captioning'?"),
        ("max_epoch: 1", "max_epoch: 1\n  lr_sched: cosine_lr", "Unknown lr scheduler 'cosine_lr'"),
        ("model_type: tiny", "model_type: huge", "model.model_type 'huge' is unknown"),
    ],
)
def test_unknown_registry_names(tmp_path, old, new, frag):
    expect_error(tmp_path, BASE.replace(old, new), frag)


def test_cli_errors_are_one_line_exit_2(tmp_path):
    p = write(tmp_path, BASE + "  max_epochs: 3\n")
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(p)])
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("rslavis: error:"), out.stderr
    assert "Traceback" not in out.stderr
    debug = run_python(["-m", "rslavis.train", "--cfg-path", str(p), "--debug"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_print_config(tmp_path):
    p = write(tmp_path, BASE)
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(p), "--print-config", "--options", "run.seed=7"])
    assert out.returncode == 0, out.stderr
    assert "seed: 7" in out.stdout and "arch: smallcap" in out.stdout


def test_lavis_style_run_keys_are_accepted(tmp_path):
    p = write(tmp_path, BASE + '  device: "cuda"\n  distributed: True\n  amp: True\n  world_size: 1\n  dist_url: "env://"\n')
    cfg = Config.from_file(p)
    assert cfg.run.device == "cuda" and cfg.run.distributed is True


def test_dataset_without_settings_keeps_defaults(tmp_path):
    p = write(tmp_path, BASE.replace("  rs_synthetic:\n    build_info:\n      sizes: {train: 8, val: 4, test: 4}\n", "  rs_synthetic:\n"))
    cfg = Config.from_file(p)
    assert cfg.datasets.rs_synthetic.build_info.sizes.train == 1500
