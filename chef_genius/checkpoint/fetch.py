"""Resume on a fresh machine: fill the run folder from the checkpoint mirror.

With ``--auto-resume`` (or ``--resume-from-checkpoint latest``) and a mirror, the newest remote
checkpoint that verifies is downloaded when it is newer than the newest usable local one (the newer
healthy one wins; at the same step the local one). Remote checkpoints are tried newest first; one
without a complete manifest, with an object of the wrong size, or with a file whose sha256 differs
from the remote manifest while it downloads is skipped with one line. The download goes through
``commit.commit_copy``: a staging folder, fsync, a manifest, the same usability check as a resume
(training state under ``weights_only``, weights' header, JSON files), then one rename, so a download
cut short leaves only a staging folder (removed at the next start), never a ``checkpoint-N``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint.manifest import find_latest, usability_problem
from chef_genius.checkpoint.remote import RemoteError, RemoteStore, Retry

log = logging.getLogger("chef_genius")


def fetch_newer(
    store: RemoteStore, output_dir: str | Path, local_step: int | None, retry: Retry | None = None
) -> Path | None:
    """Download the newest healthy remote checkpoint newer than ``local_step`` (None: no local one) into
    ``output_dir``; returns its local path, or None when the local one is as new (or none is healthy)."""
    retry = retry or Retry()
    try:
        listed = retry(store.objects)
    except RemoteError as err:
        log.warning("mirror: cannot list %s (%s); resuming from the local checkpoints only", store.url, err)
        return None
    newest_first = sorted(listed, key=ckpt.checkpoint_step, reverse=True)
    for name in newest_first:
        step = ckpt.checkpoint_step(name)
        if local_step is not None and step <= local_step:
            log.info(
                "the local %s%d is as new as the mirror's newest healthy checkpoint: resuming locally",
                ckpt.PREFIX,
                local_step,
            )
            return None
        path = _fetch_one(store, output_dir, name, listed[name], retry)
        if path is not None:
            return path
    return None


def _fetch_one(
    store: RemoteStore, output_dir: str | Path, name: str, listed: dict[str, int], retry: Retry
) -> Path | None:
    try:
        problem = retry(lambda: store.problem(name, listed))
    except RemoteError as err:
        problem = str(err)
    if problem:
        log.warning("mirror: skipping %s: %s", store.where(name), problem)
        return None
    began = time.perf_counter()
    try:
        path = ckcommit.commit_copy(
            output_dir,
            ckpt.checkpoint_step(name),
            lambda staging: store.download(name, staging, retry),
            check=lambda staging: usability_problem(staging, verify_hashes=False),
        )
    except (RemoteError, ckpt.CheckpointError) as err:
        log.warning("mirror: skipping %s: %s", store.where(name), err)
        return None
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    log.info(
        "fetched %s from %s (%.1f MB in %.1fs, every file checked against its sha256)",
        name,
        store.url,
        size / 1e6,
        time.perf_counter() - began,
    )
    return path


def fill_run_folder(store: RemoteStore, output_dir: str | Path, verify_hashes: bool = False) -> Path | None:
    """Before a resume chooses its checkpoint: bring the mirror's newest healthy checkpoint into
    ``output_dir`` when it is newer than the newest usable local one; returns it (None: nothing fetched)."""
    local, _ = find_latest(output_dir, verify_hashes)
    return fetch_newer(store, output_dir, None if local is None else ckpt.step_of(local))


def saved_mirror(output_dir: str | Path, setting: str) -> str | None:
    """The mirror URL the newest usable local checkpoint was written with (its run setting ``setting``)."""
    local, _ = find_latest(output_dir)
    if local is None:
        return None
    try:
        value = (ckstate.load_training_state(local, mmap=True).get("hyperparameters") or {}).get(setting)
    except ckpt.CheckpointError:
        return None
    return value if isinstance(value, str) and value else None
