"""One run per run folder: ``MODEL_OUTPUT/run.lock``, held by the run's main process while it trains.

- The lock is an OS file lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) on
  ``run.lock``, held from setup until the process ends (after the final model is written). The OS
  drops it when the process dies however it dies (``kill -9``, the OOM killer, a power cut of a node
  whose file server notices it), so a lock never has to be cleared by hand after a crash.
- The file records who holds it: pid, host, start time and command line. A clean end removes the file.
- A second trainer on a folder whose lock is held is refused (``RunLocked``, exit 2) with one line
  naming the holder. A file whose OS lock is free is a killed run's: it is taken over with a warning
  naming that process.
- Only while the lock is held are leftover staging / deletion folders removed
  (``remove_leftovers``): holding it proves that no other live run is saving into the folder.
- Only the main process (rank 0) of a run takes it; the doctor's ``--fix`` only looks at it
  (``live_holder``) and refuses to repair a run that is training.
- A file system without working locks (some FUSE and network mounts; ``flock`` fails with ENOLCK,
  ENOSYS, EOPNOTSUPP...): the run is not refused, it warns once that nothing stops a second trainer
  here, and keeps leftover staging folders (it cannot tell a dead run's from a live run's save).

On Windows the lock is on one byte far past the record (``oslock.WINDOWS_LOCK_OFFSET``): Windows locks are
mandatory, and a lock over the record would stop a refused trainer from reading who holds it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.errors import SaveError, UserError

# the OS primitives (shared with the tokenized cache's builder lock)
from chef_genius.oslock import CONTENDED as _CONTENDED, lock as _lock, same_file as _same_file, unlock as _unlock

log = logging.getLogger(__name__)

GRACE_SECONDS = 0.5  # a held lock is tried again this long (a doctor's probe holds it for microseconds)
_RETRY_SECONDS = 0.1
_MAX_RECORD = 64 << 10
_O_BINARY = getattr(os, "O_BINARY", 0)
_HELD: set[RunLock] = set()


class RunLocked(UserError):
    """The run folder is in use by a live run (exit 2)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run lock, as its file records it."""

    pid: int | None = None
    host: str | None = None
    started: str | None = None
    command: str | None = None

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The record in ``data``; None for an empty file (released, or killed before writing it)."""
        if not data.strip():
            return None
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return cls()  # a record torn by a kill mid-write: someone, unknown
        if not isinstance(value, dict):
            return cls()
        pid = value.get("pid")
        return cls(
            pid if isinstance(pid, int) else None,
            _text(value.get("host")),
            _text(value.get("started")),
            _text(value.get("command")),
        )

    def describe(self) -> str:
        if self.pid is None:
            return "a process that left no readable record"
        text = f"process {self.pid} on {self.host or 'an unknown host'}"
        if self.started:
            text += f", started {self.started}"
        if self.command:
            command = self.command if len(self.command) <= 160 else self.command[:157] + "..."
            text += f" ({command})"
        return text


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


