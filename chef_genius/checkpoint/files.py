"""Durable file operations of the checkpoint code: fsync, atomic replace, retries, sha256.

Every write that must survive a crash goes through here: the bytes are written to a temporary name
unique to the process, fsynced, then moved over the final name in one step, and the folder fsynced.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from chef_genius.checkpoint.faults import fault_point
from chef_genius.checkpoint.format import process_tag

_HASH_CHUNK = 8 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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
