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
    except OSError as exc:  # a read-only folder, a full disk, a vanished file: one line, not a traceback
        if getattr(args, "debug", False):
            raise
        print(f"rslavis: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def os_error_line(exc):
    """One line naming the file of an OSError and what to do."""
    import errno

    name = exc.filename if exc.filename is not None else "?"
    if exc.filename2 is not None:
        name = f"{name} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, PermissionError):
        fix = "choose a location you may write to (run.output_dir, --out) or fix its permissions"
    elif isinstance(exc, FileNotFoundError):
        fix = "check the path"
    elif exc.errno == errno.ENOSPC:
        fix = "free disk space or write elsewhere (run.output_dir)"
    elif exc.errno == errno.EROFS:
        fix = "write to a writable file system (run.output_dir, --out)"
    else:
        fix = "--debug shows the traceback"
    return f"{reason}: {name} ({fix})."
