"""Text processors."""

import re

from rslavis.common.registry import registry
from rslavis.processors.base_processor import BaseProcessor


@registry.register_processor("rs_caption")
class CaptionProcessor(BaseProcessor):
    """Lower-case, strip, collapse white space, cut to ``max_words``; prepend ``prompt``."""

    def __init__(self, prompt="", max_words=50, lowercase=True):
        self.prompt = prompt
        self.max_words = int(max_words)
        self.lowercase = lowercase

    def __call__(self, caption):
        text = str(caption)
        if self.lowercase:
            text = text.lower()
        text = re.sub(r"\s+", " ", text).strip()
        words = text.split(" ")
        if len(words) > self.max_words:
            text = " ".join(words[: self.max_words])
        return self.prompt + text


# Instruction templates for questions; ``{question}`` is the normalised question.
QUESTION_TEMPLATES = {
    "plain": "{question}",
    "qa": "Question: {question} Answer:",
    "short_answer": "Question: {question} Short answer:",
    "single_word": "{question} Answer the question using a single word or phrase.",
    "remote_sensing": "This is a remote sensing image. {question} Answer briefly.",
}


@registry.register_processor("rs_question")
class QuestionProcessor(BaseProcessor):
    """Normalise a question (strip, collapse spaces, optional lower case, ``max_words``) and
    wrap it in an instruction template: ``template`` names one of ``QUESTION_TEMPLATES``
    (plain, qa, short_answer, single_word, remote_sensing) or ``prompt`` gives a custom
    string with a ``{question}`` placeholder."""

    def __init__(self, template="qa", prompt=None, max_words=50, lowercase=False):
        from rslavis.common.errors import ConfigError

        if prompt is None:
            if template not in QUESTION_TEMPLATES:
                raise ConfigError(
                    f"rs_question: template {template!r} is unknown; valid: {', '.join(QUESTION_TEMPLATES)} "
                    "(or set 'prompt' to a string containing {question})."
                )
            prompt = QUESTION_TEMPLATES[template]
        if "{question}" not in prompt:
            raise ConfigError(f"rs_question: prompt {prompt!r} must contain the placeholder {{question}}.")
        self.prompt = prompt
        self.max_words = int(max_words)
        self.lowercase = bool(lowercase)

    def normalise(self, question):
        text = " ".join(str(question).split())
        if self.lowercase:
            text = text.lower()
        words = text.split(" ")
        if len(words) > self.max_words:
            text = " ".join(words[: self.max_words])
        return text

    def __call__(self, question):
        return self.prompt.replace("{question}", self.normalise(question))
