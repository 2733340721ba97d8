"""OS file locks that die with their process: ``flock`` on POSIX, ``msvcrt.locking`` on Windows.

The primitives of the run lock (``checkpoint/runlock.py``) and of the tokenized cache's builder lock
(``data/cache_store.py``). Every call is non-blocking; a lock is dropped by ``os.close`` of its file
descriptor, and by the OS when the process dies however it dies.

On Windows the lock is on one byte far past any content (``WINDOWS_LOCK_OFFSET``): Windows locks are
mandatory, and a lock over the content would stop another process from reading it.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

WINDOWS_LOCK_OFFSET = 1 << 30
# errno of a lock that another process holds; any other OSError means "this file system has no locks"
CONTENDED = {
    getattr(errno, name) for name in ("EAGAIN", "EWOULDBLOCK", "EACCES", "EDEADLK", "EDEADLOCK") if hasattr(errno, name)
}


def try_lock(fd: int) -> bool | None:
    """Take ``fd``'s exclusive lock without waiting. True: taken (``os.close`` drops it); False: another
    process holds it; None: this file system has no locks."""
    try:
        lock(fd, shared=False)
    except OSError as err:
        return False if err.errno in CONTENDED else None
    return True


if sys.platform == "win32":
    import msvcrt

    def lock(fd: int, shared: bool) -> None:
        # msvcrt has no shared lock; a probe takes the byte exclusively for an instant
        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def unlock(fd: int) -> None:
        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    def same_file(fd: int, path: Path) -> bool:
        return True  # an open file cannot be deleted on Windows: a released lock file is never replaced under us

else:
    import fcntl

    def lock(fd: int, shared: bool) -> None:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    def same_file(fd: int, path: Path) -> bool:
        try:
            here, there = os.fstat(fd), os.stat(path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
