"""LAVIS dataset layouts and annotation formats, LAVIS processors, datasets-only CLIs."""

import json
import textwrap

import pytest
import torch

from rslavis.common.config import Config
from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from tests.conftest import run_python


def build(tmp_path, text, options=None):
    p = tmp_path / "d.yaml"
    p.write_text(textwrap.dedent(text))
    cfg = Config.from_file(p, options, require_task=False)
    name = next(iter(cfg.datasets))
    builder = registry.get_builder_class(name)(cfg.datasets[name], name)
    return builder


def lavis_section(name, files, splits=("train", "val", "test"), kind="cap", extra=""):
    ann = "".join(f"        {s}:\n          storage: {files[f'{kind}_{s}']}\n" for s in splits)
    return f"datasets:\n  {name}:\n    build_info:\n      annotations:\n{ann}{extra}      images:\n        storage: {files['images']}\n"


def test_lavis_caption_formats_through_coco_caption(tmp_path, lavis_data):
    b = build(tmp_path, lavis_section("coco_caption", lavis_data))
    recs = b.read_records()
    assert sorted(recs) == ["test", "train", "val"]
    train = recs["train"]
    assert len(train) == 4 and all(len(r["captions"]) == 3 for r in train)  # one record per caption -> per image
    assert train[0]["image_id"] == "coco_1000" and train[0]["image"].endswith("images/val2014/COCO_val2014_000000001000.jpg")
    val = recs["val"]
    assert [r["image_id"] for r in val] == ["COCO_val2014_000000001004", "COCO_val2014_000000001005"]  # no image_id: the file stem
    assert val[0]["captions"] == ["an airport with two planes", "two planes parked near a runway", "a runway and planes"]
    datasets = b.build_datasets()
    sample = datasets["val"][0]
    assert sample["image"].shape == (3, 384, 384)  # blip_image_eval, LAVIS's default size
    assert datasets["train"][0]["text_output"] == "an airport with two planes"


def test_coco_gt_references_replace_the_lists(tmp_path, lavis_data):
    extra = f"          coco_gt: {lavis_data['cap_val_gt']}\n"
    text = lavis_section("coco_caption", lavis_data, splits=("val",)).replace(
        f"storage: {lavis_data['cap_val']}\n", f"storage: {lavis_data['cap_val']}\n{extra}"
    )
    recs = build(tmp_path, text, ["datasets.coco_caption.build_info.annotations.train=null", "datasets.coco_caption.build_info.annotations.test=null"]).read_records()
    assert sorted(recs) == ["val"]
    assert [r["image_id"] for r in recs["val"]] == [1004, 1005]  # LAVIS's COCO ids: the file name's number
    assert recs["val"][0]["captions"][0] == "AN AIRPORT WITH TWO PLANES"


def test_coco_gt_missing_image_is_an_error(tmp_path, lavis_data):
    gt = json.loads(lavis_data["cap_val_gt"].read_text())
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != 1005]
    lavis_data["cap_val_gt"].write_text(json.dumps(gt))
    text = lavis_section("coco_caption", lavis_data, splits=("val",)).replace(
        f"storage: {lavis_data['cap_val']}\n", f"storage: {lavis_data['cap_val']}\n          coco_gt: {lavis_data['cap_val_gt']}\n"
    )
    b = build(tmp_path, text, ["datasets.coco_caption.build_info.annotations.train=null", "datasets.coco_caption.build_info.annotations.test=null"])
    with pytest.raises(DataError, match="cap_val_gt.json: 1 image.* have no ground truth here .*COCO_val2014_000000001005"):
        b.read_records()


@pytest.mark.parametrize("name", ["ucm_caption", "rsicd_caption", "coco_caption_format", "rsicap_caption", "vrsbench_caption"])
def test_every_caption_builder_reads_the_lavis_layout(tmp_path, lavis_data, name):
    recs = build(tmp_path, lavis_section(name, lavis_data)).read_records()
    assert {k: len(v) for k, v in recs.items()} == {"train": 4, "val": 2, "test": 2}


@pytest.mark.parametrize("name", ["coco_vqa", "rsieval_vqa", "vrsbench_vqa", "rsvqa_lr"])
def test_every_vqa_builder_reads_the_lavis_vqa_format(tmp_path, lavis_data, name):
    b = build(tmp_path, lavis_section(name, lavis_data, kind="vqa"))
    recs = b.read_records()
    assert {k: len(v) for k, v in recs.items()} == {"train": 12, "val": 6, "test": 6}
    q = recs["train"][0]
    assert q["question_id"] == 10000 and q["answers"] == ["two", "2"] and q["question"] == "how many planes are there?"


def test_url_is_the_local_path_without_storage_and_a_web_url_is_refused(tmp_path, lavis_data):
    text = f"""
    datasets:
      ucm_caption:
        build_info:
          annotations:
            train: {{url: {lavis_data['cap_train']}}}
          images: {{storage: {lavis_data['images']}}}
    """
    assert len(build(tmp_path, text).read_records()["train"]) == 4
    web = text.replace(f"url: {lavis_data['cap_train']}", "url: https://example.org/x.json, md5: abc")
    with pytest.raises(ConfigError, match="annotations.train.url: https://example.org/x.json is a URL and nothing is downloaded.*annotations.train.storage"):
        build(tmp_path, web).read_records()


