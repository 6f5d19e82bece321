"""VQA dataset builders: RSIEval, VRSBench, RSVQA low and high resolution.

Samples (see :mod:`rslavis.datasets.datasets.vqa_datasets`): train ``image, image_id,
question_id, question, text_input, text_output, question_type``; eval ``image, image_id,
question_id, question, text_input, answers, question_type``. ``text_input`` is the
question through the ``text_processor`` (``rs_question``, an instruction template).
"""

from pathlib import Path

from rslavis.common.errors import ConfigError, DataError
from rslavis.common.registry import registry
from rslavis.datasets import readers
from rslavis.datasets.builders.base_builder import BaseDatasetBuilder
from rslavis.datasets.builders.caption_builders import RSIEVAL_LAYOUT, RSIEVAL_PUBLISHED, VRSBENCH_LAYOUT, VRSBENCH_PUBLISHED
from rslavis.datasets.datasets.vqa_datasets import VQAEvalDataset, VQATrainDataset


class VQABuilder(BaseDatasetBuilder):
    """With LAVIS's ``build_info.annotations`` every VQA builder reads one LAVIS VQA file per
    split (``{"question_id", "question", "answer", "image"}``), images under ``images.storage``."""

    train_dataset_cls = VQATrainDataset
    eval_dataset_cls = VQAEvalDataset
    LAVIS_LAYOUT = True

    def read(self):
        """``{split: question records}``."""
        raise NotImplementedError

    def read_lavis(self):
        files = self.annotation_files()
        images = self.require_path("images", kind="dir")
        for split in files:
            if self.info("annotations", split, "coco_gt"):
                raise ConfigError(f"{self.config_key('annotations', split, 'coco_gt')}: COCO caption ground truth is for caption datasets; VQA answers come from 'answer'.")
        return {split: readers.read_vqa_annotations(path, images) for split, path in files.items()}

    def read_records(self):
        return self.read_lavis() if self.info("annotations") is not None else self.read()

    def build(self):
        return {split: self.make_dataset(split, recs, self.train_dataset_cls, self.eval_dataset_cls) for split, recs in self.read_records().items()}


@registry.register_builder("rsieval_vqa")
class RSIEvalVQABuilder(VQABuilder):
    """RSIEval question-answer pairs (evaluation only), question ids ``<image stem>_<k>``."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/rsieval_vqa/defaults.yaml"}
    TITLE = "RSIEval (RSGPT, Hu et al., 2023)"
    PUBLISHED_AT = RSIEVAL_PUBLISHED
    LAYOUT = RSIEVAL_LAYOUT

    def read(self):
        ann = self.require_path("annotation", kind="file")
        images = self.require_path("images", kind="dir")
        _, questions = readers.read_rsieval(ann, images)
        return {str(self.info("split", default="test")): questions}


@registry.register_builder("vrsbench_vqa")
class VRSBenchVQABuilder(VQABuilder):
    """``build_info.splits``: ``train`` from per-image ``qa_pairs`` (ids ``<image stem>_<k>``),
    other splits from the evaluation records (``question_id``, ``ground_truth``, ``type``)."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/vrsbench_vqa/defaults.yaml"}
    TITLE = "VRSBench (Li et al., 2024)"
    PUBLISHED_AT = VRSBENCH_PUBLISHED
    LAYOUT = VRSBENCH_LAYOUT

    def read(self):
        ext = str(self.info("image_ext", default=".png"))
        out = {}
        for split in self.info("splits") or {}:
            split = str(split)
            if self.info("splits", split) is None:  # a split set to null in the project is left out
                continue
            ann = self.require_path("splits", split, "annotation", kind="any")
            images = self.require_path("splits", split, "images", kind="dir")
            recs = []
            if split == "train":
                for r in readers.read_vrsbench_train(ann, images, ext):
                    for k, qa in enumerate(r.get("qa_pairs") or []):
                        recs.append(
                            {
                                "image_id": r["image_id"],
                                "image": r["image"],
                                "question_id": f"{r['image_id']}_{k}",
                                "question": str(qa.get("question", "")).strip(),
                                "answers": [str(qa.get("answer", "")).strip()],
                                "question_type": qa.get("type") or "",
                            }
                        )
            else:
                for r in readers.read_vrsbench_eval(ann, images, ext):
                    recs.append(
                        {
                            "image_id": r["image_id"],
                            "image": r["image"],
                            "question_id": r["question_id"],
                            "question": r["question"].strip(),
                            "answers": [r["ground_truth"]],
                            "question_type": r["type"],
                        }
                    )
            out[split] = recs
        if not out:
            raise ConfigError(f"{self.config_key('splits')} is not set; give {{split: {{annotation, images}}}}.")
        return out


