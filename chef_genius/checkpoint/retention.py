"""``--save-total-limit K``: which checkpoints to delete after a new one is committed.

Kept, always: the newest K complete checkpoints, the best one (lowest validation loss), the one the
run resumed from, the newest *healthy* one (its health record says its weights and optimizer moments
are finite, ``health.py``: when the newest K went NaN, the past a rollback or a resume needs stays),
and therefore at least one complete checkpoint. Folders that do not verify
(interrupted or damaged) are neither counted nor deleted: ``verify_and_fix_checkpoint.py`` may still
repair them, and deleting evidence is not retention's job. Deletion happens only after the new
checkpoint is committed, and goes through ``checkpoint.delete_checkpoint`` (rename, then remove),
so a crash mid-deletion never leaves a ``checkpoint-N`` that looks complete and is not.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Iterable

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint.health import health_problem
from chef_genius.checkpoint.training_state import load_training_state

log = logging.getLogger(__name__)


def select_for_deletion(
    complete_steps: Iterable[int], keep_last: int, best_step: int | None = None, protected: Iterable[int] = ()
) -> list[int]:
    """Steps of the complete checkpoints to delete, oldest first (pure; ``keep_last`` 0 keeps all)."""
    steps = sorted(set(complete_steps))
    if keep_last <= 0 or not steps:
        return []
    keep = set(steps[-keep_last:]) | set(protected)
    if best_step is not None:
        keep.add(best_step)
    return [step for step in steps if step not in keep]


def newest_recorded_healthy(complete: dict[int, Path]) -> int | None:
    """The step of the newest of ``complete`` (step -> folder) whose health record says its numbers are
    finite (the record only: no tensor is read after each save)."""
    for step in sorted(complete, reverse=True):
        try:
            state = load_training_state(complete[step], mmap=True)
        except ckpt.CheckpointError:
            continue
        if health_problem(complete[step], state, check_numbers=False) is None:
            return step
    return None


def apply_retention(
    output_dir: str | Path, keep_last: int, best_step: int | None = None, protected: Iterable[Path | None] = ()
) -> list[Path]:
    """Delete the checkpoints ``select_for_deletion`` picks; returns the deleted paths."""
    if keep_last <= 0:
        return []
    complete = {
        ckpt.checkpoint_step(p): p for p in ckpt.list_checkpoints(output_dir) if not ckmanifest.manifest_problems(p)
    }
    root = Path(output_dir).resolve()
    steps = (ckpt.step_of(p) for p in protected if p is not None and Path(p).resolve().parent == root)
    protected_steps = {step for step in steps if step is not None}
    healthy = newest_recorded_healthy(complete)
    if healthy is not None:
        protected_steps.add(healthy)
    deleted = []
    for step in select_for_deletion(complete, keep_last, best_step, protected_steps):
        try:
            ckcommit.delete_checkpoint(complete[step])
        except OSError as err:  # a file held open elsewhere: keep it, try again after the next save
            log.warning("could not delete %s (%s); it is kept", complete[step].name, err)
            continue
        deleted.append(complete[step])
        log.info("deleted %s (--save-total-limit %d)", complete[step].name, keep_last)
    return deleted
