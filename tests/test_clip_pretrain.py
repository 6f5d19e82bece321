"""clip_pretrain: recall@k counts the right hits, InfoNCE ignores duplicate pairs, training raises recall,
and the exported encoder is what smallcap_causal, knn_caption and the retrieval datastore load."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from rslavis.common.registry import registry
from rslavis.models.clip_dual import info_nce
from rslavis.tasks.clip_pretrain import recall_at_k
from tests.conftest import run_python


def test_recall_at_k_counts_own_and_identical_captions():
    img = torch.eye(3)
    # texts 0,1,2 point at images 0,1,2; text 3 points at image 0 but belongs to image 2
    txt = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.9, 0, 0.1]])
    txt = txt / txt.norm(dim=1, keepdim=True)
    owner = [0, 1, 2, 2]
    texts = ["a", "b", "c", "d"]
    image_texts = [{"a"}, {"b"}, {"c", "d"}]
    r = recall_at_k(img, txt, owner, image_texts, texts, ks=(1, 2))
    assert r["i2t_R@1"] == 1.0
    assert r["t2i_R@1"] == 0.75 and r["t2i_R@2"] == 1.0
    # the same string written for another image counts as a hit (templated captions repeat)
    r = recall_at_k(img, txt, owner, [{"a"}, {"b"}, {"c", "d", "a"}], ["a", "b", "c", "a"], ks=(1,))
    assert r["t2i_R@1"] == 1.0
    # image 0's nearest caption is image 1's, with the same text: a hit in both directions
    r = recall_at_k(torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), [0, 1], [{"same"}, {"same"}], ["same", "same"], ks=(1,))
    assert r["i2t_R@1"] == 1.0 and r["t2i_R@1"] == 1.0


def test_info_nce_masks_duplicate_pairs():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = img.clone()
    txt[1] = txt[0]  # caption 1 is identical to caption 0
    plain = info_nce(img, txt, 10.0)
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    masked = info_nce(img, txt, 10.0, same)
    assert masked < plain
    # the masked loss equals the loss without the duplicate's row/column pair as negatives
    logits = 10.0 * img @ txt.t()
    logits[0, 1] = logits[1, 0] = float("-inf")
    t = torch.arange(4)
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, t) + torch.nn.functional.cross_entropy(logits.t(), t))
    assert torch.allclose(masked, ref)


PROJECT = """
model: {{arch: clip_dual_encoder, model_type: tiny}}
datasets:
  rs_synthetic:
    vis_processor:
      train: {{name: rs_image_train, image_size: 48, min_scale: 1.0}}
      eval: {{name: rs_image_eval, image_size: 48}}
    build_info: {{cache_dir: {tmp}/scenes, seed: 5, image_size: 48, sizes: {{train: 96, val: 96, test: 32}}}}
run:
  task: clip_pretrain
  init_lr: 2.0e-3
  warmup_steps: 0
  max_epoch: 3
  batch_size_train: 48
  batch_size_eval: 96
  output_dir: {tmp}/runs
  job_id: cp
  train_splits: [train]
  valid_splits: [val]
  test_splits: [val]
