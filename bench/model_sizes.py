"""Full-size models on the meta device: parameters, trained parameters, checkpoint and memory,
as ``python -m rslavis.train --dry-run`` prints them, without a single weight.

Each model is built from its published config values (``rslavis/models/published.py``)
written as ``config.json`` into a temporary "pretrained" folder beside a stand-in tokenizer
(no weight file exists: nothing could be read). Rows: InstructBLIP Flan-T5-XL (float32 as
in ``flant5xl.yaml``, and bfloat16 with ``run.amp: bf16``), InstructBLIP Vicuna-7B
(bfloat16), RS-MoE ``llm1b`` with K = 3 TinyLlama-1.1B experts (stage 1), SmallCap-causal on
GPT-2 base with cross-attention only trained. Memory = weights + gradients + AdamW state
(activations excluded).

    python bench/model_sizes.py
    python bench/model_sizes.py --only smallcap     # rows whose name contains the text (the test runs this)
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="keep only the rows whose name contains this text (case-insensitive)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    try:
        return _table(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table(args, tmp):

    from transformers import GPT2Config, InstructBlipConfig, LlamaConfig

    from rslavis.common.config import Config
    from rslavis.models import published as P
    from rslavis.models.meta import build_model_on_meta
    from rslavis.models.tokenization import train_caption_tokenizer
    from rslavis.runners.plan import human, memory_plan

    def tokenizer(d, qformer=False):
        tok = train_caption_tokenizer(["stand in vocabulary"])
        tok.save_pretrained(str(d))
        if qformer:
            tok.save_pretrained(str(d / "qformer_tokenizer"))

    def blip(name, text, image_token):
        d = tmp / name
        InstructBlipConfig(vision_config=P.EVA_VIT_G, qformer_config=P.INSTRUCTBLIP_QFORMER, text_config=dict(text), num_query_tokens=32, image_token_index=image_token).save_pretrained(str(d))
        tokenizer(d, qformer=True)
        return d

    t5, vic = blip("flant5xl", P.FLAN_T5_XL, 32100), blip("vicuna7b", P.VICUNA_7B, 32000)
    llm = tmp / "tinyllama"
    LlamaConfig(**{k: v for k, v in P.TINYLLAMA_1_1B.items() if k != "model_type"}).save_pretrained(str(llm))
    tokenizer(llm)
    gpt2 = tmp / "gpt2"
    GPT2Config(**P.GPT2_BASE).save_pretrained(str(gpt2))
    tokenizer(tmp / "tok")

    cases = [
        ("InstructBLIP Flan-T5-XL, float32", {"arch": "instructblip", "model_type": "flant5xl", "pretrained": str(t5)}, {}),
        ("InstructBLIP Flan-T5-XL, bfloat16 + amp bf16", {"arch": "instructblip", "model_type": "flant5xl", "pretrained": str(t5), "dtype": "bfloat16"}, {"amp": "bf16"}),
        ("InstructBLIP Vicuna-7B, bfloat16 + amp bf16", {"arch": "instructblip", "model_type": "vicuna7b", "pretrained": str(vic)}, {"amp": "bf16"}),
        ("InstructBLIP Vicuna-7B, LoRA r=8 on the LLM too", {"arch": "instructblip", "model_type": "vicuna7b", "pretrained": str(vic), "lora_r": 8}, {"amp": "bf16"}),
        ("RS-MoE llm1b, K=3 TinyLlama experts, stage 1", {"arch": "rs_moe", "model_type": "llm1b", "init_from": str(llm), "front_from": str(vic)}, {"amp": "bf16"}),
        ("SmallCap-causal GPT-2 base, attention_size 7", {"arch": "smallcap_causal", "model_type": "tiny", "attention_size": 7, "train_decoder": False, "disable_rag": True,
                                                          "decoder": {"type": "gpt2", "pretrained": str(gpt2)}, "tokenizer_path": str(tmp / "tok")}, {}),
    ]
    if args.only:
        names = [c[0] for c in cases]
        cases = [c for c in cases if args.only.lower() in c[0].lower()]
        if not cases:
            print(f"model_sizes: --only {args.only!r} matches no row; rows: {', '.join(names)}", file=sys.stderr)
            return 2
    print("| model | parameters | trained | weights + grads + AdamW | checkpoint_best (default) | checkpoint_latest (default) | checkpoint_best with save_full |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, model, run in cases:
        cfg = Config.from_dict({"model": model, "datasets": {"rs_synthetic": {}}, "run": {"task": "captioning", **run}})
        m, _ = build_model_on_meta(cfg)
        plan = memory_plan(m, cfg.run)
        t, c = plan["rows"][-1], plan["checkpoint"]
        mem = t["weights_bytes"] + t["grads_bytes"] + t["adamw_bytes"]
        print(f"| {name} | {t['params'] / 1e9:.2f}B | {t['trained'] / 1e6:.1f}M | {human(mem)} | {human(c['trained_only_model_bytes'])} | {human(c['trained_only_bytes'])} | {human(c['full_model_bytes'])} |")
    print("\ncheckpoint_best = the model tensors kept; checkpoint_latest adds the AdamW state of the trained tensors (float32 under amp), for resume.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
