"""rs_moe through ``python -m rslavis.train`` at tiny sizes: dense instructblip -> stage 1 -> stage 2
-> SCST, VQA, and the real-data projects failing clearly."""

import json

import pytest
import torch

from rslavis.common.checkpoint import load_checkpoint
from tests.conftest import ROOT, run_python
from tests.test_vqa import PROJECT as VQA_PROJECT
from tests.test_vqa import vrsbench_vqa_fixture

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RSLAVIS_REPORT": "0"}
SMALL = [
    "datasets.rs_synthetic.build_info.sizes.train=16",
    "datasets.rs_synthetic.build_info.sizes.val=4",
    "datasets.rs_synthetic.build_info.sizes.test=6",
    "run.batch_size_train=8",
    "run.batch_size_eval=4",
    "run.warmup_steps=2",
    "run.max_len=8",
    "run.max_epoch=1",
    "run.log_freq=1",
    "run.skip_metrics=[METEOR,SPICE]",
]


def train(project, tmp_path, *options):
    args = ["-m", "rslavis.train", "--cfg-path", str(ROOT / "projects" / project), "--options",
            f"run.output_dir={tmp_path / 'out'}", f"datasets.rs_synthetic.build_info.cache_dir={tmp_path / 'cache'}", *SMALL, *options]
    out = run_python(args, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / "out"


def log_records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_dense_then_stage1_then_stage2_then_scst(tmp_path):
    dense = train("instructblip/synthetic_caption.yaml", tmp_path, "run.job_id=dense") / "dense" / "checkpoint_best.pth"
    s1 = train("rs_moe/synthetic_stage1.yaml", tmp_path, "run.job_id=s1", f"model.init_from={dense}") / "s1"
    assert (s1 / "tokenizer" / "qformer_tokenizer").is_dir() and (s1 / "rs_moe_arch" / "hf_config.json").is_file()
    ckpt1 = load_checkpoint(s1 / "checkpoint_best.pth")
    assert not any(k.startswith("experts.") for k in ckpt1["model"])  # frozen experts: read again from init_from, not stored
    from rslavis.models.rs_moe.model import RSMoE

    state1 = RSMoE.load(s1 / "checkpoint_best.pth").state_dict()  # rebuilt: config.yaml + init_from + the trained tensors
    dense_state = load_checkpoint(dense)["model"]
    # stage 1 left every expert's LLM equal to the dense checkpoint's
    for k in range(3):
        for name, value in dense_state.items():
            if name.startswith("model.language_model."):
                assert torch.equal(state1[f"experts.{k}." + name[len("model.language_model."):]], value), name
    assert any(k.startswith("router.") for k in state1)
    assert {"gate/0", "gate/1", "gate/2", "lb_loss"} <= set(log_records(s1)[0])
    metrics1 = json.loads((s1 / "metrics_test.json").read_text())
    assert "CIDEr" in metrics1

    s2 = train("rs_moe/synthetic_stage2.yaml", tmp_path, "run.job_id=s2", f"model.init_from={s1 / 'checkpoint_best.pth'}") / "s2"
    kept2 = load_checkpoint(s2 / "checkpoint_best.pth")["model"]
    assert all("lora_" in k or k.startswith("router.") for k in kept2)  # stage 2 trains adapters and router only
    state2 = RSMoE.load(s2 / "checkpoint_best.pth").state_dict()
    lora = [k for k in state2 if "lora_" in k]
    assert lora and all(".fc1." in k or ".fc2." in k for k in lora)
    for name, value in state1.items():  # only the router may differ, besides the new adapters
        if not name.startswith("router."):
            key = name if name in state2 else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            assert torch.equal(state2[key], value), name
    preds = json.loads(next((s2 / "result").glob("test_epoch*.json")).read_text())
    assert len(preds) == 6 and all(set(p) == {"image_id", "caption"} for p in preds)

    # SCST on the stage-2 model (model.finetuned: the scst task's way in)
    sc = train("rs_moe/synthetic_stage2.yaml", tmp_path, "run.job_id=sc", "run.task=scst", "run.scst_num_samples=2", "run.scst_max_len=6",
               f"model.init_from={s1 / 'checkpoint_best.pth'}", f"model.finetuned={s2 / 'checkpoint_best.pth'}") / "sc"
    records = log_records(sc)
    assert any(any(k.endswith("scst/reward") for k in r) for r in records)


def test_vqa_with_answer_ranking(tmp_path):
    root = vrsbench_vqa_fixture(tmp_path / "VRSBench")
    cfg = tmp_path / "vqa.yaml"
    text = VQA_PROJECT.replace("arch: instructblip", "arch: rs_moe").format(root=root, out=tmp_path / "out", method="rank", model_type="tiny")
    cfg.write_text(text)
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), "--options", "run.job_id=j", "run.max_epoch=1"], env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next((tmp_path / "out" / "j" / "result").glob("test_epoch*.json")).read_text())
    assert sorted(r["question_id"] for r in results) == [100, 101, 102, 103]
    assert {r["answer"] for r in results} <= {"red", "blue", "Yes", "No"}


@pytest.mark.parametrize("project,needle", [
    ("rsicap_stage1.yaml", "model.init_from: not found: weights/llm-1b. model_type llm1b"),
    ("rsicap_stage2.yaml", "model.init_from: not found: output/rs_moe_rsicap_stage1/stage1/checkpoint_latest.pth"),
    ("synthetic_stage1.yaml", "model.init_from: not found: output/instructblip_synthetic_caption/dense/checkpoint_best.pth"),
    ("synthetic_stage2.yaml", "model.init_from: not found: output/rs_moe_synthetic_stage1/stage1/checkpoint_best.pth"),
])
def test_projects_without_their_sources_fail_clearly(tmp_path, monkeypatch, project, needle):
    from rslavis.common.config import Config
    from rslavis.common.errors import ConfigError, RslavisError
    from rslavis.common.registry import registry

    monkeypatch.chdir(tmp_path)  # the projects' relative weights/, data/ and output/ paths resolve to nothing here
    cfg = Config.from_file(str(ROOT / "projects" / "rs_moe" / project), [f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    assert needle in str(err.value)
    if project.startswith("rsicap"):
        task = registry.get_task_class(cfg.run.task).setup_task(cfg)
        with pytest.raises(RslavisError, match=r"datasets\.rsicap_caption\.build_info\.annotation"):
            task.build_datasets(cfg)
