"""Tiny InstructBLIP builders shared by the instructblip/vqa/lora tests."""

import torch

from rslavis.models.instructblip.model import InstructBLIP
from rslavis.models.tokenization import train_caption_tokenizer

# Tiny matrices: with 2 shared cores, a second intra-op thread costs ~100x in contention.
torch.set_num_threads(1)

TEXTS = ["a red house near a road", "two green trees and a pond", "three cars", "yes", "no", "red", "green"]
PROMPTS = ["Describe the image briefly.", "what colour is the roof ?", "how many cars are there ?"]
TINY = dict(
    vision=dict(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    qformer=dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, cross_attention_frequency=1, max_position_embeddings=32),
    num_query_tokens=4,
    max_txt_len=24,
    max_output_txt_len=16,
    qformer_max_len=32,
)


def tiny_cfg(llm="opt", **overrides):
    cfg = dict(TINY, arch="instructblip", model_type=f"tiny_{llm}", llm=dict(type=llm, hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0))
    cfg.update(overrides)
    return cfg


def tiny_model(llm="opt", seed=0, **overrides):
    torch.manual_seed(seed)
    return InstructBLIP(tiny_cfg(llm, **overrides), tokenizer=train_caption_tokenizer(TEXTS + PROMPTS), qformer_tokenizer=train_caption_tokenizer(PROMPTS))


def two_images():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 32, 32, generator=g)
    b = torch.zeros(3, 32, 32)
    b[:, :16] = 1.0  # a very different image: half white, half black
    return torch.stack([a, b])


def overfit(model, steps=60, lr=3e-3):
    """Teach image 0 -> 'a red house near a road', image 1 -> 'two green trees and a pond' (same prompt)."""
    samples = {"image": two_images(), "text_input": [PROMPTS[0]] * 2, "text_output": TEXTS[:2]}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(samples)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return samples, float(loss.detach())
