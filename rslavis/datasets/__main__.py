"""``python -m rslavis.datasets --cfg-path X``: see :mod:`rslavis.datasets.summary`."""

import sys

from rslavis.datasets.summary import main

if __name__ == "__main__":
    sys.exit(main())
