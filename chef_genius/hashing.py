"""The sha256 of a file's every byte: one implementation for the checkpoint's manifest and the data's
content fingerprint (neither package may import the other, so it lives beside both)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 8 << 20  # read size: large enough that the hash, not the calls, is the cost


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of every byte of ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
