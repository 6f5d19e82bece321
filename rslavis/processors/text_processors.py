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
