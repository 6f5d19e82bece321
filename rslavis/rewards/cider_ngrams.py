"""The n-gram table of the CIDEr-D reward: word ids, packed n-gram keys, dense n-gram ids.

An n-gram's key is ``((order - 1) << 61) | (prefix << 31) | last word``, where ``prefix``
is the dense id of its first n-1 words (0 for a unigram). Keys stay 64-bit for any n,
with up to 2**31 - 1 distinct words and 2**30 distinct n-grams (COCO's references hold
about 30k words and a few million n-grams), so no practical vocabulary limit. Every step
after the word-id lookup is numpy over all captions of a call at once.
"""

from itertools import repeat

import numpy as np

from rslavis.common.errors import RslavisError

WORD_BITS = 31
WORD_CAP = (1 << WORD_BITS) - 1  # word ids are 1..WORD_CAP; 0 means "not in the vocabulary"
ORDER_SHIFT = 61
ID_BITS = 30
ID_CAP = (1 << ID_BITS) - 1

_EMPTY = np.zeros(0, np.int64)
_WINDOW = np.arange(32, dtype=np.int64)  # slots probed per round for the last few keys
_FEW = 256
_PACK_MUL = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes
_MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * 2**64 / golden ratio


class KeyIndex:
    """Map from non-negative int64 keys to int64 values: an open-addressing hash table
    (linear probing, at most half full) whose look-ups and inserts are numpy over arrays.

    One probe finds most keys, where a binary search over sorted keys makes ~17 scattered
    reads; the reward looks up every n-gram of every candidate on each call.
    """

    def __init__(self, bits=10):
        self._alloc(bits)

    def _alloc(self, bits):
        self.bits, self.mask, self.count = bits, (1 << bits) - 1, 0
        self.keys = np.full(1 << bits, -1, dtype=np.int64)  # -1: empty slot
        self.vals = np.zeros(1 << bits, dtype=np.int64)

    def _slot(self, keys):
        return ((keys.view(np.uint64) * _MUL) >> np.uint64(64 - self.bits)).view(np.int64)

    def get(self, keys, default=-1):
        """Value of each key, ``default`` where it is absent."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        slot = self._slot(keys)
        k = self.keys.take(slot)
        out = self.vals.take(slot)
        miss = k != keys
        todo = np.flatnonzero(miss)
        if todo.size:
            out[todo] = default
            todo = todo[k.take(todo) >= 0]
        while todo.size > _FEW:  # keys that met another key: the next slot
            slot[todo] = s = (slot.take(todo) + 1) & self.mask
            k = self.keys.take(s)
            hit = k == keys.take(todo)
            out[todo[hit]] = self.vals.take(s[hit])
            todo = todo[~hit & (k >= 0)]
        if todo.size:
            # the few keys far along their cluster (keys inserted late in a 40%-full table probe up
            # to ~20 slots): a window of slots at a time instead of one numpy round per slot
            q, start = keys.take(todo), slot.take(todo) + 1
            while todo.size:
                s = (start[:, None] + _WINDOW) & self.mask
                k = self.keys.take(s)
                stop = (k == q[:, None]) | (k < 0)  # the key, or an empty slot: the key is absent
                j = stop.argmax(axis=1)
                r = np.arange(j.size)
                ended = stop[r, j]
                at = s[r, j]
                found = ended & (k[r, j] >= 0)
                out[todo[found]] = self.vals.take(at[found])
                todo, q, start = todo[~ended], q[~ended], start[~ended] + _WINDOW.size
        return out

    def add(self, keys, vals):
        """Insert ``keys`` (distinct, none present yet) with their values."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        need = self.count + keys.size
        if 2 * need > self.keys.size:  # grow to at most a third full, re-inserting what is there
            live = self.keys >= 0
            old_k, old_v = self.keys[live], self.vals[live]
            self._alloc(max(self.bits, (3 * need).bit_length()))
            self._insert(old_k, old_v)
        self._insert(keys, np.asarray(vals, dtype=np.int64))
        self.count = need

    def _insert(self, keys, vals):
        slot = self._slot(keys)
        todo = np.arange(keys.size)
        while todo.size:
            s = slot[todo]
            free = self.keys[s] < 0
            taken, first = np.unique(s[free], return_index=True)  # one key per free slot and round
            win = todo[free][first]
            self.keys[taken], self.vals[taken] = keys[win], vals[win]
            placed = np.zeros(keys.size, dtype=bool)
            placed[win] = True
            todo = todo[~placed[todo]]
            slot[todo] = (slot[todo] + 1) & self.mask


