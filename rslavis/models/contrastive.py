"""The contrastive loss models share: symmetric InfoNCE (``clip_dual_encoder``'s training loss,
``smallcap_causal``'s image-caption term)."""

import torch
import torch.nn.functional as F


def info_nce(img, txt, logit_scale, same=None):
    """Symmetric InfoNCE over L2-normalised ``img``/``txt`` (B, D); ``same[i, j]`` (off-diagonal) removes pair i, j from the negatives."""
    logits = logit_scale * img @ txt.t()
    if same is not None:
        same = same.clone()
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
