"""--save-total-limit: the pure selection, and deletion that never leaves a valid-looking half."""

from __future__ import annotations

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint import faults
from chef_genius.checkpoint.retention import apply_retention, select_for_deletion


def test_keeps_newest_k():
    assert select_for_deletion([5, 10, 15, 20], keep_last=2) == [5, 10]


def test_zero_keeps_everything():
    assert select_for_deletion([5, 10, 15], keep_last=0) == []


def test_keeps_the_best_even_when_old():
    assert select_for_deletion([5, 10, 15, 20], keep_last=1, best_step=5) == [10, 15]


def test_keeps_the_checkpoint_resumed_from():
    assert select_for_deletion([5, 10, 15, 20], keep_last=1, protected=[10]) == [5, 15]


def test_best_without_a_checkpoint_changes_nothing():
    assert select_for_deletion([5, 10, 15], keep_last=2, best_step=7) == [5]


def test_only_complete_checkpoint_is_never_deleted():
    assert select_for_deletion([5], keep_last=1, best_step=None) == []
    assert select_for_deletion([], keep_last=1) == []


def _fake_checkpoint(root, step):
    def save_model(folder):
        (folder / ckpt.MODEL_CONFIG).write_text("{}")
        (folder / ckpt.WEIGHTS).write_bytes(b"w" * 100)

    return ckcommit.write_checkpoint(root, step, save_model, {"global_step": step})


def test_incomplete_folders_are_neither_counted_nor_deleted(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-3" / ckpt.MANIFEST).unlink()  # damaged: left for the doctor to repair
    deleted = apply_retention(tmp_path, keep_last=1, best_step=None, protected=[tmp_path / "checkpoint-1"])
    assert [p.name for p in deleted] == ["checkpoint-2"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize("crash_at", ["renamed for deletion", "deleted"])
def test_crash_mid_deletion_never_leaves_a_valid_looking_half(tmp_path, monkeypatch, crash_at):
    for step in (1, 2):
        _fake_checkpoint(tmp_path, step)

    class Crash(BaseException):
        pass

    def hook(label):
        if label == crash_at:
            raise Crash

    monkeypatch.setattr(faults, "hook", hook)
    with pytest.raises(Crash):
        apply_retention(tmp_path, keep_last=1)
    monkeypatch.setattr(faults, "hook", None)
    # whatever is left is either gone or under a name that is never resumed from, and gets removed
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not ckmanifest.manifest_problems(tmp_path / "checkpoint-2", verify_hashes=True)
    ckpt.remove_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def _judged_checkpoint(root, step, finite: bool | None):
    """A fake checkpoint whose health record says its numbers are finite, or not (None: no record)."""

    def save_model(folder):
        (folder / ckpt.MODEL_CONFIG).write_text("{}")
        (folder / ckpt.WEIGHTS).write_bytes(b"w" * 100)

    state = {"global_step": step}
    if finite is not None:
        state[ckstate.HEALTH] = {
            "weights_finite": finite,
            "moments_finite": True,
            "recent_losses": [],
            "skipped_steps": 0,
        }
    return ckcommit.write_checkpoint(root, step, save_model, state)


def test_retention_keeps_the_newest_healthy_checkpoint_when_the_newest_went_nan(tmp_path):
    for step, finite in ((2, True), (4, True), (6, False), (8, False)):
        _judged_checkpoint(tmp_path, step, finite)
    deleted = apply_retention(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["checkpoint-2"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]


def test_a_checkpoint_without_a_health_record_is_not_taken_for_healthy(tmp_path):
    for step, finite in ((2, True), (4, None), (6, False)):
        _judged_checkpoint(tmp_path, step, finite)
    deleted = apply_retention(tmp_path, keep_last=1)
    assert [p.name for p in deleted] == ["checkpoint-4"]
