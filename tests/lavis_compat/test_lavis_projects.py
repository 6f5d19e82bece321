"""LAVIS project and dataset files (written here to LAVIS's schema: the same sections, keys and
value spellings as LAVIS's own ``lavis/projects/**`` and ``lavis/configs/datasets/**``) run for
one iteration on tiny fixture data in LAVIS's annotation formats.

The only ``--options`` are paths, the model size (a tiny ``model_type`` and the image size its
ViT takes) and test speed (one iteration, no worker processes, no Java metrics).
"""

import json

import pytest
import torch

from tests.lavis_compat.conftest import write_lavis_data

torch.set_num_threads(1)

BLIP2_CAPTION_FT = """
 # To LAVIS's schema (lavis/projects/blip2/train/caption_coco_ft.yaml)

model:
  arch: blip2_opt
  model_type: caption_coco_opt2.7b
  load_finetuned: False
  use_grad_checkpoint: True

datasets:
  coco_caption: # name of the dataset builder
    vis_processor:
        train:
          name: "blip_image_train"
          image_size: 364
        eval:
          name: "blip_image_eval"
          image_size: 364
    text_processor:
        train:
          name: "blip_caption"
          prompt: "a photo of "
        eval:
          name: "blip_caption"
    build_info:
        images:
            storage: '/export/share/datasets/vision/coco/images/'

run:
  task: captioning
  # optimizer
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-5
  min_lr: 0
  warmup_lr: 1e-8
  warmup_steps: 1000
  weight_decay: 0.05
  max_epoch: 5
  batch_size_train: 16
  batch_size_eval: 16
  num_workers: 4

  max_len: 30
  min_len: 8
  num_beams: 5

  seed: 42
  output_dir: "output/BLIP2/Caption_coco"

  amp: True
  resume_ckpt_path: null

  evaluate: False
  train_splits: ["train"]
  valid_splits: ["val"]
  test_splits: ["test"]

  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
"""

BLIP2_CAPTION_EVAL = """
model:
  arch: blip2_t5
  model_type: caption_coco_flant5xl
  use_grad_checkpoint: False

datasets:
  coco_caption: # name of the dataset builder
    vis_processor:
        eval:
          name: "blip_image_eval"
          image_size: 364
    text_processor:
        eval:
          name: "blip_caption"

run:
  task: captioning
  # optimizer
  batch_size_train: 32
  batch_size_eval: 16
  num_workers: 4

  max_len: 30
  min_len: 8
  num_beams: 5

  seed: 42
  output_dir: "output/BLIP2/Caption_coco_flant5xl"

  evaluate: True
  test_splits: ["test"]

  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
"""

INSTRUCTBLIP_CAPTION_EVAL_VAL = """
model:
  arch: blip2_t5_instruct
  model_type: flant5xl
  load_pretrained: True
  prompt: "A short image caption."

datasets:
  coco_caption: # name of the dataset builder
    data_type: images # [images|videos|features]

    vis_processor:
      train:
        name: "clip_image_train"
        image_size: 224
      eval:
        name: "clip_image_eval"
        image_size: 224

    text_processor:
      train:
        name: blip_caption
      eval:
        name: blip_caption

    build_info:
      # Be careful not to append minus sign (-) before split to avoid itemizing
      annotations:
        train:
          url: https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_train.json
          md5: aa31ac474cf6250ebb81d18348a07ed8
          storage: coco/annotations/coco_karpathy_train.json
        val:
          url: https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_val.json
          md5: b273847456ef5580e33713b1f7de52a0
          storage:  coco/annotations/coco_karpathy_val.json
        test:
          url: https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_test.json
          md5: 3ff34b0ef2db02d01c37399f6a2a6cd1
          storage: coco/annotations/coco_karpathy_test.json
      images:
        storage: /export/share/datasets/vision/coco/images


run:
  task: captioning
  # optimizer
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-5
  min_lr: 0
  warmup_lr: 1e-8
  warmup_steps: 1000
  weight_decay: 0.05
  max_epoch: 1
  batch_size_train: 16
  batch_size_eval: 1
  num_workers: 8
  accum_grad_iters: 1

  max_len: 80
  min_len: 10
  num_beams: 5
  inference_method: "generate"
  # prompt: an image that shows
  length_penalty: 1.


  seed: 42
  output_dir: "output/instructblip/coco_captioning_flant5xl_val/"


  amp: True
  resume_ckpt_path: null

  evaluate: True
  # train_splits: ["train"]
  valid_splits: ["val"]


  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
  save_freq: -1 # save epoch every xxx epochs -1 only save last and best.
  val_freq: 1
"""

