"""What RS-MoE costs next to a dense InstructBLIP at tiny sizes: parameters and CPU step time.

Models (default YAMLs, same ViT/Q-Former/LLM sizes): ``instructblip`` ``tiny_opt`` (the
dense model, fully trainable as in its synthetic project), and ``rs_moe`` ``tiny`` (K = 3
experts copied from that dense model) in stage 1 (router + projections + front) and stage 2
(rank-1 FFN LoRA + router), plus stage 2 with ``top_k: 1``. For each: parameters (total,
trainable, active per token: what one token passes through) and the median time of a
training step (forward, backward, AdamW step) and of a greedy generation of ``--max-len``
tokens, on one batch of random 64x64 images with synthetic captions. torch runs with one
thread (a shared machine; printed) and every model is timed in the same process, so the
ratios are what to read.

    python bench/moe_cost.py [--batch 16] [--steps 8] [--max-len 20]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

CAPTIONS = [
    "there are three red houses and two trees near a road .",
    "a green field with a pond and four cars parked beside it .",
    "two buildings , one river and five trees in a residential area .",
    "many cars on a parking lot next to a large white building .",
]
PROMPT = "Describe the image briefly."


def load_cfg(arch, model_type, **overrides):
    from omegaconf import OmegaConf

    from rslavis.common.registry import registry

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.to_container(OmegaConf.load(cls.default_config_path(model_type)).model, resolve=True)
    cfg.update(overrides)
    return cls, cfg


def timed(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name, model, samples, args):
    if hasattr(model, "parameter_summary"):
        params = model.parameter_summary()
    else:
        total, trainable = model.count_parameters()
        params = {"total": total, "trainable": trainable, "active_per_token": total}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        model(samples)["loss"].backward()
        opt.step()

    def generate():
        model.eval()
        model.generate({"image": samples["image"], "text_input": samples["text_input"]}, max_len=args.max_len, min_len=args.max_len)

    return {"name": name, **params, "step_s": timed(step, args.steps), "generate_s": timed(generate, max(2, args.steps // 2), warmup=1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, batch {args.batch}, steps {args.steps}, generate {args.max_len} tokens")

    from rslavis.models.instructblip.model import InstructBLIP
    from rslavis.models.rs_moe.model import RSMoE
    from rslavis.models.tokenization import train_caption_tokenizer

    samples = {
        "image": torch.rand(args.batch, 3, 64, 64),
        "text_input": [PROMPT] * args.batch,
        "text_output": [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)],
    }
    _, blip_cfg = load_cfg("instructblip", "tiny_opt")
    blip = InstructBLIP(blip_cfg, tokenizer=train_caption_tokenizer(CAPTIONS + [PROMPT]), qformer_tokenizer=train_caption_tokenizer([PROMPT]))
    rows = [measure("instructblip tiny_opt (dense)", blip, samples, args)]
    with tempfile.TemporaryDirectory() as tmp:
        blip.save_pretrained(Path(tmp) / "dense")
        _, moe_cfg = load_cfg("rs_moe", "tiny", init_from=str(Path(tmp) / "dense"))
        stage1 = RSMoE(moe_cfg)
        rows.append(measure("rs_moe tiny, stage 1 (K=3)", stage1, samples, args))
        stage1.save_pretrained(Path(tmp) / "s1")
        for top_k in (None, 1):
            _, cfg2 = load_cfg("rs_moe", "tiny", stage=2, init_from=str(Path(tmp) / "s1"), top_k=top_k, load_balance_weight=0.01)
            label = "rs_moe tiny, stage 2 (LoRA r=1)" + (f", top_k={top_k}" if top_k else "")
            rows.append(measure(label, RSMoE(cfg2), samples, args))

    base = rows[0]
    print(f"\n{'model':<40} {'total':>9} {'trainable':>10} {'active/token':>13} {'step s':>8} {'x dense':>8} {'gen s':>8} {'x dense':>8}")
    for r in rows:
        print(
            f"{r['name']:<40} {r['total']:>9,} {r['trainable']:>10,} {r['active_per_token']:>13,} {r['step_s']:>8.3f} "
            f"{r['step_s'] / base['step_s']:>8.2f} {r['generate_s']:>8.3f} {r['generate_s'] / base['generate_s']:>8.2f}"
        )


if __name__ == "__main__":
    main()
