"""One error family for everything a user can get wrong.

Each message names the file, key or value at fault and what would be valid, so that
``python -m rslavis.train`` can print it on one line and exit 2.
"""


class RslavisError(Exception):
    """Base class of every error raised for bad user input."""


class ConfigError(RslavisError, ValueError):
    """A config file, key or value is wrong."""


class RegistryKeyError(RslavisError, KeyError):
    """An unknown registry name. A ``KeyError`` so ``except KeyError`` keeps working."""

    def __str__(self):  # KeyError.__str__ would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(RslavisError, ValueError):
    """A dataset file, image or annotation is missing or malformed."""
