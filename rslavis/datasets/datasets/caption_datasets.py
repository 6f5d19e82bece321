"""Caption datasets over a list of image records.

A record is ``{"image_id", "image" (path), "captions": [str], "count_dict"?, "prompt"?}``
(``prompt``: a per-image instruction, as RSICap has, overriding the dataset prompt).
Training items are one per (image, caption); evaluation items are one per image and
carry all its references. Sample keys follow LAVIS (see DESIGN.md):

* train: ``image``, ``image_id``, ``text_input`` (prompt), ``text_output`` (caption),
  ``references`` and ``count_dict`` when attached;
* eval: ``image``, ``image_id``, ``text_input``, ``references``, ``count_dict``.

With a feature cache attached (:mod:`rslavis.datasets.feature_cache`) samples carry
``image_features`` (a tensor row of the cache) instead of ``image``.

An image that is missing or cannot be decoded makes ``__getitem__`` return None with a
warning naming the file (once per file and process); :func:`collate` drops None, and
``dataset.skipped_images`` counts the samples dropped so far (shared with DataLoader
workers). ``strict=True`` raises the :class:`DataError` instead.
"""

import logging

import torch
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from rslavis.common.errors import DataError
from rslavis.datasets.image_io import SkipCounter, load_image  # noqa: F401  (load_image re-exported)

logger = logging.getLogger(__name__)


def collate(samples):
    """Drop None samples; stack tensors, keep lists of everything else (captions, references, dicts)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return {}
    out = {}
    for key in samples[0]:
        values = [s.get(key) for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool) and key not in ("image_id", "question_id"):
            out[key] = default_collate(values)
        else:
            out[key] = values
    return out



def _identity(text):
    return text


class ImageRecordDataset(Dataset):
    """Shared image handling: processors, skip-and-count of unreadable images, feature cache."""

    def __init__(self, records, vis_processor=None, text_processor=None, prompt="", strict=False, image_options=None):
        self.records = records
        self.vis_processor = vis_processor
        self.text_processor = text_processor or _identity  # a module function: datasets pickle for spawned workers
        self.prompt = prompt or ""
        self.strict = bool(strict)
        self.image_options = dict(image_options or {})
        self.skip_counter = SkipCounter()
        self._warned = set()
        self.features = None  # (array, {image path: row}) once a feature cache is attached

    @property
    def skipped_images(self):
        """Samples dropped so far because their image could not be read (all workers, all epochs)."""
        return self.skip_counter.value

    def image_paths(self):
        """Distinct image paths in record order (the feature cache's image list)."""
        seen = dict.fromkeys(r["image"] for r in self.records)
        return list(seen)

    def read_image(self, path):
        """The image at ``path`` decoded with this dataset's image options (a DataError when unreadable)."""
        return load_image(path, **self.image_options)

    def use_features(self, array, paths):
        """Serve ``image_features`` rows of ``array`` (row i = ``paths[i]``) instead of decoding images."""
        self.features = (array, {p: i for i, p in enumerate(paths)})

    def _visual(self, record):
        """``("image", tensor)`` or ``("image_features", tensor)``; None when the image is unreadable."""
        if self.features is not None:
            array, rows = self.features
            row = rows.get(record["image"])
            if row is not None:
                return "image_features", torch.from_numpy(array[row].copy())
        try:
            image = load_image(record["image"], **self.image_options)
        except DataError as exc:
            if self.strict:
                raise DataError(f"{exc} (build_info.strict is true; set it to false to skip unreadable images)") from None
            self.skip_counter.add(record["image"])
            if record["image"] not in self._warned:
                self._warned.add(record["image"])
                logger.warning("skipping a sample: %s", exc)
            return None
        return "image", (self.vis_processor(image) if self.vis_processor else image)

    def collater(self, samples):
        return collate(samples)

    def eval_view(self, vis_processor=None):
        """A :class:`CaptionEvalDataset` (one item per image, all references) over these records,
        with ``vis_processor`` (default: this dataset's) and the cached features, if any."""
        view = CaptionEvalDataset(self.records, vis_processor or self.vis_processor, self.text_processor, image_options=self.image_options)
        view.features = self.features
        return view

    def attach_features(self, cache_dir, encoder_config, encode_fn, batch_size=32):
        """Build (when needed) and attach a feature cache of this dataset's images, decoded with its
        own image options and ``vis_processor`` (see :func:`rslavis.datasets.feature_cache.attach_feature_cache`)."""
        from rslavis.datasets.feature_cache import attach_feature_cache

        def load_fn(path):
            image = load_image(path, **self.image_options)
            return self.vis_processor(image) if self.vis_processor is not None else image

        return attach_feature_cache(self, cache_dir, encoder_config, encode_fn, load_fn, batch_size=batch_size)


# Kept for code written against the first version of this module.
_CaptionBase = ImageRecordDataset


class CaptionTrainDataset(ImageRecordDataset):
    """One item per (image, caption): ``image``, ``image_id``, ``text_input`` (prompt), ``text_output``."""

    def __init__(self, records, vis_processor=None, text_processor=None, prompt="", strict=False, image_options=None):
        super().__init__(records, vis_processor, text_processor, prompt, strict, image_options)
        self.index = [(i, j) for i, r in enumerate(records) for j in range(len(r["captions"]))]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, idx):
        i, j = self.index[idx]
        record = self.records[i]
        visual = self._visual(record)
        if visual is None:
            return None
        sample = {
            visual[0]: visual[1],
            "image_id": record["image_id"],
            "text_input": record.get("prompt", self.prompt),
            "text_output": self.text_processor(record["captions"][j]),
            "references": list(record["captions"]),
        }
        if "count_dict" in record:
            sample["count_dict"] = record["count_dict"]
        return sample

    def all_captions(self):
        return [self.text_processor(c) for r in self.records for c in r["captions"]]

    def references(self):
        """``{image_id: [captions]}`` (SCST and CIDEr document frequencies use the training ones)."""
        return {r["image_id"]: list(r["captions"]) for r in self.records}


class CaptionEvalDataset(ImageRecordDataset):
    """One item per image: ``image``, ``image_id``, ``text_input`` (prompt), ``references``."""

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        record = self.records[idx]
        visual = self._visual(record)
        if visual is None:
            return None
        sample = {
            visual[0]: visual[1],
            "image_id": record["image_id"],
            "text_input": record.get("prompt", self.prompt),
            "references": list(record["captions"]),
        }
        if "count_dict" in record:
            sample["count_dict"] = record["count_dict"]
        return sample

    def references(self):
        """``{image_id: [captions]}`` for metric computation."""
        return {r["image_id"]: list(r["captions"]) for r in self.records}

    def all_captions(self):
        return [self.text_processor(c) for r in self.records for c in r["captions"]]