BLIP_CAPTION_FT = """
model:
  arch: blip_caption

  model_type: base_coco
  load_finetuned: False

datasets:
  coco_caption: # name of the dataset builder
    vis_processor:
        train:
          name: "blip_image_train"
        eval:
          name: "blip_image_eval"
    text_processor:
        train:
          name: "blip_caption"
          prompt: "a picture of "
        eval:
          name: "blip_caption"

run:
  # task: retrieval
  task: captioning
  # optimizer
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-5
  min_lr: 0
  weight_decay: 0.05
  max_epoch: 5
  batch_size_train: 16
  batch_size_eval: 64
  num_workers: 4

  max_len: 20
  min_len: 5
  num_beams: 3

  seed: 42
  output_dir: "output/BLIP/Caption_coco"

  evaluate: False
  train_splits: ["train"]
  valid_splits: ["val"]
  test_splits: ["test"]

  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
"""

BLIP2_VQA_FT = """
model:
  arch: blip2_t5
  model_type: pretrain_flant5xl
  use_grad_checkpoint: False

datasets:
  coco_vqa: # name of the dataset builder
    type: default
    vis_processor:
        train:
          name: "blip2_image_train"
          image_size: 224
        eval:
          name: "blip_image_eval"
          image_size: 224
    text_processor:
        train:
          name: "blip_question"
        eval:
          name: "blip_question"

run:
  task: vqa
  # optimization-specific
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-5
  min_lr: 0
  warmup_lr: 1e-8
  warmup_steps: 1000
  weight_decay: 0.05
  max_epoch: 5
  batch_size_train: 16
  batch_size_eval: 64
  num_workers: 4

  # inference-specific
  max_len: 10
  min_len: 1
  num_beams: 5
  inference_method: "generate"
  prompt: "Question: {} Short answer:"

  seed: 42
  output_dir: "output/BLIP2/VQA"

  evaluate: False
  train_splits: ["train"]
  valid_splits: ["val"]
  test_splits: ["test"]

  # distribution-specific
  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
"""

INSTRUCTBLIP_VQA_EVAL = """
model:
  arch: blip2_vicuna_instruct
  model_type: vicuna7b
  load_pretrained: True
  prompt: "Question: {} Short answer:"

datasets:
  coco_vqa: # name of the dataset builder
    type: eval
    vis_processor:
        eval:
          name: "blip_image_eval"
          image_size: 224
    text_processor:
        eval:
          name: "blip_question"

run:
  task: vqa
  # optimization-specific
  batch_size_train: 16
  batch_size_eval: 64
  num_workers: 4

  # inference-specific
  max_len: 10
  min_len: 1
  num_beams: 5
  inference_method: "generate"
  prompt: "Question: {} Short answer:"

  seed: 42
  output_dir: "output/instructblip/okvqa"

  evaluate: True
  test_splits: ["val"]

  # distribution-specific
  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
"""

# A dataset YAML to LAVIS's schema (lavis/configs/datasets/coco/defaults_cap.yaml), given by path as the dataset type
DATASET_YAML = """
datasets:
  coco_caption: # name of the dataset builder
    # data_dir: ${{env.data_dir}}/datasets
    data_type: images # [images|videos|features]

    build_info:
      # Be careful not to append minus sign (-) before split to avoid itemizing
      annotations:
        train:
          url: https://example.org/datasets/rs_karpathy_train.json
          md5: aa31ac474cf6250ebb81d18348a07ed8
          storage: {train}
        val:
          url: https://example.org/datasets/rs_karpathy_val.json
          md5: b273847456ef5580e33713b1f7de52a0
          storage:  {val}
        test:
          url: https://example.org/datasets/rs_karpathy_test.json
          md5: 3ff34b0ef2db02d01c37399f6a2a6cd1
          storage: {test}
      images:
        storage: {images}/
"""


def paths(name, files, kind="cap", size=None, splits=("train", "val", "test")):
    out = [f"datasets.{name}.build_info.images.storage={files['images']}"]
    out += [f"datasets.{name}.build_info.annotations.{s}.storage={files[f'{kind}_{s}']}" for s in splits]
    if size:  # the tiny ViT takes `size` pixels
        out += [f"datasets.{name}.vis_processor.{s}.image_size={size}" for s in ("train", "eval")]
    return out


