"""Base class of registered processors."""


class BaseProcessor:
    """A callable transform built from a config mapping (``from_config``)."""

    @classmethod
    def from_config(cls, cfg=None):
        kwargs = {k: v for k, v in dict(cfg or {}).items() if k != "name"}
        return cls(**kwargs)

    def __call__(self, item):
        raise NotImplementedError
