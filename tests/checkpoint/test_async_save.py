"""--async-save: the same checkpoint as a synchronous save, exact resume, errors surfaced, one in flight."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import run_training, step_losses, train_args

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint.async_writer import AsyncCheckpointer
from chef_genius.errors import EXIT_SAVE, SaveError


def _sha(checkpoint, name):
    return ckmanifest.read_manifest(checkpoint)["files"][name]["sha256"]


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_async_checkpoints_equal_sync_ones_and_resume_bitwise(tiny_model, small_csv, cache_dir, tmp_path):
    sync, asyn, resumed = tmp_path / "sync", tmp_path / "async", tmp_path / "resumed"
    assert run_training(*train_args(tiny_model, small_csv, sync, cache_dir, "--epochs", "1")) == 0
    assert run_training(*train_args(tiny_model, small_csv, asyn, cache_dir, "--epochs", "1", "--async-save")) == 0

    names = [p.name for p in ckpt.list_checkpoints(sync)]
    assert names and names == [p.name for p in ckpt.list_checkpoints(asyn)]
    for name in names:  # weights byte for byte; training state equal apart from the run's own flags
        assert _sha(asyn / name, ckpt.WEIGHTS) == _sha(sync / name, ckpt.WEIGHTS), name
        a, b = ckstate.load_training_state(asyn / name), ckstate.load_training_state(sync / name)
        assert a.pop("hyperparameters")["async_save"] and not b.pop("hyperparameters")["async_save"]
        for state in (a, b):  # wall-clock time is the one thing allowed to differ
            state["run_state"].pop("train_seconds")
        _assert_same(a, b, name)
        assert not ckmanifest.manifest_problems(asyn / name, verify_hashes=True)
    assert step_losses(asyn) == step_losses(sync)

    # Stop after 7 steps with an async save in flight at the end, resume, compare bit for bit.
    assert run_training(*train_args(tiny_model, small_csv, resumed, cache_dir, "--epochs", "1", "--async-save",
                                    "--stop-after-steps", "7")) == 0
    assert ckmanifest.find_latest(resumed)[0].name == "checkpoint-7"
    assert run_training(*train_args(tiny_model, small_csv, resumed, cache_dir, "--epochs", "1", "--async-save",
                                    "--resume-from-checkpoint", "latest")) == 0
    assert step_losses(resumed) == step_losses(sync)


def test_background_save_error_stops_the_run(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckcommit, "write_checkpoint", full_disk)
    with pytest.raises(SaveError, match="checkpoint-5 was not saved: the disk under .* is full") as err:
        run_training(*train_args(tiny_model, small_csv, tmp_path / "run", cache_dir, "--async-save"))
    assert err.value.exit_code == EXIT_SAVE
    assert not ckpt.list_checkpoints(tmp_path / "run")


def test_at_most_one_save_in_flight_and_snapshot_is_a_copy():
    saver = AsyncCheckpointer()
    running, peak, lock = [0], [0], threading.Lock()

    def slow_write():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1

    weight = torch.ones(4)
    shared = {"a": weight, "b": weight, "step": 3}
    copy = saver.snapshot(shared, "s")
    weight.add_(1)  # training goes on: the copy must not change
    assert torch.equal(copy["a"], torch.ones(4)) and copy["a"] is copy["b"] and copy["step"] == 3
    for _ in range(3):
        saver.submit(slow_write, "x")
    saver.wait()
    assert peak[0] == 1 and not saver.in_flight


def test_snapshots_reuse_their_buffers_and_copy_plain_lists():
    saver = AsyncCheckpointer()
    weight, moments = torch.randn(64, 8), torch.randn(64, 8)
    state = {"w": weight, "opt": {"m": moments, "step": torch.tensor(3.0)}, "rng": [1, 2, 3], "t": (weight, 4)}
    first, before = saver.snapshot(state, "s"), weight.clone()
    assert first["t"][0] is first["w"] and isinstance(first["t"], tuple)
    state["rng"].append(4)  # training goes on: neither the list nor the tensors of the copy change
    weight.add_(1)
    assert first["rng"] == [1, 2, 3] and torch.equal(first["w"], before)
    second = saver.snapshot(state, "s")  # the next save: the same memory, the new values
    assert second["w"].data_ptr() == first["w"].data_ptr() and second["w"] is not weight
    assert second["opt"]["m"].data_ptr() == first["opt"]["m"].data_ptr()
    assert torch.equal(second["w"], weight) and torch.equal(second["opt"]["m"], moments)
    assert second["rng"] == [1, 2, 3, 4]
