"""RSVQA (LR and HR): a split's images, questions and answers files joined by id."""

from rslavis.common.errors import DataError
from rslavis.datasets.readers.base import _field, _join, _without_gc, load_json

RSVQA_LAYOUT = (
    '<prefix>_<split>_images.json {"images": [{"id", "questions_ids", "active"}]}, '
    '<prefix>_<split>_questions.json {"questions": [{"id", "img_id", "type", "question", "answers_ids", "active"}]}, '
    '<prefix>_<split>_answers.json {"answers": [{"id", "question_id", "answer", "active"}]}; images <images>/<id>.tif'
)


@_without_gc
def read_rsvqa(images_json, questions_json, answers_json, image_root, image_ext=".tif"):
    """RSVQA (LR or HR) split to question records, joining the three files by id; inactive entries dropped."""
    images = load_json(images_json)
    questions = load_json(questions_json)
    answers = load_json(answers_json)
    for data, key, path in ((images, "images", images_json), (questions, "questions", questions_json), (answers, "answers", answers_json)):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{path}: no {key!r} list; expected {RSVQA_LAYOUT}.")
    active_images = {im["id"] for im in images["images"] if im.get("active", True)}
    answer_text = {a["id"]: str(a["answer"]) for a in answers["answers"] if a.get("active", True)}
    records = []
    for n, q in enumerate(questions["questions"]):
        if not q.get("active", True):
            continue
        img_id = _field(q, "img_id", questions_json, RSVQA_LAYOUT, n)
        if img_id not in active_images:
            continue
        ans = [answer_text[a] for a in q.get("answers_ids", ()) if a in answer_text]
        if not ans:
            continue
        records.append(
            {
                "image_id": img_id,
                "image": _join(image_root, f"{img_id}{image_ext}"),
                "question_id": _field(q, "id", questions_json, RSVQA_LAYOUT, n),
                "question": str(_field(q, "question", questions_json, RSVQA_LAYOUT, n)).strip(),
                "answers": ans,
                "question_type": q.get("type") or "",
            }
        )
    return records
