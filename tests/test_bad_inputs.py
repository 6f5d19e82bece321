"""Nothing silent: each bad input or fault of issue 15 ends in one clear line (exit 2) or does
exactly what was asked. One test per case; the CLIs' ``main()`` runs in-process (no interpreter
start per case), so stderr is what a user sees, and ``Traceback`` must not be in it.

Cases covered elsewhere: exact SCST resume with ``nkl`` and ``normalize: true``
(tests/test_scst_e2e.py), resume after SIGKILL at seeded moments (tests/test_fault_injection.py).
"""

import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint

TINY = """
model:
  arch: smallcap
  model_type: tiny
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2}}
  vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}
datasets:
  rs_synthetic:
    build_info:
      cache_dir: {cache}
      sizes: {{train: 8, val: 4, test: 8}}
run:
  task: {task}
  lr_sched: constant_lr
  init_lr: 1.0e-3
  max_epoch: 1
  batch_size_train: 8
  batch_size_eval: 4
  log_freq: 1
  seed: 1
  output_dir: {out}
  max_len: 6
  skip_metrics: [METEOR, SPICE]
{extra}"""

SCST = """  scst_start_epoch: 0
  scst_num_samples: 2
  scst_max_len: 6
"""


@pytest.fixture(autouse=True)
def _no_stale_log_streams(monkeypatch):
    # transformers' own log handler keeps the stderr of the test that imported it (pytest closes it
    # after that test): in-process runs must not print logging's "--- Logging error ---" for it
    import logging

    monkeypatch.setattr(logging, "raiseExceptions", False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture
def project(tmp_path, cache):
    def make(extra="", task="captioning", text=None):
        p = tmp_path / f"project_{len(list(tmp_path.glob('project_*.yaml')))}.yaml"
        p.write_text(text if text is not None else TINY.format(cache=cache, out=tmp_path / "out", task=task, extra=extra))
        return p

    return make


def train(capsys, cfg, *options, extra=()):
    """``(exit code, stderr)`` of ``python -m rslavis.train`` run in this process."""
    from rslavis.train import main

    argv = ["--cfg-path", str(cfg), *extra]
    if options:
        argv += ["--options", *options]
    rc = main(argv)
    return rc, capsys.readouterr().err


def one_error(err):
    """The single ``rslavis: error:`` line of ``err`` (and no traceback)."""
    assert "Traceback" not in err, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("rslavis: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def log_records(run_dir):
    return [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------- the job folder
def test_second_run_on_a_locked_job_folder_fails_naming_the_holder(project, tmp_path, capsys):
    cfg = project()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "out" / "j"
        run_dir.mkdir(parents=True)
        (run_dir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now"}))
        rc, err = train(capsys, cfg, "run.job_id=j")
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2
    line = one_error(err)
    assert f"in use by process {holder.pid} on {socket.gethostname()}" in line and "run.job_id" in line
    assert not (run_dir / "log.jsonl").exists() and not (run_dir / "config.yaml").exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(project, tmp_path, capsys):
    cfg = project()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "out" / "j"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    rc, err = train(capsys, cfg, "run.job_id=j", "run.valid_splits=[]", "run.test_splits=[]")
    assert rc == 0, err[-2000:]
    assert f"taking over the lock of process {dead.pid}" in err
    assert not (run_dir / ".lock").exists()  # released at the end


def test_restart_without_resume_replaces_the_log_of_the_earlier_attempt(project, tmp_path, capsys):
    cfg = project()
    for _ in range(2):
        rc, err = train(capsys, cfg, "run.job_id=r", "run.test_splits=[]")
        assert rc == 0, err[-2000:]
    assert "log of its earlier attempt is replaced" in err
    steps = [r["step"] for r in log_records(tmp_path / "out" / "r") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------- rewards
def test_nan_reward_is_an_error_naming_the_reward_and_the_caption(project, capsys):
    cfg = project(SCST + "  rewards: {cider: 1.0, nan_first: {weight: 1.0, normalize: true}}\nplugins: [tests._bad_plugins]\n", task="scst")
    rc, err = train(capsys, cfg, "run.job_id=n", "run.valid_splits=[]", "run.test_splits=[]")
    assert rc == 2
    line = one_error(err)
    assert "reward 'nan_first' returned nan for caption '" in line and "run.nonfinite_rewards: skip" in line


def test_inf_reward_with_skip_drops_the_sample_and_counts_it(project, tmp_path, capsys):
    cfg = project(SCST + "  rewards: {cider: 1.0, inf_first: {weight: 1.0, normalize: true}}\n  nonfinite_rewards: skip\n"
                  "plugins: [tests._bad_plugins]\n", task="scst")
    rc, err = train(capsys, cfg, "run.job_id=s", "run.valid_splits=[]", "run.test_splits=[]")
    assert rc == 0, err[-2000:]
    steps = [r for r in log_records(tmp_path / "out" / "s") if "loss" in r]
    # per step: the first sample, and with the greedy baseline both samples of the first image
    assert steps and all(r["scst/nonfinite_skipped"] == 2 for r in steps)
    assert all(r["loss"] == r["loss"] for r in steps)  # finite loss
    norm = load_checkpoint(tmp_path / "out" / "s" / "checkpoint_latest.pth")["task"]["reward"]["inf_first"]["norm"]
    assert norm["mean"] == pytest.approx(0.5) and norm["var"] == pytest.approx(0.0)  # never absorbed the inf


def test_nan_through_the_reward_helper_is_not_hidden(fresh_registry):
    from rslavis.rewards.base_reward import BaseReward
    from rslavis.rewards.combine import NonFiniteRewardError, build_reward

    @fresh_registry.register_reward("helper_nan")
    class HelperNan(BaseReward):
        def __call__(self, generated, references, **extra):
            return self.as_tensor([float("nan")] + [1.0] * (len(generated) - 1))

    with pytest.raises(NonFiniteRewardError, match="reward 'helper_nan' returned nan for caption 'a road'"):
        build_reward({"helper_nan": 1.0}, reg=fresh_registry).compute(["a road", "a field"], [["a road"], ["a field"]])


def test_running_normalisation_ignores_non_finite_values():
    from rslavis.rewards.combine import RunningNorm

    norm = RunningNorm()
    norm(torch.tensor([float("nan"), 1.0, 3.0]))
    assert norm.mean == 2.0 and norm.var == 1.0
    out = norm(torch.tensor([2.0, 4.0]))
    assert torch.isfinite(out).all()


def test_zero_scst_sample_length(project, capsys):
    rc, err = train(capsys, project(SCST, task="scst"), "run.scst_max_len=0")
    assert rc == 2 and "run.scst_max_len 0 / run.scst_min_len 0: the sampled caption length needs 1 <= scst_max_len" in one_error(err)


def test_unknown_nonfinite_rewards_value(project, capsys):
    cfg = project(SCST + "  nonfinite_rewards: ignore\n", task="scst")
    rc, err = train(capsys, cfg, "run.job_id=x")
    assert rc == 2 and "run.nonfinite_rewards 'ignore' is invalid; valid: error, skip" in one_error(err)


# ---------------------------------------------------------------------- data
def _coco_project(tmp_path, cache, images, annotations, extra_run=""):
    from PIL import Image

    img_dir = tmp_path / "coco_images"
    img_dir.mkdir(exist_ok=True)
    for im in images:
        Image.new("RGB", (16, 16), (40, 90, 40)).save(img_dir / im["file_name"])
    ann = tmp_path / "coco.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations}))
    p = tmp_path / "coco_project.yaml"
    p.write_text(f"""
model: {{arch: smallcap, model_type: tiny, decoder: {{n_layer: 1, n_embd: 32, n_head: 2}},
        vision: {{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}}}
datasets:
  coco_caption_format:
    vis_processor: {{train: {{name: rs_image_train, image_size: 64}}, eval: {{name: rs_image_eval, image_size: 64}}}}
    build_info: {{splits: {{train: {{annotation: {ann}, images: {img_dir}}}}}}}
run: {{task: captioning, output_dir: {tmp_path / 'out'}, max_epoch: 1, batch_size_train: 2, skip_metrics: [METEOR, SPICE]{extra_run}}}
""")
    return p, ann


def test_duplicate_image_ids_in_a_coco_file(tmp_path, cache, capsys):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]
    cfg, ann = _coco_project(tmp_path, cache, images, [{"image_id": 1, "caption": "a field"}, {"image_id": 1, "caption": "a road"}])
    rc, err = train(capsys, cfg)
    assert rc == 2
    line = one_error(err)
    assert str(ann) in line and "images 0 and 1 have the same id 1" in line


def test_null_caption_is_an_error_naming_the_file_and_record(tmp_path, cache, capsys):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    cfg, ann = _coco_project(tmp_path, cache, images, [{"image_id": 1, "caption": "a field"}, {"image_id": 2, "caption": None}])
    rc, err = train(capsys, cfg)
    assert rc == 2
    line = one_error(err)
    assert str(ann) in line and "annotation 1: 'caption' is None" in line and "must be a string" in line


def test_numeric_caption_is_an_error_too(tmp_path, cache, capsys):
    images = [{"id": 1, "file_name": "a.png"}]
    cfg, ann = _coco_project(tmp_path, cache, images, [{"image_id": 1, "caption": 42}])
    rc, err = train(capsys, cfg)
    assert rc == 2 and "annotation 0: 'caption' is 42 (int)" in one_error(err)


def test_coco_project_with_only_a_train_split_names_no_default_path(tmp_path, cache, capsys):
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(4)]
    cfg, _ = _coco_project(tmp_path, cache, images, [{"image_id": i, "caption": "a green field"} for i in range(4)])
    rc, err = train(capsys, cfg, "run.job_id=t")
    assert rc == 0, err[-2000:]
    assert "data/coco_format" not in err
    assert "run.valid_splits ['val']: no configured dataset has this split" in err
    assert "run.test_splits ['test']: no configured dataset has this split" in err


def _break_images(cache, split, n):
    images = sorted(cache.glob(f"*/images/{split}_*.png"))
    assert images, f"no {split} images in {cache}"
    for img in images[:n]:
        img.write_bytes(b"not a png")
    return images


def test_test_split_scored_on_part_of_its_images_fails(project, tmp_path, cache, capsys):
    cfg = project()
    rc, err = train(capsys, cfg, "run.job_id=ok", "run.valid_splits=[]")  # builds the cache
    assert rc == 0, err[-2000:]
    full = json.loads((tmp_path / "out" / "ok" / "metrics_test.json").read_text())
    assert full["n_scored"] == full["n_expected"] == 8
    _break_images(cache, "test", 4)
    try:
        rc, err = train(capsys, cfg, "run.job_id=part", "run.valid_splits=[]")
        assert rc == 2
        line = one_error(err)
        assert "test: scored 4 of 8 items" in line and "run.min_scored_fraction" in line
        partial = json.loads((tmp_path / "out" / "part" / "metrics_test.json").read_text())
        assert partial["n_scored"] == 4 and partial["n_expected"] == 8
        # asked for: a partial score is accepted, and still says so
        rc, err = train(capsys, cfg, "run.job_id=accepted", "run.valid_splits=[]", "run.min_scored_fraction=0.5")
        assert rc == 0, err[-2000:]
        assert json.loads((tmp_path / "out" / "accepted" / "metrics_test.json").read_text())["n_scored"] == 4
        # a validation split below the fraction only warns
        rc, err = train(capsys, cfg, "run.job_id=val", "run.valid_splits=[test]", "run.test_splits=[]")
        assert rc == 0 and "test: scored 4 of 8 items" in err
    finally:
        for d in cache.iterdir():  # later tests rebuild a clean cache
            if d.is_dir():
                import shutil

                shutil.rmtree(d)


def test_report_shows_a_partial_score():
    from types import SimpleNamespace

    from rslavis.report.page import metrics_section

    split = SimpleNamespace(name="test", metrics={"epoch": 0, "CIDEr": 0.609, "n_scored": 4, "n_expected": 8}, vqa_acc=None)
    html = metrics_section([split])
    assert '<p class="warn">Scored: test: 4 of 8 items (partial' in html
    split.metrics["n_scored"] = 8
    assert "test: 8 of 8 items." in metrics_section([split])


def test_split_with_no_readable_image_is_an_error(project, cache, capsys):
    cfg = project()
    rc, err = train(capsys, cfg, "run.job_id=build", "run.max_epoch=0")
    assert rc == 0, err[-2000:]
    _break_images(cache, "test", 8)
    try:
        rc, err = train(capsys, cfg, "run.job_id=none", "run.max_epoch=0")
        assert rc == 2
        assert "test: none of its 8 items has a readable image (e.g. " in one_error(err)
    finally:
        import shutil

        for d in cache.iterdir():
            if d.is_dir():
                shutil.rmtree(d)


def test_training_split_with_no_readable_image_is_an_error(project, cache, capsys):
    cfg = project()
    rc, err = train(capsys, cfg, "run.job_id=build", "run.max_epoch=0")
    assert rc == 0, err[-2000:]
    _break_images(cache, "train", 8)
    try:
        rc, err = train(capsys, cfg, "run.job_id=none")
        assert rc == 2
        assert "run.train_splits ['train']: no batch of epoch 0 had a readable image" in one_error(err)
    finally:
        import shutil

        for d in cache.iterdir():
            if d.is_dir():
                shutil.rmtree(d)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("option, message", [
    ("run.init_lr=-0.001", "run.init_lr is -0.001; a learning rate must be > 0"),
    ("run.batch_size_train=0", "run.batch_size_train is 0; a batch size must be > 0"),
    ("run.val_freq=0", "run.val_freq is 0; a frequency in epochs must be > 0"),
    ("run.log_freq=0", "run.log_freq is 0; a frequency in steps must be > 0"),
    ("run.save_freq=-2", "run.save_freq is -2; a frequency in epochs (or -1, LAVIS's: only the last and the best) must be > 0"),  # -1: LAVIS's "last and best only"
    ("run.max_epoch=-1", "run.max_epoch is -1; a number of epochs (0: evaluate only) must be >= 0"),
    ("run.min_scored_fraction=1.5", "run.min_scored_fraction is 1.5; a fraction of a split's items must be between 0 and 1"),
])
def test_zero_or_negative_sizes_rates_and_frequencies(project, capsys, option, message):
    rc, err = train(capsys, project(), option)
    assert rc == 2
    line = one_error(err)
    assert line.startswith("rslavis: error: --options: ") and message in line


@pytest.mark.parametrize("value", ["", "{}"])
def test_empty_datasets_section(project, tmp_path, cache, capsys, value):
    text = TINY.format(cache=cache, out=tmp_path / "out", task="captioning", extra="")
    head, rest = text.split("datasets:\n", 1)
    rest = rest.split("run:\n", 1)[1]
    cfg = project(text=f"{head}datasets: {value}\nrun:\n{rest}")
    rc, err = train(capsys, cfg)
    assert rc == 2
    line = one_error(err)
    assert "'datasets' is empty; name at least one dataset" in line and "rs_synthetic" in line


def test_plugin_raising_at_import(project, capsys):
    cfg = project("plugins: [tests._plugin_raises]\n")
    rc, err = train(capsys, cfg)
    assert rc == 2
    line = one_error(err)
    assert "Plugin module 'tests._plugin_raises'" in line and "raised RuntimeError while importing" in line
    assert "_plugin_raises.py:3" in line and "RSLAVIS_TEST_TOKEN" in line


def test_bad_interpolation(project, capsys):
    cfg = project("  job_id: ${run.no_such_key}\n")
    rc, err = train(capsys, cfg)
    assert rc == 2
    line = one_error(err)
    assert "run.job_id: cannot resolve the interpolation" in line and "no_such_key" in line


def test_options_mapping_replaces_the_projects_mapping(project):
    from rslavis.common.config import Config

    cfg = project(SCST + "  rewards: {cider: 1.0, count: 0.5}\n", task="scst")
    assert dict(Config.from_file(cfg, ["run.rewards={length: 1.0}"]).run.rewards) == {"length": 1.0}
    # a dotted key still edits one entry
    assert dict(Config.from_file(cfg, ["run.rewards.count=0.25"]).run.rewards) == {"cider": 1.0, "count": 0.25}


def test_max_epoch_zero_evaluates_only_with_a_warning(project, tmp_path, capsys):
    rc, err = train(capsys, project(), "run.job_id=e", "run.max_epoch=0")
    assert rc == 0, err[-2000:]
    assert "run.max_epoch is 0: nothing is trained" in err
    run_dir = tmp_path / "out" / "e"
    assert (run_dir / "metrics_test.json").is_file() and not (run_dir / "checkpoint_latest.pth").exists()


def test_debug_keeps_the_traceback(project):
    from rslavis.common.errors import ConfigError
    from rslavis.train import main

    with pytest.raises(ConfigError, match="run.log_freq is 0"):
        main(["--cfg-path", str(project()), "--debug", "--options", "run.log_freq=0"])


# ---------------------------------------------------------------------- files and the file system
def test_os_error_is_one_line(project, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, err = train(capsys, project(), f"run.output_dir={blocker / 'out'}")
    assert rc == 2
    line = one_error(err)
    assert "Not a directory" in line and str(blocker) in line


def test_read_only_output_folder_is_one_line(project, tmp_path, capsys, monkeypatch):
    from rslavis.common import job_lock

    def refuse(self):  # what a read-only folder does to the first write (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied", str(self.folder))

    monkeypatch.setattr(job_lock.JobLock, "acquire", refuse)
    rc, err = train(capsys, project(), "run.job_id=ro")
    assert rc == 2
    line = one_error(err)
    assert line == f"rslavis: error: Permission denied: {tmp_path / 'out' / 'ro'} (choose a location you may write to (run.output_dir, --out) or fix its permissions)."


def test_outputs_follow_the_umask(project, tmp_path, cache, capsys):
    old = os.umask(0o022)
    try:
        rc, err = train(capsys, project(), "run.job_id=u", "run.valid_splits=[]")
    finally:
        os.umask(old)
    assert rc == 0, err[-2000:]
    run_dir = tmp_path / "out" / "u"
    for name in ("checkpoint_latest.pth", "metrics_test.json", "config.yaml"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name
    for d in cache.iterdir():
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d


def test_ptb_tokenizer_never_writes_inside_the_package(monkeypatch):
    from pycocoevalcap.tokenizer import ptbtokenizer

    from rslavis.metrics import coco_caption

    if not coco_caption.java_available():
        pytest.skip("Java is not installed: the PTB tokenizer is not used")
    expected = ptbtokenizer.PTBTokenizer().tokenize({1: [{"caption": "Two planes, parked."}], 2: [{"caption": "A road (wide)!"}]})

    def refuse(*args, **kwargs):  # the installation is read-only for this user
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(ptbtokenizer.tempfile, "NamedTemporaryFile", refuse)
    assert coco_caption.tokenize({1: ["Two planes, parked."], 2: ["A road (wide)!"]}) == expected


# ---------------------------------------------------------------------- checkpoints and the caption CLI
@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (__import__("random").Random(0).randbytes(2000), "not a PyTorch checkpoint"),
])
def test_unreadable_checkpoint_advises_nothing_unsafe(project, tmp_path, capsys, content, message):
    ckpt = tmp_path / "bad.pth"
    ckpt.write_bytes(content)
    rc, err = train(capsys, project(), "run.job_id=c", "run.evaluate=True", f"run.resume_ckpt_path={ckpt}")
    assert rc == 2
    line = one_error(err)
    assert message in line and str(ckpt) in line and "weights_only=False" not in line


def test_checkpoint_with_foreign_objects_names_them(tmp_path):
    import numpy as np

    from rslavis.common.errors import RslavisError

    torch.save({"model": {"w": np.zeros(2)}}, tmp_path / "np.pth")
    with pytest.raises(RslavisError) as exc:
        load_checkpoint(tmp_path / "np.pth")
    assert "holds a numpy" in str(exc.value) and "weights_only=False" not in str(exc.value)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, cache):
    """A trained tiny run folder for the caption CLI cases."""
    from rslavis.train import main

    tmp = tmp_path_factory.mktemp("caption_run")
    cfg = tmp / "p.yaml"
    cfg.write_text(TINY.format(cache=tmp / "cache", out=tmp / "out", task="captioning", extra=""))
    assert main(["--cfg-path", str(cfg), "--options", "run.job_id=c", "run.valid_splits=[]", "run.test_splits=[]"]) == 0
    return tmp / "out" / "c"


def caption(capsys, *argv):
    from rslavis.caption import main

    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _images(folder, names, readable=True):
    from PIL import Image

    folder.mkdir()
    for n in names:
        if readable:
            Image.new("RGB", (16, 16), (10, 80, 10)).save(folder / n)
        else:
            (folder / n).write_bytes(b"\x00 not an image")
    return folder


def test_caption_with_a_truncated_checkpoint(run_folder, tmp_path, capsys):
    data = (run_folder / "checkpoint_latest.pth").read_bytes()
    cut = tmp_path / "run"
    cut.mkdir()
    (cut / "config.yaml").write_text((run_folder / "config.yaml").read_text())
    (cut / "checkpoint_best.pth").write_bytes(data[: len(data) // 2])
    rc, err = caption(capsys, "--checkpoint", str(cut), "--images", str(_images(tmp_path / "img", ["a.png"])))
    assert rc == 2
    assert "the file is truncated or not a PyTorch checkpoint" in one_error(err)


def test_caption_when_every_image_is_unreadable(run_folder, tmp_path, capsys):
    rc, err = caption(capsys, "--checkpoint", str(run_folder), "--images", str(_images(tmp_path / "img", ["a.png", "b.png"], readable=False)))
    assert rc == 2
    assert "none of its 2 images could be read" in one_error(err)


def test_caption_two_images_with_one_id(run_folder, tmp_path, capsys):
    rc, err = caption(capsys, "--checkpoint", str(run_folder), "--images", str(_images(tmp_path / "img", ["a.png", "a.jpg"])))
    assert rc == 2
    assert "a.jpg and a.png would both get image_id 'a'" in one_error(err)


# ---------------------------------------------------------------------- generation settings and model.finetuned (issue 13's readers)
@pytest.mark.parametrize("option, message", [
    ("run.max_len=0", "run.max_len: 0 is invalid; valid: an integer >= 1"),
    ("run.num_beams=0", "run.num_beams: 0 is invalid; valid: an integer >= 1 (1: greedy)"),
])
def test_impossible_generation_settings(project, capsys, option, message):
    rc, err = train(capsys, project(), option)
    assert rc == 2 and message in one_error(err)


def test_finetuned_checkpoint_is_what_an_evaluate_only_captioning_run_scores(run_folder, project, tmp_path, capsys):
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    ckpt = run_folder / "checkpoint_latest.pth"
    tok = run_folder / "tokenizer"
    cfg = project()
    options = [f"model.finetuned={ckpt}", f"model.tokenizer_path={tok}", "run.evaluate=True", "run.valid_splits=[]"]
    config = Config.from_file(cfg, options)
    model = registry.get_task_class("captioning").setup_task(config).build_model(config)
    state = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k in state)
    rc, err = train(capsys, cfg, *options, "run.job_id=ft")
    assert rc == 0, err[-2000:]
    rc, err = train(capsys, cfg, "run.evaluate=True", "run.valid_splits=[]", f"run.resume_ckpt_path={ckpt}",
                    f"model.tokenizer_path={tok}", "run.job_id=resumed")
    assert rc == 0, err[-2000:]
    a = json.loads((tmp_path / "out" / "ft" / "metrics_test.json").read_text())
    b = json.loads((tmp_path / "out" / "resumed" / "metrics_test.json").read_text())
    assert a == b
