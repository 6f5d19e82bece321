"""Visual question answering datasets over question records.

A record is ``{"image_id", "image" (path), "question_id", "question", "answers": [str],
"question_type"}``; one item per question. Sample keys:

* train: ``image``, ``image_id``, ``question_id``, ``question`` (raw), ``text_input``
  (the question through the question processor, i.e. the instruction prompt),
  ``text_output`` (the first answer, whitespace-normalised), ``question_type``;
* eval: ``image``, ``image_id``, ``question_id``, ``question``, ``text_input``,
  ``answers`` (every accepted answer, as published), ``question_type``.

``answers()`` and ``question_types()`` give ``{question_id: ...}`` for scoring, so
results can be grouped by question type (VRSBench, RSVQA report per-type accuracy).
Unreadable images are skipped and counted as in the caption datasets.
"""

from rslavis.datasets.datasets.caption_datasets import ImageRecordDataset


def _clean(text):
    return " ".join(str(text).split())


class _VQABase(ImageRecordDataset):
    def __len__(self):
        return len(self.records)

    def _common(self, record):
        visual = self._visual(record)
        if visual is None:
            return None
        return {
            visual[0]: visual[1],
            "image_id": record["image_id"],
            "question_id": record["question_id"],
            "question": record["question"],
            "text_input": self.text_processor(record["question"]),
            "question_type": record.get("question_type") or "",
        }

    def answers(self):
        """``{question_id: [answers]}``."""
        return {r["question_id"]: list(r["answers"]) for r in self.records}

    def question_types(self):
        """``{question_id: question_type}``."""
        return {r["question_id"]: r.get("question_type") or "" for r in self.records}

    def all_captions(self):
        """Answers as target texts (what a tokenizer fitted on training targets should see)."""
        return [_clean(a) for r in self.records for a in r["answers"][:1]]


class VQATrainDataset(_VQABase):
    def __getitem__(self, idx):
        record = self.records[idx]
        sample = self._common(record)
        if sample is None:
            return None
        sample["text_output"] = _clean(record["answers"][0]) if record["answers"] else ""
        return sample


class VQAEvalDataset(_VQABase):
    def __getitem__(self, idx):
        record = self.records[idx]
        sample = self._common(record)
        if sample is None:
            return None
        sample["answers"] = list(record["answers"])
        return sample
