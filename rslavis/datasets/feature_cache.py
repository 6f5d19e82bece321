"""Feature cache for frozen image encoders: encode every image once, memory-map after.

A cache lives in ``<cache_dir>/<key>/`` with ``features.npy`` (row i = image i) and
``meta.json``. The key is the SHA-1 of the encoder config (any JSON-able mapping that
identifies the encoder and its preprocessing: name, checkpoint, layer, image size...)
and the ordered image list, so changing the encoder, its settings or the images gives
a new cache instead of stale features. Files are written to a temporary folder and
renamed into place, so an interrupted extraction is never mistaken for a cache.

Use::

    cache = FeatureCache("cache/features", {"encoder": "clip-b32", "size": 224}, paths)
    feats = cache.get(encode_fn, load_fn=lambda p: proc(load_image(p)))  # builds once
    # or, for a dataset (samples then carry ``image_features`` instead of ``image``):
    attach_feature_cache(dataset, "cache/features", encoder_cfg, encode_fn, load_fn)

``encode_fn(list of loaded images) -> array or tensor (batch, ...)``. An image that
cannot be read gets a zero row and is listed in ``meta.json["unreadable"]``; datasets
then load (and skip) it as usual instead of serving the zero row.

Builders attach an existing cache automatically when the dataset config has
``feature_cache: {enabled: true, cache_dir: ..., encoder: {...}}``; a model with a
frozen encoder builds it (``attach_feature_cache`` with its ``encode_fn``) in
``prepare_for_training``.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from rslavis.common.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def cache_key(encoder_config, image_paths):
    h = hashlib.sha1()
    h.update(json.dumps({"v": FORMAT_VERSION, "encoder": encoder_config}, sort_keys=True, default=str).encode())
    for p in image_paths:
        h.update(b"\0")
        h.update(str(p).encode())
    return h.hexdigest()[:16]


def _to_numpy(out):
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out)


class FeatureCache:
    def __init__(self, cache_dir, encoder_config, image_paths):
        self.encoder_config = encoder_config
        self.image_paths = [str(p) for p in image_paths]
        self.key = cache_key(encoder_config, self.image_paths)
        self.root = Path(cache_dir).expanduser()
        self.folder = self.root / self.key

    @property
    def features_file(self):
        return self.folder / "features.npy"

    def meta(self):
        try:
            with open(self.folder / "meta.json") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def exists(self):
        meta = self.meta()
        return bool(meta) and meta.get("n") == len(self.image_paths) and self.features_file.is_file()

    def load(self):
        """The features, memory-mapped read-only."""
        if not self.exists():
            raise DataError(f"no complete feature cache at {self.folder} (key {self.key}); build it with FeatureCache.build().")
        return np.load(self.features_file, mmap_mode="r")

    def unreadable(self):
        return list((self.meta() or {}).get("unreadable", []))

    def build(self, encode_fn, load_fn=None, batch_size=32, progress=True):
        """Encode every image (batches of ``batch_size``) into a new cache; returns the memmap."""
        from tqdm import tqdm

        if load_fn is None:
            from rslavis.datasets.image_io import load_image as load_fn
        self.root.mkdir(parents=True, exist_ok=True)
        from rslavis.common.checkpoint import make_shared_tempdir

        tmp = Path(make_shared_tempdir(prefix=f".{self.key}-", dir=self.root))
        n = len(self.image_paths)
        out = None
        unreadable = []
        try:
            with tqdm(total=n, desc="extracting features", disable=not progress, leave=False) as bar:
                for start in range(0, n, batch_size):
                    paths = self.image_paths[start : start + batch_size]
                    items, ok = [], []
                    for k, p in enumerate(paths):
                        try:
                            items.append(load_fn(p))
                            ok.append(k)
                        except DataError as exc:
                            logger.warning("feature cache: %s; its row stays zero", exc)
                            unreadable.append(p)
                    if items:
                        feats = _to_numpy(encode_fn(items))
                        if feats.shape[0] != len(items):
                            raise DataError(f"encode_fn returned {feats.shape[0]} rows for {len(items)} images.")
                        if out is None:
                            out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=feats.dtype, shape=(n, *feats.shape[1:]))
                            out[:] = 0
                        out[[start + k for k in ok]] = feats
                    bar.update(len(paths))
            if out is None:
                raise DataError(f"feature cache: none of the {n} images could be read (first: {self.image_paths[:1]}).")
            out.flush()
            del out
            meta = {"n": n, "key": self.key, "encoder": self.encoder_config, "unreadable": unreadable, "version": FORMAT_VERSION}
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, default=str)
            if self.folder.exists():  # an incomplete or foreign folder under our key
                shutil.rmtree(self.folder, ignore_errors=True)
            os.replace(tmp, self.folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("feature cache of %d images written to %s", n, self.folder)
        return self.load()

    def get(self, encode_fn=None, load_fn=None, batch_size=32, progress=True):
        """Load the cache, building it first with ``encode_fn`` when it does not exist."""
        if self.exists():
            return self.load()
        if encode_fn is None:
            raise DataError(f"no feature cache at {self.folder} and no encode_fn to build it.")
        return self.build(encode_fn, load_fn, batch_size, progress)


def attach_feature_cache(dataset, cache_dir, encoder_config, encode_fn=None, load_fn=None, batch_size=32, progress=True):
    """Build (when needed) and attach the feature cache of ``dataset``'s images; returns the cache."""
    paths = dataset.image_paths()
    cache = FeatureCache(cache_dir, encoder_config, paths)
    array = cache.get(encode_fn, load_fn, batch_size, progress)
    bad = set(cache.unreadable())
    dataset.use_features(array, [p if p not in bad else None for p in paths])
    return cache
