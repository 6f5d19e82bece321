"""faiss indexes for inner-product search on L2-normalised features (cosine similarity)."""

import logging

import numpy as np

from rslavis.common.errors import ConfigError

INDEX_KINDS = ("flat", "ivf", "hnsw")


def build_index(features, kind="flat", nlist=None, nprobe=8, hnsw_m=32, ef_search=64):
    """A faiss index over ``features`` (M, D) float32, rows already L2-normalised.

    ``flat``: exact IndexFlatIP. ``ivf``: IndexIVFFlat with ``nlist`` cells (default
    about sqrt(M)), ``nprobe`` cells searched. ``hnsw``: IndexHNSWFlat with ``hnsw_m``
    links and ``ef_search``, inner-product metric.
    """
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX2 probe logs a traceback at INFO
    import faiss

    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"retrieval: the datastore needs a non-empty (images, dim) feature matrix, got shape {x.shape}.")
    m, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = int(nlist or max(1, int(round(m**0.5))))
        nlist = min(nlist, m)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(int(nprobe), nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = int(ef_search)
    else:
        raise ConfigError(f"model.retrieval.index {kind!r} is unknown; valid: {', '.join(INDEX_KINDS)}.")
    index.add(x)
    return index


def search(index, queries, k):
    """``(scores, rows)`` of the ``k`` best rows per query (rows -1 where fewer exist)."""
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    k = max(1, min(int(k), index.ntotal))
    return index.search(q, k)
