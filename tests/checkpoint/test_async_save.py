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
    assert (
        run_training(
            *train_args(
                tiny_model, small_csv, resumed, cache_dir, "--epochs", "1", "--async-save", "--stop-after-steps", "7"
            )
        )
        == 0
    )
    assert ckmanifest.find_latest(resumed)[0].name == "checkpoint-7"
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                resumed,
                cache_dir,
                "--epochs",
                "1",
                "--async-save",
                "--resume-from-checkpoint",
                "latest",
            )
        )
        == 0
    )
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


# ---------------------------------------------------------------------------------------------
# host buffers: a few flat buffers sliced per tensor, pageable when pinning fails


def _flan_t5_large_adamw_sizes() -> tuple[dict[str, int], dict[str, int]]:
    """Bytes of each tensor an async save of FLAN-T5-large with AdamW copies: (weights, optimizer state)."""
    from chef_genius.model import memory

    params = dict(memory.unique_parameters(memory.flan_t5_large()))
    weights = {name: p.numel() * 4 for name, p in params.items()}
    moments = {f"{name}/{k}": p.numel() * 4 for name, p in params.items() for k in ("exp_avg", "exp_avg_sq")}
    return weights, moments


def test_flat_buffers_pin_little_more_than_the_tensors_for_flan_t5_large():
    """One pinned buffer per tensor is rounded up to a power of two each: 10.88 GiB for 8.75 GiB of
    FLAN-T5-large weights and AdamW moments. Packed into 256 MiB buffers: under 9 GiB."""
    from chef_genius.checkpoint.async_writer import pack, power_of_two_at_least

    held = tensors = per_tensor = 0
    for sizes in _flan_t5_large_adamw_sizes():
        used, where = pack(sizes)
        held += sum(power_of_two_at_least(n) for n in used)
        tensors += sum(sizes.values())
        per_tensor += sum(power_of_two_at_least(n) for n in sizes.values())
        assert len(used) <= 40 and all(n <= 256 * 2**20 for n in used)
    assert round(tensors / 2**30, 2) == 8.75 and round(per_tensor / 2**30, 2) == 10.88
    assert held < 9 * 2**30 and held < 1.015 * tensors


def test_packed_tensors_do_not_overlap_and_are_aligned():
    from chef_genius.checkpoint.async_writer import ALIGN, pack

    sizes = {"big": 3 * 2**20 + 5, "a": 1000, "b": 4, "empty": 0, "c": 2**20}
    used, where = pack(sizes, segment=2**20 * 2)
    spans = sorted((where[p][0], where[p][1], where[p][1] + sizes[p]) for p in sizes)
    for (seg, _, end), (seg2, start2, _) in zip(spans, spans[1:]):
        assert seg != seg2 or end <= start2
    assert all(offset % ALIGN == 0 for _, offset in where.values())
    assert used[where["big"][0]] >= sizes["big"]  # a tensor larger than a buffer gets a buffer of its own size


def test_snapshot_tensors_are_views_of_one_flat_buffer_with_their_own_values():
    saver = AsyncCheckpointer()
    state = {
        "w": torch.randn(64, 8),
        "b": torch.arange(5, dtype=torch.int64),
        "flag": torch.tensor(True),
        "half": torch.randn(3, 3).to(torch.bfloat16),
        "none": torch.empty(0, 4),
    }
    copy = saver.snapshot(state, "s")
    _assert_same(state, copy)
    assert len(saver._buffers["s"]) == 1
    segment = saver._buffers["s"]._segments[0]
    start, end = segment.data_ptr(), segment.data_ptr() + segment.numel()
    assert all(start <= t.data_ptr() < end for t in copy.values() if t.numel())  # all in the one buffer
    # ... each with a storage of its own bytes: torch.save writes what a plain copy would
    import io

    saved, plain = io.BytesIO(), io.BytesIO()
    torch.save(copy, saved)
    torch.save({k: v.clone() for k, v in state.items()}, plain)
    assert saved.getvalue() == plain.getvalue()


def test_a_failed_pinned_allocation_falls_back_to_pageable_memory_with_one_warning(monkeypatch, caplog):
    """As on a 16 GB PC: pinning the checkpoint's copy fails; the save goes on in pageable memory, said
    once, and no later snapshot tries to pin again."""
    from chef_genius.checkpoint import async_writer

    tried = []

    def allocate(nbytes, pin):
        tried.append(pin)
        if pin:
            raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")
        return torch.empty(nbytes, dtype=torch.uint8)

    monkeypatch.setattr(async_writer, "_allocate", allocate)
    saver = AsyncCheckpointer()
    specs = {"a": ((16, 4), torch.float32), "b": ((3,), torch.int64)}
    caplog.set_level("INFO")
    buffers = saver._buffers_for("model", specs, pin=True)
    assert not buffers.pinned and buffers.view("a").shape == (16, 4) and not buffers.view("a").is_pinned()
    assert saver._buffers_for("model", specs, pin=True) is buffers  # reused at the next save
    other = saver._buffers_for("state", {"m": ((8,), torch.float32)}, pin=True)
    assert not other.pinned and tried == [True, False, False]  # pinning tried once
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "could not pin" in warnings[0].getMessage()
    assert "using pageable memory" in warnings[0].getMessage()
