"""Cached reference vectors of the CIDEr-D reward, one entry per image.

An image is keyed by the tuple of its reference strings. Entry ``e``'s TF-IDF weights
are rows of ``w`` (one column per reference) under the sorted keys
``(e << 30) | n-gram id`` of ``keys``, so a batch finds every candidate n-gram in its
image's references with one ``searchsorted`` over the pool; its references' inverse norms
(per order) and lengths are ``inv_norm[e]`` / ``length[e]``, padded with zeros to the most references of an
entry (``m[e]`` are real). Most candidate
n-grams are not in their image's references: a 512-bit mask per entry (bit ``id % 512``
set for each of its n-grams) rules most of them out before the search.
"""

import numpy as np

from rslavis.common.errors import RslavisError
from rslavis.rewards.cider_ngrams import ID_BITS, ID_CAP

_MASK_SHIFT = 3
_MASK_WORDS = 1 << _MASK_SHIFT  # 64-bit words per entry


def expand_rows(cu, sizes_u, inv):
    """Indices of the rows of distinct items ``inv[k]`` for every item ``k``, in item order.

    ``cu``: item of each row (sorted); ``sizes_u``: rows per distinct item. Returns
    ``(idx, item)``: row index into the distinct rows and the item it now belongs to.
    """
    sizes = sizes_u[inv]
    offsets = np.cumsum(sizes) - sizes
    starts_u = np.cumsum(sizes_u) - sizes_u
    idx = np.repeat(starts_u[inv] - offsets, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)
    return idx, np.repeat(np.arange(inv.size, dtype=np.int64), sizes)


def image_term_frequencies(ref, dense, tf, ref_counts):
    """Group references' (reference, n-gram, term frequency) rows by image.

    ``ref_counts``: references per image (the references of an image are consecutive);
    rows are distinct and sorted by reference, then n-gram. Returns
    ``(pairs, pair_of_row, ref_of_row, tf)``: the sorted distinct ``(image << 30) | n-gram``
    pairs, and for each row (re-ordered) its pair, its reference and its count.
    """
    counts = np.asarray(ref_counts, dtype=np.int64)
    img_of_ref = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    first_ref = np.cumsum(counts) - counts
    col_of_ref = np.arange(img_of_ref.size, dtype=np.int64) - first_ref[img_of_ref]
    mbits = max(1, int(counts.max(initial=1) - 1).bit_length())
    if (counts.size << (ID_BITS + mbits)) >= 1 << 62:
        raise RslavisError(f"cider: {counts.size} images with up to {counts.max()} references each are too many for one call.")
    key = (((img_of_ref[ref] << ID_BITS) | dense) << mbits) | col_of_ref[ref]
    srt = np.argsort(key, kind="stable")  # timsort: each reference is already a sorted run
    key, tf = key[srt], tf[srt]
    pair = key >> mbits
    new = np.ones(pair.size, dtype=bool)
    new[1:] = pair[1:] != pair[:-1]
    pairs = pair[new]
    pair_of_row = np.cumsum(new) - 1
    ref_of_row = first_ref[pair >> ID_BITS] + (key & ((1 << mbits) - 1))
    return pairs, pair_of_row, ref_of_row, tf


class RefPool:
    """Reference vectors of up to ``capacity`` images (cleared when full)."""

    def __init__(self, n, capacity):
        self.n = n
        self.capacity = int(capacity)
        self.clear()

    def clear(self):
        self.index = {}  # tuple of reference strings -> entry
        self.count = 0
        self.m = np.zeros(0, np.int64)  # references of each entry
        self.inv_norm = np.zeros((0, self.n, 1))  # per entry, order and reference: 1 / norm, 0 where the norm is 0
        self.length = np.zeros((0, 1))  # per entry and reference: number of bigrams (pycocoevalcap's length)
        self.keys = np.zeros(0, np.int64)  # (entry << 30) | n-gram id, sorted
        self.w = np.zeros((0, 1))  # weight of that n-gram in each of the entry's references
        self.bits = np.zeros(0, np.uint64)  # per entry _MASK_WORDS words: bit id % 512 of its n-grams

    def maybe(self, entry, ngram):
        """0 where n-gram ``ngram`` is surely not in entry ``entry``'s references, else 1 (arrays, uint64)."""
        word = self.bits.take((entry << _MASK_SHIFT) | ((ngram >> 6) & (_MASK_WORDS - 1)))
        word >>= (ngram & 63).view(np.uint64)
        word &= np.uint64(1)
        return word

    def add(self, tuples, grouped, lengths, order, idf):
        """Append the images ``tuples`` (in order) from :func:`image_term_frequencies`' ``grouped``.

        ``lengths``: tokens of each reference; ``order``/``idf``: per n-gram id.
        """
        pairs, pair_of_row, ref_of_row, tf = grouped
        counts = np.fromiter(map(len, tuples), dtype=np.int64, count=len(tuples))
        d_row = pairs[pair_of_row] & ID_CAP
        w = tf * idf[d_row]
        n_refs = int(counts.sum())
        nrm = np.sqrt(np.bincount(ref_of_row * self.n + order[d_row] - 1, weights=w * w, minlength=n_refs * self.n))
        first_ref = np.cumsum(counts) - counts
        col = ref_of_row - first_ref[pairs[pair_of_row] >> ID_BITS]
        m_max = max(int(counts.max(initial=1)), self.w.shape[1])
        wmat = np.zeros((pairs.size, m_max))
        wmat[pair_of_row, col] = w
        pool_w = self.w
        if pool_w.shape[1] < m_max:
            pool_w = np.pad(pool_w, ((0, 0), (0, m_max - pool_w.shape[1])))
        first_entry = self.count
        # new entries have larger indices, so the concatenation stays sorted
        self.keys = np.concatenate([self.keys, pairs + (np.int64(first_entry) << ID_BITS)])
        self.w = np.concatenate([pool_w, wmat]) if pool_w.size else wmat
        bits = np.zeros(len(tuples) << _MASK_SHIFT, np.uint64)
        ngram = pairs & ID_CAP
        np.bitwise_or.at(bits, ((pairs >> ID_BITS) << _MASK_SHIFT) | ((ngram >> 6) & (_MASK_WORDS - 1)),
                         np.left_shift(np.uint64(1), (ngram & 63).astype(np.uint64)))
        self.bits = np.concatenate([self.bits, bits])
        self.m = np.concatenate([self.m, counts])
        e_of_ref = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        c_of_ref = np.arange(n_refs, dtype=np.int64) - first_ref[e_of_ref]
        norm = np.zeros((counts.size, m_max, self.n))
        norm[e_of_ref, c_of_ref] = nrm.reshape(n_refs, self.n)
        length = np.zeros((counts.size, m_max))
        length[e_of_ref, c_of_ref] = np.maximum(np.asarray(lengths) - 1, 0)
        pad = m_max - self.length.shape[1]
        inv_norm = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0).transpose(0, 2, 1)
        self.inv_norm = np.concatenate([np.pad(self.inv_norm, ((0, 0), (0, 0), (0, pad))), inv_norm])
        self.length = np.concatenate([np.pad(self.length, ((0, 0), (0, pad))), length])
        self.index.update(zip(tuples, range(first_entry, first_entry + len(tuples))))
        self.count += len(tuples)
