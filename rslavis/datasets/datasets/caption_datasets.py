"""Caption datasets over a list of image records.

A record is ``{"image_id", "image" (path), "captions": [str], "count_dict"?}``.
Training items are one per (image, caption); evaluation items are one per image and
carry all its references. Sample keys follow LAVIS (see DESIGN.md).
"""

import torch
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from rslavis.common.errors import DataError


def load_image(path):
    """Open an image file as RGB PIL image; a missing or unreadable file is a DataError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def collate(samples):
    """Stack tensors, keep lists of everything else (captions, references, dicts)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return {}
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool) and key != "image_id":
            out[key] = default_collate(values)
        else:
            out[key] = values
    return out


class _CaptionBase(Dataset):
    def __init__(self, records, vis_processor=None, text_processor=None, prompt=""):
        self.records = records
        self.vis_processor = vis_processor
        self.text_processor = text_processor or (lambda s: s)
        self.prompt = prompt

    def _image(self, record):
        image = load_image(record["image"])
        return self.vis_processor(image) if self.vis_processor else image

    def collater(self, samples):
        return collate(samples)


class CaptionTrainDataset(_CaptionBase):
    """One item per (image, caption): ``image``, ``image_id``, ``text_input`` (prompt), ``text_output``."""

    def __init__(self, records, vis_processor=None, text_processor=None, prompt=""):
        super().__init__(records, vis_processor, text_processor, prompt)
        self.index = [(i, j) for i, r in enumerate(records) for j in range(len(r["captions"]))]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, idx):
        i, j = self.index[idx]
        record = self.records[i]
        sample = {
            "image": self._image(record),
            "image_id": record["image_id"],
            "text_input": self.prompt,
            "text_output": self.text_processor(record["captions"][j]),
            "references": list(record["captions"]),
        }
        if "count_dict" in record:
            sample["count_dict"] = record["count_dict"]
        return sample

    def all_captions(self):
        return [self.text_processor(c) for r in self.records for c in r["captions"]]


class CaptionEvalDataset(_CaptionBase):
    """One item per image: ``image``, ``image_id``, ``text_input`` (prompt), ``references``."""

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        record = self.records[idx]
        sample = {
            "image": self._image(record),
            "image_id": record["image_id"],
            "text_input": self.prompt,
            "references": list(record["captions"]),
        }
        if "count_dict" in record:
            sample["count_dict"] = record["count_dict"]
        return sample

    def references(self):
        """``{image_id: [captions]}`` for metric computation."""
        return {r["image_id"]: list(r["captions"]) for r in self.records}
