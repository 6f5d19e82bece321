"""Shared plumbing of the object rewards (``sde``, ``count``): parsing and count dictionaries."""

from itertools import repeat

from rslavis.common.errors import DataError
from rslavis.text.count_dict import fuse_counts


class ObjectRewardMixin:
    """Parser from the ``parser`` option; reference count dictionaries cached per reference tuple."""

    def _init_objects(self, parser=None, cache_size=100000):
        from rslavis.text import build_parser

        self.parser = build_parser(parser)
        self.table = self.parser.table
        self._ref_cache = {}
        self._ref_cache_size = int(cache_size)

    def reference_counts(self, references, count_dicts=None):
        """One count dict per sample: ``count_dicts[i]`` when given, else fused from the references."""
        if count_dicts is not None:
            if len(count_dicts) != len(references):
                raise DataError(
                    f"{len(count_dicts)} count_dicts for {len(references)} samples; pass one per sample."
                )
            return [self._canonical_dict(c) for c in count_dicts]
        if not isinstance(references, (list, tuple)):
            references = list(references)
        if any(map(isinstance, references, repeat(str))):
            keys = [(r,) if isinstance(r, str) else tuple(r) for r in references]
        else:  # lists of references (the usual case): C loops
            keys = list(map(tuple, references))
        cache = self._ref_cache
        todo = [k for k in keys if k not in cache]  # usually none (then no de-duplicating pass)
        if todo:
            todo = list(dict.fromkeys(todo))
            if len(cache) + len(todo) > self._ref_cache_size:
                cache.clear()
                todo = list(dict.fromkeys(keys))  # the cached ones of this call are gone too
            parses = iter(self.parser.parse_batch([r for k in todo for r in k]))
            for k in todo:
                cache[k] = fuse_counts([next(parses) for _ in k])
        return list(map(cache.__getitem__, keys))

    def _canonical_dict(self, d):
        out = {}
        for obj, c in (d or {}).items():
            name = self.table.canonical(str(obj))
            if name is not None:
                out[name] = c if name not in out else (out[name] if c is None else c)
        return out

    @property
    def _plain_match(self):
        """Whether :meth:`match` is this class's own (the rewards then inline it)."""
        return type(self).match is ObjectRewardMixin.match

    def match(self, gt_name, generated_objects):
        """The generated object that names ``gt_name`` (synonyms, typos, compound heads), or None."""
        if gt_name in generated_objects:
            return gt_name
        return self.table.first_same(gt_name, generated_objects)
