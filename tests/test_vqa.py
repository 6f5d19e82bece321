"""VQA: answer normalisation and accuracy; the vqa task by generation and by ranking on a VRSBench-format fixture."""

import json

import numpy as np
import pytest
from PIL import Image

from rslavis.common.errors import ConfigError
from rslavis.metrics.vqa import answer_correct, normalize_answer, vqa_accuracy
from tests.conftest import run_python


@pytest.mark.parametrize(
    "raw,norm",
    [
        ("Yes.", "yes"),
        ("  The Two   cars!", "2 cars"),
        ("an airport, near the road", "airport near road"),
        ("1,000", "1000"),
        ("2.5", "2.5"),
        ("None", "0"),
        ("it's red", "its red"),
        ("between 10m2 and 100m2", "between 10m2 and 100m2"),
        ("Rural", "rural"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_accuracy_overall_and_per_type():
    answers = {1: ["Yes"], 2: ["3"], 3: ["red"], 4: ["two"], "q5": ["urban", "city"]}
    types = {1: "presence", 2: "count", 3: "color", 4: "count", "q5": "rural_urban"}
    preds = {1: "yes.", 2: "three", 3: "blue", 4: "2", "q5": "City"}
    m = vqa_accuracy(preds, answers, types)
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["accuracy/count"] == 1.0 and m["accuracy/color"] == 0.0 and m["accuracy/presence"] == 1.0
    assert m["average_type_accuracy"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert m["n_questions"] == 5
    # a question without a prediction counts as wrong; no types: overall only
    m2 = vqa_accuracy({1: "yes"}, answers)
    assert m2["accuracy"] == pytest.approx(1 / 5) and not any(k.startswith("accuracy/") for k in m2)
    assert answer_correct("The cars", ["cars"]) == 1.0 and answer_correct("car", ["cars"]) == 0.0


COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def _png(path, color, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(path)


def vrsbench_vqa_fixture(root, n_train=8):
    """A VRSBench-layout VQA set whose answers depend on the image (its colour)."""
    train_dir = root / "Annotations_train"
    train_dir.mkdir(parents=True)
    for k in range(n_train):
        colour = "red" if k % 2 == 0 else "blue"
        stem = f"P{k:04d}_0001"
        qa = [
            {"question": "What color is the roof?", "answer": colour, "type": "object color"},
            {"question": "Is the roof red?", "answer": "Yes" if colour == "red" else "No", "type": "object existence"},
        ]
        (train_dir / f"{stem}.json").write_text(json.dumps({"image": f"{stem}.png", "caption": f"a {colour} roof.", "qa_pairs": qa}))
        _png(root / "Images_train" / f"{stem}.png", COLORS[colour])
    evals = []
    for k, colour in enumerate(["red", "blue"]):
        stem = f"V{k:04d}_0001"
        _png(root / "Images_val" / f"{stem}.png", COLORS[colour])
        evals.append({"image_id": f"{stem}.png", "question": "What color is the roof?", "ground_truth": colour.title(), "question_id": 100 + 2 * k, "type": "object color", "dataset": "DOTA"})
        evals.append({"image_id": f"{stem}.png", "question": "Is the roof red?", "ground_truth": "yes" if colour == "red" else "no", "question_id": 101 + 2 * k, "type": "object existence", "dataset": "DOTA"})
    (root / "VRSBench_EVAL_vqa.json").write_text(json.dumps(evals))
    return root


PROJECT = """
model:
  arch: instructblip
  model_type: {model_type}
  vision: {{image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}
  qformer: {{hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}
  llm: {{hidden_size: 32, num_layers: 1, num_heads: 2, ffn_dim: 64, dropout: 0.0}}
  num_query_tokens: 4
datasets:
  vrsbench_vqa:
    vis_processor:
      train: {{name: rs_image_eval, image_size: 32}}
      eval: {{name: rs_image_eval, image_size: 32}}
    build_info:
      splits:
        train: {{annotation: {root}/Annotations_train, images: {root}/Images_train}}
        test: {{annotation: {root}/VRSBench_EVAL_vqa.json, images: {root}/Images_val}}
run:
  task: vqa
  inference_method: {method}
  init_lr: 3.0e-3
  warmup_steps: 2
  max_epoch: 6
  batch_size_train: 4
  batch_size_eval: 4
  log_freq: 2
  seed: 0
  valid_splits: []
  test_splits: [test]
  output_dir: {out}
  max_len: 4
"""


@pytest.mark.parametrize("method,model_type", [("rank", "tiny_opt"), ("generate", "tiny_t5")])
def test_vqa_task_end_to_end(tmp_path, method, model_type):
    root = vrsbench_vqa_fixture(tmp_path / "VRSBench")
    cfg = tmp_path / "vqa.yaml"
    cfg.write_text(PROJECT.format(root=root, out=tmp_path / "out", method=method, model_type=model_type))
    out = run_python(["-m", "rslavis.train", "--cfg-path", str(cfg), "--options", "run.job_id=j"], env={"OMP_NUM_THREADS": "1", "RSLAVIS_REPORT": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "j"
    results = json.loads(next((run_dir / "result").glob("test_epoch*.json")).read_text())
    assert sorted(r["question_id"] for r in results) == [100, 101, 102, 103]
    assert {"question_id", "image_id", "question", "answer", "question_type"} <= set(results[0])
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    assert {"accuracy", "accuracy/object color", "accuracy/object existence", "average_type_accuracy"} <= set(metrics)
    assert metrics["agg_metrics"] == metrics["accuracy"]
    answers = {r["answer"] for r in results}
    if method == "rank":  # ranked answers come from the training answers
        assert answers <= {"red", "blue", "Yes", "No"}
    assert (run_dir / "tokenizer" / "qformer_tokenizer").is_dir()


def test_answer_list_and_bad_inference_method(tmp_path):
    from omegaconf import OmegaConf

    from rslavis.tasks.vqa import VQATask, read_answer_list

    f = tmp_path / "answers.txt"
    f.write_text("yes\nno\n\nyes\n")
    assert read_answer_list(str(f)) == ["yes", "no"]
    (tmp_path / "a.json").write_text(json.dumps(["1", "2"]))
    assert read_answer_list(str(tmp_path / "a.json")) == ["1", "2"]
    with pytest.raises(ConfigError, match="run.answer_list: file not found"):
        read_answer_list(str(tmp_path / "missing.txt"))
    task = VQATask(OmegaConf.create({"run": {"inference_method": "rank", "answer_list": ["yes", "no"]}}))
    assert task.candidates == ["yes", "no"]
    with pytest.raises(ConfigError, match="inference_method: 'vote' is unknown; valid: generate, rank"):
        VQATask(OmegaConf.create({"run": {"inference_method": "vote"}}))