class NgramTable:
    """Vocabulary and n-gram ids of the references seen so far, with their document frequencies.

    ``df[id]`` counts the corpus images whose references contain n-gram ``id`` (0 for
    n-grams met only outside the corpus); ``order[id]`` is its order (1..n).
    """

    def __init__(self, n):
        self.n = n
        self.vocab = {}
        self.index = KeyIndex()  # packed key -> dense id of the known n-grams
        self._packed = KeyIndex()  # a word's bytes packed (see word_ids_spans) -> its id
        self._packed_words = np.zeros((1, 2), np.uint64)  # per word id: its bytes as two words, 0 0 if unpacked
        self.order = _EMPTY
        self.df = np.zeros(0)

    @property
    def size(self):
        return self.order.size

    def word_ids(self, flat, lengths, grow):
        """Int64 word ids of ``flat``, the tokens of all captions in one list (``lengths``:
        tokens per caption).

        ``grow=True`` (references) adds new words to the vocabulary. Otherwise
        (candidates) an unknown word gets an id local to its caption, above the
        vocabulary: its n-grams cannot match a reference, only their term frequency
        within the caption matters, so ids may repeat across captions.
        """
        vocab = self.vocab
        if grow:
            new = [w for w in dict.fromkeys(flat) if w not in vocab]
            if new:
                first = len(vocab) + 1
                if first + len(new) - 1 > WORD_CAP:
                    raise RslavisError(
                        f"cider: the references hold more than {WORD_CAP} distinct words, the limit of the packed n-gram keys."
                    )
                vocab.update(zip(new, range(first, first + len(new))))
                self._index_words(new, first)
            return np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
        ids = np.fromiter(map(vocab.get, flat, repeat(0)), dtype=np.int64, count=len(flat))
        zeros = np.flatnonzero(ids == 0)
        if zeros.size:
            caption_of = np.searchsorted(np.cumsum(lengths), zeros, side="right")
            self._local_ids(ids, zeros, caption_of, flat.__getitem__)
        return ids

    def _local_ids(self, ids, zeros, caption_of, word_at):
        """Ids above the vocabulary for the unknown words at ``zeros`` (caption ``caption_of``),
        one per distinct word of a caption; ``word_at(j)`` is the word at position ``j``."""
        base = len(self.vocab) + 1
        local, current = {}, -1
        for j, c in zip(zeros.tolist(), caption_of.tolist()):
            if c != current:
                local, current = {}, c
            ids[j] = local.setdefault(word_at(j), base + len(local))
            if base + len(local) > WORD_CAP + 1:  # only a caption with tens of thousands of unknown words
                raise RslavisError(f"cider: a candidate has too many distinct unknown words ({len(local)}).")

    def _index_words(self, words, first):
        """Add the packed form of the new vocabulary ``words`` (ids from ``first``) to the byte index."""
        k1, k2, key = [], [], []
        for w in words:
            b = w.encode("ascii") if w.isascii() else b""
            if 0 < len(b) <= 16 and b"\0" not in b:
                a, c = int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little")
            else:  # never a span of the batched tokenizer: left to the dictionary
                a = c = 0
            k1.append(a)
            k2.append(c)
            key.append(a if c == 0 else ((a * _PACK_MUL) % (1 << 64) ^ c) & _MASK63)
        k1, k2 = np.array(k1, dtype=np.uint64), np.array(k2, dtype=np.uint64)
        self._packed_words = np.concatenate([self._packed_words, np.stack([k1, k2], axis=1)])
        key = np.array(key, dtype=np.int64)
        ok = np.flatnonzero(k1 != 0)
        _, at = np.unique(key[ok], return_index=True)  # equal keys (two long words): the first one
        ok = ok[np.sort(at)]
        ok = ok[self._packed.get(key[ok]) < 0]
        self._packed.add(key[ok], ok + first)

    def word_ids_spans(self, buf, starts, ends, counts, fixes):
        """:meth:`word_ids` (``grow=False``) of :func:`~rslavis.text.tokenize.ptb_token_spans`'
        output, as ``(ids, tokens per caption)``.

        A token of up to 16 bytes is packed into two 64-bit words straight from ``buf`` and
        found in a hash table of the vocabulary's packed words (checked against the packed
        word, so a hash collision cannot give a wrong id): no string per token. Longer tokens,
        collisions and the ``fixes`` captions go through the vocabulary dictionary.
        """
        vocab = self.vocab
        tl = ends - starts
        if starts.size:
            padded = buf + bytes(16)
            win = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes from each offset
            k1 = win.take(starts) & _LOW_BYTES.take(np.minimum(tl, 8))
            k2 = win.take(starts + 8) & _LOW_BYTES.take(np.clip(tl - 8, 0, 8))
            mixed = ((k1 * np.uint64(_PACK_MUL)) ^ k2) & np.uint64(_MASK63)
            key = np.where(k2 == 0, k1, mixed).view(np.int64)
            ids = self._packed.get(key, 0)
            word = self._packed_words.take(ids, axis=0)
            # a word longer than 16 bytes (its first 16 may spell another word), or a collision
            other = np.flatnonzero((((word[:, 0] != k1) | (word[:, 1] != k2)) & (ids != 0)) | (tl > 16))
            ids[other] = 0
            for j in other.tolist():
                ids[j] = vocab.get(buf[starts[j] : ends[j]].decode("ascii"), 0)
        else:
            ids = np.zeros(0, np.int64)
        zeros = np.flatnonzero(ids == 0)
        if zeros.size:
            caption_of = np.searchsorted(np.cumsum(counts), zeros, side="right")
            self._local_ids(ids, zeros, caption_of, lambda j: buf[starts[j] : ends[j]].decode("ascii"))
        if not fixes:
            return ids, counts
        counts = counts.copy()
        offsets = np.cumsum(counts) - counts
        at, extra = [], []
        for k, toks in fixes.items():
            fix = self.word_ids(toks, np.array([len(toks)]), grow=False)
            at.extend([offsets[k]] * len(toks))
            extra.append(fix)
            counts[k] = len(toks)
        if extra:
            ids = np.insert(ids, np.array(at, dtype=np.int64), np.concatenate(extra))
        return ids, counts

    def ngrams(self, word_ids, lengths, grow):
        """Every n-gram occurrence of concatenated captions as ``(ids, owner, tmp_order)``.

        ``ids``: the n-gram's dense id (``grow=True`` adds the missing ones). With
        ``grow=False`` an n-gram the table lacks gets a temporary id ``>= size``, the same
        for equal n-grams within this call; ``tmp_order[id - size]`` is its order.
        ``owner``: the caption of each occurrence.
        """
        total = int(word_ids.size)
        owner_tok = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        remaining = np.cumsum(lengths, dtype=np.int64)[owner_tok] - np.arange(total, dtype=np.int64)
        temp_next = self.size
        prefix = np.zeros(total, dtype=np.int64)  # id of the (n-1)-gram starting at each position
        ids_all, owners, tmp_orders = [], [], []
        for n in range(1, self.n + 1):
            pos = np.flatnonzero(remaining >= n) if n > 1 else np.arange(total, dtype=np.int64)
            keys = (np.int64(n - 1) << ORDER_SHIFT) | (prefix[pos] << WORD_BITS) | word_ids[pos + (n - 1)]
            ids = self._lookup(keys)
            unknown = ids < 0
            if unknown.any():
                ukeys, uinv = np.unique(keys[unknown], return_inverse=True)
                if grow:
                    first = self._add_keys(ukeys)
                else:
                    first = temp_next
                    temp_next += ukeys.size
                    tmp_orders.append(np.full(ukeys.size, n, dtype=np.int64))
                ids[unknown] = first + uinv
            if max(self.size, temp_next) > ID_CAP:
                raise RslavisError(f"cider: more than {ID_CAP} distinct n-grams, the limit of the 64-bit n-gram keys.")
            prefix[pos] = ids
            ids_all.append(ids)
            owners.append(owner_tok[pos])
        tmp = np.concatenate(tmp_orders) if tmp_orders else _EMPTY
        return np.concatenate(ids_all), np.concatenate(owners), tmp

    def _lookup(self, keys):
        """Dense ids of packed keys, -1 where the n-gram is unknown."""
        return self.index.get(keys)

    def _add_keys(self, new_keys):
        """Give unseen n-grams (distinct) dense ids with document frequency 0; returns the first id."""
        g = self.size
        self.index.add(new_keys, np.arange(g, g + new_keys.size, dtype=np.int64))
        self.df = np.concatenate([self.df, np.zeros(new_keys.size)])
        self.order = np.concatenate([self.order, (new_keys >> ORDER_SHIFT) + 1])
        return g
