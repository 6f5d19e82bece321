"""Why do the hallucination bench's retrieval arms caption worse than knn_caption? Validation only.

    OMP_NUM_THREADS=1 python bench/hallucination_diagnose.py --encoder $ENC --work output/diag --strengths 0.5
    # + a plan's retrieval arm trained (seed 0, no block), then probed with other prompts:
    OMP_NUM_THREADS=1 python bench/hallucination_diagnose.py --encoder $ENC --work output/diag --strengths 0.5 \\
        --train '{"stop_after_epochs": 22}'

Part 1 (no training): the retrieved captions themselves, as captions. For the validation
images and for 100 training images (the same number, so CIDEr's document frequencies
come from a corpus of the same size; training images retrieve leave-self-out, as in
training): CIDEr of the rank-j retrieved caption, of the best of the k (an oracle), how
often the rank-1 caption is one of the image's own captions word for word, and how often
it names the confounded object exactly when the image has it.

Part 2 (``--train``): the bench's ``run_arm`` trains arm ``none + retrieval`` (seed 0,
the plan's recipe, ``--plan``, with the JSON overrides; pilot mode, so the test split is
never scored), and the best-validation weights caption the validation images with (a)
their own retrieved captions, (b) those of another validation image (a fixed
derangement), (c) none; plus how often the caption equals one of its prompt's captions.
If (b) and (c) score like (a) the decoder ignores the prompt; if the caption copies the
rank-1 caption and scores like it, it over-trusts it.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hallucination as hb  # noqa: E402


def norm(c):
    from rslavis.metrics.coco_caption import simple_tokenize

    return simple_tokenize(c)


def per_image_cider(records, preds):
    """(corpus CIDEr, {image_id: CIDEr}) with pycocoevalcap's Cider on the bench's tokens."""
    from pycocoevalcap.cider.cider import Cider

    gts = {r["image_id"]: [norm(c) for c in r["captions"]] for r in records}
    res = {r["image_id"]: [norm(preds[r["image_id"]])] for r in records}
    score, scores = Cider().compute_score(gts, res)
    return float(score), dict(zip(gts.keys(), [float(x) for x in scores]))  # Cider iterates gts' keys in order


def retrieved_as_captions(records, retrieved, k, plane_words):
    out = {}
    for j in range(k):
        out[f"rank {j + 1} CIDEr"] = round(per_image_cider(records, {r["image_id"]: retrieved[str(r["image_id"])][j] for r in records})[0], 4)
    per = [per_image_cider(records, {r["image_id"]: retrieved[str(r["image_id"])][j] for r in records})[1] for j in range(k)]
    best = {r["image_id"]: retrieved[str(r["image_id"])][max(range(k), key=lambda j: per[j][r["image_id"]])] for r in records}
    out["best of k CIDEr (oracle)"] = round(per_image_cider(records, best)[0], 4)
    own = [norm(retrieved[str(r["image_id"])][0]) in {norm(c) for c in r["captions"]} for r in records]
    out["rank 1 is one of the image's own captions"] = round(sum(own) / len(own), 3)
    names = [any(w in norm(retrieved[str(r["image_id"])][0]).split() for w in plane_words) == bool(r["has_object"]) for r in records]
    out["rank 1 names the object iff present"] = round(sum(names) / len(names), 3)
    return out


def caption_with(model, rows, records, prompts, plan):
    import torch

    preds = {}
    model.eval()
    with torch.no_grad():
        for s in range(0, len(records), 100):
            recs = records[s : s + 100]
            samples = {"image": rows[s : s + 100], "image_id": [r["image_id"] for r in recs], "text_input": [""] * len(recs), "retrieved_captions": prompts[s : s + 100]}
            for r, c in zip(recs, model.generate(samples, max_len=plan["max_len"], min_len=plan["min_len"])):
                preds[r["image_id"]] = c
    return preds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--work", default="output/diag")
    ap.add_argument("--plan", choices=sorted(hb.PLANS), default="v2", help="the plan whose recipe --train uses (v2: the diagnosis in the README)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--train", default=None, metavar="JSON", help="train arm none + retrieval with these plan overrides and probe it")
    ap.add_argument("--out", default=None, help="write the numbers as JSON")
    ap.add_argument("--tiny", action="store_true", help="tests only: the bench's shrunk sizes (numbers mean nothing)")
    args = ap.parse_args(argv)
    import torch

    from rslavis.datasets.synthetic.scenes import object_names

    torch.set_num_threads(1)
    plan = {**hb.PLANS[args.plan], **(hb.TINY if args.tiny else {}), "pilot": True, "seeds": [0], **json.loads(args.train or "{}")}
    if args.encoder == "random" and not args.tiny:
        raise SystemExit("--encoder random is for --tiny test runs only.")
    vision = hb.load_vision(args.encoder, plan)
    words = object_names(plan["object"])
    report = {"plan": plan["version"], "overrides": json.loads(args.train or "{}"), "strengths": {}}
    for p in args.strengths:
        with hb.work_lock(args.work):
            datasets = hb.build_datasets(plan, p, args.work)
        data = hb.preload(datasets)
        cls, cfg = hb.model_config(plan, vision, "none", True, args.work)
        probe = cls.from_config(cfg)
        probe.prepare_for_training({"rs_synthetic": datasets}, None)
        k = plan["k"]
        train_recs, val_recs = data["train"][1][:100], data["val"][1]
        rep = {"retrieved captions as captions": {
            "val": retrieved_as_captions(val_recs, probe.retrieved, k, words),
            "train (100 images, leave-self-out)": retrieved_as_captions(train_recs, probe.retrieved, k, words)}}
        pool = hb.training_pool(probe, data["train"][1], k)
        rep["training_pool(k) equals the model's retrieved map"] = all(pool[str(r["image_id"])] == probe.retrieved[str(r["image_id"])] for r in data["train"][1])
        print(f"p = {p}: {json.dumps(rep, indent=1)}", flush=True)
        if args.train is not None:
            job = {"kind": "arm", "strength": p, "block": "none", "rag": True, "seed": 0, "name": f"diag_p{p}"}
            res = hb.run_arm(job, plan, vision, datasets, data, args.work, keep_model=True)
            model = res.pop("model")
            # the trained model reads cached encoder rows (run_arm swapped its encoder): pack them with the probe's identical frozen encoder
            cache = hb.CachedFeatures(probe.visual_encoder)
            val_rows = cache.pack(data["val"][0])
            own = [probe.retrieved[str(r["image_id"])] for r in val_recs]
            n = len(own)
            other = [own[(i + n // 2) % n] for i in range(n)]
            empty = [[] for _ in range(n)]
            probes = {}
            for name, prompts in (("own retrieved captions", own), ("another image's retrieved captions", other), ("no captions", empty)):
                preds = caption_with(model, val_rows, val_recs, prompts, plan)
                probes[name] = {"val CIDEr": round(per_image_cider(val_recs, preds)[0], 4)}
                if name == "own retrieved captions":
                    copies = [next((j + 1 for j, c in enumerate(own[i]) if norm(c) == norm(preds[r["image_id"]])), 0) for i, r in enumerate(val_recs)]
                    probes[name]["caption equals a prompt caption"] = round(sum(c > 0 for c in copies) / n, 3)
                    probes[name]["... equals rank 1"] = round(sum(c == 1 for c in copies) / n, 3)
                    probes[name]["caption is one of the image's references"] = round(sum(norm(preds[r["image_id"]]) in {norm(c) for c in r["captions"]} for r in val_recs) / n, 3)
                    probes[name]["examples"] = [(own[i][0], preds[r["image_id"]], r["captions"][0]) for i, r in enumerate(val_recs[:5])]
            train_rows = cache.pack(data["train"][0][:100])
            tpreds = caption_with(model, train_rows, train_recs, [probe.retrieved[str(r["image_id"])] for r in train_recs], plan)
            probes["train (100 images) CIDEr, own retrieved captions"] = round(per_image_cider(train_recs, tpreds)[0], 4)
            rep["trained arm none + retrieval"] = {"val_cider_history": res["val_cider_history"], "best_epoch": res["best_epoch"], "val_CIDEr": res["val_CIDEr"], "seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"], "probes": probes}
            print(f"p = {p}, trained: {json.dumps(rep['trained arm none + retrieval'], indent=1)}", flush=True)
        report["strengths"][str(p)] = rep
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
