"""LAVIS's processors under LAVIS's names, with LAVIS's semantics.

Image processors take a PIL image and return a normalised tensor with the CLIP/BLIP
statistics LAVIS uses (``mean``/``std`` override them):

* ``blip_image_train``: bicubic random resized crop (``min_scale``..``max_scale``), horizontal
  flip, then two random augmentations of magnitude 5 (LAVIS's ``RandomAugment(2, 5)``;
  here torchvision's ``RandAugment(2, 5)``, whose operation list also has colour,
  posterize and solarize); default size 384;
* ``blip2_image_train``: the same crop and flip, no augmentation; default size 364;
* ``blip_image_eval``: bicubic resize to ``image_size`` x ``image_size`` (no crop); default 384;
* ``clip_image_train`` / ``clip_image_eval``: random resized crop (scale 0.9..1) / resize of
  the short side and centre crop, bicubic; default 224.

Text processors:

* ``blip_caption``: lower case, ``.!"()*#:;~`` become spaces, spaces collapsed, cut to
  ``max_words`` (50), then ``prompt`` prepended (a training caption becomes ``prompt + caption``;
  the captioning task strips the prompt from generated text before scoring);
* ``blip_question``: lower case, those characters removed, cut to ``max_words`` (50).
"""

import re

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from rslavis.common.registry import registry
from rslavis.processors.base_processor import BaseProcessor
from rslavis.processors.image_processors import CLIP_MEAN, CLIP_STD

_PUNCT = r"([.!\"()*#:;~])"
BICUBIC = InterpolationMode.BICUBIC


class _LavisImage(BaseProcessor):
    DEFAULT_SIZE = 384

    def __init__(self, image_size=None, mean=None, std=None):
        self.image_size = int(image_size if image_size is not None else self.DEFAULT_SIZE)
        self.mean = tuple(mean) if mean is not None else CLIP_MEAN
        self.std = tuple(std) if std is not None else CLIP_STD

    def _finish(self, ops):
        self.transform = T.Compose([T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])

    def __call__(self, image):
        return self.transform(image)


@registry.register_processor("blip_image_train")
class BlipImageTrainProcessor(_LavisImage):
    def __init__(self, image_size=None, mean=None, std=None, min_scale=0.5, max_scale=1.0):
        super().__init__(image_size, mean, std)
        self._finish(
            [
                T.RandomResizedCrop(self.image_size, scale=(float(min_scale), float(max_scale)), interpolation=BICUBIC, antialias=True),
                T.RandomHorizontalFlip(),
                T.RandAugment(num_ops=2, magnitude=5),
            ]
        )


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(_LavisImage):
    DEFAULT_SIZE = 364

    def __init__(self, image_size=None, mean=None, std=None, min_scale=0.5, max_scale=1.0):
        super().__init__(image_size, mean, std)
        self._finish(
            [
                T.RandomResizedCrop(self.image_size, scale=(float(min_scale), float(max_scale)), interpolation=BICUBIC, antialias=True),
                T.RandomHorizontalFlip(),
            ]
        )


@registry.register_processor("blip_image_eval")
class BlipImageEvalProcessor(_LavisImage):
    def __init__(self, image_size=None, mean=None, std=None):
        super().__init__(image_size, mean, std)
        self._finish([T.Resize((self.image_size, self.image_size), interpolation=BICUBIC, antialias=True)])


@registry.register_processor("clip_image_train")
class ClipImageTrainProcessor(_LavisImage):
    DEFAULT_SIZE = 224

    def __init__(self, image_size=None, mean=None, std=None, min_scale=0.9, max_scale=1.0):
        super().__init__(image_size, mean, std)
        self._finish([T.RandomResizedCrop(self.image_size, scale=(float(min_scale), float(max_scale)), interpolation=BICUBIC, antialias=True)])


@registry.register_processor("clip_image_eval")
class ClipImageEvalProcessor(_LavisImage):
    DEFAULT_SIZE = 224

    def __init__(self, image_size=None, mean=None, std=None):
        super().__init__(image_size, mean, std)
        self._finish([T.Resize(self.image_size, interpolation=BICUBIC, antialias=True), T.CenterCrop(self.image_size)])


def _truncate(text, max_words):
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    def __init__(self, prompt="", max_words=50):
        self.prompt = str(prompt or "")
        self.max_words = int(max_words)

    def pre_caption(self, caption):
        text = re.sub(_PUNCT, " ", str(caption).lower())
        text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
        return _truncate(text, self.max_words)

    def __call__(self, caption):
        return self.prompt + self.pre_caption(caption)


@registry.register_processor("blip_question")
class BlipQuestionProcessor(BaseProcessor):
    def __init__(self, max_words=50):
        self.max_words = int(max_words)

    def __call__(self, question):
        text = re.sub(_PUNCT, "", str(question).lower()).rstrip(" ")
        return _truncate(text, self.max_words)
