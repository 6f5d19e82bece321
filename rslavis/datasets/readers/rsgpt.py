"""RSGPT's files: RSICap (instruction and detailed caption per image) and RSIEval (caption and questions)."""

from pathlib import Path

from rslavis.datasets.readers.base import _field, _join, _text, _without_gc, annotation_list, check_unique_ids

RSICAP_LAYOUT = '{"annotations": [{"image_id", "filename", "text_input", "text_output"}]} (RSICap captions.json)'


@_without_gc
def read_rsicap(path, image_root):
    """RSICap to ``[record]``: the instruction ``text_input`` becomes the record's prompt."""
    anns = annotation_list(path, RSICAP_LAYOUT)
    records = []
    for n, a in enumerate(anns):
        filename = _field(a, "filename", path, RSICAP_LAYOUT, n)
        records.append(
            {
                "image_id": str(a.get("image_id", Path(filename).stem)),
                "image": _join(image_root, filename),
                "captions": [_text(_field(a, "text_output", path, RSICAP_LAYOUT, n), path, n, "text_output", "annotation")],
                "prompt": str(a.get("text_input") or ""),
                "filename": filename,
            }
        )
    return check_unique_ids(records, path)


RSIEVAL_LAYOUT = '{"annotations": [{"filename", "caption", "qa_pairs": [{"question", "answer", "type"}]}]} (RSIEval annotations.json)'


@_without_gc
def read_rsieval(path, image_root):
    """RSIEval to ``(caption records, question records)``; ids from the file name stem."""
    anns = annotation_list(path, RSIEVAL_LAYOUT)
    captions, questions = [], []
    for n, a in enumerate(anns):
        filename = _field(a, "filename", path, RSIEVAL_LAYOUT, n)
        image_id = Path(filename).stem
        image = _join(image_root, filename)
        if a.get("caption") is not None:
            captions.append({"image_id": image_id, "image": image, "captions": [_text(a["caption"], path, n, "caption", "annotation")], "filename": filename})
        for k, qa in enumerate(a.get("qa_pairs") or []):
            questions.append(
                {
                    "image_id": image_id,
                    "image": image,
                    "question_id": f"{image_id}_{k}",
                    "question": _text(_field(qa, "question", path, RSIEVAL_LAYOUT, n), path, f"{n}, question {k}", "question", "annotation"),
                    "answers": [_text(_field(qa, "answer", path, RSIEVAL_LAYOUT, n), path, f"{n}, question {k}", "answer", "annotation")],
                    "question_type": qa.get("type") or "",
                }
            )
    return check_unique_ids(captions, path), questions
