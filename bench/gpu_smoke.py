"""Full-size InstructBLIP Flan-T5-XL on one CUDA GPU, random weights in bfloat16 (built from its
published config values, nothing downloaded): what a real run costs in time and GPU memory.

For each batch size (default 8 and 32), on random 224x224 images and synthetic captions,
with rslavis' InstructBLIP recipe (ViT and T5 frozen in bfloat16; Q-Former, query tokens
and projection trained as float32 master weights under bfloat16 autocast, AdamW):

- cross-entropy training steps/s (forward, backward, AdamW step);
- SCST steps/s: 5 sampled captions per image and a greedy baseline (``model.sample``), the
  policy-gradient loss with a stand-in reward (caption length: the reward's own cost is
  not what this measures), backward and AdamW step;
- beam-5 captioning images/s (``model.generate``, up to ``--max-len`` new tokens);
- peak GPU memory of each (``torch.cuda.max_memory_allocated``).

Warm-up steps are run and excluded; every timing ends with ``torch.cuda.synchronize()``.
Random weights generate until ``--max-len`` (no EOS learned), the slow end for generation.

    python bench/gpu_smoke.py [--batch-sizes 8 32] [--steps 5] [--max-len 30]
    python bench/gpu_smoke.py --tiny --device cpu      # the same code path at tiny size (a check, not a number)

Without CUDA (and without ``--device cpu``) it says so in one line and exits 0; ``--device cuda``
there is refused in one line (exit 2).
"""

import argparse
import os
import sys
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
PROMPT = "A short image caption:"


def build(tiny, device):
    from rslavis.models.instructblip.model import InstructBLIP
    from rslavis.models.published import instructblip_config
    from rslavis.models.tokenization import train_caption_tokenizer
    from rslavis.runners.precision import trained_to_float32

    words = sorted({w for c in CAPTIONS + [PROMPT] for w in c.split()})
    tok, qtok = train_caption_tokenizer(words), train_caption_tokenizer(words)
    cfg = {"model_type": "flant5xl", "freeze_vit": True, "freeze_llm": True, "prompt": PROMPT, "max_txt_len": 32, "max_output_txt_len": 40}
    if tiny:
        from rslavis.models.instructblip.model import add_image_token, tiny_hf_config

        cfg["model_type"] = "tiny_t5"
        hf = tiny_hf_config({**cfg, "vision": {"image_size": 224, "patch_size": 32}, "llm": {"type": "t5"}}, tok, qtok, add_image_token(tok))
    else:
        hf = instructblip_config("flant5xl")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in bfloat16 on the device: no float32 copy of 4B weights
    try:
        with torch.device(device):
            model = InstructBLIP(cfg, tokenizer=tok, qformer_tokenizer=qtok, hf_config=hf)
    finally:
        torch.set_default_dtype(old)
    trained_to_float32(model)  # float32 master weights for what trains, as the runner does under run.amp
    return model


def batch(b, device, size):
    g = torch.Generator().manual_seed(b)
    return {
        "image": torch.rand(b, 3, size, size, generator=g).to(device),
        "text_input": [PROMPT] * b,
        "text_output": [CAPTIONS[i % len(CAPTIONS)] for i in range(b)],
    }


def timed(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    elapsed = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return elapsed / steps, peak


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.device:
        print("bench/gpu_smoke.py: no CUDA device on this machine; nothing measured (run it on a GPU; --tiny --device cpu checks the code path).")
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu_smoke.py: --device {args.device} asked for, but this machine has no CUDA device; use --device cpu (with --tiny) or a GPU machine.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = build(args.tiny, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    size = int(model.model.config.vision_config.image_size)
    total, trained = model.count_parameters()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"InstructBLIP {'tiny (code-path check)' if args.tiny else 'Flan-T5-XL'}: {total / 1e9:.2f}B parameters, {trained / 1e6:.1f}M trained; {name}; torch {torch.__version__}")
    rows = []
    for b in args.batch_sizes:
        s = batch(b, device, size)
        model.train()

        def ce_step():
            with amp:
                loss = model(s)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def scst_step():
            with amp:
                model.eval()
                with torch.no_grad():
                    greedy = model.sample(s, n=1, greedy=True, max_len=args.max_len)
                model.train()
                out = model.sample(s, n=5, max_len=args.max_len)
                reward = out.mask.sum(1).float()  # stand-in reward: caption length
                base = greedy.mask.sum(1).float().repeat_interleave(5)
                loss = -((reward - base).unsqueeze(1) * out.logprobs * out.mask).sum() / out.mask.sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def beam():
            model.eval()
            with amp, torch.no_grad():
                model.generate(s, max_len=args.max_len, min_len=args.max_len, num_beams=5)

        row = {"batch": b}
        for key, fn in (("ce", ce_step), ("scst", scst_step), ("beam5", beam)):
            try:
                sec, peak = timed(fn, args.steps, args.warmup, device)
                row[key] = (sec, peak)
            except torch.cuda.OutOfMemoryError:
                row[key] = None
                torch.cuda.empty_cache()
            opt.zero_grad(set_to_none=True)
        rows.append(row)

    def cell(v, per_image=False, b=1):
        if v is None:
            return "out of memory", "-"
        sec, peak = v
        rate = (b / sec) if per_image else (1 / sec)
        return f"{rate:.2f}", (f"{peak / 2**30:.1f} GiB" if peak else "-")

    print("")
    print("| batch | CE steps/s | CE peak | SCST (5 samples) steps/s | SCST peak | beam-5 images/s | beam-5 peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ce, sc, bm = cell(r["ce"]), cell(r["scst"]), cell(r["beam5"], per_image=True, b=r["batch"])
        print(f"| {r['batch']} | {ce[0]} | {ce[1]} | {sc[0]} | {sc[1]} | {bm[0]} | {bm[1]} |")
    print(f"\n{args.steps} timed steps after {args.warmup} warm-up, max {args.max_len} new tokens; bfloat16 autocast, float32 trained parameters.")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-len", type=int, default=30)
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--tiny", action="store_true", help="a tiny model (checks the code path; its numbers mean nothing)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