class RunLock:
    """``RunLock(output_dir).acquire()`` takes the run folder for this process or raises ``RunLocked``."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / ckpt.RUN_LOCK
        self.held = False  # True while this process holds the OS lock
        self._finalizer: weakref.finalize | None = None

    def acquire(self, grace: float = GRACE_SECONDS) -> RunLock:
        if self.held:
            return self
        deadline = time.monotonic() + grace
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o644)
            except OSError as err:  # e.g. a run.lock of another user in a shared folder
                raise UserError(
                    f"cannot open {self.path} ({err.strerror or type(err).__name__}); pick another --model-output"
                ) from None
            try:
                _lock(fd, shared=False)
            except OSError as err:
                os.close(fd)
                if err.errno not in _CONTENDED:
                    self._without_lock(err)
                    return self
                if time.monotonic() < deadline:
                    time.sleep(_RETRY_SECONDS)
                    continue
                holder = read_holder(self.output_dir)
                raise RunLocked(
                    f"{self.output_dir} is in use by another training run: "
                    f"{holder.describe() if holder else 'a process that has not written its record yet'} "
                    f"holds {self.path}; wait for that run to end or stop it, or pick another --model-output "
                    "(a lock left by a killed run is taken over automatically)"
                ) from None
            if not _same_file(fd, self.path):  # its holder released and removed it between our open and lock
                os.close(fd)
                continue
            break
        try:
            previous = Holder.parse(_read(fd))
            _write(fd, _record())
        except OSError as err:  # a full disk, a quota: the lock would hold a folder no save can use
            os.close(fd)
            raise SaveError(
                f"cannot write {self.path} ({err.strerror or type(err).__name__}); free some space "
                "or pick another --model-output (nothing else was written)"
            ) from None
        self.held = True
        # Held for the life of the process unless released: kept alive here (dropping the object does not
        # release it), released at the latest when the process exits, after its non-daemon threads (such
        # as a background save) have finished.
        _HELD.add(self)
        self._finalizer = weakref.finalize(self, _release, fd, str(self.path), os.getpid())
        if previous is not None:
            log.warning(
                "took over %s from %s, which ended without releasing it (killed or crashed)",
                self.path,
                previous.describe(),
            )
        return self

    def _without_lock(self, err: OSError) -> None:
        log.warning(
            "%s: this file system does not support file locks (%s); training goes on, but nothing "
            "stops a second trainer from using %s at the same time, and leftover staging folders are "
            "kept",
            self.path,
            err.strerror or type(err).__name__,
            self.output_dir,
        )
        try:
            if self.path.stat().st_size == 0:
                self.path.unlink()  # the empty file we just created
        except OSError:
            pass

    def remove_leftovers(self) -> list[Path]:
        """Remove the staging / deletion folders of runs that died mid-save (only while the lock is held)."""
        leftovers = ckpt.staging_folders(self.output_dir)
        if not self.held:
            if leftovers:
                log.warning(
                    "kept %s: without a working lock a live run's save in progress cannot be told from "
                    "a dead run's leftover; remove them by hand when no run uses %s",
                    ", ".join(p.name for p in leftovers),
                    self.output_dir,
                )
            return []
        removed = ckpt.remove_staging(self.output_dir)
        for path in removed:
            log.warning("removed %s, left by a save or deletion that did not finish", path.name)
        return removed

    def release(self) -> None:
        """Give the folder back now (idempotent; otherwise it happens when the process exits)."""
        if self._finalizer is not None:
            self._finalizer()
        self.held = False
        _HELD.discard(self)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(output_dir: str | Path) -> Holder | None:
    """The record in ``output_dir``'s lock file, whether or not its process still lives."""
    try:
        with open(Path(output_dir) / ckpt.RUN_LOCK, "rb") as handle:
            return Holder.parse(handle.read(_MAX_RECORD))
    except OSError:
        return None


def live_holder(output_dir: str | Path) -> Holder | None:
    """The live process that holds ``output_dir``'s run lock now; None when no run holds it (or the
    file system has no locks). Only looks: the lock is tried and dropped at once, no file is created."""
    try:
        fd = os.open(Path(output_dir) / ckpt.RUN_LOCK, os.O_RDONLY | _O_BINARY)
    except OSError:
        return None
    try:
        try:
            _lock(fd, shared=True)
        except OSError as err:
            if err.errno in _CONTENDED:
                return Holder.parse(_read(fd)) or Holder()
            return None
        _unlock(fd)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, size = [], 0
    while size < _MAX_RECORD and (chunk := os.read(fd, _MAX_RECORD - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _record() -> bytes:
    now = time.time()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_unix": now,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)),
            "command": command,
        }
    ).encode("utf-8")


def _release(fd: int, path: str, owner: int) -> None:
    """Clear the record and remove the file, then drop the lock (never in a forked child)."""
    if os.getpid() != owner:
        return
    try:
        os.ftruncate(fd, 0)  # a process that opened the file meanwhile finds no record: no false "killed"
    except OSError:
        pass
    if sys.platform == "win32":
        try:
            _unlock(fd)
        except OSError:
            pass
        os.close(fd)
        try:
            os.unlink(path)  # fails while another process has it open: that one takes the empty file
        except OSError:
            pass
        return
    try:
        if _same_file(fd, Path(path)):
            os.unlink(path)  # while still locked: a waiting process sees the file gone and opens a new one
    except OSError:
        pass
    os.close(fd)  # drops the flock
