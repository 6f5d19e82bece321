"""LAVIS config spellings: YAML floats, model keys, processors, aliases, build_info keys, --lenient."""

import logging
import textwrap

import pytest

from rslavis.common.config import Config, load_yaml, parse_options
from rslavis.common.errors import ConfigError, RegistryKeyError
from rslavis.common.registry import registry

MODEL = """
model:
  arch: instructblip
  model_type: tiny_opt
"""
DATA = """
datasets:
  rs_synthetic:
    build_info:
      sizes: {train: 4, val: 2, test: 2}
"""
RUN = """
run:
  task: captioning
"""


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


SPELLINGS = ["1e-5", "1E-5", "-2e3", "1.", ".5", "1.0e-4", "0", "3", "1_000", "+1e+2", "1e5", "2.5e-3", ".inf", "1.0.1", "1e", "e5", "0x1f", "012"]


def test_yaml_numbers_are_read_as_omegaconf_reads_them(tmp_path):
    from omegaconf import OmegaConf

    text = "".join(f"k{i}: {v}\n" for i, v in enumerate(SPELLINGS))
    ours = load_yaml(write(tmp_path, text))
    reference = OmegaConf.create(text)  # LAVIS loads with OmegaConf
    for i, v in enumerate(SPELLINGS):
        a, b = ours[f"k{i}"], reference[f"k{i}"]
        assert (a, type(a)) == (b, type(b)) or (a != a and b != b), v
    assert isinstance(ours.k0, float) and ours.k0 == 1e-5


def test_lavis_float_spellings_pass_run_validation(tmp_path):
    p = write(tmp_path, MODEL + DATA + RUN + "  init_lr: 1e-5\n  warmup_lr: 1e-8\n  min_lr: 0\n  length_penalty: 1.\n")
    cfg = Config.from_file(p, ["run.weight_decay=5e-2"])
    assert cfg.run.init_lr == 1e-5 and cfg.run.warmup_lr == 1e-8 and cfg.run.weight_decay == 0.05
    assert parse_options(["run.init_lr=2e-5"]).run.init_lr == 2e-5


def test_default_yamls_use_the_same_loader(tmp_path, monkeypatch):
    from rslavis.models.instructblip.model import InstructBLIP

    alt = write(tmp_path, "model:\n  arch: instructblip\n  prompt: x\n  max_txt_len: 1e2\n", "alt.yaml")
    monkeypatch.setitem(InstructBLIP.PRETRAINED_MODEL_CONFIG_DICT, "alt", str(alt))
    cfg = Config.from_file(write(tmp_path, MODEL + DATA + RUN), ["model.model_type=alt"])
    assert cfg.model.max_txt_len == 100.0 and isinstance(cfg.model.max_txt_len, float)


def test_syntax_error_still_names_the_line(tmp_path):
    p = write(tmp_path, "run:\n  init_lr: 1e-5\n  task: [captioning\n")
    with pytest.raises(ConfigError, match=r"p.yaml: YAML syntax error at line \d+"):
        Config.from_file(p)


def test_unknown_model_key_is_an_error_with_closest_match(tmp_path):
    p = write(tmp_path, MODEL + "  freeze_vitt: true\n" + DATA + RUN)
    with pytest.raises(ConfigError) as info:
        Config.from_file(p)
    msg = str(info.value)
    assert "p.yaml" in msg and "unknown model key 'freeze_vitt'" in msg and "Did you mean 'freeze_vit'?" in msg
    with pytest.raises(ConfigError, match="--options: unknown model key 'nope'"):
        Config.from_file(write(tmp_path, MODEL + DATA + RUN), ["model.nope=1"])


def test_lavis_model_keys_map_to_canonical_ones(tmp_path):
    p = write(tmp_path, MODEL + "  num_query_token: 4\n  load_finetuned: False\n  finetuned: ''\n" + DATA + RUN)
    cfg = Config.from_file(p)
    assert cfg.model.num_query_tokens == 4 and "num_query_token" not in cfg.model
    assert cfg.model.finetuned is None  # load_finetuned: False switches it off
    both = write(tmp_path, MODEL + "  num_query_token: 4\n  num_query_tokens: 6\n" + DATA + RUN, "both.yaml")
    with pytest.raises(ConfigError, match="num_query_token .* and model.num_query_tokens .* name the same setting"):
        Config.from_file(both)


