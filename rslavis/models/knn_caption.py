"""``knn_caption``: caption retrieval, the baseline every trained captioner must beat.

Nothing is trained. ``prepare_for_training`` encodes every training image with a
frozen vision encoder (any of :mod:`rslavis.models.encoders`: tiny random by default,
transformers or open_clip weights from local files), L2-normalises the pooled vectors
and puts them in a faiss ``IndexFlatIP`` (exact cosine search). ``generate`` finds the
``k`` nearest training images of each query and returns

- ``mode: consensus`` (default): among all captions of the ``k`` neighbours, the one
  with the highest mean CIDEr-D against the other retrieved captions (document
  frequencies from the training references; ties go to the caption of the nearer
  image), the consensus re-ranking of Devlin et al. (2015);
- ``mode: nearest``: the nearest image's first caption.

Features: samples that carry ``image_features`` (a dataset feature cache, see
:mod:`rslavis.datasets.feature_cache`) are used as they are (mean over tokens when a
row is 2-D); with ``feature_cache.enabled`` the model builds its own cache of pooled
features for the training images and every evaluation split in ``prepare_for_training``
(the key covers the encoder config, its weights or checkpoint file, see
:func:`rslavis.retrieval.datastore.encoder_fingerprint`, and the image processor), so
a second run decodes no image.

Run it with ``run.evaluate: true`` (no checkpoint needed) or ``run.max_epoch: 0``; its
``forward`` refuses to train.
"""

import logging

import numpy as np
import torch

from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from rslavis.models.base_model import BaseModel
from rslavis.models.encoders import build_vision_encoder, freeze, l2_normalise
from rslavis.retrieval.index import build_index, search

logger = logging.getLogger(__name__)

MODES = ("consensus", "nearest")



def consensus_indices(groups, scorer):
    """For each group of candidate captions, the index of the one with the highest mean
    CIDEr-D against the other candidates of its group (one scoring call for all groups).

    ``scorer`` is a :class:`rslavis.rewards.cider.CiderD` with a corpus. Ties go to the
    lowest index, so candidates should come in order of retrieval rank.
    """
    cands, others, bounds = [], [], [0]
    for group in groups:
        if len(group) > 1:
            cands.extend(group)
            others.extend(group[:i] + group[i + 1 :] for i in range(len(group)))
        bounds.append(len(cands))
    scores = scorer.score(cands, others) if cands else np.zeros(0)
    return [int(np.argmax(scores[a:b])) if b > a else 0 for a, b in zip(bounds[:-1], bounds[1:])]


