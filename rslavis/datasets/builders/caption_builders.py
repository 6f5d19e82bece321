"""Caption dataset builders: Karpathy (UCM, RSICD, Sydney), COCO format, RSICap, RSIEval, VRSBench.

Splits come from the annotation files; ``train`` gives :class:`CaptionTrainDataset`
(one item per image and caption), every other split :class:`CaptionEvalDataset` (one
item per image with all references). Image ids are stable: Karpathy ``imgid``, COCO
``id``, RSICap ``image_id``, RSIEval and VRSBench the image file name stem.
"""

import logging

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.datasets import readers
from rslavis.datasets.builders.base_builder import BaseDatasetBuilder, to_plain
from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset, CaptionTrainDataset

logger = logging.getLogger(__name__)


class CaptionBuilder(BaseDatasetBuilder):
    """Shared ``build()``: ``read()`` gives ``({split: records}, [annotation paths])``.

    With LAVIS's ``build_info.annotations`` every caption builder reads one file per split
    instead (LAVIS list format, COCO captions or Karpathy, told apart by structure; see
    :func:`rslavis.datasets.readers.read_caption_annotations`), images under ``images.storage``.
    """

    train_dataset_cls = CaptionTrainDataset
    eval_dataset_cls = CaptionEvalDataset
    LAVIS_LAYOUT = True

    def read(self):
        raise NotImplementedError

    def read_lavis(self):
        files = self.annotation_files()
        images = self.require_path("images", kind="dir")
        field, split_map, pattern = str(self.info("caption_field", default="raw")), to_plain(self.info("split_map")), self.info("file_name_pattern")
        records = {}
        for split, path in files.items():
            records[split] = readers.read_caption_annotations(path, images, split, field, split_map, pattern)
            if self.info("annotations", split, "coco_gt"):
                readers.attach_coco_gt(records[split], self.require_path("annotations", split, "coco_gt", kind="file"))
        return records, list(files.values())

    def read_records(self):
        """``{split: records}`` with count dictionaries attached when configured (no datasets, no images)."""
        records, paths = self.read_lavis() if self.info("annotations") is not None else self.read()
        return self.attach_count_dicts(records, paths)

    def build(self):
        records = self.read_records()
        return {split: self.make_dataset(split, recs, self.train_dataset_cls, self.eval_dataset_cls) for split, recs in records.items()}


# ---------------------------------------------------------------------- Karpathy
class KarpathyCaptionBuilder(CaptionBuilder):
    """``build_info``: ``annotation`` (dataset.json), ``images`` (folder), ``caption_field``
    (raw | tokens), ``split_map`` (rename splits; restval -> train by default)."""

    def read(self):
        ann = self.require_path("annotation", kind="file")
        images = self.require_path("images", kind="dir")
        records = readers.read_karpathy(ann, images, str(self.info("caption_field", default="raw")), to_plain(self.info("split_map")))
        return records, [ann]


_KARPATHY_LAYOUT = "<root>/dataset.json (Karpathy format: {{\"images\": [{{\"filename\", \"imgid\", \"split\", \"sentences\": [{{\"raw\"}}]}}]}}) and <root>/images/<filename> ({ext})"


@registry.register_builder("ucm_caption")
class UCMCaptionBuilder(KarpathyCaptionBuilder):
    DATASET_CONFIG_DICT = {"default": "configs/datasets/ucm_caption/defaults.yaml"}
    TITLE = "UCM-Captions (Qu et al., 2016)"
    PUBLISHED_AT = "https://github.com/201528014227051/RSICD_optimal (links to UCM-Captions: dataset.json and the 2,100 UC Merced .tif images)"
    LAYOUT = _KARPATHY_LAYOUT.format(ext="1.tif ... 2100.tif")


@registry.register_builder("rsicd_caption")
class RSICDCaptionBuilder(KarpathyCaptionBuilder):
    DATASET_CONFIG_DICT = {"default": "configs/datasets/rsicd_caption/defaults.yaml"}
    TITLE = "RSICD (Lu et al., 2017)"
    PUBLISHED_AT = "https://github.com/201528014227051/RSICD_optimal (dataset_rsicd.json and RSICD_images/)"
    LAYOUT = _KARPATHY_LAYOUT.format(ext="airport_1.jpg, ...")


@registry.register_builder("sydney_caption")
class SydneyCaptionBuilder(KarpathyCaptionBuilder):
    DATASET_CONFIG_DICT = {"default": "configs/datasets/sydney_caption/defaults.yaml"}
    TITLE = "Sydney-Captions (Qu et al., 2016)"
    PUBLISHED_AT = "https://github.com/201528014227051/RSICD_optimal (links to Sydney-Captions: dataset.json and 613 .tif images)"
    LAYOUT = _KARPATHY_LAYOUT.format(ext="1.tif ... 613.tif")


