"""CIDEr-D as a reward, with document frequencies from a fixed corpus.

Definition (Vedantam et al. 2015, the "D" variant of pycocoevalcap's ``Cider``): each
caption is a TF-IDF vector over its 1- to 4-grams, with weight
``tf * (log(N) - log(max(1, df)))`` where ``df`` counts the corpus images whose
references contain the n-gram and ``N`` is the number of corpus images. For each n,
the candidate is compared to every reference by the clipped cosine
``sum min(c, r) * r / (|c| |r|)``, multiplied by the length penalty
``exp(-(l_c - l_r)^2 / (2 sigma^2))`` (``l`` = number of bigrams, as in pycocoevalcap;
sigma 6). The score is ``10 * mean_n(sum_refs) / n_refs``.

Tokenization: :func:`rslavis.text.tokenize.ptb_tokenize`, a pure-Python re-implementation
of the PTB tokenizer pycocoevalcap runs in Java before scoring (clitics such as ``'s``,
``-lrb-``, hyphenated words kept), so the reward on raw text equals the metric on the
same captions; ``pretokenized: true`` splits on white space instead, for text already
tokenized.

pycocoevalcap computes ``df`` from the references it is handed, so scoring one batch
would use the batch as the corpus. Self-critical training needs ``df`` from the whole
training split, computed once: pass it as ``corpus`` (a list with one list of reference
captions per image, or a caption file path, see :func:`load_corpus`), or call
:meth:`CiderD.set_corpus`. With the same corpus, scores on raw text equal pycocoevalcap's
per-image ``Cider`` on PTB-tokenized text to 1e-9 (``tests/test_cider.py``, RSICD and UCM).

Speed: captions are tokenized in pure Python, n-grams get 64-bit integer keys built
order by order (:mod:`rslavis.rewards.cider_ngrams`: no practical vocabulary limit), and
everything after the word-id lookup is numpy over the whole batch. Candidates' words are
looked up from the tokenizer's byte spans (packed bytes in a hash table, checked against
the word's packed bytes), without a string per token. Reference vectors are
cached per image (:mod:`rslavis.rewards.cider_refs`, keyed by the tuple of reference
strings); the corpus pass fills that cache for every corpus image from the same
tokenization it counts document frequencies on, so in training each reference is
tokenized once.
"""

import logging
import math
import os
from itertools import chain, count, repeat

import numpy as np

from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward
from rslavis.rewards.cider_ngrams import ID_BITS, NgramTable
from rslavis.rewards.cider_refs import RefPool, expand_rows, image_term_frequencies
from rslavis.text.tokenize import ptb_token_spans, ptb_tokenize_flat, whitespace_token_spans

logger = logging.getLogger(__name__)


def load_corpus(path, split="train"):
    """Reference lists of a caption file, for document frequencies.

    ``path`` is a Karpathy ``dataset.json`` (the images of ``split``; ``split=None``
    or ``"all"`` takes every image), a COCO caption file, or a JSON list of lists of
    strings. Returns ``[[ref, ...], ...]``, one list per image.
    """
    from rslavis.metrics.references import load_references

    return list(load_references(path, split=split).values())


def _split_flat(texts):
    """White-space tokens of ``texts`` in one list, and tokens per text (``pretokenized: true``)."""
    toks = [t.split() if isinstance(t, str) else ([] if t is None else str(t).split()) for t in texts]
    return list(chain.from_iterable(toks)), np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))


