"""NKL: negative KL divergence between the references' and the generated token distributions.

Definition: ``reward_i = -scale * KL(P_ref || Q_i)`` over the unigram vocabulary of the
references plus one ``<unk>`` bucket (generated words never seen in a reference).

- ``P_ref`` (shared, fixed): token frequencies of the ``corpus`` references (the training
  split) when given; otherwise of every distinct reference list seen so far.
- ``Q_i``: token frequencies of the window of the last ``window`` generated tokens
  (N = 10,000 by default; shared across the batch and across calls) plus the tokens of
  caption ``i`` (the per-sample part). The window's counts are a snapshot refreshed every
  ``window`` new tokens (and filled from the first batch), so all samples of a batch see
  the same window and the reward is cheap.
- Smoothing: additive (Lidstone) ``alpha`` (1.0) on every vocabulary entry of both
  distributions, so the divergence is finite for unseen words and empty captions.

A caption that uses words the window under-represents lowers the KL the most, so the
reward pushes the policy's vocabulary towards the references' (against mode collapse).
Pass ``update_window=False`` in ``extra`` for captions that must not enter the window
(the greedy baseline of self-critical training: the ``scst`` task scores it with
``update_stats=False``, which :class:`~rslavis.rewards.combine.CombinedReward` forwards
as ``update_window=False``; ``tests/test_scst.py`` checks that the window holds only the
sampled captions' tokens after an SCST step).
"""

import os
from collections import deque

import numpy as np

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward
from rslavis.text.tokenize import tokenize_batch


@registry.register_reward("nkl")
class NKLReward(BaseReward):
    """NKL reward (see module docstring). Config: ``corpus`` (reference lists or caption
    file), ``corpus_split`` (train), ``window`` (10000), ``alpha`` (1.0), ``scale`` (1.0)."""

    def __init__(self, corpus=None, corpus_split="train", window=10000, alpha=1.0, scale=1.0):
        if int(window) < 1:
            raise ConfigError(f"nkl: window={window!r} must be a positive number of tokens.")
        if float(alpha) <= 0:
            raise ConfigError(f"nkl: alpha={alpha!r} must be > 0 (additive smoothing).")
        self.window = int(window)
        self.alpha = float(alpha)
        self.scale = float(scale)
        self.vocab = {"<unk>": 0}
        self.ref_counts = np.zeros(1)
        self.fixed = False
        self._seen_refs = set()
        self._recent = deque(maxlen=self.window)
        self._snapshot = None  # window counts used for scoring
        self._since_refresh = 0
        if corpus is not None:
            if isinstance(corpus, (str, os.PathLike)):
                from rslavis.rewards.cider import load_corpus

                corpus = load_corpus(corpus, split=corpus_split)
            self.set_corpus(corpus)

    def set_corpus(self, references):
        """Fix ``P_ref`` to the token frequencies of ``references`` (one list of captions per image)."""
        self.vocab = {"<unk>": 0}
        self.ref_counts = np.zeros(1)
        self._add_refs([r for refs in references for r in ([refs] if isinstance(refs, str) else refs)])
        self.fixed = True
        self._snapshot = None
        self._recent.clear()
        return self

    def _add_refs(self, captions):
        ids = []
        for toks in tokenize_batch(captions):
            for w in toks:
                i = self.vocab.get(w)
                if i is None:
                    i = self.vocab[w] = len(self.vocab)
                ids.append(i)
        v = len(self.vocab)
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=v).astype(np.float64)
        old = np.zeros(v)
        old[: self.ref_counts.size] = self.ref_counts
        self.ref_counts = old + counts

    def state_dict(self):
        """The reference distribution, the token window and its snapshot (exact resume)."""
        import torch

        return {
            "vocab": list(self.vocab),  # words in id order
            "ref_counts": torch.from_numpy(self.ref_counts.copy()),
            "fixed": self.fixed,
            "seen_refs": [list(t) for t in self._seen_refs],
            "recent": torch.tensor(list(self._recent), dtype=torch.int64),
            "snapshot": None if self._snapshot is None else torch.from_numpy(self._snapshot.copy()),
            "since_refresh": int(self._since_refresh),
        }

    def load_state_dict(self, state):
        if not state:
            return
        self.vocab = {w: i for i, w in enumerate(state["vocab"])}
        self.ref_counts = state["ref_counts"].numpy().astype(np.float64)
        self.fixed = bool(state["fixed"])
        self._seen_refs = {tuple(t) for t in state["seen_refs"]}
        self._recent = deque(state["recent"].tolist(), maxlen=self.window)
        self._snapshot = None if state["snapshot"] is None else state["snapshot"].numpy().astype(np.float64)
        self._since_refresh = int(state["since_refresh"])

    def _refresh(self):
        v = len(self.vocab)
        ids = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        self._snapshot = np.bincount(ids, minlength=v).astype(np.float64)
        self._since_refresh = 0

    def __call__(self, generated, references=None, **extra):
        generated = list(generated)
        if not self.fixed and references is not None:
            new = [tuple(r) if not isinstance(r, str) else (r,) for r in references]
            new = [t for t in dict.fromkeys(new) if t not in self._seen_refs]
            if new:
                self._seen_refs.update(new)
                self._add_refs([r for t in new for r in t])
        b = len(generated)
        if b == 0:
            return self.as_tensor([])
        toks = tokenize_batch(generated)
        get = self.vocab.get
        ids = np.asarray([get(w, 0) for t in toks for w in t], dtype=np.int64)
        lengths = np.asarray([len(t) for t in toks], dtype=np.int64)
        # ``update_window`` (this reward's key) or ``update_stats`` (the combined reward's key,
        # forwarded as update_window): False for captions that must not enter the window
        update = bool(extra.get("update_window", extra.get("update_stats", True)))
        v = len(self.vocab)
        if self._snapshot is None:
            if update:
                self._recent.extend(ids.tolist())
                update = False  # the batch is already in the window
            self._refresh()
        snap = np.zeros(v)
        snap[: min(v, self._snapshot.size)] = self._snapshot[:v]
        a = self.alpha
        p = (self.ref_counts + a) / (self.ref_counts.sum() + a * v)
        qc = snap + a
        base = float(np.dot(p, np.log(qc)))
        neg_p_log_p = float(np.dot(p, np.log(p)))
        owner = np.repeat(np.arange(b, dtype=np.int64), lengths)
        comb, cnt = np.unique(owner * v + ids, return_counts=True)
        own, w = comb // v, comb % v
        gain = np.bincount(own, weights=p[w] * (np.log(qc[w] + cnt) - np.log(qc[w])), minlength=b)
        log_z = np.log(snap.sum() + lengths + a * v)
        kl = neg_p_log_p - (base + gain - log_z)
        if update:
            self._recent.extend(ids.tolist())
            self._since_refresh += int(ids.size)
            if self._since_refresh >= self.window:
                self._refresh()
        return self.as_tensor(-self.scale * np.maximum(kl, 0.0))
