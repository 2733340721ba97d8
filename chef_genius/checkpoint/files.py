"""Durable file operations of the checkpoint code: fsync, atomic replace, retries, sha256.

Every write that must survive a crash goes through here: the bytes are written to a temporary name
unique to the process, fsynced, then moved over the final name in one step, and the folder fsynced.
The files of a checkpoint are written through ``HashingFile`` instead: their sha256 is computed
from the bytes on their way to the file (never read back), and they are fsynced together at the
end of the save (``fsync_files``), inside a staging folder that no reader looks at.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable, Iterable

import torch

from chef_genius.checkpoint.faults import fault_point
from chef_genius.checkpoint.layout import process_tag
from chef_genius.hashing import sha256_file  # noqa: F401  (the manifest's readers import it from here)

_OVERLAP_BYTES = 256 << 10  # writes this large are hashed in another thread while they are written
_WRITEBACK_BYTES = 64 << 20  # after this many new bytes a file's data is flushed to disk in the background
_FSYNC_THREADS = max(2, min(8, os.cpu_count() or 1))


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_files(paths: Iterable[Path]) -> None:
    """fsync every file, several at a time (the file system can commit them together)."""
    paths = list(paths)
    if len(paths) <= 1:
        for path in paths:
            fsync_file(path)
        return
    with ThreadPoolExecutor(max_workers=min(_FSYNC_THREADS, len(paths))) as pool:
        for job in [pool.submit(fsync_file, path) for path in paths]:
            job.result()


class HashingFile:
    """A file opened for writing whose sha256 is computed from the bytes as they are written.

    A large write is hashed in a second thread while this one writes it (hashlib and file writes
    release the GIL), so hashing adds little to the time of the write. Every ``_WRITEBACK_BYTES``
    the data written so far starts going to disk in a third thread (``fdatasync``), so the disk
    works while the rest is hashed and written, and the fsync at the end of the save only waits
    for the tail. Not fsynced on close: the caller fsyncs the files of a save together, before it
    seals them. For ``torch.save``, the safetensors writer, or plain bytes."""

    def __init__(self, path: str | Path):
        self.name = str(path)
        self._handle: BinaryIO = open(path, "wb")
        self._sha256 = hashlib.sha256()
        self._hasher: ThreadPoolExecutor | None = None
        self._writeback: Future | None = None
        self._unflushed = 0
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")  # the caller's buffer is not used after this returns
        if view.nbytes >= _OVERLAP_BYTES:
            hashed = self._pool().submit(self._sha256.update, view)
            try:
                self._handle.write(view)
            finally:
                hashed.result()
        else:
            self._sha256.update(view)
            self._handle.write(view)
        self.size += view.nbytes
        self._unflushed += view.nbytes
        if self._unflushed >= _WRITEBACK_BYTES and (self._writeback is None or self._writeback.done()):
            self._start_writeback()
        return view.nbytes

    def _start_writeback(self) -> None:
        if self._writeback is not None:
            self._writeback.result()  # done: raises what it raised
        self._handle.flush()
        self._unflushed = 0
        self._writeback = self._pool().submit(_datasync, self._handle.fileno())

    def _pool(self) -> ThreadPoolExecutor:
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chef-genius-save")
        return self._hasher

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    def close(self) -> None:
        try:
            if self._writeback is not None:
                self._writeback.result()
        finally:
            if self._hasher is not None:
                self._hasher.shutdown()
            self._handle.close()

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)  # the data, not the times: what a reader needs


def write_hashed(path: str | Path, write: Callable[[HashingFile], object]) -> str:
    """``write(stream)`` into a new file at ``path``; returns its sha256, computed while writing."""
    with HashingFile(path) as stream:
        write(stream)
        stream.flush()
        return stream.hexdigest()


def write_bytes_hashed(path: str | Path, data: bytes) -> str:
    return write_hashed(path, lambda stream: stream.write(data))


def torch_save_hashed(path: str | Path, value) -> str:
    """``torch.save(value)`` into a new file at ``path``; returns its sha256, computed while writing.

    Without the zip format's CRC-32 of each record: the manifest's sha256 already covers every byte,
    and the CRC is a second pass over them, as costly as the write into the page cache. ``torch.load``
    does not read it (a zip tool would call it wrong). The switch is torch's process-wide save config,
    held for this call only."""
    from torch.utils.serialization import config

    # config's attributes are installed at import (torch's install_config_module): no stub knows them.
    # torch.save takes any object with write() / flush(), which a HashingFile is.
    with config.patch({"save.compute_crc32": False}):  # type: ignore[attr-defined]
        return write_hashed(path, lambda stream: torch.save(value, stream))  # type: ignore[arg-type]


def fsync_dir(path: str | Path) -> None:
    if sys.platform == "win32":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def retry_os(action: Callable[[], None], attempts: int = 8, first_delay: float = 0.05) -> None:
    """Run a rename / delete, retrying on Windows sharing violations (antivirus, indexers)."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            action()
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{process_tag()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point(f"{path.name} temp written")
        retry_os(lambda: os.replace(tmp, path))
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


def atomic_torch_save(path: str | Path, value) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{process_tag()}")
    try:
        torch.save(value, tmp)
        fsync_file(tmp)
        retry_os(lambda: os.replace(tmp, path))
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