@registry.register_reward("cider")
class CiderD(BaseReward):
    """CIDEr-D reward (see the module docstring for the definition).

    Config keys: ``corpus`` (list of reference lists, or a caption file path),
    ``corpus_split`` (default ``train``, for Karpathy files), ``n`` (4), ``sigma`` (6.0),
    ``scale`` (1.0, multiplies the reward; the metric itself is :meth:`score`),
    ``pretokenized`` (false: captions are PTB-tokenized in Python; true splits them on white
    space only, for text already tokenized), ``cache_size`` (images whose reference
    vectors are kept, 200,000).
    Without a corpus, each call uses its own references as the corpus (pycocoevalcap's
    behaviour) and warns once.
    """

    def __init__(self, corpus=None, corpus_split="train", n=4, sigma=6.0, scale=1.0, cache_size=200000,
                 pretokenized=False):
        if not (isinstance(n, int) and 1 <= n <= 4):
            raise ConfigError(f"cider: n={n!r} is invalid; use an integer from 1 to 4.")
        try:
            self.sigma = float(sigma)
            self.scale = float(scale)
            self.cache_size = int(cache_size)
        except (TypeError, ValueError):
            raise ConfigError(f"cider: sigma={sigma!r}, scale={scale!r} and cache_size={cache_size!r} must be numbers.") from None
        if self.sigma <= 0:
            raise ConfigError(f"cider: sigma={sigma!r} must be > 0.")
        if not 1 <= self.cache_size <= 1 << 30:
            raise ConfigError(f"cider: cache_size={cache_size!r} must be from 1 to {1 << 30}.")
        self.n = n
        self.pretokenized = bool(pretokenized)
        self._tokenize = _split_flat if self.pretokenized else ptb_tokenize_flat
        self._warned_batch = False
        self._reset()
        if corpus is not None:
            if isinstance(corpus, (str, os.PathLike)):
                corpus = load_corpus(corpus, split=corpus_split)
            self.set_corpus(corpus)

    # ------------------------------------------------------------------ corpus
    def _reset(self):
        self.table = NgramTable(self.n)
        self.pool = RefPool(self.n, self.cache_size)
        self._idf = np.zeros(0)
        self.n_docs = 0
        self.ref_len = 0.0
        self.has_corpus = False

    @property
    def vocab(self):
        return self.table.vocab

    def _reference_ngrams(self, tuples):
        """Tokenize the references of ``tuples`` (one tuple per image) into the table, each
        distinct string once. Returns :func:`image_term_frequencies`' groups and the
        references' lengths in tokens."""
        flat = [r for t in tuples for r in t]
        index = {r: i for i, r in enumerate(dict.fromkeys(flat))}
        inv = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat))
        table = self.table
        flat, lengths = self._tokenize(list(index))
        ids = table.word_ids(flat, lengths, grow=True)
        dense, owner, _ = table.ngrams(ids, lengths, grow=True)
        comb, tf = np.unique(owner * table.size + dense, return_counts=True)
        cu = comb // table.size
        idx, ref = expand_rows(cu, np.bincount(cu, minlength=len(index)), inv)
        grouped = image_term_frequencies(ref, (comb - cu * table.size)[idx], tf[idx], [len(t) for t in tuples])
        return grouped, lengths[inv]

    def _idf_now(self):
        if self._idf.size != self.table.size:  # the table grew: n-grams outside the corpus have df 0
            self._idf = self.ref_len - np.log(np.maximum(1.0, self.table.df))
        return self._idf

    def set_corpus(self, references):
        """Compute document frequencies once from ``references``: one list of captions per image.

        The reference vectors of the corpus images are cached from the same pass (when
        they fit in ``cache_size``), so scoring them later does not tokenize them again.
        """
        tuples = [(r,) if isinstance(r, str) else tuple(r) for r in references]
        if not tuples:
            raise DataError("cider: the corpus is empty; pass one list of reference captions per image.")
        self._reset()
        mult = {}
        for t in tuples:  # images with the same references are scored the same: one entry each
            mult[t] = mult.get(t, 0) + 1
        distinct = list(mult)
        grouped, lengths = self._reference_ngrams(distinct)
        pairs = grouped[0]
        weights = np.fromiter(mult.values(), dtype=np.float64, count=len(distinct))[pairs >> ID_BITS]
        self.table.df = np.bincount(pairs & ((1 << ID_BITS) - 1), weights=weights, minlength=self.table.size)
        self.n_docs = len(tuples)
        self.ref_len = math.log(float(self.n_docs))
        self.has_corpus = True
        if len(distinct) <= self.cache_size:
            self.pool.add(distinct, grouped, lengths, self.table.order, self._idf_now())
        return self

    def _entries(self, references):
        """Pool entry of each image's references (a list of strings, or one string), adding the
        missing images together; a DataError for an image without references."""
        pool = self.pool
        if any(issubclass(t, str) for t in set(map(type, references))):
            keys = [(r,) if isinstance(r, str) else tuple(r) for r in references]
        else:  # the usual case: one tuple at a time, hashed and dropped (no list of 5,000 tuples)
            keys = map(tuple, references)
        eidx = np.fromiter(map(pool.index.get, keys, repeat(-1)), dtype=np.int64, count=len(references))
        lacking = np.flatnonzero(eidx < 0)
        if lacking.size or () in pool.index:  # an empty reference list is never found, unless the corpus had one
            empty = [i for i, r in enumerate(references) if not isinstance(r, str) and len(r) == 0]
            if empty:
                raise DataError(f"cider: candidate {empty[0]} has no reference captions.")
        if lacking.size:
            ref_tuples = [(r,) if isinstance(r, str) else tuple(r) for r in references]
            missing = list(dict.fromkeys(ref_tuples[i] for i in lacking.tolist()))
            if pool.count + len(missing) > pool.capacity:
                pool.clear()
                missing = list(dict.fromkeys(ref_tuples))
            grouped, lengths = self._reference_ngrams(missing)
            pool.add(missing, grouped, lengths, self.table.order, self._idf_now())
            eidx = np.fromiter(map(pool.index.__getitem__, ref_tuples), dtype=np.int64, count=len(ref_tuples))
        return eidx

    # ------------------------------------------------------------------ scoring
    def score(self, generated, references):
        """CIDEr-D of each candidate as float64 numpy, ``generated[i]`` against ``references[i]``."""
        generated = list(generated)
        references = list(references)
        if len(generated) != len(references):
            raise DataError(
                f"cider: {len(generated)} generated captions but {len(references)} reference lists; "
                "they must pair one to one."
            )
        if not generated:
            return np.zeros(0)
        if not self.has_corpus:
            if not self._warned_batch:
                self._warned_batch = True
                logger.warning(
                    "cider: no corpus given, document frequencies come from each call's references "
                    "(pycocoevalcap's behaviour); pass corpus= or call set_corpus() with the training references."
                )
            batch = CiderD(n=self.n, sigma=self.sigma, pretokenized=self.pretokenized)
            batch.set_corpus(references)
            return batch._score(generated, references)
        return self._score(generated, references)

    def _candidates(self, uniq):
        """Distinct candidates' n-grams the table knows, as ``(caption, id, weight)`` rows sorted by
        caption then id; per caption and order the inverse norm (0 for an empty order); lengths."""
        n, table = self.n, self.table
        # tokens as byte spans, looked up without a string per token
        spans = whitespace_token_spans(uniq) if self.pretokenized else ptb_token_spans(uniq)
        ids, lengths = table.word_ids_spans(*spans)
        dense, owner, tmp_order = table.ngrams(ids, lengths, grow=False)
        g = table.size
        shift = max(1, int(dense.max(initial=0)).bit_length())
        key = (owner << shift) | dense
        if len(uniq) << shift < 1 << 31:  # int32 keys sort about twice as fast
            key = key.astype(np.int32)
        comb, tf = np.unique(key, return_counts=True)
        comb = comb.astype(np.int64, copy=False)
        cu = comb >> shift
        d = comb & ((1 << shift) - 1)
        idf = self._idf_now()
        w = tf * idf.take(d, mode="clip")
        order = table.order.take(d, mode="clip")
        unknown = np.flatnonzero(d >= g)
        if unknown.size:  # n-grams no reference holds: df 0, their order from this call's table
            w[unknown] = tf[unknown] * self.ref_len
            order[unknown] = tmp_order[d[unknown] - g]
        sq = np.bincount(cu * n + order - 1, weights=w * w, minlength=len(uniq) * n).reshape(len(uniq), n)
        inv_norm = np.divide(1.0, np.sqrt(sq), out=np.zeros(sq.shape), where=sq > 0)
        if unknown.size:  # only n-grams in the table can occur in a reference
            known = d < g
            cu, d, w = cu[known], d[known], w[known]
        return (cu, d, w), inv_norm, np.maximum(lengths - 1, 0).astype(np.float64)

    def _score(self, generated, references):
        b = len(generated)
        eidx = self._entries(references)
        if b > 1 and bool((eidx[1:] < eidx[:-1]).any()):
            # score in pool order: the reference look-up below then reads the pool front to back
            perm = np.argsort(eidx, kind="stable")
            out = np.empty(b)
            out[perm] = self._score_sorted([generated[i] for i in perm.tolist()], eidx[perm])
            return out
        return self._score_sorted(generated, eidx)

    def _score_sorted(self, generated, eidx):
        b, n = len(generated), self.n
        pool = self.pool

        # candidate vectors, computed once per distinct caption (sampled captions repeat)
        first = {}  # caption -> position of its first occurrence, one dictionary pass
        at_first = np.fromiter(map(first.setdefault, generated, count()), dtype=np.int64, count=b)
        uniq = list(first)
        (cu, d, w), inv_u, len_u = self._candidates(uniq)
        rows_u = np.bincount(cu, minlength=len(uniq))
        if len(uniq) < b:  # every candidate gets the rows of its distinct caption
            rank = np.zeros(b, dtype=np.int64)
            rank[np.fromiter(first.values(), dtype=np.int64, count=len(uniq))] = np.arange(len(uniq))
            inv = rank[at_first]
            src, cand = expand_rows(cu, rows_u, inv)
            d_all = d[src]
            inv_h, len_h = inv_u[inv], len_u[inv]
        else:
            src, cand, d_all, inv_h, len_h = None, cu, d, inv_u, len_u

        # the candidate n-grams found in the references of the candidate's image
        score = np.zeros(b)
        if pool.keys.size and cand.size:
            e = eidx[cand]
            hit = np.flatnonzero(pool.maybe(e, d_all))
            hk = (e[hit] << ID_BITS) | d_all[hit]
            pos = np.searchsorted(pool.keys, hk)
            np.minimum(pos, pool.keys.size - 1, out=pos)
            found = pool.keys.take(pos) == hk
            hit, pos = hit[found], pos[found]
            # score = sum over hits and references of min(c, r) * r / (|c_n| |r_n|) * penalty(ref),
            # the factor per (candidate, order, reference) computed once for the batch
            pen = np.exp((len_h[:, None] - pool.length[eidx]) ** 2 / (-2 * self.sigma**2))  # (b, m)
            factor = (inv_h[:, :, None] * pool.inv_norm[eidx]) * pen[:, None, :]  # (b, n, m)
            ch = cand[hit]
            oh = self.table.order.take(d_all.take(hit))
            rw = pool.w.take(pos, axis=0)
            wh = (w.take(hit) if src is None else w.take(src.take(hit)))[:, None]
            clipped = np.minimum(wh, rw)
            clipped *= rw
            clipped *= factor.reshape(b * n, -1).take(ch * n + oh - 1, axis=0)
            per_hit = clipped @ np.ones(clipped.shape[1])  # a row sum; numpy's sum(axis=1) over 5 columns is ~10x slower
            score = np.bincount(ch, weights=per_hit, minlength=b)
        score *= (10.0 / n) / pool.m[eidx]
        return np.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)

    def __call__(self, generated, references, **extra):
        """``scale * CIDEr-D`` per caption, float32 tensor of shape (batch,)."""
        return self.as_tensor(self.score(generated, references) * self.scale)
