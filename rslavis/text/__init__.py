"""Caption parsing into objects and counts (``{object: count or None}``).

Parsers are registered (``hybrid``, the default; ``rules``, ``spacy``, ``factual``) and
built by :func:`build_parser`; the synonym table is :mod:`rslavis.text.synonyms`; count
dictionaries are fused by :mod:`rslavis.text.count_dict`. Nothing heavy is imported
here: spaCy loads when a ``spacy`` or ``hybrid`` parser is built.
"""

import json
import threading

_PARSERS = {}
_LOCK = threading.Lock()


def default_parser_name():
    """``hybrid``: the ``rules`` parser, with spaCy on the captions whose unsure tags change
    the objects (same objects and counts as spaCy on 99% of UCM, RSICD and Sydney captions,
    ``bench/parser_agreement.py``; speed: ``bench/reward_speed.py``). Also when spaCy or its
    English pipeline is missing: the hybrid then parses every caption by the rules, with one
    warning of its own, so the default keeps one name, one set of options and one cache key."""
    return "hybrid"


def build_parser(cfg=None):
    """A caption parser from a name, a mapping ``{"name": ..., **options}`` or None (default).

    Instances are shared per configuration, so rewards and metrics built from the same
    config reuse one spaCy pipeline and one parse cache.
    """
    from rslavis.common.errors import ConfigError
    from rslavis.common.registry import registry
    from rslavis.text.base_parser import BaseCaptionParser

    if isinstance(cfg, BaseCaptionParser):
        return cfg
    if cfg is None or isinstance(cfg, str):
        cfg = {"name": cfg} if cfg else {}
    try:
        cfg = dict(cfg)
    except (TypeError, ValueError):
        raise ConfigError(f"parser must be a name or a mapping with 'name', got {cfg!r:.100}.") from None
    name = cfg.pop("name", None) or default_parser_name()
    key = json.dumps([name, cfg], sort_keys=True, default=str)
    with _LOCK:
        if key not in _PARSERS:
            _PARSERS[key] = registry.get_parser_class(name).from_config(cfg)
        return _PARSERS[key]


__all__ = ["build_parser", "default_parser_name"]
