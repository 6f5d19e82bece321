"""What every ``python -m rslavis.<command>`` shares: logging and the one-line error."""

import sys

from rslavis.common.errors import RslavisError


def run_cli(fn, args, rank=0):
    """``fn(args)`` with logging set up; a :class:`RslavisError` prints one line and returns 2.

    ``args.debug`` re-raises instead, to show the traceback.
    """
    from rslavis.common.logger import setup_logging

    setup_logging(rank)
    try:
        return fn(args)
    except RslavisError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"rslavis: error: {exc}", file=sys.stderr)
        return 2
