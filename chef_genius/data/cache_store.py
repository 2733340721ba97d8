"""The tokenized cache's folders on disk: checksummed, verified when opened, built by one run at a time.

- A cache folder (``<stem>-<key>``) holds Arrow parts and ``CACHE_META``, which lists the parts in row
  order with the size and sha256 of each. It is built in a staging folder ``<stem>-<key>.tmp-<pid>``
  and renamed into place whole, ``CACHE_META`` written last, so no half-built folder is ever opened.
- Opening verifies it: the metadata parses, every part is there with its size and its sha256, and
  the caller's check passes (``tokenized.py``: built from the data file's content as it is now). A
  part's sha256 is read once per state of the part: the folder's ``fingerprint.HashMemo`` gives it back
  while the part's device, inode, size and times are those it was hashed at (the trust rule in
  ``fingerprint.py``), so a rerun or a resume reads no part again (2.9 s for 1M recipes on this
  machine; bench/results/2026-12-06-fast-start.md); ``trusted=False`` (``--verify-hashes``) reads every
  byte. A folder that fails is named in one warning line, removed and built again: a damaged cache is
  never trained on.
- One builder per key: an OS lock on ``<stem>-<key>.lock`` (``oslock.try_lock``: ``flock``, dropped by
  the OS however the process dies). A run that needs the cache built takes it, looks again (another run
  may have built it while this one waited) and builds only if it still must; runs started together
  wait for the first one and read what it built.
- Staging folders of builders that died (killed during a first tokenization) are removed by the next
  run that takes a builder lock: a staging folder whose key's lock is free has no live builder.
- A file system without locks: every run builds its own staging folder; the first rename wins, the
  others read the winner's folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable

from chef_genius.data.fingerprint import HashMemo, file_sha256
from chef_genius.oslock import try_lock

log = logging.getLogger("chef_genius")

CACHE_META = "chef_genius_cache.json"
STAGING = ".tmp-"
LOCK_SUFFIX = ".lock"
WAIT_POLL_SECONDS = 0.2
WAIT_LOG_SECONDS = 60.0


def checksums(folder: Path, parts: list[str]) -> dict[str, dict]:
    """Size and sha256 of each part, as ``CACHE_META`` records them."""
    return {part: {"size": (folder / part).stat().st_size, "sha256": file_sha256(folder / part)} for part in parts}


def problem(
    folder: Path, check: Callable[[dict], str | None] = lambda meta: None, trusted: bool = True
) -> tuple[dict | None, str | None]:
    """(metadata, None) for a sound cache folder; (None, what is wrong) for a damaged one, or one that
    ``check(metadata)`` finds wrong (a stale one); (None, None) when there is none. A part's sha256 comes
    from the folder's ``HashMemo`` while the part is in the state it was hashed in (``trusted``)."""
    try:
        text = (folder / CACHE_META).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"its metadata cannot be read ({getattr(err, 'strerror', None) or type(err).__name__})"
    try:
        meta = json.loads(text)
        parts, sums = meta["parts"], meta.get("checksums")
        meta["stats"]
    except (ValueError, KeyError, TypeError):
        return None, f"its metadata {CACHE_META} is damaged"
    if not isinstance(sums, dict) or set(sums) != set(parts):
        return None, "it has no checksums (written by an older version)"
    memo = HashMemo(folder, trusted)
    for part in parts:
        path = folder / part
        try:
            size = path.stat().st_size
        except OSError:
            return None, f"{part} is missing"
        if size != sums[part].get("size"):
            return None, f"{part} has {size} bytes instead of {sums[part].get('size')} (cut short or grown)"
        if content_of(path, memo) != sums[part].get("sha256"):
            return None, f"{part} does not match its checksum (damaged)"
    memo.save()
    wrong = check(meta)
    return (None, wrong) if wrong else (meta, None)


def content_of(path: Path, memo: HashMemo) -> str:
    """The sha256 of a part: remembered by ``memo`` for its state, else read (and remembered)."""
    if (known := memo.recall(path)) is not None:
        return known
    began = time.time_ns()
    digest = file_sha256(path)
    memo.remember(path, digest, began)
    return digest


def open_or_build(
    final: Path,
    build: Callable[[Path], dict],
    check: Callable[[dict], str | None] = lambda meta: None,
    trusted: bool = True,
) -> tuple[dict, bool]:
    """(metadata, from_cache) of the sound cache folder ``final``, building it with ``build(folder)``
    (which writes the parts into ``folder`` and returns ``{"stats", "parts", ...}``) when it is
    missing, damaged or stale (``check(metadata)`` says what is wrong), under the builder lock.
    ``trusted``: part checksums remembered by state count (``problem``)."""
    meta, _ = problem(final, check, trusted)
    if meta is not None:
        return meta, True
    with builder_lock(final) as locked:
        if locked:  # without locks a live builder's staging folder cannot be told from a dead one's
            remove_stale_staging(final.parent, own=final)
        meta, wrong = problem(final, check, trusted)  # another run may have built it while this one waited
        if meta is not None:
            return meta, True
        if wrong:
            log.warning("tokenized cache %s: %s; removing it and tokenizing again", final, wrong)
            discard(final)
        return _build(final, build, check), False


def _build(final: Path, build: Callable[[Path], dict], check: Callable[[dict], str | None]) -> dict:
    staging = final.with_name(f"{final.name}{STAGING}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "data").mkdir(parents=True)
    try:
        meta = build(staging / "data")
        meta["checksums"] = checksums(staging / "data", meta["parts"])
        (staging / "data" / CACHE_META).write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(staging / "data", final)
        except OSError as err:
            # another run renamed its own build into place first (only without working locks)
            won, _ = problem(final, check)
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or won is None:
                raise
            return won
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def discard(folder: Path) -> None:
    """Remove a damaged cache folder: renamed aside first, so no run opens it half removed."""
    aside = folder.with_name(f"{folder.name}{STAGING}{os.getpid()}-damaged")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def builder_lock(final: Path):
    """Hold the builder lock of cache folder ``final``, waiting for a run that holds it; yields whether
    it is held (False on a file system without locks)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(final.with_name(final.name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        next_line = time.monotonic()
        while (taken := try_lock(fd)) is False:
            if time.monotonic() >= next_line:
                log.info("waiting for another run that is tokenizing into %s", final)
                next_line = time.monotonic() + WAIT_LOG_SECONDS
            time.sleep(WAIT_POLL_SECONDS)
        if taken is None:
            log.debug("%s: no file locks here; building without one", final.parent)
        yield bool(taken)
    finally:
        os.close(fd)  # drops the lock


def remove_stale_staging(root: Path, own: Path | None = None) -> list[Path]:
    """Remove the staging folders under ``root`` that no live builder holds (``own``: the folder whose
    lock this process holds now, so its key's staging folders are dead builders' too)."""
    removed = []
    for staging in sorted(root.glob(f"*{STAGING}*")):
        if not staging.is_dir():
            continue
        key = staging.name.split(STAGING)[0]
        if own is not None and key == own.name:
            stale = True
        else:
            stale = _lock_is_free(root / (key + LOCK_SUFFIX))
        if stale:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("removed %s, left by a tokenization that did not finish", staging)
            removed.append(staging)
    return removed


def _lock_is_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return True  # no builder ever took it: a staging folder from before the builder lock
    except OSError:
        return False
    try:
        return try_lock(fd) is True
    finally:
        os.close(fd)
