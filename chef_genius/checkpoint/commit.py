"""Writing a checkpoint, the final model, and deleting a checkpoint, so that no crash leaves a
folder that looks valid and is not.

A checkpoint is written into a staging folder beside its final place, every file fsynced, the
manifest last, then renamed to ``checkpoint-N`` in one step, so a crash leaves either the earlier
state or the complete new checkpoint. One pass over the bytes: each file's sha256 (for the
manifest) is computed while it is written (the model and the training state in two threads), and
the files are fsynced together once all are written. The final model (``save_pretrained`` into MODEL_OUTPUT itself)
goes through the same staging and fsync, then its files are moved into place one by one, so the
folder always loads.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable, Mapping

import torch


from chef_genius.checkpoint.faults import fault_point
from chef_genius.checkpoint.files import (
    atomic_write_json,
    fsync_dir,
    fsync_files,
    retry_os,
    sha256_file,
    torch_save_hashed,
)
from chef_genius.checkpoint.layout import (
    MANIFEST,
    TRAINING_STATE,
    CheckpointError,
    SaveCancelled,
    checkpoint_path,
    deleting_path,
    staging_path,
)
from chef_genius.checkpoint.manifest import build_manifest

log = logging.getLogger(__name__)

# ``save_model(folder)`` writes the model files into ``folder`` and may return {name: sha256} of them
SaveModel = Callable[[Path], Mapping[str, str] | None]
_PARALLEL_BYTES = 16 << 20  # a training state this large is written in its own thread
MODEL_LABELS = ("model written", "training state written")  # fault points of a checkpoint's files
FINAL_LABELS = ("final model written", None)  # ... and of the final model's


def staging_folder(output_dir: str | Path, name: str) -> Path:
    """A fresh, empty staging folder for ``name`` beside its final place, unique to this process."""
    staging = staging_path(output_dir, name)
    shutil.rmtree(staging, ignore_errors=True)  # this process's own, from a failed save of the same step
    staging.mkdir(parents=True)
    return staging


def write_checkpoint(
    output_dir: str | Path,
    global_step: int,
    save_model: SaveModel,
    training_state: dict,
    cancelled: Callable[[], bool] | None = None,
) -> Path:
    """Write checkpoint ``global_step`` atomically; ``save_model(folder)`` writes model and tokenizer.
    ``cancelled()`` is asked between the steps: when it says yes, the save is given up (``SaveCancelled``)."""
    return _commit(
        output_dir,
        global_step,
        cancelled,
        lambda staging: _write_sealed(staging, save_model, training_state, cancelled, labels=MODEL_LABELS),
    )


def commit_copy(
    output_dir: str | Path,
    global_step: int,
    copy: Callable[[Path], Mapping[str, str]],
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Commit checkpoint ``global_step`` whose files ``copy(staging)`` brings from elsewhere (the mirror),
    returning each file's sha256, through the same staging, fsync, manifest and rename as a save.
    ``check(staging)`` (after the manifest, before the rename) says why the copy is unusable: then it is
    not committed (``CheckpointError``). An interrupted copy leaves only a staging folder."""

    def fill(staging: Path) -> dict[str, str]:
        digests = dict(copy(staging))
        fsync_files(sorted(p for p in staging.rglob("*") if p.is_file()))
        return digests

    return _commit(output_dir, global_step, None, fill, check)


def _commit(
    output_dir: str | Path,
    global_step: int,
    cancelled: Callable[[], bool] | None,
    fill: Callable[[Path], dict[str, str]],
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Staging folder, ``fill`` (the files, fsynced; returns their sha256), manifest, rename."""
    output_dir = Path(output_dir)
    final = checkpoint_path(output_dir, global_step)
    staging = staging_folder(output_dir, final.name)
    try:
        fault_point("staging created")
        digests = fill(staging)
        manifest = build_manifest(staging, global_step, digests)
        fault_point("files fsynced")
        atomic_write_json(staging / MANIFEST, manifest)
        fault_point("manifest written")  # atomic_write_json fsynced the staging folder too
        _stop_if(cancelled)
        problem = check(staging) if check is not None else None
        if problem:
            raise CheckpointError(problem)
        if final.exists():  # only now, so a crash before this point leaves the older folder in place
            set_aside(final)
        retry_os(lambda: os.rename(staging, final))
        fault_point("renamed")
        fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def write_final_model(
    output_dir: str | Path, save_model: SaveModel, cancelled: Callable[[], bool] | None = None
) -> list[Path]:
    """``save_model(folder)`` into ``output_dir`` itself (the run's final model): written and fsynced in a
    staging folder like a checkpoint, then each file moved into place (one atomic replace each)."""
    output_dir = Path(output_dir)
    staging = staging_folder(output_dir, "final")
    try:
        _write_sealed(staging, save_model, None, cancelled, labels=FINAL_LABELS, hash_files=False)
        _stop_if(cancelled)
        moved = []
        for path in sorted(staging.iterdir()):
            target = output_dir / path.name
            retry_os(functools.partial(os.replace, path, target))
            moved.append(target)
        fault_point("final model moved")
        fsync_dir(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved


def _write_sealed(
    staging: Path,
    save_model: SaveModel,
    training_state: dict | None,
    cancelled: Callable[[], bool] | None,
    labels: tuple,
    hash_files: bool = True,
) -> dict[str, str]:
    """Write the model (and the training state) into ``staging``, then fsync every file together;
    returns each file's sha256. Hashes come from the bytes as they were written; only a file that
    ``save_model`` wrote without saying its hash is read back for it. The training state is written
    in a second thread while this one writes the model: sha256 runs at about one byte per
    nanosecond per core, slower than a write into the page cache, so two files hashed at once take
    about the time of the larger one instead of the sum. A small state (under ``_PARALLEL_BYTES``
    of tensors) is written after the model: there the work is Python, which two threads only share."""
    _stop_if(cancelled)
    parallel = training_state is not None and _tensor_bytes(training_state) >= _PARALLEL_BYTES
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chef-genius-state") as pool:
        state = pool.submit(torch_save_hashed, staging / TRAINING_STATE, training_state) if parallel else None
        digests = dict(save_model(staging) or {})
        fault_point(labels[0])
        if training_state is not None:
            digests[TRAINING_STATE] = (
                state.result() if state is not None else torch_save_hashed(staging / TRAINING_STATE, training_state)
            )
            fault_point(labels[1])
    _stop_if(cancelled)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    fsync_files(files)
    if hash_files:
        for path in files:
            name = path.relative_to(staging).as_posix()
            if name not in digests:
                digests[name] = sha256_file(path)
    return digests


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _stop_if(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise SaveCancelled("the save was given up")


def set_aside(path: Path) -> Path:
    """Move a checkpoint out of the way without deleting it (a run resumed from an older step
    reaches the step of a newer one): it goes to ``MODEL_OUTPUT/superseded/``."""
    target_dir = path.parent / "superseded"
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    retry_os(lambda: os.rename(path, target))
    log.warning("moved the older %s aside to %s (a checkpoint is never overwritten)", path.name, target)
    return target


def delete_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint so that no crash can leave a half-deleted folder that looks valid: it is
    first renamed to ``.deleting-...`` (one atomic step; no longer a ``checkpoint-N``), then removed.
    A leftover ``.deleting-`` folder is removed at the next start."""
    path = Path(path)
    doomed = deleting_path(path)
    retry_os(lambda: os.rename(path, doomed))
    fsync_dir(path.parent)
    fault_point("renamed for deletion")
    retry_os(lambda: shutil.rmtree(doomed))
    fault_point("deleted")
