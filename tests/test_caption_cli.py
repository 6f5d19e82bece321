"""``python -m rslavis.caption``: a trained run captions a folder, with retrieval, skipping unreadable images."""

import json
import shutil

import pytest

from rslavis.caption import main
from tests.conftest import run_python

PROJECT = """
model:
  arch: smallcap_causal
  model_type: tiny
  vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2}}
  retrieval: {{cache_dir: {tmp}/ret, k: 2}}
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {tmp}/syn
      sizes: {{train: 8, val: 2, test: 3}}
run:
  task: captioning
  init_lr: 1.0e-3
  warmup_steps: 2
  max_epoch: 1
  batch_size_train: 8
  batch_size_eval: 4
  seed: 1
  output_dir: {tmp}/out
  job_id: run
  max_len: 8
  skip_metrics: [METEOR, SPICE]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caption_cli")
    cfg = tmp / "p.yaml"
    cfg.write_text(PROJECT.format(tmp=tmp))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg)])
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


def _image_folder(tmp, trained):
    folder = tmp / "imgs"
    (folder / "sub").mkdir(parents=True)
    test_images = sorted((next((trained / "syn").iterdir()) / "images").glob("test_*.png"))
    shutil.copy(test_images[0], folder / "a.png")
    shutil.copy(test_images[1], folder / "sub" / "b.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder, test_images


def test_caption_folder_from_run_dir_with_retrieval(trained, tmp_path, capsys):
    folder, test_images = _image_folder(tmp_path, trained)
    run_dir = trained / "out" / "run"
    assert (run_dir / "retrieval" / "features.npy").is_file()
    out_file = tmp_path / "captions.json"
    rc = main(["--checkpoint", str(run_dir), "--images", str(folder), "--recursive", "--out", str(out_file), "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    assert "broken.jpg" in err and "skipped 1 unreadable" in err and "with retrieval prompts" in err
    got = json.loads(out_file.read_text())
    assert [r["image_id"] for r in got] == ["a", "sub/b"]
    assert all(isinstance(r["caption"], str) and r["caption"] for r in got)

    # the same image captioned by the run's own test evaluation (retrieved captions from its JSON)
    preds = {p["image_id"]: p["caption"] for p in json.loads(next((run_dir / "result").glob("test_epoch*.json")).read_text())}
    assert got[0]["caption"] == preds[test_images[0].stem]


def test_caption_from_save_pretrained_and_errors(trained, tmp_path, capsys):
    from rslavis.caption import caption_images, image_processor, list_images, load_model

    model, cfg, _ = load_model(trained / "out" / "run" / "checkpoint_best.pth")
    assert model.datastore is not None
    model.save_pretrained(tmp_path / "saved")
    folder, _ = _image_folder(tmp_path, trained)
    loaded, _, _ = load_model(tmp_path / "saved")
    proc = image_processor(model, cfg)
    _, files = list_images(folder)
    assert [f.name for f in files] == ["a.png", "broken.jpg"]  # not notes.txt, not sub/ without --recursive
    a, skipped = caption_images(model, files, folder, proc, generate_kwargs={"max_len": 6}, progress=False)
    b, _ = caption_images(loaded, files, folder, proc, generate_kwargs={"max_len": 6}, progress=False)
    assert a == b and len(a) == 1 and [s[0].endswith("broken.jpg") for s in skipped] == [True]

    capsys.readouterr()
    assert main(["--checkpoint", str(tmp_path / "nope"), "--images", str(folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("rslavis: error: --checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--checkpoint", str(tmp_path / "saved"), "--images", str(empty)]) == 2
    assert "no images" in capsys.readouterr().err
