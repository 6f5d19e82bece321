"""Image processors for overhead imagery.

Training adds random resized crops, horizontal/vertical flips and 90-degree rotations:
an aerial scene has no canonical "up", so these are label-preserving. Evaluation
resizes and centre-crops deterministically.
"""

import random

import torch
from torchvision.transforms import v2 as T

from rslavis.common.registry import registry
from rslavis.processors.base_processor import BaseProcessor

# CLIP statistics: the default for CLIP/RemoteCLIP encoders.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Rot90:
    """Rotate by a random multiple of 90 degrees."""

    def __call__(self, img):
        k = random.randint(0, 3)
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


class _ImageProcessor(BaseProcessor):
    def __init__(self, image_size=224, mean=None, std=None):
        self.image_size = int(image_size)
        self.mean = tuple(mean) if mean is not None else CLIP_MEAN
        self.std = tuple(std) if std is not None else CLIP_STD
        self.normalize = T.Normalize(self.mean, self.std)

    def __call__(self, image):
        return self.transform(image)


@registry.register_processor("rs_image_train")
class RSImageTrainProcessor(_ImageProcessor):
    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.5, max_scale=1.0, hflip=True, vflip=True, rot90=True):
        super().__init__(image_size, mean, std)
        ops = [
            T.ToImage(),
            T.RandomResizedCrop(self.image_size, scale=(min_scale, max_scale), antialias=True),
        ]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        if vflip:
            ops.append(T.RandomVerticalFlip())
        ops.append(T.ToDtype(torch.float32, scale=True))
        if rot90:
            ops.append(_Rot90())
        ops.append(self.normalize)
        self.transform = T.Compose(ops)


@registry.register_processor("rs_image_eval")
class RSImageEvalProcessor(_ImageProcessor):
    def __init__(self, image_size=224, mean=None, std=None):
        super().__init__(image_size, mean, std)
        self.transform = T.Compose(
            [
                T.ToImage(),
                T.Resize(self.image_size, antialias=True),
                T.CenterCrop(self.image_size),
                T.ToDtype(torch.float32, scale=True),
                self.normalize,
            ]
        )
