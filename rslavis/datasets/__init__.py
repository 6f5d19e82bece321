"""Dataset builders (registered), torch datasets per annotation format, synthetic scenes.

Light on import (no torch): builders load when looked up through the registry.
Useful entry points: :func:`rslavis.datasets.image_io.skipped_images` (unreadable
images skipped so far in a dataset, for the epoch log), :mod:`.export` (COCO-format
ground truth), :mod:`.feature_cache` (frozen-encoder features), :mod:`.summary`
(``python -m rslavis.datasets``).
"""
