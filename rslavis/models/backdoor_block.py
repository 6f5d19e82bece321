"""Backdoor adjustment over a confounder dictionary, on encoder tokens ``(B, N, D)``.

A captioner that learned "apron => plane" from co-occurrence models ``P(Y | X)``; the
backdoor criterion asks for ``P(Y | do(X)) = sum_z P(Y | X, z) P(z)`` over the confounder
``z`` (here: the scene context). As in deconfounded image captioning (Yang et al., "
Deconfounded Image Captioning: A Causal Retrospect", TPAMI 2021) and causal attention
(Yang et al., "Causal Attention for Vision-Language Tasks", CVPR 2021):

- **Confounder dictionary** ``Z`` (K, C): k-means prototypes (faiss) of context features
  of the *training* images only: the mean of each image's frozen-encoder tokens, which
  the background dominates. ``P(z)``: the share of training images in each cluster.
  :func:`build_dictionary` computes both; :meth:`BackdoorBlock.set_dictionary` installs
  them as buffers (saved with the model).
- **NWGM**: the sum over ``z`` of softmax outputs is approximated by the softmax of the
  expected feature, ``P(Y | do(X)) ~= softmax(f(x, E_z[g(z)]))``, with the expectation
  taken by attention under the prior: per token, ``E[z] = sum_z a_z(x) P(z) z /
  sum_z a_z(x) P(z)`` with ``a(x) = softmax(q(x) . k(z) / sqrt(h))``.
- Output: ``x + W_v E[z]`` (a linear ``f``, so the approximation is the NWGM one).

The block refuses to run before its dictionary is built, so it can never silently
act as a no-op.
"""

import logging
import math

import numpy as np
import torch
from torch import nn

from rslavis.common.errors import ConfigError

logger = logging.getLogger(__name__)


class BackdoorBlock(nn.Module):
    """``forward(tokens (B, N, D)) -> (B, N, D)``: tokens plus their prior-weighted confounder expectation."""

    def __init__(self, dim, context_dim, num_prototypes=8, hidden=None):
        super().__init__()
        self.num_prototypes = int(num_prototypes)
        if self.num_prototypes < 2:
            raise ConfigError(f"model.causal_block.num_prototypes must be at least 2, got {num_prototypes!r}.")
        hidden = int(hidden or max(1, dim // 2))
        self.query = nn.Linear(dim, hidden)
        self.key = nn.Linear(context_dim, hidden)
        self.value = nn.Linear(context_dim, dim)
        self.scale = 1.0 / math.sqrt(hidden)
        self.register_buffer("dictionary", torch.zeros(self.num_prototypes, context_dim))
        self.register_buffer("prior", torch.full((self.num_prototypes,), 1.0 / self.num_prototypes))
        self.register_buffer("built", torch.tensor(False))
        self.last_weights = None  # (B, N, K) attention x prior of the last forward (tests, analysis)

    def set_dictionary(self, prototypes, prior):
        prototypes = torch.as_tensor(np.asarray(prototypes), dtype=self.dictionary.dtype)
        prior = torch.as_tensor(np.asarray(prior), dtype=self.prior.dtype)
        if tuple(prototypes.shape) != tuple(self.dictionary.shape) or prior.shape != self.prior.shape:
            raise ConfigError(f"backdoor block: dictionary of shape {tuple(prototypes.shape)} / prior {tuple(prior.shape)}, expected {tuple(self.dictionary.shape)} / {tuple(self.prior.shape)}.")
        if not torch.isfinite(prototypes).all() or (prior < 0).any() or abs(float(prior.sum()) - 1.0) > 1e-4:
            raise ConfigError("backdoor block: the dictionary must be finite and the prior a probability vector.")
        self.dictionary.copy_(prototypes.to(self.dictionary.device))
        self.prior.copy_(prior.to(self.prior.device))
        self.built.fill_(True)

    def forward(self, x):
        if not bool(self.built):
            raise ConfigError(
                "backdoor causal block: the confounder dictionary is not built; prepare_for_training(datasets, ...) "
                "builds it from the training split (the runner calls it), or load a saved model."
            )
        z = self.dictionary.to(x.dtype)
        logits = self.query(x) @ self.key(z).t() * self.scale  # (B, N, K)
        # softmax(logits) * P(z), renormalised == softmax(logits + log P(z))
        w = torch.softmax(logits + torch.log(self.prior.to(x.dtype).clamp_min(1e-12)), dim=-1)
        self.last_weights = w.detach()
        return x + w @ self.value(z)


def build_dictionary(features, num_prototypes, seed=0, niter=25):
    """``(prototypes (K, C), prior (K,))``: faiss k-means of ``features`` (M, C) and the cluster shares."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    k = int(num_prototypes)
    if x.ndim != 2 or len(x) < k:
        raise ConfigError(f"backdoor block: k-means of {k} context prototypes needs at least {k} training images, got features of shape {x.shape}.")
    km = faiss.Kmeans(x.shape[1], k, niter=int(niter), seed=int(seed), verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    counts = np.bincount(assign[:, 0], minlength=k).astype(np.float64)
    return km.centroids.copy(), (counts / counts.sum()).astype(np.float32)


@torch.no_grad()
def training_context_features(encoder, datasets, processor=None, device="cpu", batch_size=64, split="train"):
    """``(features (M, C), image paths)``: mean frozen-encoder token of every image of the ``split`` splits.

    Only ``datasets[name][split]`` is read (training data only: the dictionary must not
    see validation or test images). Images go through the deterministic eval processor
    of the dataset (or ``processor``), as the retrieval datastore encodes them; each dataset
    decodes its own images (``read_image``), so this module imports no dataset code.
    """
    feats, paths = [], []
    for name, splits in datasets.items():
        train = splits.get(split)
        if train is None or getattr(train, "records", None) is None:
            continue
        proc = next((ds.vis_processor for s, ds in splits.items() if s != split and getattr(ds, "vis_processor", None) is not None), processor)
        if proc is None:
            raise ConfigError(f"backdoor block: dataset {name} has no eval image processor to encode its training images with.")
        seen = []
        for r in train.records:
            if r["image"] not in seen:
                seen.append(r["image"])
        was = encoder.training
        encoder.eval()
        try:
            for start in range(0, len(seen), batch_size):
                chunk = seen[start : start + batch_size]
                images = torch.stack([proc(train.read_image(p)) for p in chunk]).to(device)
                tokens, _ = encoder(images)
                feats.append(tokens.float().mean(1).cpu().numpy())
                paths.extend(chunk)
        finally:
            encoder.train(was)
    if not feats:
        raise ConfigError(f"backdoor block: no dataset has a {split!r} split to build the confounder dictionary from.")
    return np.concatenate(feats), paths