@registry.register_model("knn_caption")
class KNNCaption(BaseModel):
    """Config keys: ``k``, ``mode`` (consensus | nearest), ``vision`` (encoder, see
    :func:`build_vision_encoder`), ``feature_cache: {enabled, cache_dir}``,
    ``datastore_split`` (train), ``encode_batch_size``."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/knn_caption/tiny.yaml",
        "remoteclip": "configs/models/knn_caption/remoteclip.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.k = int(self.cfg.get("k", 5))
        if self.k < 1:
            raise ConfigError(f"model.k must be a positive integer, got {self.cfg.get('k')!r}.")
        self.mode = str(self.cfg.get("mode", "consensus"))
        if self.mode not in MODES:
            raise ConfigError(f"model.mode {self.mode!r} is unknown; valid: {', '.join(MODES)}.")
        self.visual_encoder = freeze(build_vision_encoder(self.cfg.get("vision") or {}))
        self.datastore_split = str(self.cfg.get("datastore_split") or "train")
        self.encode_batch_size = int(self.cfg.get("encode_batch_size") or 64)
        # The datastore is rebuilt by prepare_for_training on every run, so it stays out of
        # the state dict (checkpoints keep the encoder only).
        self.index = None
        self.captions = []  # per datastore row: the image's captions (text-processed)
        self.image_ids = []
        self.scorer = None

    @property
    def device(self):
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def train(self, mode=True):
        super().train(mode)
        self.visual_encoder.eval()  # frozen: no dropout, whatever the runner asks
        return self

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def encode(self, samples):
        """L2-normalised float32 retrieval features ``(B, P)`` of a batch (numpy)."""
        if "image_features" in samples:
            feats = samples["image_features"].float()
            if feats.dim() == 3:  # cached token features: pool them
                feats = feats.mean(1)
        elif "image" in samples:
            feats = self.visual_encoder(samples["image"].to(self.device))[1].float()
        else:
            raise DataError("knn_caption: a batch has neither 'image' nor 'image_features'.")
        return np.ascontiguousarray(l2_normalise(feats.reshape(len(feats), -1)).cpu().numpy(), dtype=np.float32)

    def _cache_config(self, processor):
        from rslavis.retrieval.datastore import encoder_fingerprint

        proc = {k: getattr(processor, k, None) for k in ("image_size", "mean", "std")} if processor is not None else None
        fingerprint = encoder_fingerprint(self.visual_encoder, self.cfg.get("vision") or {})
        return {"model": "knn_caption", "encoder": fingerprint, "processor": proc, "features": "pooled"}

    def _attach_cache(self, dataset, processor):
        fc = self.cfg.get("feature_cache") or {}

        def encode_fn(images):
            return self.encode({"image": torch.stack(images)})

        dataset.attach_features(str(fc.get("cache_dir") or "cache/features"), self._cache_config(processor), encode_fn, batch_size=self.encode_batch_size)

    # ------------------------------------------------------------------ datastore
    def prepare_for_training(self, datasets, output_dir):
        """Encode the ``datastore_split`` images of every dataset into a faiss index.

        The data comes from the task's ``datasets`` (their ``eval_view``, ``attach_features``
        and ``collater``); this module imports no dataset code."""
        from torch.utils.data import DataLoader

        from rslavis.common.logger import progress
        from rslavis.rewards.cider import CiderD

        use_cache = bool((self.cfg.get("feature_cache") or {}).get("enabled", False))
        feats, captions, image_ids, corpus = [], [], [], []
        self.eval()
        for name, splits in datasets.items():
            train = splits.get(self.datastore_split)
            if train is None or not hasattr(train, "records"):
                continue
            # The deterministic eval transform for the datastore, as for the queries.
            evals = [ds for split, ds in splits.items() if split != self.datastore_split]
            processor = evals[0].vis_processor if evals else train.vis_processor
            store = train.eval_view(processor)  # keeps the features the dataset serves, if any
            if use_cache:
                self._attach_cache(store, processor)
                for ds in evals:
                    if hasattr(ds, "attach_features"):
                        self._attach_cache(ds, ds.vis_processor)
            loader = DataLoader(store, batch_size=self.encode_batch_size, shuffle=False, num_workers=0, collate_fn=store.collater)
            for batch in progress(loader, desc=f"knn_caption datastore {name}"):
                if not batch:
                    continue
                feats.append(self.encode(batch))
                for image_id, refs in zip(batch["image_id"], batch["references"]):
                    caps = [train.text_processor(c) for c in refs]
                    captions.append(caps)
                    image_ids.append(image_id)
            corpus.extend([train.text_processor(c) for c in r["captions"]] for r in train.records if r["captions"])
        if not feats:
            raise ConfigError(
                f"knn_caption: no dataset has a readable {self.datastore_split!r} split to retrieve captions from; "
                f"configured: {', '.join(f'{n}: {sorted(s)}' for n, s in datasets.items()) or '(none)'}."
            )
        array = np.concatenate(feats)
        self.index = build_index(array, "flat")  # exact inner product = cosine on normalised rows
        self.captions, self.image_ids = captions, image_ids
        self.scorer = CiderD(corpus=corpus)
        logger.info("knn_caption: datastore of %d images (%d-d), k=%d, mode=%s", len(captions), array.shape[1], self.k, self.mode)

    # ------------------------------------------------------------------ captioning
    def forward(self, samples):
        raise ConfigError(
            "knn_caption has nothing to train (it retrieves training captions); "
            "set run.evaluate: true (or run.max_epoch: 0) in the project YAML."
        )

    def retrieve(self, samples, k=None):
        """``(similarities, datastore rows)``, each ``(B, k)``, nearest first."""
        if self.index is None:
            raise ConfigError("knn_caption: the datastore is empty; prepare_for_training(datasets, output_dir) builds it (the runner calls it).")
        queries = self.encode(samples)
        if queries.shape[1] != self.index.d:
            raise DataError(
                f"knn_caption: query features have {queries.shape[1]} dimensions, the datastore {self.index.d}; "
                "the training and evaluation splits must come from the same encoder (or the same feature cache)."
            )
        return search(self.index, queries, int(k or self.k))

    @torch.no_grad()
    def generate(self, samples, max_len=30, min_len=1, num_beams=1, **kwargs):
        _, rows = self.retrieve(samples)
        rows = [[int(r) for r in row if r >= 0] for row in rows]
        if self.mode == "nearest":
            return [self.captions[row[0]][0] for row in rows]
        groups = [[c for r in row for c in self.captions[r]] for row in rows]
        return [group[i] for group, i in zip(groups, consensus_indices(groups, self.scorer))]
