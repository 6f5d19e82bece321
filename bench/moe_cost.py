"""What RS-MoE costs next to a dense InstructBLIP at tiny sizes, with a trained router.

Everything runs in one process on synthetic scenes (64 px, 5 captions each; a few
minutes of one CPU thread):

1. a dense ``instructblip`` ``tiny_opt`` is trained (full fine-tuning, ``--dense-steps``);
2. ``rs_moe`` ``tiny`` (K = 3 experts copied from it) trains stage 1 (router, projections,
   ViT/Q-Former; LLMs frozen; ``--stage1-steps``), then stage 2 (rank-1 FFN LoRA + router,
   load-balancing weight 0.01; ``--stage2-steps``). After each stage the **routing
   spread** on 64 held-out scenes is printed: the share of rows whose largest gate is
   expert k (where ``top_k: 1`` sends them) and the mean gate of each expert. A router
   that was never trained ties every row (the old bench measured that);
3. cost, each pair trained the same way:
   - stage 1 against the dense model with its LLM frozen (both train the front; the
     MoE also trains its router and 3 projections);
   - stage 2 against the dense model with the same LoRA (rank 1, FFN) and nothing else;
   - greedy generation of ``--max-len`` tokens: dense, stage 2 with every expert, and
     stage 2 with ``top_k: 1`` on the trained router (decoding runs an expert on the whole
     batch when any row uses it: the number of experts the batch used is printed).
   Parameters (total, trainable, active per token) and the median time of a training
   step (forward, backward, AdamW) and of a generation, on one held-out batch.

torch runs with one thread and every model is timed in the same process (the machine
may be shared), so the ratios are what to read. Quality at equal training epochs is
``bench/moe_equal_epochs.py``.

    OMP_NUM_THREADS=1 python bench/moe_cost.py [--batch 16] [--steps 8] [--max-len 20]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "Describe the image briefly."


def load_cfg(arch, model_type, **overrides):
    from omegaconf import OmegaConf

    from rslavis.common.registry import registry

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.to_container(OmegaConf.load(cls.default_config_path(model_type)).model, resolve=True)
    cfg.update(overrides)
    return cfg


def scenes(n, seed):
    from rslavis.datasets.synthetic.scenes import generate_split

    data = generate_split(n, seed)
    images = torch.from_numpy(np.stack([im for im, _ in data])).permute(0, 3, 1, 2).float() / 255.0
    return images, [meta["captions"] for _, meta in data]


def batches(images, captions, batch, seed):
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.choice(len(images), batch, replace=False)
        yield {"image": images[idx], "text_input": [PROMPT] * batch,
               "text_output": [captions[i][int(rng.integers(len(captions[i])))] for i in idx]}


def train(model, stream, steps, lr):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    loss = float("nan")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(next(stream))
        out["loss"].backward()
        opt.step()
        loss = float(out["loss"].detach())
    return loss


@torch.no_grad()
def spread(model, images):
    model.eval()
    enc = model.encode({"image": images, "text_input": [PROMPT] * len(images)})
    probs = enc.probs.float()
    top = probs.argmax(1)
    share = [float((top == k).float().mean()) for k in range(probs.shape[1])]
    return share, [float(x) for x in probs.mean(0)], float(probs.max(1).values.mean())


def copy_dense_weights(lora_model, dense_model):
    """The dense weights into a LoRA-wrapped copy (peft renames ``x.weight`` to ``x.base_layer.weight``)."""
    src = dense_model.state_dict()
    dst = lora_model.state_dict()
    missing = []
    for k in dst:
        if "lora_" in k:
            continue
        name = k.replace(".base_layer.", ".")
        if name in src:
            dst[k] = src[name].clone()
        else:
            missing.append(k)
    if missing:
        raise RuntimeError(f"dense weights lack {missing[:3]}")
    lora_model.load_state_dict(dst)


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
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        model(samples)["loss"].backward()
        opt.step()

    def generate():
        model.eval()
        model.generate({"image": samples["image"], "text_input": samples["text_input"]}, max_len=args.max_len, min_len=args.max_len)

    # a copy of the weights is restored after timing: the timed steps must not change the model
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    row = {"name": name, **params, "step_s": timed(step, args.steps), "generate_s": timed(generate, args.steps, warmup=1)}
    model.load_state_dict(state)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per model (median)")
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--train", type=int, default=600, help="synthetic training scenes")
    ap.add_argument("--dense-steps", type=int, default=200)
    ap.add_argument("--stage1-steps", type=int, default=120)
    ap.add_argument("--stage2-steps", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}, batch {args.batch}, timed steps {args.steps}, "
          f"generate {args.max_len} tokens; training: {args.train} scenes, dense {args.dense_steps} / stage 1 {args.stage1_steps} / "
          f"stage 2 {args.stage2_steps} steps of {args.batch}")

    from rslavis.models.instructblip.model import InstructBLIP
    from rslavis.models.rs_moe.model import RSMoE
    from rslavis.models.tokenization import train_caption_tokenizer

    images, captions = scenes(args.train, seed=0)
    held_images, held_captions = scenes(64, seed=1)
    samples = {"image": held_images[: args.batch], "text_input": [PROMPT] * args.batch,
               "text_output": [c[0] for c in held_captions[: args.batch]]}
    texts = [c for cs in captions for c in cs]
    tok, qtok = train_caption_tokenizer(texts + [PROMPT]), train_caption_tokenizer([PROMPT])

    def dense(**overrides):
        torch.manual_seed(0)
        return InstructBLIP(load_cfg("instructblip", "tiny_opt", **overrides), tokenizer=tok, qformer_tokenizer=qtok)

    t0 = time.perf_counter()
    blip = dense()
    loss = train(blip, batches(images, captions, args.batch, 0), args.dense_steps, 1e-3)
    print(f"dense trained: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        blip.save_pretrained(Path(tmp) / "dense")
        torch.manual_seed(0)
        stage1 = RSMoE(load_cfg("rs_moe", "tiny", init_from=str(Path(tmp) / "dense")))
        print(f"stage 1, untrained router: rows per expert (top-1) {spread(stage1, held_images)[0]}")
        t0 = time.perf_counter()
        loss = train(stage1, batches(images, captions, args.batch, 1), args.stage1_steps, 1e-3)
        share, mean, top = spread(stage1, held_images)
        print(f"stage 1 trained: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s); rows per expert (top-1) "
              f"{', '.join(f'{s:.2f}' for s in share)}; mean gate {', '.join(f'{m:.3f}' for m in mean)}; mean largest gate {top:.3f}")
        stage1.save_pretrained(Path(tmp) / "s1")
        torch.manual_seed(0)
        stage2 = RSMoE(load_cfg("rs_moe", "tiny", stage=2, init_from=str(Path(tmp) / "s1"), load_balance_weight=0.01))
        t0 = time.perf_counter()
        loss = train(stage2, batches(images, captions, args.batch, 2), args.stage2_steps, 2e-3)
        share, mean, top = spread(stage2, held_images)
        print(f"stage 2 trained: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s); rows per expert (top-1) "
              f"{', '.join(f'{s:.2f}' for s in share)}; mean gate {', '.join(f'{m:.3f}' for m in mean)}; mean largest gate {top:.3f}")
        stage2.router.top_k = 1  # what model.top_k: 1 sets: the router keeps the largest gate per row
        with torch.no_grad():
            stage2.eval()
            used = len(stage2._active(stage2.encode(samples).gates))
        stage2.router.top_k = None

        # each pair trains the same parts; the dense models carry the trained dense weights
        frozen_llm = dense(freeze_llm=True)
        frozen_llm.load_state_dict(blip.state_dict())
        lora = dense(freeze_llm=True, freeze_vit=True, freeze_qformer=True, freeze_projection=True, lora_r=1, lora_alpha=2,
                     lora_targets="ffn")
        copy_dense_weights(lora, blip)
        rows.append(measure("dense, full fine-tuning", blip, samples, args))
        rows.append(measure("dense, LLM frozen", frozen_llm, samples, args))
        rows.append(measure("rs_moe stage 1 (LLMs frozen)", stage1, samples, args))
        rows.append(measure("dense, LoRA r=1 FFN only", lora, samples, args))
        stage2.router.top_k = None
        rows.append(measure("rs_moe stage 2 (LoRA r=1 + router)", stage2, samples, args))
        stage2.router.top_k = 1
        rows.append(measure(f"rs_moe stage 2, top_k=1 ({used}/3 used)", stage2, samples, args))

    print(f"\n{'model':<40} {'total':>9} {'trainable':>10} {'active/token':>13} {'step s':>8} {'gen s':>8}")
    for r in rows:
        print(f"{r['name']:<40} {r['total']:>9,} {r['trainable']:>10,} {r['active_per_token']:>13,} {r['step_s']:>8.3f} {r['generate_s']:>8.3f}")
    by = {r["name"]: r for r in rows}
    pairs = [("rs_moe stage 1 (LLMs frozen)", "dense, LLM frozen"), ("rs_moe stage 2 (LoRA r=1 + router)", "dense, LoRA r=1 FFN only")]
    for moe, base in pairs:
        print(f"training step: {moe} / {base} = {by[moe]['step_s'] / by[base]['step_s']:.2f}x")
    gen_base = by["dense, LoRA r=1 FFN only"]["generate_s"]
    for r in rows[-2:]:
        print(f"generation: {r['name']} / dense LoRA = {r['generate_s'] / gen_base:.2f}x")


if __name__ == "__main__":
    main()
