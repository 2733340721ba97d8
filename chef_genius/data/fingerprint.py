"""What "the same data file" means: the one place that fingerprints a data file.

Two fingerprints, for two questions:

- ``data_identity``: is this the file a checkpoint trained on? Saved in the checkpoint's settings
  (``data_identity``, ``eval_data_identity``) and compared on resume, so it must survive a copy to
  another machine: the file's name, size and a sha256 of its first and last MiB, never its path or
  time. Checkpoints keep the value they were written with, so a change of what it hashes must still
  compare equal for an unchanged file (or tell an old identity by its keys: ``sha256_head_tail``).
- ``file_fingerprint``: may this machine reuse what it derived from the file (the tokenized cache,
  the streaming row count)? Local, so path and modification time count too, plus a sha256 of
  about 3 MiB sampled over the whole file.

Both read their bytes through ``_digest``: a change to "every byte" is a change of the spans.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_MIB = 1 << 20
_BLOCK, _SAMPLES = 64 << 10, 16


def data_identity(path: str | Path | None) -> dict | None:
    """Name, size and a hash of the first and last MiB: survives a copy to another machine."""
    if path is None:
        return None
    path = Path(path)
    size = path.stat().st_size
    return {"name": path.name, "size": size, "sha256_head_tail": _digest(path, _head_tail(size)).hexdigest()}


def file_fingerprint(path: str | Path) -> dict:
    """Path, size, modification time and a sampled hash: the key of what this machine derived from the file."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sampled_sha256": sampled_digest(path, stat.st_size)}


def sampled_digest(path: Path, size: int) -> str:
    """sha256 of the first and last MiB and of evenly spaced 64 KiB blocks: about 3 MiB read for a
    file of any size, and every byte of a file up to 3 MiB."""
    return _digest(path, _sampled(size)).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# which bytes each fingerprint reads: (offset, length) spans, length None = to the end

def _head_tail(size: int) -> list[tuple[int, int | None]]:
    """The first MiB, and the last MiB of a file over 2 MiB (as checkpoints have always saved it)."""
    return [(0, _MIB)] + ([(size - _MIB, None)] if size > 2 * _MIB else [])


def _sampled(size: int) -> list[tuple[int, int | None]]:
    if size <= 2 * _MIB + _SAMPLES * _BLOCK:
        return [(0, None)]
    middle = [(_MIB + (size - 2 * _MIB) * i // (_SAMPLES + 1), _BLOCK) for i in range(1, _SAMPLES + 1)]
    return [(0, _MIB), *middle, (size - _MIB, None)]


def _digest(path: Path, spans: list[tuple[int, int | None]]):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for offset, length in spans:
            handle.seek(offset)
            digest.update(handle.read() if length is None else handle.read(length))
    return digest
