"""An exclusive lock on a run folder, so two runs with one ``run.job_id`` never share it.

The lock is the file ``<run folder>/.lock`` holding the owner's ``pid``, ``host`` and
start time. It is created complete in one step (written to a temporary file, then
hard-linked to its name, which fails if the name exists), so a reader never sees a
half-written lock. A second run fails with one line naming the holder; a lock left by a
process that no longer exists on this host (a run killed by SIGKILL) is taken over with
a warning. A lock from another host cannot be checked: the message says how to remove it.
"""

import json
import logging
import os
import socket
import time
from pathlib import Path

from rslavis.common.errors import RslavisError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class JobLock:
    """``acquire()`` / ``release()`` the lock of ``folder`` (see module docstring)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def _holder(self):
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.folder / f".lock.{me['pid']}.tmp"
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    pass
                holder = self._holder()
                if holder is None:  # released meanwhile
                    continue
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and host == me["host"] and (pid == me["pid"] or not _alive(pid)):
                    if pid != me["pid"]:
                        logger.warning("%s: taking over the lock of process %d on %s (started %s), which no longer runs.",
                                       self.path, pid, host, holder.get("started", "?"))
                    self.path.unlink(missing_ok=True)
                    continue
                if not holder:
                    raise RslavisError(f"{self.folder} is locked by {self.path}, which is unreadable; if no run uses this folder, delete the file.")
                raise RslavisError(
                    f"{self.folder} is in use by process {pid} on {host} (started {holder.get('started', '?')}): "
                    f"give this run another run.job_id, or wait for that run to end (if it is dead, delete {self.path})."
                )
            raise RslavisError(f"{self.path}: could not take the lock (another run keeps taking it); retry.")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self):
        if not self.held:
            return
        self.held = False
        holder = self._holder()
        if holder and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