"""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clip")
    (tmp / "p.yaml").write_text(PROJECT.format(tmp=tmp))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(tmp / "p.yaml")])
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs" / "cp", json.loads(out.stdout[out.stdout.index("{"):])


def _recall_of(model, records, processor):
    from PIL import Image

    from rslavis.tasks.clip_pretrain import _norm

    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([processor(Image.open(r["image"]).convert("RGB")) for r in records]))
        caps = [c for r in records for c in r["captions"]]
        txt = model.encode_text(caps)
    owner = [i for i, r in enumerate(records) for _ in r["captions"]]
    return recall_at_k(img, txt, owner, [{_norm(c) for c in r["captions"]} for r in records], [_norm(c) for c in caps], (1, 5))


def test_training_raises_recall_and_exports_the_best_encoder(pretrained):
    from rslavis.processors.image_processors import RSImageEvalProcessor

    run, printed = pretrained
    assert set(printed["test"]["val"]) >= {"i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "agg_metrics"}
    cls = registry.get_model_class("clip_dual_encoder")
    tiny = OmegaConf.load(cls.default_config_path("tiny")).model
    torch.manual_seed(42)  # the run's seed: the initialisation training started from
    untrained = cls.from_config(tiny)
    model = cls.from_config(tiny)
    model.load_state_dict(torch.load(run / "checkpoint_best.pth", weights_only=False)["model"])
    conf = OmegaConf.load(run / "config.yaml")
    sets = registry.get_builder_class("rs_synthetic")(conf.datasets.rs_synthetic, "rs_synthetic").build_datasets()
    proc = RSImageEvalProcessor(image_size=48)
    before = _recall_of(untrained, sets["train"].records, proc)
    trained = _recall_of(model, sets["train"].records, proc)  # recall on the training images after training
    assert trained["i2t_R@5"] > 2 * before["i2t_R@5"] and trained["t2i_R@5"] > 1.5 * before["t2i_R@5"]
    vision = json.loads((run / "encoder" / "vision.json").read_text())
    assert vision["type"] == "open_clip" and vision["freeze"] is True
    best = torch.load(run / "checkpoint_best.pth", weights_only=False)["model"]
    exported = torch.load(vision["checkpoint"])
    assert set(exported) == {k[len("clip."):] for k in best}
    assert all(torch.equal(exported[k[len("clip."):]], v) for k, v in best.items())


def test_exported_encoder_loads_in_smallcap_causal_knn_caption_and_retrieval(pretrained, tmp_path):
    from rslavis.models.tokenization import train_caption_tokenizer

    run, _ = pretrained
    vision = json.loads((run / "encoder" / "vision.json").read_text())
    exported = torch.load(vision["checkpoint"])
    ref = {k[len("visual."):]: v for k, v in exported.items() if k.startswith("visual.")}

    def same_visual(encoder):
        state = encoder.visual.state_dict()
        return set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)

    knn_cls = registry.get_model_class("knn_caption")
    kcfg = OmegaConf.load(knn_cls.default_config_path("tiny")).model
    kcfg.vision = vision
    knn = knn_cls.from_config(kcfg)
    assert same_visual(knn.visual_encoder)

    sc_cls = registry.get_model_class("smallcap_causal")
    scfg = OmegaConf.load(sc_cls.default_config_path("tiny")).model
    scfg.vision = vision
    scfg.decoder.update(n_layer=1, n_embd=32, n_head=2)
    scfg.retrieval.cache_dir = str(tmp_path / "retrieval")
    model = sc_cls.from_config(scfg, tokenizer=train_caption_tokenizer(["a plane", "similar images show this image shows"]))
    assert same_visual(model.visual_encoder)
    assert all(not p.requires_grad for p in model.visual_encoder.parameters())
    assert model._retrieval_encoder() is model.visual_encoder  # the datastore is keyed by the pretrained, frozen encoder

    from rslavis.datasets.builders.base_builder import PACKAGE_ROOT

    base = OmegaConf.load(PACKAGE_ROOT / "configs/datasets/rs_synthetic/defaults.yaml").datasets.rs_synthetic
    dcfg = OmegaConf.merge(base, {"vis_processor": {"train": {"image_size": 48}, "eval": {"image_size": 48}},
                                  "build_info": {"cache_dir": str(run.parent.parent / "scenes"), "seed": 5, "image_size": 48, "sizes": {"train": 96, "val": 96, "test": 32}}})
    sets = registry.get_builder_class("rs_synthetic")(dcfg, "rs_synthetic").build_datasets()
    built = model.build_retrieval({"rs_synthetic": sets}, progress=False)["rs_synthetic"]
    # datastore keys are the pretrained encoder's pooled features of the training images
    from rslavis.models.encoders import encode_pooled

    first = sets["val"][0]["image"].unsqueeze(0)
    row = built["datastore"].image_ids.index(sets["train"].records[0]["image_id"])
    feat = encode_pooled(model.visual_encoder, sets["val"].vis_processor.__class__(image_size=48)(__import__("PIL.Image", fromlist=["Image"]).open(sets["train"].records[0]["image"]).convert("RGB")).unsqueeze(0))
    assert torch.allclose(torch.from_numpy(built["datastore"].features[row]), feat[0], atol=1e-5)
    assert first.shape[-1] == 48
