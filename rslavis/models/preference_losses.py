"""Preference losses of a scorer (Bradley-Terry, Plackett-Luce/ListMLE, pairwise) and pair agreement.

They live with the models (``score_model.forward`` uses them) rather than with the
``preference`` task, so the model layer never imports the task layer; the task imports
them from here. Scores ``s`` of one item's candidates, ``ranks`` lower is better:

- a pair (two candidates): Bradley-Terry, ``-log sigmoid(s_chosen - s_rejected)``;
- a ranked list: ``plackett_luce`` (ListMLE) or ``pairwise`` (Bradley-Terry averaged
  over every pair of different rank).
"""

import torch
from torch.nn import functional as F

LIST_LOSSES = ("plackett_luce", "pairwise")


def bradley_terry(better, worse):
    """``-log sigmoid(better - worse)`` elementwise."""
    return -F.logsigmoid(better - worse)


def plackett_luce(scores, ranks):
    """ListMLE: ``-log P(order)`` under Plackett-Luce, the order sorted by rank (stable)."""
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    s = scores[order]
    # log P = sum_k s_k - logsumexp(s_k..s_n); the last term is 0
    tail = torch.logcumsumexp(s.flip(0), 0).flip(0)
    return (tail - s)[:-1].sum()


def pairwise(scores, ranks):
    idx = [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
    i, j = zip(*idx)
    return bradley_terry(scores[list(i)], scores[list(j)]).mean()


def flat_scores(model, samples):
    """Scores of every candidate of every item, split per item."""
    images = samples["image"]
    cands = samples["candidates"]
    sizes = [len(c) for c in cands]
    rows = torch.repeat_interleave(torch.arange(len(cands), device=images.device), torch.tensor(sizes, device=images.device))
    texts = [t for c in cands for t in c]
    prompts = samples.get("text_input")
    prompts = [prompts[i] or None for i in rows.tolist()] if prompts is not None else None
    if prompts is not None and any(p is None for p in prompts):
        prompts = None
    scores = model.scores(images[rows], texts, prompts)
    return list(torch.split(scores, sizes))


def preference_loss(model, samples, list_loss="plackett_luce", score_reg=0.0):
    """``{"loss", "pref/accuracy", "pref/margin"}`` of a batch (see module docstring)."""
    per_item = flat_scores(model, samples)
    losses, correct, total, margins = [], 0.0, 0, []
    for s, ranks in zip(per_item, samples["ranks"]):
        if len(s) == 2:
            better, worse = (0, 1) if ranks[0] < ranks[1] else (1, 0)
            losses.append(bradley_terry(s[better], s[worse]))
        elif list_loss == "pairwise":
            losses.append(pairwise(s, ranks))
        else:
            losses.append(plackett_luce(s, ranks))
        c, n, m = pair_agreement(s.detach(), ranks)
        correct, total = correct + c, total + n
        margins.append(m)
    loss = torch.stack(losses).mean()
    if score_reg:
        loss = loss + float(score_reg) * torch.cat(per_item).pow(2).mean()
    return {"loss": loss, "pref/accuracy": correct / max(total, 1), "pref/margin": sum(margins) / max(len(margins), 1)}


def pair_agreement(scores, ranks):
    """``(correctly ordered pairs, pairs of different rank, mean margin)``; score ties count half."""
    s = [float(x) for x in scores]
    correct, n, margin = 0.0, 0, 0.0
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            if ranks[i] < ranks[j]:
                n += 1
                d = s[i] - s[j]
                correct += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
                margin += d
    return correct, n, margin / max(n, 1)
