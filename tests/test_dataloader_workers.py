"""``run.num_workers > 0``: datasets and processors go to spawned workers, and 2 workers give the same
batches as the main process (evaluation splits; training splits draw their augmentation
from per-worker seeds, fixed per epoch for exact resume)."""

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from tests.test_datasets_real import KARPATHY, build


def batches(ds, workers, n=6, context=None):
    sub = Subset(ds, range(min(n, len(ds))))
    kw = dict(multiprocessing_context=context) if context and workers else {}
    loader = DataLoader(sub, batch_size=2, num_workers=workers, collate_fn=ds.collater, **kw)
    return list(loader)


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def check(ds):
    # spawn: workers inherit nothing and receive a pickled copy of the dataset and its processors
    # (forkserver, Python 3.14's default on Linux, too); the skip counter's shared memory goes along
    same(batches(ds, 0), batches(ds, 2, context="spawn"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    cache = tmp_path_factory.mktemp("syn")
    return {t: build("rs_synthetic", {"cache_dir": str(cache / t), "sizes": {"train": 8, "val": 6, "test": 6}}, type=t) for t in ("default", "confounded")}


@pytest.mark.parametrize("kind", ["default", "confounded"])
def test_synthetic_splits_with_two_spawned_workers(synthetic, kind):
    sets = synthetic[kind]
    check(sets["test"])
    train = batches(sets["train"], 2, context="spawn")
    assert len(train) == 3 and train[0]["image"].shape[0] == 2


def test_real_datasets_with_two_workers(shared_data, tmp_path):
    for name in ("ucm_caption",):  # spawned workers are slow to start: one Karpathy set stands for the three (one builder class)
        ann, images, *_rest = KARPATHY[name]
        sets = build(name, {"annotation": str(shared_data / ann), "images": str(shared_data / images)})
        train = sets["train"]
        # the items whose image is in ../shared/data (the others are skipped and counted)
        present = [i for i, r in enumerate(train.records) if (shared_data / images / r["filename"]).is_file()][:3]
        from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset

        ev = CaptionEvalDataset([train.records[i] for i in present], sets["test"].vis_processor)
        check(ev)
    vqa = build("rsieval_vqa", {"annotation": str(shared_data / "rsgpt/RSIEval_annotations.EXCERPT_first3.json"), "images": str(tmp_path)})
    check(vqa["test"])


def test_runner_loader_settings(tmp_path):
    """The runner's loader: workers from run.num_workers; pinned, persistent workers only on CUDA."""
    from rslavis.common.config import Config
    from rslavis.runners.runner_base import RunnerBase

    cfg = Config.from_dict({
        "model": {"arch": "smallcap", "model_type": "tiny"},
        "datasets": {"rs_synthetic": {"build_info": {"cache_dir": str(tmp_path / "c"), "sizes": {"train": 8, "val": 2, "test": 2}}}},
        "run": {"task": "captioning", "num_workers": 2, "batch_size_train": 4, "output_dir": str(tmp_path / "o")},
    })
    from rslavis.common.registry import registry

    task = registry.get_task_class("captioning").setup_task(cfg)
    datasets = task.build_datasets(cfg)
    runner = RunnerBase(cfg, task, torch.nn.Linear(1, 1), datasets, "j")
    loader = runner._loader(runner.train_dataset(), train=True)
    assert loader.num_workers == 2
    assert loader.pin_memory is False and loader.persistent_workers is False  # CPU

    def epoch(e):
        runner._start_epoch(loader, e)
        return [b["image"] for b in loader]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert len(a) == len(loader) > 1
    same([{"x": x} for x in a], [{"x": x} for x in b])  # an epoch's order and augmentation repeat (exact resume)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
