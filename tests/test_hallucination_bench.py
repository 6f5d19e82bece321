"""bench/hallucination.py: the tiny end-to-end run (every arm, baselines, table, JSON, plot) and the analysis
(95% t-intervals, seed-paired effects, the knn_caption bar, partial runs reported)."""

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_python

sys.path.insert(0, str(ROOT / "bench"))
import hallucination as H  # noqa: E402


def test_interval_is_the_t_interval_of_the_mean():
    m, h = H.interval([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(h, 4.303 / math.sqrt(3), rel_tol=1e-9)
    m, h = H.interval([0.5])
    assert m == 0.5 and math.isnan(h)
    assert all(math.isnan(v) for v in H.interval([]))


def _perfect(job):
    """Test scores of a job that captions perfectly and never hallucinates (for the analysis tests)."""
    return {"CIDEr": 1.0, "confounded_hallucination_rate": 0.0, "confounded_oversight_rate": 0.0, "object_SDE": 1.0}


def _write_jobs(work, plan, value):
    jobs = Path(work) / "jobs"
    jobs.mkdir(parents=True)
    for j in H.all_jobs(plan):
        if j["kind"] == "baselines":
            res = {**j, "baselines": {"knn_caption": {"CIDEr": 0.5, "confounded_hallucination_rate": 0.5, "confounded_oversight_rate": 0.5, "object_SDE": 0.5}}}
        else:
            res = {**j, "epochs_trained": 3, "test": value(j)}
        (jobs / f"{j['name']}.json").write_text(json.dumps({**res, "plan_version": plan["version"]}))


def test_analysis_effects_and_knn_bar(tmp_path):
    plan = {**H.PLAN, "strengths": [0.9], "seeds": [0, 1, 2]}

    def value(j):  # retrieval lowers hallucination by exactly 0.2 at every seed; backdoor has CIDEr 0.4 < knn
        h = 0.8 - (0.2 if j["rag"] else 0.0) + 0.01 * j["seed"]
        c = 0.4 if j["block"] == "backdoor" else 0.6 + 0.01 * j["seed"]
        return {"CIDEr": c, "confounded_hallucination_rate": h, "confounded_oversight_rate": 0.1, "object_SDE": 0.3}

    _write_jobs(tmp_path, plan, value)
    text, summary = H.analyse(plan, tmp_path)
    s = summary["strengths"]["0.9"]
    eff = s["effects"]["retrieval, block none"]["confounded_hallucination_rate"]
    assert math.isclose(eff["mean"], -0.2) and eff["ci95"] < 1e-9
    assert math.isclose(s["effects"]["backdoor block, retrieval off"]["CIDEr"]["mean"], -0.21)
    assert s["arms"]["none"]["n"] == 3 and math.isclose(s["arms"]["none"]["CIDEr"]["mean"], 0.61)
    assert set(s["arms_at_least_knn"]) == {"none", "none + retrieval", "intervention", "intervention + retrieval"}
    assert not summary["missing_jobs"] and "PARTIAL" not in text


def test_jobs_of_another_encoder_are_refused(tmp_path):
    """Job files committed from one session are only merged with jobs trained on the same encoder weights."""
    ckpt = tmp_path / "enc.pt"
    ckpt.write_bytes(b"weights A")
    digest = H.encoder_digest({"checkpoint": str(ckpt)})
    assert digest == hashlib.sha256(b"weights A").hexdigest() and H.encoder_digest({}) == "random"
    plan = {**H.PLAN, "strengths": [0.9], "seeds": [0]}
    work = tmp_path / "w"
    _write_jobs(work, plan, _perfect)
    f = work / "jobs" / "p0.9_none_norag_s0.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "encoder_sha256": digest}))
    assert H.analyse(plan, work, encoder_sha256=digest)[1]["strengths"]["0.9"]["arms"]["none"]["n"] == 1
    ckpt.write_bytes(b"weights B")
    with pytest.raises(SystemExit, match="p0.9_none_norag_s0.json: trained on the encoder with sha256 " + digest[:16]):
        H.analyse(plan, work, encoder_sha256=H.encoder_digest({"checkpoint": str(ckpt)}))


def test_partial_runs_are_reported(tmp_path):
    plan = {**H.PLAN, "strengths": [0.9], "seeds": [0, 1]}
    _write_jobs(tmp_path, plan, _perfect)
    (tmp_path / "jobs" / "p0.9_backdoor_rag_s1.json").unlink()
    text, summary = H.analyse(plan, tmp_path)
    assert summary["missing_jobs"] == ["p0.9_backdoor_rag_s1"]
    assert "PARTIAL: 1 of 13 jobs missing: p0.9_backdoor_rag_s1" in text
    assert summary["strengths"]["0.9"]["arms"]["backdoor + retrieval"]["n"] == 1


def test_analysing_a_partial_run_exits_non_zero(tmp_path, capsys):
    """--analyse-only prints the partial table but exits 1 while cells are missing, 0 once all are in."""
    plan = {**H.PLANS["v3"], **H.TINY}
    _write_jobs(tmp_path, plan, _perfect)
    args = ["--encoder", "random", "--tiny", "--analyse-only", "--work", str(tmp_path)]
    assert H.main(args) == 0
    last = H.all_jobs(plan)[-1]["name"]
    (tmp_path / "jobs" / f"{last}.json").unlink()
    assert H.main(args) == 1
    assert f"PARTIAL: 1 of {len(H.all_jobs(plan))} jobs missing: {last}" in capsys.readouterr().out


def test_tiny_bench_runs_every_arm_end_to_end(tmp_path):
    out = run_python([str(ROOT / "bench" / "hallucination.py"), "--tiny", "--encoder", "random", "--work", str(tmp_path / "w"),
                      "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")], timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TINY RUN" in out.stdout
    summary = json.loads((tmp_path / "r.json").read_text())
    s = summary["strengths"]["0.9"]
    assert not summary["missing_jobs"]
    assert {a: v["n"] for a, v in s["arms"].items()} == {H.arm_name(b, r): 2 for b, r in H.ARMS}
    assert set(s["baselines"]) == {"most_frequent_caption", "scene_class_oracle", "knn_caption"}
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    job = json.loads((tmp_path / "w" / "jobs" / "p0.9_backdoor_rag_s0.json").read_text())
    assert job["epochs_trained"] >= 1 and len(job["predictions"]) == H.TINY["sizes"]["test"]
    assert 0.0 <= job["test"]["confounded_hallucination_rate"] <= 1.0
    assert job["cpu_seconds"] > 0  # the cost record (CPU seconds do not grow with the machine's load)
    # a rerun finds every job done and only analyses
    again = run_python([str(ROOT / "bench" / "hallucination.py"), "--tiny", "--encoder", "random", "--work", str(tmp_path / "w")], timeout=300)
    assert again.returncode == 0 and "[worker" not in again.stdout


def test_random_encoder_is_refused_outside_tiny_runs():
    with pytest.raises(SystemExit, match="--tiny test runs only"):
        H.main(["--encoder", "random", "--analyse-only"])


def test_cached_features_are_the_frozen_encoders_output():
    import torch

    from rslavis.models.encoders import build_vision_encoder, encode_pooled, freeze

    plan = {**H.PLAN, **H.TINY}
    enc = freeze(build_vision_encoder(H.load_vision("random", plan)))
    images = torch.randn(7, 3, plan["image_size"], plan["image_size"])
    cache = H.CachedFeatures(enc)
    rows = cache.pack(images, batch=3)  # batches of 3: the rows must not depend on the batching
    unpack = cache.encoder()
    idx = [5, 0, 3]
    with torch.no_grad():
        tokens, pooled = enc(images[idx])
    got_tokens, got_pooled = unpack(rows[idx])
    assert got_tokens.shape == tokens.shape and torch.allclose(got_tokens, tokens, atol=1e-5)
    assert torch.allclose(got_pooled, pooled, atol=1e-5)
    # retrieval keys read through the cache equal the live encoder's
    assert torch.allclose(encode_pooled(unpack, rows[idx]), encode_pooled(enc, images[idx]), atol=1e-5)
    assert unpack.hidden_size == enc.hidden_size


def test_a_work_folder_of_another_plan_version_is_refused(tmp_path):
    v1 = {**H.PLAN_V1, "strengths": [0.9], "seeds": [0]}
    _write_jobs(tmp_path, v1, _perfect)
    assert H.analyse(v1, tmp_path)[1]["strengths"]["0.9"]["arms"]["none"]["n"] == 1
    with pytest.raises(SystemExit, match="a plan v1 job, but this is plan v2"):
        H.analyse({**H.PLANS["v2"], "strengths": [0.9], "seeds": [0]}, tmp_path)
    with pytest.raises(SystemExit, match="a plan v1 job, but this is plan v3"):
        H.analyse({**H.PLAN, "strengths": [0.9], "seeds": [0]}, tmp_path)


def test_plan_v3_is_v2_with_the_retrieval_pool_only():
    """the default plan changes the retrieval arms' training prompts and nothing of the analysis"""
    v2, v3 = H.PLANS["v2"], H.PLAN
    assert v3["version"] == "v3" and H.PLANS["v3"] is v3
    assert {k for k in set(v2) | set(v3) if v2.get(k) != v3.get(k)} == {"version", "train_retrieval_pool"}
    assert v3["train_retrieval_pool"] > v3["k"]


def test_cuda_device_is_refused_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is for machines without one")
    with pytest.raises(SystemExit, match="no CUDA device here"):
        H.main(["--encoder", "random", "--tiny", "--device", "cuda", "--analyse-only"])


def test_weight_ema_follows_the_ema_rule_and_swaps():
    """The average is ``avg = 0.9 * avg + 0.1 * w`` after each step, from the starting weights
    (written out here, not taken from torch); swap_in shows it, swap_out restores the live weights."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    expect = {n: t.clone() for n, t in model.state_dict().items() if t.is_floating_point()}
    ema = H.WeightEMA(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(6):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        for n, t in model.state_dict().items():
            if n in expect:
                expect[n] = 0.9 * expect[n] + 0.1 * t
    live = {n: t.clone() for n, t in model.state_dict().items()}
    ema.swap_in()
    for n, t in expect.items():
        assert torch.allclose(model.state_dict()[n], t, atol=1e-6), n
    assert not torch.allclose(model[0].weight, live["0.weight"])  # the average is not the live weight
    ema.swap_out()
    assert all(torch.equal(model.state_dict()[n], t) for n, t in live.items())


def test_training_prompts_are_sampled_from_the_pool(tmp_path, monkeypatch):
    """plan v3's retrieval pool: training prompts carry k captions drawn from the nearest pool_size, beyond the top k."""
    import torch

    from rslavis.models.smallcap.causal import SmallCapCausal

    plan = {**H.PLAN, **H.TINY, "max_epoch": 1, "train_retrieval_pool": 6, "k": 2, "pilot": True}
    vision = H.load_vision("random", plan)
    datasets = H.build_datasets(plan, 0.9, tmp_path)
    data = H.preload(datasets)
    seen = []
    forward = SmallCapCausal.forward

    def spy(self, samples):
        seen.append((samples.get("retrieved_captions"), self.retrieved, list(samples["image_id"])))
        return forward(self, samples)

    monkeypatch.setattr(SmallCapCausal, "forward", spy)
    job = {"kind": "arm", "strength": 0.9, "block": "none", "rag": True, "seed": 0, "name": "t"}
    res = H.run_arm(job, plan, vision, datasets, data, tmp_path, keep_model=True)
    pool = H.training_pool(res["model"], data["train"][1], 6)
    beyond = 0
    for given, retrieved, ids in seen:
        assert given is not None and len(given) == len(ids)
        for caps, i in zip(given, ids):
            assert len(caps) == 2 and all(c in pool[str(i)] for c in caps)
            assert [pool[str(i)].index(c) for c in caps] == sorted(pool[str(i)].index(c) for c in caps)  # rank order kept
            assert pool[str(i)][:2] == retrieved[str(i)]  # the pool's head is what evaluation prompts with
            beyond += any(c not in retrieved[str(i)] for c in caps)
    assert beyond > 0
    # without the pool, training prompts come from the model's own top-k map (no sample key)
    seen.clear()
    H.run_arm(job, {**plan, "train_retrieval_pool": None}, vision, datasets, data, tmp_path)
    assert seen and all(g is None for g, _, _ in seen)
    g = torch.Generator().manual_seed(3)
    a = H.prompt_captions({"x": list("abcdef")}, ["x"], 3, g)
    assert len(set(a[0])) == 3 and a == H.prompt_captions({"x": list("abcdef")}, ["x"], 3, torch.Generator().manual_seed(3))


def test_diagnosis_runs_and_its_pool_is_the_models_retrieval(tmp_path):
    out = run_python([str(ROOT / "bench" / "hallucination_diagnose.py"), "--tiny", "--encoder", "random", "--work", str(tmp_path / "w"),
                      "--strengths", "0.9", "--train", '{"max_epoch": 1}', "--out", str(tmp_path / "d.json")], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads((tmp_path / "d.json").read_text())["strengths"]["0.9"]
    assert rep["training_pool(k) equals the model's retrieved map"] is True
    val = rep["retrieved captions as captions"]["val"]
    assert val["best of k CIDEr (oracle)"] >= max(val[f"rank {j} CIDEr"] for j in range(1, 5))
    probes = rep["trained arm none + retrieval"]["probes"]
    assert {"own retrieved captions", "another image's retrieved captions", "no captions"} <= set(probes)
    assert 0.0 <= probes["own retrieved captions"]["caption equals a prompt caption"] <= 1.0


def test_pilot_summary_gives_mean_sd_and_the_bar_per_cell(tmp_path):
    plan = {**H.PLAN, "strengths": [0.5, 0.9], "seeds": [1, 2], "pilot": True, "pilot_arms": ["none", "backdoor + retrieval"]}
    vals = {("none", 0.5): [2.0, 1.8], ("none", 0.9): [1.95, 2.05], ("backdoor", 0.5): [1.7, 1.6], ("backdoor", 0.9): [2.2, 1.85]}
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for j in H.all_jobs(plan):
        res = {**j, "knn_caption_val_CIDEr": 1.9} if j["kind"] == "baselines" else {
            **j, "val_CIDEr": vals[(j["block"], j["strength"])][j["seed"] - 1], "best_epoch": 5, "epochs_trained": 15, "cpu_seconds": 1.0}
        (jobs / f"{j['name']}.json").write_text(json.dumps({**res, "plan_version": plan["version"]}))
    (jobs / "p0.9_backdoor_rag_s2.json").unlink()  # a cell with one seed so far
    text, summary = H.pilot_summary(plan, tmp_path)
    s5, s9 = summary["strengths"]["0.5"], summary["strengths"]["0.9"]
    assert s5["knn_caption_val_CIDEr"] == 1.9
    none5 = s5["arms"]["none"]  # mean 1.9 is at the bar, seed 2 (1.8) is below it
    assert math.isclose(none5["mean"], 1.9) and math.isclose(none5["sd"], math.sqrt(0.02)) and none5["at_bar_mean"] and not none5["at_bar_every_seed"]
    assert s9["arms"]["none"]["at_bar_mean"] and s9["arms"]["none"]["at_bar_every_seed"]
    assert not s5["arms"]["backdoor + retrieval"]["at_bar_mean"] and not s5["arms"]["backdoor + retrieval"]["at_bar_every_seed"]
    one = s9["arms"]["backdoor + retrieval"]
    assert one["n"] == 1 and math.isnan(one["sd"]) and one["at_bar_every_seed"] and list(one["per_seed"]) == [1]
    assert summary["missing_jobs"] == ["p0.9_backdoor_rag_s2"] and "PARTIAL: 1 of" in text
    assert (summary["cells"], summary["cells_at_bar_mean"], summary["cells_at_bar_every_seed"]) == (4, 3, 2)
    assert "cells at or above the bar: 3 of 4 in mean, 2 of 4 in every seed" in text
    # the command prints the same summary from the finished cells (no training with --analyse-only)
    pilot = json.dumps({k: plan[k] for k in ("strengths", "seeds", "pilot_arms")})
    out = run_python([str(ROOT / "bench" / "hallucination.py"), "--encoder", "random", "--tiny", "--analyse-only", "--work", str(tmp_path),
                      "--pilot", pilot, "--out", str(tmp_path / "pilot.json")])
    assert out.returncode == 0, out.stderr
    assert "cells at or above the bar: 3 of 4 in mean, 2 of 4 in every seed" in out.stdout
    assert json.loads((tmp_path / "pilot.json").read_text())["cells_at_bar_mean"] == 3


def test_plan_v4_changes_validation_stopping_schedule_and_prompts_only():
    """v4 is v3 with a larger validation split, the smoothed stopping rule, a shorter schedule and prompt swaps;
    train and test sizes, arms, decoder and the rest are v3's; v1-v3 are unchanged."""
    v3, v4 = H.PLANS["v3"], H.PLANS["v4"]
    assert v4["version"] == "v4" and H.PLAN is v3  # v3 stays the default
    assert {k for k in set(v3) | set(v4) if v3.get(k) != v4.get(k)} == {"version", "sizes", "max_epoch", "patience", "smooth_window", "prompt_swap"}
    assert v4["sizes"]["val"] >= 3 * v3["sizes"]["val"] and {k: v4["sizes"][k] for k in ("train", "test")} == {k: v3["sizes"][k] for k in ("train", "test")}
    assert v4["smooth_window"] > 1 and 0 < v4["prompt_swap"] < 1
    assert all("smooth_window" not in H.PLANS[v] and "prompt_swap" not in H.PLANS[v] for v in ("v1", "v2", "v3"))


def test_plan_v5_is_v4_with_v3s_schedule_and_prompts():
    """v5 keeps v4's validation split and smoothed rule, and v3's schedule, patience and (unswapped) prompts."""
    v3, v4, v5 = H.PLANS["v3"], H.PLANS["v4"], H.PLANS["v5"]
    assert v5["version"] == "v5" and H.PLAN is v3
    assert {k for k in set(v4) | set(v5) if v4.get(k) != v5.get(k)} == {"version", "max_epoch", "patience", "prompt_swap"}
    assert (v5["max_epoch"], v5["patience"]) == (v3["max_epoch"], v3["patience"]) and not v5["prompt_swap"]
    assert v5["sizes"] == v4["sizes"] and v5["smooth_window"] == v4["smooth_window"] > 1


def test_plan_v6_is_v5_with_five_times_the_training_scenes():
    """v6 changes the training set's size and counts its schedule in the longer epochs; everything else
    (validation and test splits, arms, decoder, optimiser, prompts, seeds, criterion) is v5's."""
    import numpy as np

    from rslavis.datasets.synthetic.scenes import generate_confounded_split

    v5, v6 = H.PLANS["v5"], H.PLANS["v6"]
    assert v6["version"] == "v6" and H.PLAN is H.PLANS["v3"]  # v3 stays the default
    assert {k for k in set(v5) | set(v6) if v5.get(k) != v6.get(k)} == {"version", "sizes", "max_epoch", "patience", "smooth_window"}
    assert v6["sizes"] == {**v5["sizes"], "train": 5 * v5["sizes"]["train"]}
    # the schedule in steps: 1-2x v5's (not 5x: the budget), the window and patience at least v5's in steps
    steps = {v: p["max_epoch"] * (p["sizes"]["train"] // p["batch_size"]) for v, p in (("v5", v5), ("v6", v6))}
    assert steps["v5"] < steps["v6"] < 2 * steps["v5"]
    per_epoch = {v: p["sizes"]["train"] // p["batch_size"] for v, p in (("v5", v5), ("v6", v6))}
    assert v6["smooth_window"] * per_epoch["v6"] >= v5["smooth_window"] * per_epoch["v5"] and v6["smooth_window"] > 1
    assert v6["patience"] * per_epoch["v6"] >= v5["patience"] * per_epoch["v5"] and v6["patience"] < v6["max_epoch"]
    # a scene is a function of its split and index: v6's first training scenes are v5's (and its val and test are v5's)
    args = dict(seed=v6["data_seed"] * 1000 + 1, split="train", context=v6["context"], obj=v6["object"], cooccurrence=0.5,
                context_share=v6["context_share"], size=v6["image_size"], elsewhere=0.5)
    short, long = generate_confounded_split(4, **args), generate_confounded_split(7, **args)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(short, long[:4]))


def test_plan_v7_is_v6_with_twice_the_steps():
    """v7 asks only whether v6 lacked steps: its schedule doubles, patience grows with it, nothing else moves."""
    v6, v7 = H.PLANS["v6"], H.PLANS["v7"]
    assert v7["version"] == "v7" and H.PLAN is H.PLANS["v3"]
    assert {k for k in set(v6) | set(v7) if v6.get(k) != v7.get(k)} == {"version", "max_epoch", "patience"}
    assert v7["max_epoch"] == 2 * v6["max_epoch"]
    assert v6["patience"] < v7["patience"] < v7["max_epoch"] // 2


def test_smoothed_stopping_does_not_reward_one_lucky_epoch():
    """plan v4's rule: a lucky epoch (1.9 on a 1.0 base) neither stops the run nor is kept; the plateau (1.4) is."""
    curve = [0.5, 1.0, 1.0, 1.9, 1.0, 1.05, 1.1, 1.2, 1.4, 1.4, 1.4, 1.4, 1.3, 1.3, 1.3, 1.3, 1.3]
    st = H.SmoothedStopping(3, 4, 50)
    kept = []
    for e, v in enumerate(curve):
        if st.update(v):
            kept.append(e)
        if st.stop:
            break
    # trailing 3-epoch means: 0.833, 1.3, 1.3, 1.317, 1.05, 1.117, 1.233, 1.333, 1.4, 1.4, 1.367, 1.333, 1.3
    assert st.smoothed[:2] == [None, None] and math.isclose(st.smoothed[5], (1.9 + 1.0 + 1.05) / 3)
    assert st.best_epoch == 10 and math.isclose(st.best, 1.4) and kept == [2, 3, 5, 9, 10]
    assert len(st.history) == 15  # stopped 4 epochs after the best window, not 4 after the lucky epoch
    # window 1 is v1-v3's rule: the lucky epoch is kept and stops the run 4 epochs later
    raw = H.SmoothedStopping(1, 4, 50)
    for v in curve:
        raw.update(v)
        if raw.stop:
            break
    assert raw.best_epoch == 3 and raw.best == 1.9 and len(raw.history) == 8
    # a run shorter than the window (tiny tests) still selects, from its full length on
    short = H.SmoothedStopping(5, 1, 2)
    assert short.update(0.3) is False and short.update(0.5) is True and short.best_epoch == 1 and math.isclose(short.best, 0.4)


def test_prompt_swap_draws_other_images_prompts():
    """plan v4's prompt_swap: with probability swap a prompt comes from another image's pool; 0 draws as v3 did."""
    import torch

    ids = [str(i) for i in range(40)]
    pool = {i: [f"{i}-{j}" for j in range(6)] for i in ids}
    own = lambda caps, i: all(c.split("-")[0] == i for c in caps)  # noqa: E731
    v3 = H.prompt_captions(pool, ids, 3, torch.Generator().manual_seed(5))
    assert H.prompt_captions(pool, ids, 3, torch.Generator().manual_seed(5), 0.0, ids) == v3  # swap 0: v3's draws, bit for bit
    assert all(own(c, i) for c, i in zip(v3, ids))
    always = H.prompt_captions(pool, ids * 5, 3, torch.Generator().manual_seed(5), 1.0, ids)
    assert all(len(c) == 3 and len({x.split("-")[0] for x in c}) == 1 and not own(c, i) for c, i in zip(always, ids * 5))
    half = H.prompt_captions(pool, ids * 25, 3, torch.Generator().manual_seed(5), 0.5, ids)
    share = sum(not own(c, i) for c, i in zip(half, ids * 25)) / len(half)
    assert 0.4 < share < 0.6  # 1,000 draws at 0.5
    assert len({c[0].split("-")[0] for c, i in zip(always, ids * 5)}) > 20  # the other image is drawn across the images


def test_v4_run_keeps_the_best_smoothed_epochs_weights_and_swaps_prompts(tmp_path, monkeypatch):
    """run_arm under v4's options: validation on the larger split (its first scenes are v3's), the weights kept are
    those of the best trailing-mean epoch (not the best raw one), and retrieval training prompts are swapped."""
    import torch

    from rslavis.models.smallcap.causal import SmallCapCausal

    plan = {**H.PLANS["v4"], **H.TINY, "sizes": {"train": 40, "val": 24, "test": 16}, "max_epoch": 6, "patience": 10,
            "smooth_window": 3, "train_retrieval_pool": 6, "k": 2, "prompt_swap": 1.0, "pilot": True}
    small = H.build_datasets({**plan, "sizes": {**plan["sizes"], "val": 10}}, 0.9, tmp_path / "small")
    datasets = H.build_datasets(plan, 0.9, tmp_path)
    assert len(datasets["val"].records) == 24
    assert [r["captions"] for r in datasets["val"].records[:10]] == [r["captions"] for r in small["val"].records]
    assert [r["captions"] for r in datasets["train"].records] == [r["captions"] for r in small["train"].records]
    data = H.preload(datasets)
    assert torch.equal(data["val"][0][:10], H.preload(small)["val"][0])
    curve = iter([0.2, 0.9, 0.3, 0.5, 0.6, 0.4])  # raw best: epoch 1; 3-epoch means 0.467, 0.567, 0.467, 0.5 -> epoch 3
    snaps = []
    real_generate = H.generate

    def spy_generate(model, images, records, plan_, **kw):
        if len(records) == 24 and kw.get("retrieved") is None:  # the per-epoch validation pass
            snaps.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        return real_generate(model, images, records, plan_, **kw)

    seen = []
    forward = SmallCapCausal.forward

    def spy_forward(self, samples):
        seen.append((samples.get("retrieved_captions"), list(samples["image_id"])))
        return forward(self, samples)

    monkeypatch.setattr(H, "cider", lambda records, preds: next(curve, 0.0))  # the 6 validation passes, then the pilot's other-prompt probe
    monkeypatch.setattr(H, "generate", spy_generate)
    monkeypatch.setattr(SmallCapCausal, "forward", spy_forward)
    vision = H.load_vision("random", plan)
    job = {"kind": "arm", "strength": 0.9, "block": "none", "rag": True, "seed": 0, "name": "t"}
    res = H.run_arm(job, plan, vision, datasets, data, tmp_path, keep_model=True)
    assert res["val_cider_history"] == [0.2, 0.9, 0.3, 0.5, 0.6, 0.4]
    assert res["best_epoch"] == 3 and math.isclose(res["val_CIDEr"], (0.9 + 0.3 + 0.5) / 3)
    assert res["val_CIDEr_kept_epoch"] == 0.5 and res["smooth_window"] == 3 and res["val_smoothed_history"][:2] == [None, None]
    kept = res["model"].state_dict()
    assert all(torch.equal(kept[n], t) for n, t in snaps[3].items())
    assert not all(torch.equal(kept[n], t) for n, t in snaps[1].items())  # not the raw best epoch's weights
    # prompt_swap 1.0: no training prompt is drawn from the image's own pool
    pool = H.training_pool(res["model"], data["train"][1], 6)
    assert seen and all(g is not None for g, _ in seen)
    mine = sum(all(c in pool[str(i)] for c in caps) for g, ids in seen for caps, i in zip(g, ids))
    total = sum(len(ids) for _, ids in seen)
    assert mine < 0.2 * total  # only where another image's captions happen to be in this image's pool too


def test_a_stopped_training_resumes_exactly_from_its_last_epoch(tmp_path, monkeypatch):
    """A worker killed mid-training (a session's end) loses at most the epoch it was in: the rerun restores weights,
    optimiser, stopping rule, kept weights and every generator (dropout's too), so its result is the uninterrupted one."""
    import torch

    import rslavis.common.checkpoint as ckpt

    plan = {**H.PLANS["v7"], **H.TINY, "max_epoch": 4, "patience": 10, "smooth_window": 2, "train_retrieval_pool": 6, "k": 2}
    vision = H.load_vision("random", plan)
    datasets = H.build_datasets(plan, 0.9, tmp_path)
    data = H.preload(datasets)
    job = {"kind": "arm", "strength": 0.9, "block": "backdoor", "rag": True, "seed": 1, "name": "p0.9_backdoor_rag_s1"}
    whole = H.run_arm(job, plan, vision, datasets, data, tmp_path / "a", keep_model=True)
    assert not (tmp_path / "a" / "partial").exists() or not any((tmp_path / "a" / "partial").iterdir())

    real_save, saves = ckpt.atomic_torch_save, []

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(obj["epoch"])
        if obj["epoch"] == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(ckpt, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        H.run_arm(job, plan, vision, datasets, data, tmp_path / "b")
    monkeypatch.setattr(ckpt, "atomic_torch_save", real_save)
    state = H.partial_path(job, plan, tmp_path / "b")
    assert saves == [0, 1] and state.is_file()
    torch.manual_seed(12345)  # the rerun starts from another global generator state: the saved one must be restored
    again = H.run_arm(job, plan, vision, datasets, data, tmp_path / "b", keep_model=True)
    assert again["resumed_at_epochs"] == [2] and not state.exists()
    for k in ("val_cider_history", "best_epoch", "epochs_trained", "val_CIDEr", "test", "predictions"):
        assert again[k] == whole[k], k
    a, b = whole["model"].state_dict(), again["model"].state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    # a partial state of other settings (another plan digest) is never resumed
    assert H.partial_path(job, {**plan, "lr": 2e-3}, tmp_path / "b") != H.partial_path(job, plan, tmp_path / "b")


def _stat(pid):
    """``/proc/<pid>/stat``'s fields after the command name (state, ppid, ...), or None once the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid):
    """pids whose parent is ``pid`` (Linux)."""
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and (f := _stat(d.name)) and int(f[1]) == pid]


def _alive(pid):
    f = _stat(pid)
    return f is not None and f[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to find the worker processes")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_bench_stops_its_workers(tmp_path, how):
    """A stopped run leaves no worker training on (it would claim jobs and write into --work unseen):
    SIGTERM reaches them through the parent, SIGKILL of the parent through the parent-death signal."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    parent = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hallucination.py"), "--tiny", "--encoder", "random",
                               "--workers", "2", "--work", str(tmp_path / "w"),
                               # trainings that would not end by themselves: only the stop can end the workers
                               "--pilot", '{"max_epoch": 100000, "patience": 100000}'], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids = []
    try:
        deadline = time.time() + 120
        while len(kids := _children(parent.pid)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert len(kids) == 2, f"workers not started: {kids}"
        parent.send_signal(getattr(signal, how))
        parent.wait(timeout=60)
        deadline = time.time() + 30
        while any(_alive(k) for k in kids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(k) for k in kids), f"workers still running after the parent's {how}"
    finally:  # the workers found, too: after a SIGKILL they are no longer the parent's children
        for k in set(kids + _children(parent.pid)) | ({parent.pid} if parent.poll() is None else set()):
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
