"""Annotation readers: published files to ``{split: [record]}``, each file read once.

Pure Python (no torch), one pass over each file, no per-item file-system calls, so
building RSICD's 54,605 captions takes a fraction of a second. Record layouts are the
ones of :mod:`rslavis.datasets.datasets.caption_datasets` and ``vqa_datasets``.
Malformed files raise :class:`DataError` naming the file and the expected layout.

One module a format: ``karpathy``, ``coco``, ``rsgpt`` (RSICap, RSIEval), ``vrsbench``,
``rsvqa``, ``lavis``; ``base`` holds what they share. Everything is importable from here.
"""

from rslavis.datasets.readers.base import _text, check_unique_ids, load_json, no_gc  # noqa: F401  (_text: the caption builders check strings with it)
from rslavis.datasets.readers.coco import COCO_LAYOUT, attach_coco_gt, read_coco_captions
from rslavis.datasets.readers.karpathy import KARPATHY_LAYOUT, read_karpathy
from rslavis.datasets.readers.lavis import LAVIS_CAPTION_LAYOUT, LAVIS_VQA_LAYOUT, read_caption_annotations, read_vqa_annotations
from rslavis.datasets.readers.rsgpt import RSICAP_LAYOUT, RSIEVAL_LAYOUT, read_rsicap, read_rsieval
from rslavis.datasets.readers.rsvqa import RSVQA_LAYOUT, read_rsvqa
from rslavis.datasets.readers.vrsbench import VRSBENCH_EVAL_LAYOUT, VRSBENCH_TRAIN_LAYOUT, read_vrsbench_eval, read_vrsbench_train

__all__ = [
    "load_json", "check_unique_ids", "no_gc",
    "KARPATHY_LAYOUT", "read_karpathy", "COCO_LAYOUT", "read_coco_captions", "attach_coco_gt",
    "RSICAP_LAYOUT", "read_rsicap", "RSIEVAL_LAYOUT", "read_rsieval",
    "VRSBENCH_EVAL_LAYOUT", "VRSBENCH_TRAIN_LAYOUT", "read_vrsbench_eval", "read_vrsbench_train",
    "RSVQA_LAYOUT", "read_rsvqa", "LAVIS_CAPTION_LAYOUT", "LAVIS_VQA_LAYOUT", "read_caption_annotations", "read_vqa_annotations",
]
