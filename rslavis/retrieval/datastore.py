"""The retrieval datastore and the retrieved-captions file.

A :class:`Datastore` holds one row per training image: its L2-normalised pooled feature
from a frozen retrieval encoder, its id, path and captions. ``retrieve(queries, k)``
returns k captions per query, one from each nearest image in turn (so the prompt shows
k different scenes), skipping the query's own image (same path).

:func:`build_retrieval` does it for every dataset of a run::

    <cache_dir>/features/<key>/                 pooled features per split (FeatureCache)
    <cache_dir>/<dataset>-<key>/
        features.npy, entries.json, meta.json   the datastore (train images)
        retrieved_captions.json                 {image_id: [k captions]} for every split

``<key>`` hashes the encoder fingerprint (its config, and its weights when they are not
a named checkpoint file), the image paths and captions of every split, ``k`` and the
index settings, so a changed encoder or dataset builds anew and an unchanged one reuses
the files.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from rslavis.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _sha1(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Datastore:
    """Training-image features, ids, paths and captions behind a faiss index."""

    def __init__(self, features, image_ids, captions, paths=None, index="flat", index_options=None):
        self.features = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        self.image_ids = [str(i) for i in image_ids]
        self.captions = [list(c) for c in captions]
        self.paths = [str(p) for p in paths] if paths is not None else [None] * len(self.image_ids)
        if not (len(self.features) == len(self.image_ids) == len(self.captions) == len(self.paths)):
            raise DataError(f"datastore: {len(self.features)} feature rows for {len(self.image_ids)} images.")
        self.index_kind = index
        self.index_options = dict(index_options or {})
        self._index = None

    def __len__(self):
        return len(self.image_ids)

    @property
    def index(self):
        if self._index is None:
            from rslavis.retrieval.index import build_index

            self._index = build_index(self.features, self.index_kind, **self.index_options)
        return self._index

    def retrieve(self, queries, k, exclude_paths=None):
        """k captions per query row (L2-normalised features), the query's own image excluded."""
        from rslavis.retrieval.index import search

        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.features.shape[1]:
            raise DataError(f"retrieval: query features of shape {queries.shape} do not match the datastore's dimension {self.features.shape[1]}.")
        # a few spare neighbours: the query itself, and neighbours whose captions repeat chosen ones
        _, rows = search(self.index, queries, 2 * k + 1)
        out = []
        for qi, row in enumerate(rows):
            own = exclude_paths[qi] if exclude_paths is not None else None
            neighbours = [int(r) for r in row if r >= 0 and (own is None or self.paths[r] != own)]
            chosen = []
            for r in neighbours:  # one caption per neighbour, nearest first
                cap = next((c for c in self.captions[r] if c not in chosen), None)
                if cap is not None:
                    chosen.append(cap)
                if len(chosen) == k:
                    break
            for r in neighbours:  # fewer distinct neighbours than k: more captions of the nearest
                for c in self.captions[r]:
                    if len(chosen) < k and c not in chosen:
                        chosen.append(c)
            out.append(chosen)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "features.npy", self.features)
        with open(folder / "entries.json", "w") as f:
            json.dump({"image_ids": self.image_ids, "paths": self.paths, "captions": self.captions}, f)
        with open(folder / "meta.json", "w") as f:
            json.dump({"version": FORMAT_VERSION, "index": self.index_kind, "index_options": self.index_options, "n": len(self)}, f)

    @classmethod
    def load(cls, folder):
        folder = Path(folder)
        if not (folder / "features.npy").is_file() or not (folder / "entries.json").is_file():
            raise DataError(f"{folder}: not a retrieval datastore (features.npy and entries.json expected).")
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
        entries = json.loads((folder / "entries.json").read_text())
        return cls(np.load(folder / "features.npy"), entries["image_ids"], entries["captions"], entries.get("paths"), meta.get("index", "flat"), meta.get("index_options"))

    @staticmethod
    def exists(folder):
        return (Path(folder) / "features.npy").is_file() and (Path(folder) / "entries.json").is_file()


def encoder_fingerprint(encoder, config):
    """What identifies a retrieval encoder: its config, plus a hash of its weights unless they come from a named file."""
    cfg = dict(config or {})
    named = cfg.get("checkpoint") or cfg.get("pretrained")
    if named:
        p = Path(str(named)).expanduser()
        st = p.stat() if p.exists() else None
        return {"config": cfg, "file": str(p.resolve()), "size": st.st_size if st else None, "mtime": int(st.st_mtime) if st else None}
    h = hashlib.sha1()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return {"config": cfg, "weights": h.hexdigest()[:16]}


def _records(dataset):
    return getattr(dataset, "records", None)


def _eval_processor(splits, fallback):
    """The deterministic image processor of an eval split (what the model sees at test time)."""
    for split, ds in splits.items():
        if split != "train" and getattr(ds, "vis_processor", None) is not None:
            return ds.vis_processor
    return fallback


