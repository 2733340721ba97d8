"""What "the same data file" means: the one place that fingerprints a data file.

The fingerprint is the file's content: ``content_sha256``, the sha256 of every byte.

- ``content_identity``: is this the file a checkpoint trained on? Name, size and content sha256,
  saved in the checkpoint's settings (``data_identity``, ``eval_data_identity``) and compared on
  resume; it survives a copy to another machine (never its path or time). An edit anywhere, of any
  length, with the modification time kept or not, is a different file.
- The tokenized cache records the same ``content_sha256`` in its metadata and is reused only for
  it (``data/tokenized.py``); ``file_fingerprint`` (path, size, time, a sampled hash) only names the
  cache folder to look in, so a first run finds none without reading the file.
- The cost: one read of the file (sha256 runs at about 345 MB/s on this 2-core machine at load
  average 13, 1.4 GB/s on a quiet core; docs/training-and-data.md: "Data by content"), remembered for
  the life of the process so the resume check and the cache check share it, and across runs by the
  file's state (``HashMemo``, the trust rule below). A first run pays nothing in wall time: the hash
  runs in a thread beside the tokenization (``hashing_beside``).
- Across runs (``HashMemo``): a digest is remembered with the state of the file it was taken of
  (``file_state``: device, inode, size, modification and change times in ns) and given back while the
  file is in that state. The rule that makes this sound: bytes change only through a write, every
  write sets the change time to the clock's now, and no tool sets a change time back (``touch``,
  ``os.utime``, ``cp -p`` and ``rsync -t`` set the modification time only); a file replaced by another
  has another inode or a newer change time. Two guards: a digest is remembered only when the change
  time is ``RACY_SECONDS`` older than the moment the hash began, so a write in the same tick of a
  coarse file-system clock cannot follow it unseen (git's "racily clean" rule); and Windows, whose
  ``st_ctime`` is the creation time, never remembers. What the rule cannot see: bytes changed under the
  file system (a failing disk, a raw write to the device); ``--verify-hashes`` reads every byte anyway.
- ``data_identity``: the identity checkpoints saved before the content fingerprint (name, size, a
  sha256 of the first and last MiB). Still computed, to compare such a checkpoint, which cannot tell
  an edit in the middle (the resume says so in one line and records the content identity from then on).

``data_identity`` and ``file_fingerprint`` read their bytes through ``_digest``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from chef_genius.hashing import sha256_file as file_sha256  # every byte, no memo

_MIB = 1 << 20
_BLOCK, _SAMPLES = 64 << 10, 16
_known: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> content sha256, this process
_lock = threading.Lock()
_run_memo: HashMemo | None = None  # remember_across_runs: the memo of digests asked for without one
MEMO_FILE = "chef_genius_hashes.json"
RACY_SECONDS = 2.0  # a change time this close to the hash's start is not trusted across runs


def content_sha256(path: str | Path, memo: HashMemo | None = None) -> str:
    """sha256 of every byte of ``path``. Remembered for this process while the file's device, inode,
    size, modification and change times stay (a write changes the change time, which no tool can set
    back), so the resume check and the cache check read the file once; with ``memo``, also across
    runs (``HashMemo``: the trust rule in the module docstring)."""
    path = Path(path).resolve()
    key = _stat_key(path)
    with _lock:
        if key in _known:
            return _known[key]
    own = memo is None and _run_memo is not None  # the run's memo: saved here, no caller saves it
    memo = _run_memo if memo is None else memo
    if memo is not None and (value := memo.recall(path)) is not None:
        with _lock:
            _known[key] = value
        return value
    began = time.time_ns()
    value = file_sha256(path)
    if _stat_key(path) == key:  # not written to while it was read
        with _lock:
            _known[key] = value
        if memo is not None:
            memo.remember(path, value, began)
            if own:
                memo.save()
    return value


def remember_across_runs(folder: str | Path | None, trusted: bool = True) -> None:
    """From now on in this process, a digest asked for without a memo is remembered in ``folder`` (the
    run's cache root) by the trust rule of ``HashMemo``: the sources' canonical order and the resume's
    data check hash the data files before their cache folders are known, and would otherwise read every
    byte of them on every start. None: nothing remembered across runs (the default)."""
    global _run_memo
    with _lock:
        _run_memo = None if folder is None else HashMemo(folder, trusted)


def file_state(path: str | Path) -> list[int]:
    """What a write to ``path`` always changes: device, inode, size, modification and change time (ns)."""
    stat = os.stat(path)
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


class HashMemo:
    """sha256 digests of files remembered across runs in ``folder / MEMO_FILE``, each with the state of
    the file it was taken of and given back only while the file is in that state (the trust rule in the
    module docstring). ``trusted=False`` (``--verify-hashes``) recalls nothing: every byte is read.
    ``save`` writes it when something was added (atomically; a read-only folder keeps it unsaved)."""

    def __init__(self, folder: str | Path, trusted: bool = True):
        self.path = Path(folder) / MEMO_FILE
        self.trusted = trusted and os.name != "nt"  # Windows: st_ctime is the creation time
        self.entries: dict[str, dict] = {}
        self.changed = False
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: every file is hashed

    def recall(self, path: str | Path) -> str | None:
        """The digest of ``path`` if it is in the state it was hashed in, else None."""
        entry = self.entries.get(str(Path(path).resolve()))
        if not self.trusted or entry is None:
            return None
        try:
            same = entry.get("state") == file_state(path)
        except OSError:
            return None
        return entry.get("sha256") if same else None

    def remember(self, path: str | Path, sha256: str, began_ns: int) -> None:
        """Record ``sha256`` of ``path`` (hashed from ``began_ns`` on), unless its change time is too
        recent to rule out a write in the same clock tick (``RACY_SECONDS``)."""
        state = file_state(path)
        if not self.trusted or began_ns - state[4] < RACY_SECONDS * 1e9:
            return
        self.entries[str(Path(path).resolve())] = {"state": state, "sha256": sha256}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the run's cache root, before the first cache
            tmp.write_text(json.dumps(self.entries, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
            self.changed = False
        except OSError:  # a read-only cache: the next run hashes again
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def content_identity(path: str | Path | None) -> dict | None:
    """Name, size and content sha256: what a checkpoint records of the data file it trained on."""
    if path is None:
        return None
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size, "sha256": content_sha256(path)}


def is_content_identity(identity: dict | None) -> bool:
    """Whether a saved identity fingerprints the whole content (else: an older, head-and-tail one)."""
    return isinstance(identity, dict) and "sha256" in identity


@contextlib.contextmanager
def hashing_beside(path: str | Path, memo: HashMemo | None = None):
    """Compute ``content_sha256(path, memo)`` in a thread while the body reads the file for its own ends
    (the first tokenization); yields a callable that returns the digest, waiting for it if needed.
    sha256 releases the GIL, so the hash takes no wall time from a body that is slower than a read."""
    result: dict = {}

    def work() -> None:
        try:
            result["sha256"] = content_sha256(path, memo)
        except BaseException as err:  # handed to the caller
            result["error"] = err

    thread = threading.Thread(target=work, name="content-sha256", daemon=True)
    thread.start()

    def digest() -> str:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["sha256"]

    yield digest


def _stat_key(path: Path) -> tuple:
    stat = os.stat(path)
    return (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def data_identity(path: str | Path | None) -> dict | None:
    """Name, size and a hash of the first and last MiB: the identity saved by checkpoints written
    before ``content_identity``, computed now to compare with theirs."""
    if path is None:
        return None
    path = Path(path)
    size = path.stat().st_size
    return {"name": path.name, "size": size, "sha256_head_tail": _digest(path, _head_tail(size)).hexdigest()}


def file_fingerprint(path: str | Path) -> dict:
    """Path, size, modification time and a sampled hash: names the folder of what this machine derived
    from the file (the tokenized cache checks the content itself, ``content_sha256``)."""
    path = Path(path).resolve()
    stat = path.stat()
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sampled_sha256": sampled_digest(path, stat.st_size),
    }


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