# ---------------------------------------------------------------------- COCO format
@registry.register_builder("coco_caption_format")
class COCOFormatCaptionBuilder(CaptionBuilder):
    """``build_info.splits``: ``{split: {annotation, images}}``; optional ``file_name_pattern``
    (e.g. ``"{id}.tif"``) for files whose images carry only ``id``."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_caption_format/defaults.yaml"}
    TITLE = "A COCO-format caption dataset"
    LAYOUT = '<split annotation>.json {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]} and an image folder per split'

    def read(self):
        splits = self.info("splits")
        if not splits:
            raise ConfigError(f"{self.config_key('splits')} is not set; give {{split: {{annotation: <json>, images: <folder>}}}}.")
        records, paths = {}, []
        pattern = self.info("file_name_pattern")
        for split in splits:
            if self.info("splits", split) is None:  # a split set to null in the project is left out
                continue
            ann = self.require_path("splits", split, "annotation", kind="file")
            images = self.require_path("splits", split, "images", kind="dir")
            records[str(split)] = readers.read_coco_captions(ann, images, pattern)
            paths.append(ann)
        return records, paths


# ---------------------------------------------------------------------- RSGPT
@registry.register_builder("rsicap_caption")
class RSICapCaptionBuilder(CaptionBuilder):
    """RSICap (instruction to caption): ``text_input`` is each record's published instruction.
    ``build_info``: ``annotation``, ``images``, ``split`` (default train)."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/rsicap_caption/defaults.yaml"}
    TITLE = "RSICap (RSGPT, Hu et al., 2023)"
    PUBLISHED_AT = "https://github.com/Lavender105/RSGPT (dataset/RSICap/captions.json; images from DOTA, linked in its README)"
    LAYOUT = '<root>/captions.json {"annotations": [{"image_id", "filename", "text_input", "text_output"}]} and <root>/images/<filename>'

    def read(self):
        ann = self.require_path("annotation", kind="file")
        images = self.require_path("images", kind="dir")
        return {str(self.info("split", default="train")): readers.read_rsicap(ann, images)}, [ann]


RSIEVAL_PUBLISHED = "https://github.com/Lavender105/RSGPT (dataset/RSIEval/annotations.json and images/)"
RSIEVAL_LAYOUT = '<root>/annotations.json {"annotations": [{"filename", "caption", "qa_pairs": [{"question", "answer", "type"}]}]} and <root>/images/<filename>'


@registry.register_builder("rsieval_caption")
class RSIEvalCaptionBuilder(CaptionBuilder):
    """RSIEval captions (evaluation only): one reference per image; split ``build_info.split`` (test)."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/rsieval_caption/defaults.yaml"}
    TITLE = "RSIEval (RSGPT, Hu et al., 2023)"
    PUBLISHED_AT = RSIEVAL_PUBLISHED
    LAYOUT = RSIEVAL_LAYOUT

    def read(self):
        ann = self.require_path("annotation", kind="file")
        images = self.require_path("images", kind="dir")
        captions, _ = readers.read_rsieval(ann, images)
        return {str(self.info("split", default="test")): captions}, [ann]


# ---------------------------------------------------------------------- VRSBench
VRSBENCH_PUBLISHED = "https://huggingface.co/datasets/xiaodan2/VRSBench (see https://github.com/lx709/VRSBench)"
VRSBENCH_LAYOUT = (
    "train: Annotations_train/ (one JSON per image: image, caption, objects, qa_pairs; or one JSON list) with "
    "Images_train/; test: VRSBench_EVAL_Cap.json / VRSBench_EVAL_vqa.json (records image_id, ground_truth, "
    "question, question_id, type, dataset) with Images_val/"
)


@registry.register_builder("vrsbench_caption")
class VRSBenchCaptionBuilder(CaptionBuilder):
    """``build_info.splits``: ``{split: {annotation, images}}``; ``train`` reads per-image
    training records (``caption``), other splits the evaluation records (``ground_truth``)."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/vrsbench_caption/defaults.yaml"}
    TITLE = "VRSBench (Li et al., 2024)"
    PUBLISHED_AT = VRSBENCH_PUBLISHED
    LAYOUT = VRSBENCH_LAYOUT

    def read(self):
        ext = str(self.info("image_ext", default=".png"))
        records, paths = {}, []
        for split in self.info("splits") or {}:
            split = str(split)
            if self.info("splits", split) is None:  # a split set to null in the project is left out
                continue
            ann = self.require_path("splits", split, "annotation", kind="any")
            images = self.require_path("splits", split, "images", kind="dir")
            paths.append(ann)
            if split == "train":
                raw = readers.read_vrsbench_train(ann, images, ext)
                recs = [{"image_id": r["image_id"], "image": r["image"], "captions": [readers._text(r["caption"], ann, n, "caption", "record")]}
                        for n, r in enumerate(raw) if "caption" in r]
            else:
                by_image = {}
                for r in readers.read_vrsbench_eval(ann, images, ext):
                    rec = by_image.setdefault(r["image_id"], {"image_id": r["image_id"], "image": r["image"], "captions": []})
                    rec["captions"].append(r["ground_truth"])
                recs = list(by_image.values())
            records[split] = recs
        if not records:
            raise ConfigError(f"{self.config_key('splits')} is not set; give {{split: {{annotation, images}}}}.")
        return records, paths


# ---------------------------------------------------------------------- LAVIS
@registry.register_builder("lavis_caption")
class LavisCaptionBuilder(CaptionBuilder):
    """Any caption dataset in LAVIS's layout (``build_info.annotations.<split>.storage``,
    ``images.storage``); LAVIS's ``coco_caption`` name is an alias of this builder."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/lavis_caption/defaults.yaml", "eval": "configs/datasets/lavis_caption/defaults.yaml"}
    TITLE = "A caption dataset in LAVIS's layout"
    LAYOUT = readers.LAVIS_CAPTION_LAYOUT

    def read(self):
        raise ConfigError(f"{self.config_key('annotations')} is not set; give {{train: {{storage: <file>}}, val: ..., test: ...}} (LAVIS layout).")