def test_lenient_turns_unknown_sections_and_keys_into_one_warning_each(tmp_path, caplog):
    text = MODEL + "  vit_model: eva_clip_g\n" + DATA + RUN + "  some_fork_key: 3\nrun_cfg:\n  foo: 1\n"
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match="unknown top-level section 'run_cfg'"):
        Config.from_file(p)
    with caplog.at_level(logging.WARNING, logger="rslavis.common.config"):
        cfg = Config.from_file(p, lenient=True)
    warnings = [r.getMessage() for r in caplog.records if "--lenient" in r.getMessage()]
    assert len(warnings) == 3, warnings
    assert any("run_cfg" in w for w in warnings) and any("vit_model" in w for w in warnings) and any("some_fork_key" in w for w in warnings)
    assert "run_cfg" not in cfg.config and "vit_model" not in cfg.model and "some_fork_key" not in cfg.run


def test_renamed_processor_drops_the_defaults_settings(tmp_path):
    text = MODEL + """
datasets:
  rsieval_vqa:
    text_processor:
      train: {name: blip_question}
      eval: {name: blip_question, max_words: 20}
""" + RUN.replace("captioning", "vqa")
    cfg = Config.from_file(write(tmp_path, text))
    tp = cfg.datasets.rsieval_vqa.text_processor
    assert dict(tp.train) == {"name": "blip_question"}  # the default's template: qa is gone
    assert dict(tp.eval) == {"name": "blip_question", "max_words": 20}


def test_processor_names_and_settings_are_checked_at_config_time(tmp_path):
    bad_name = DATA + "    vis_processor:\n      train: {name: blip_image_trian}\n"
    with pytest.raises(ConfigError) as info:
        Config.from_file(write(tmp_path, MODEL + bad_name + RUN))
    assert "datasets.rs_synthetic.vis_processor.train.name" in str(info.value) and "Did you mean 'blip_image_train'?" in str(info.value)
    bad_key = DATA + "    text_processor:\n      train: {name: blip_caption, template: qa}\n"
    with pytest.raises(ConfigError, match="processor 'blip_caption' has no setting 'template'.*Valid: max_words, prompt"):
        Config.from_file(write(tmp_path, MODEL + bad_key + RUN, "k.yaml"))


def test_aliases_resolve_are_listed_and_suggested():
    assert registry.get_builder_class("coco_caption") is registry.get_builder_class("lavis_caption")
    assert registry.get_model_class("blip2_t5_instruct") is registry.get_model_class("instructblip")
    assert "coco_caption" in registry.list_builders() and "blip2_vicuna_instruct" in registry.list_models()
    assert registry.describe("builder")["coco_caption"] == "lavis_caption"
    assert registry.describe("builder")["lavis_caption"] is None
    with pytest.raises(RegistryKeyError) as info:
        registry.get_builder_class("caption_coco")
    assert "Did you mean 'coco_caption' (an alias of 'lavis_caption')?" in str(info.value)
    assert "coco_caption (alias of lavis_caption)" in str(info.value)
    with pytest.raises(RegistryKeyError, match="Did you mean 'blip2_t5_instruct'"):
        registry.get_model_class("blip2_t5_instructt")


def test_unknown_build_info_key_names_key_and_valid_ones(tmp_path):
    text = MODEL + DATA + "      sizse: {train: 2}\n" + RUN
    with pytest.raises(ConfigError) as info:
        Config.from_file(write(tmp_path, text))
    msg = str(info.value)
    assert "datasets.rs_synthetic.build_info: unknown key 'sizse'" in msg and "Did you mean 'sizes'?" in msg and "Valid keys:" in msg
    lavis = MODEL + "datasets:\n  coco_caption:\n    build_info:\n      annotations:\n        train: {storage: a.json, md55: x}\n" + RUN
    with pytest.raises(ConfigError, match="annotations.train: unknown key 'md55'; valid: storage, url, md5, coco_gt"):
        Config.from_file(write(tmp_path, lavis, "l.yaml"))


def test_checkpoint_urls_are_refused_in_one_line(tmp_path):
    url = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_caption_opt2.7b.pth"
    p = write(tmp_path, MODEL + f"  load_finetuned: True\n  finetuned: {url}\n" + DATA + RUN)
    with pytest.raises(ConfigError, match="model.finetuned is a URL .* nothing is downloaded; download it and set model.finetuned to the local path"):
        Config.from_file(p)
    assert Config.from_file(p, ["model.load_finetuned=False"]).model.finetuned is None