SPEED = ["run.max_epoch=1", "run.iters_per_epoch=1", "run.num_workers=0", "run.skip_metrics=[METEOR,SPICE]"]
VQA_SPEED = SPEED[:3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_lavis_data(tmp_path_factory.mktemp("lavis") / "data", n_per_split=(6, 2, 2))


def run(tmp_path, text, *options, name="project.yaml"):
    from rslavis.train import main

    p = tmp_path / name
    p.write_text(text)
    code = main(["--cfg-path", str(p), "--options", f"run.output_dir={tmp_path / 'out'}", "run.job_id=j", *options])
    assert code == 0
    return tmp_path / "out" / "j"


def metrics(run_dir, split):
    return json.loads((run_dir / f"metrics_{split}.json").read_text())


def results(run_dir, split):
    return json.loads(next((run_dir / "result").glob(f"{split}_epoch*.json")).read_text())


def test_blip2_opt_caption_finetune(tmp_path, data):
    out = run(tmp_path, BLIP2_CAPTION_FT, "model.model_type=tiny_opt", *paths("coco_caption", data, size=64), *SPEED)
    assert {"CIDEr", "Bleu_4", "agg_metrics"} <= set(metrics(out, "val")) and "CIDEr" in metrics(out, "test")
    preds = results(out, "test")
    assert len(preds) == 2 and not any(p["caption"].lower().startswith("a photo of") for p in preds)  # prompt stripped
    cfg = (out / "config.yaml").read_text()
    assert "init_lr: 1.0e-05" in cfg and "use_grad_checkpoint: true" in cfg


def test_blip2_t5_caption_eval_only(tmp_path, data):
    out = run(tmp_path, BLIP2_CAPTION_EVAL, "model.model_type=tiny_t5", *paths("coco_caption", data, size=64), *SPEED)
    assert "CIDEr" in metrics(out, "test") and "CIDEr" in metrics(out, "val")  # valid_splits, then test_splits
    assert not (out / "checkpoint_latest.pth").exists()


def test_instructblip_caption_eval_val(tmp_path, data):
    out = run(tmp_path, INSTRUCTBLIP_CAPTION_EVAL_VAL, "model.model_type=tiny_t5", *paths("coco_caption", data, size=64), *SPEED, "run.num_beams=2", "run.max_len=12")
    assert len(results(out, "val")) == 2 and "CIDEr" in metrics(out, "val")


def test_blip_caption_finetune_with_a_lavis_dataset_yaml(tmp_path, data):
    ds = tmp_path / "defaults_cap.yaml"
    ds.write_text(DATASET_YAML.format(train=data["cap_train"], val=data["cap_val"], test=data["cap_test"], images=data["images"]))
    text = BLIP_CAPTION_FT.replace("  coco_caption: # name of the dataset builder\n", f"  coco_caption: # name of the dataset builder\n    type: {ds}\n")
    out = run(tmp_path, text, "model.model_type=tiny", *[f"datasets.coco_caption.vis_processor.{s}.image_size=64" for s in ("train", "eval")], *SPEED)
    preds = results(out, "test")
    assert len(preds) == 2 and not any(p["caption"].startswith("a picture of") for p in preds)


def test_blip2_t5_vqa_finetune(tmp_path, data):
    out = run(tmp_path, BLIP2_VQA_FT, "model.model_type=tiny_t5", *paths("coco_vqa", data, kind="vqa", size=64), *VQA_SPEED)
    m = metrics(out, "test")
    assert 0.0 <= m["accuracy"] <= 1.0 and len(results(out, "test")) == 6


def test_instructblip_vicuna_vqa_eval(tmp_path, data):
    out = run(tmp_path, INSTRUCTBLIP_VQA_EVAL, "model.model_type=tiny_opt", *paths("coco_vqa", data, kind="vqa", size=64), *VQA_SPEED)
    assert len(results(out, "val")) == 6 and "accuracy" in metrics(out, "val")


def test_a_remaining_refusal_is_one_line(tmp_path, data):
    """The full-size model needs local weights: one line naming the key and the fix, exit 2."""
    from tests.conftest import run_python

    p = tmp_path / "p.yaml"
    p.write_text(BLIP2_CAPTION_FT)
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(p), "--options", *paths("coco_caption", data), f"run.output_dir={tmp_path}"])
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("rslavis: error:")]
    assert len(lines) == 1 and "model.pretrained: directory not found" in lines[0] and "Salesforce/blip2-opt-2.7b-coco" in lines[0]
