"""Retrieval augmentation: a faiss index over training-image features and the captions it retrieves.

- :mod:`rslavis.retrieval.index`: ``build_index(features, kind)`` (inner product on
  L2-normalised features: ``flat`` exact, ``ivf`` or ``hnsw`` for large datastores).
- :mod:`rslavis.retrieval.datastore`: :class:`~rslavis.retrieval.datastore.Datastore`
  (one row per training image with its captions; ``retrieve(queries, k)``), and
  ``build_retrieval(...)`` which encodes the images of every split once, writes the
  retrieved-captions JSON (image id to k captions, the image's own captions excluded)
  and reuses it while the encoder, images, captions and settings stay the same.
- ``python -m rslavis.retrieval --cfg-path X``: build it alone for a project.

Nothing here is imported by ``import rslavis``; faiss and torch load on first use.
"""