def test_missing_split_file_names_the_key_and_how_to_leave_it_out(tmp_path, lavis_data):
    text = lavis_section("coco_caption", lavis_data).replace(str(lavis_data["cap_test"]), str(tmp_path / "absent.json"))
    with pytest.raises(DataError) as info:
        build(tmp_path, text).read_records()
    msg = str(info.value)
    assert "datasets.coco_caption.build_info.annotations.test.storage: file not found" in msg
    assert "set datasets.coco_caption.build_info.annotations.test to null" in msg


def test_images_storage_in_the_rslavis_layout(tmp_path, shared_data):
    ucm = shared_data / "ucm_captions"
    ann = ucm / "dataset.json"
    images = ucm / "images" if (ucm / "images").is_dir() else ucm
    text = f"datasets:\n  ucm_caption:\n    build_info:\n      annotation: {ann}\n      images: {{storage: {tmp_path / 'nowhere'}}}\n"
    with pytest.raises(DataError) as info:
        build(tmp_path, text).read_records()
    assert "datasets.ucm_caption.build_info.images.storage: folder not found" in str(info.value) and "{" not in str(info.value).split("not found:")[1][:40]
    ok = text.replace(str(tmp_path / "nowhere"), str(images))
    assert sum(len(v) for v in build(tmp_path, ok).read_records().values()) > 0


# ---------------------------------------------------------------------- processors
def test_blip_text_processors_follow_lavis():
    cap = registry.get_processor_class("blip_caption").from_config({"prompt": "a photo of ", "max_words": 4})
    assert cap('Two "Planes" (parked)  near; the runway.') == "a photo of two planes parked near"
    assert registry.get_processor_class("blip_caption").from_config({})("A Harbor!\n") == "a harbor"
    q = registry.get_processor_class("blip_question").from_config({"max_words": 50})
    assert q("How many Planes? (total).") == "how many planes? total"


@pytest.mark.parametrize("name,size", [("blip_image_eval", 384), ("blip_image_train", 384), ("blip2_image_train", 364), ("clip_image_eval", 224)])
def test_blip_image_processors_sizes_and_normalisation(name, size):
    from PIL import Image

    proc = registry.get_processor_class(name).from_config({})
    gray = Image.new("RGB", (50, 30), (128, 128, 128))
    out = proc(gray)
    assert out.shape == (3, size, size)
    if name.endswith("eval"):
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # BLIP's statistics
        expected = (torch.tensor(128 / 255) - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out.mean((1, 2)), expected, atol=1e-3)
    small = registry.get_processor_class(name).from_config({"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert small(gray).shape == (3, 32, 32)


# ---------------------------------------------------------------------- datasets-only files
def test_baselines_and_datasets_clis_take_a_datasets_only_file(tmp_path, lavis_data):
    p = tmp_path / "only.yaml"
    p.write_text(lavis_section("coco_caption", lavis_data))
    out = run_python(["-m", "rslavis.datasets", "--cfg-path", str(p)])
    assert out.returncode == 0, out.stderr
    assert "train: 4 images, 12 captions" in out.stdout
    out = run_python(["-m", "rslavis.baselines", "--cfg-path", str(p), "--no-meteor", "--no-spice", "--no-objects"])
    assert out.returncode == 0, out.stderr
    assert "coco_caption test most_frequent_caption" in out.stdout


def test_null_caption_and_duplicate_question_id_are_named(tmp_path, lavis_data):
    data = json.loads(lavis_data["cap_train"].read_text())
    data[4]["caption"] = None
    lavis_data["cap_train"].write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"cap_train.json: entry 4: 'caption' is None .* it must be a string"):
        build(tmp_path, lavis_section("ucm_caption", lavis_data, splits=("train",))).read_records()
    vqa = json.loads(lavis_data["vqa_val"].read_text())
    vqa[1]["question_id"] = vqa[0]["question_id"]
    lavis_data["vqa_val"].write_text(json.dumps(vqa))
    with pytest.raises(DataError, match=r"vqa_val.json: question_id \d+ is used by records 0 and 1"):
        build(tmp_path, lavis_section("rsieval_vqa", lavis_data, splits=("val",), kind="vqa")).read_records()


def test_text_processor_prompt_is_stripped_before_scoring(tmp_path, lavis_data):
    """A model trained on "a photo of <caption>" writes the prompt too; LAVIS scores the caption only."""
    from omegaconf import OmegaConf

    from rslavis.tasks.captioning import CaptionTask

    text = lavis_section("coco_caption", lavis_data) + "    text_processor:\n      train: {name: blip_caption, prompt: 'a photo of '}\n"
    p = tmp_path / "p.yaml"
    p.write_text(text + "run:\n  task: captioning\n  skip_metrics: [METEOR, SPICE]\n")
    cfg = Config.from_file(p, require_task=False)
    task = CaptionTask(cfg)
    datasets = task.build_datasets(cfg)["coco_caption"]
    assert datasets["train"][0]["text_output"] == "a photo of an airport with two planes"
    val = datasets["val"]
    refs = val.references()
    results = [{"image_id": i, "caption": "A photo of " + r[0]} for i, r in refs.items()]
    metrics = task.after_evaluation(results, "val", 0, val, tmp_path)
    written = json.loads((tmp_path / "val_epoch0.json").read_text())
    assert [r["caption"] for r in written] == [r[0] for r in refs.values()]
    assert metrics["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert OmegaConf.is_config(cfg.config)