class RSVQABuilder(VQABuilder):
    """``build_info``: ``annotation_dir`` (the three JSON files per split), ``prefix``,
    ``splits`` (list), ``images`` (folder of ``<id><image_ext>``)."""

    TITLE = "RSVQA (Lobry et al., 2020)"
    PUBLISHED_AT = "https://rsvqa.sylvainlobry.com (Zenodo downloads)"

    def read(self):
        folder = self.require_path("annotation_dir", kind="dir")
        images = self.require_path("images", kind="dir")
        prefix = str(self.info("prefix"))
        ext = str(self.info("image_ext", default=".tif"))
        out = {}
        for split in self.info("splits") or ():
            split = str(split)
            files = {}
            for kind in ("images", "questions", "answers"):
                path = f"{folder}/{prefix}_{split}_{kind}.json"
                files[kind] = path
                if not Path(path).is_file():
                    key = self.config_key("annotation_dir")
                    raise DataError(
                        f"{key}: file not found: {path}. Expected layout: {self.LAYOUT}. {self.TITLE} is published at "
                        f"{self.PUBLISHED_AT}. Download it there or set {key} (and prefix, splits) in the project YAML."
                    )
            out[split] = readers.read_rsvqa(files["images"], files["questions"], files["answers"], images, ext)
        if not out:
            raise ConfigError(f"{self.config_key('splits')} is empty; list the splits to build, e.g. [train, val, test].")
        return out


@registry.register_builder("rsvqa_lr")
class RSVQALRBuilder(RSVQABuilder):
    DATASET_CONFIG_DICT = {"default": "configs/datasets/rsvqa_lr/defaults.yaml"}
    TITLE = "RSVQA-LR (Lobry et al., 2020)"
    LAYOUT = "<annotation_dir>/LR_split_<split>_{images,questions,answers}.json and <images>/<id>.tif (Images_LR/)"


@registry.register_builder("rsvqa_hr")
class RSVQAHRBuilder(RSVQABuilder):
    DATASET_CONFIG_DICT = {"default": "configs/datasets/rsvqa_hr/defaults.yaml"}
    TITLE = "RSVQA-HR (Lobry et al., 2020)"
    LAYOUT = "<annotation_dir>/USGS_split_<split>_{images,questions,answers}.json and <images>/<id>.tif (Data/)"


@registry.register_builder("lavis_vqa")
class LavisVQABuilder(VQABuilder):
    """Any VQA dataset in LAVIS's layout; LAVIS's ``coco_vqa`` name is an alias of this builder."""

    DATASET_CONFIG_DICT = {"default": "configs/datasets/lavis_vqa/defaults.yaml", "eval": "configs/datasets/lavis_vqa/defaults.yaml"}
    TITLE = "A VQA dataset in LAVIS's layout"
    LAYOUT = readers.LAVIS_VQA_LAYOUT

    def read(self):
        raise ConfigError(f"{self.config_key('annotations')} is not set; give {{train: {{storage: <file>}}, val: ..., test: ...}} (LAVIS layout).")