def build_retrieval(encoder, fingerprint, datasets, cache_dir="cache/retrieval", k=4, index="flat", index_options=None, processor=None, device="cpu", batch_size=64, progress=True):
    """Datastore and retrieved captions for every dataset with a train split.

    ``datasets`` is ``{name: {split: Dataset}}`` (datasets with ``records``: image path,
    image_id, captions). Returns ``{name: {"datastore": Datastore, "retrieved": {id:
    [captions]}, "folder": Path}}``.
    """
    import torch

    from rslavis.datasets.feature_cache import FeatureCache
    from rslavis.datasets.image_io import load_image

    k = int(k)
    if k < 1:
        raise ConfigError(f"model.retrieval.k must be a positive integer, got {k}.")
    cache_dir = Path(cache_dir).expanduser()
    index_options = dict(index_options or {})

    def encode_fn(items):
        with torch.no_grad():
            pooled = encoder(torch.stack(items).to(device))[1].float()  # the encoders' (tokens, pooled) output
            return torch.nn.functional.normalize(pooled, dim=-1, eps=1e-12).cpu().numpy()

    out = {}
    for name, splits in datasets.items():
        train = splits.get("train")
        if train is None or _records(train) is None:
            logger.warning("retrieval: dataset %s has no train split with image records; it gets no retrieved captions.", name)
            continue
        proc = _eval_processor(splits, processor)
        if proc is None:
            raise ConfigError(f"retrieval: dataset {name} has no eval image processor to encode its images with.")
        options = getattr(train, "image_options", {}) or {}
        text = getattr(train, "text_processor", None) or (lambda s: s)

        def load_fn(path, proc=proc, options=options):
            return proc(load_image(path, **options))

        proc_id = {k_: getattr(proc, k_, None) for k_ in ("image_size", "mean", "std")} | {"class": type(proc).__name__}
        split_items = {}
        for split, ds in splits.items():
            recs = _records(ds)
            if recs is None:
                continue
            seen = {}
            for r in recs:
                seen.setdefault(r["image"], r)
            split_items[split] = list(seen.values())
        train_recs = split_items["train"]
        key = _sha1(
            {
                "v": FORMAT_VERSION,
                "encoder": fingerprint,
                "processor": proc_id,
                "k": k,
                "index": index,
                "index_options": index_options,
                "train": [(r["image"], str(r["image_id"]), [text(c) for c in r["captions"]]) for r in train_recs],
                "queries": {s: [(r["image"], str(r["image_id"])) for r in v] for s, v in split_items.items()},
            }
        )
        folder = cache_dir / f"{name}-{key}"
        result_file = folder / "retrieved_captions.json"
        if result_file.is_file() and Datastore.exists(folder):
            logger.info("retrieval: reusing %s", folder)
            out[name] = {"datastore": Datastore.load(folder), "retrieved": json.loads(result_file.read_text()), "folder": folder}
            continue

        feats = {}
        for split, recs in split_items.items():
            paths = [r["image"] for r in recs]
            cache = FeatureCache(cache_dir / "features", {"encoder": fingerprint, "processor": proc_id}, paths)
            array = np.asarray(cache.get(encode_fn, load_fn, batch_size=batch_size, progress=progress), dtype=np.float32)
            bad = set(cache.unreadable())
            feats[split] = (array, bad)
        train_array, train_bad = feats["train"]
        keep = [i for i, r in enumerate(train_recs) if r["image"] not in train_bad]
        store = Datastore(
            train_array[keep],
            [train_recs[i]["image_id"] for i in keep],
            [[text(c) for c in train_recs[i]["captions"]] for i in keep],
            [train_recs[i]["image"] for i in keep],
            index,
            index_options,
        )
        retrieved = {}
        from rslavis.common.logger import progress as bar

        for split, recs in split_items.items():
            array, bad = feats[split]
            rows = [i for i, r in enumerate(recs) if r["image"] not in bad]
            for start in bar(range(0, len(rows), 1024), desc=f"retrieving {name} {split}", disable=not progress):
                chunk = rows[start : start + 1024]
                caps = store.retrieve(array[chunk], k, exclude_paths=[recs[i]["image"] for i in chunk])
                for i, c in zip(chunk, caps):
                    retrieved[str(recs[i]["image_id"])] = c
        cache_dir.mkdir(parents=True, exist_ok=True)
        from rslavis.common.checkpoint import make_shared_tempdir

        tmp = Path(make_shared_tempdir(prefix=f".{name}-{key}-", dir=cache_dir))
        try:
            store.save(tmp)
            with open(tmp / "retrieved_captions.json", "w") as f:
                json.dump(retrieved, f)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("retrieval: %d training images indexed (%s), captions retrieved for %d images -> %s", len(store), index, len(retrieved), result_file)
        out[name] = {"datastore": store, "retrieved": retrieved, "folder": folder}
    return out
