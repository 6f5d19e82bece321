"""Moved: autoregressive sampling lives in :mod:`rslavis.models.decoding` (with greedy and beam search).

Kept as a re-export so code written against the first version keeps importing.
"""

from rslavis.models.decoding import SampledTokens, sample_tokens  # noqa: F401
