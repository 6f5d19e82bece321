"""rslavis: remote-sensing vision-language research in the style of LAVIS.

``import rslavis`` is light: it loads the registry and nothing torch-heavy. Built-in
models, datasets, tasks and rewards are imported when first looked up by name.
"""

from rslavis.common.errors import ConfigError, DataError, RegistryKeyError, RslavisError
from rslavis.common.registry import registry

__version__ = "0.1.0"

__all__ = ["registry", "RslavisError", "ConfigError", "DataError", "RegistryKeyError", "__version__"]
