"""Hostile checkpoints, 4: requeue loops keep going. ``latest`` and ``--auto-resume`` skip a checkpoint
with an unsafe state, a step other than its folder name or a flipped header, and train on from the
newest usable one.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import logging
import struct

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import resume
from conftest import run_training, train_args

from .conftest import Payload, assert_untouched, seal


def test_latest_skips_a_verifying_checkpoint_with_an_unsafe_state(run, capsys, outside, caplog, opened):
    secret, marker = outside
    folder = run / "checkpoint-10"
    torch.save({"global_step": 10, "epoch": 0, "rng_states": Payload(marker)}, folder / ckpt.TRAINING_STATE)
    seal(folder)
    caplog.set_level(logging.WARNING)
    assert resume.resolve("latest", False, run) == run / "checkpoint-5"
    assert resume.resolve(None, True, run) == run / "checkpoint-5"
    assert "skipping checkpoint-10" in caplog.text and "not unpickled" in caplog.text
    assert "newest usable checkpoint" in caplog.text
    assert_untouched(secret, marker, opened)


def test_latest_skips_a_step_that_differs_from_the_folder_name(run, caplog):
    (run / "checkpoint-10").rename(run / "checkpoint-11")
    caplog.set_level(logging.WARNING)
    assert resume.resolve("latest", False, run) == run / "checkpoint-5"
    assert "skipping checkpoint-11: training_state.pt is at step 10" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="not usable"):
        resume.resolve(str(run / "checkpoint-11"), False, run)


def test_same_size_header_flip_is_skipped_without_verify_hashes(run, caplog):
    path = run / "checkpoint-10" / ckpt.WEIGHTS
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length]
    flipped = header.replace(b'"F32"', b'"F3!"', 1)
    assert len(flipped) == len(header) and flipped != header
    path.write_bytes(data[:8] + flipped + data[8 + length :])
    caplog.set_level(logging.WARNING)
    assert resume.resolve(None, True, run) == run / "checkpoint-5"
    assert "unknown dtype" in caplog.text


def test_auto_resume_trains_on_from_the_newest_usable(run, tiny_model, small_csv, cache_dir, caplog):
    (run / "checkpoint-10" / "tokenizer.json").write_bytes(b"{")  # damaged after the save
    caplog.set_level(logging.INFO)
    args = train_args(tiny_model, small_csv, run, cache_dir, "--auto-resume", "--stop-after-steps", "2")
    assert run_training(*args) == 0
    assert "skipping checkpoint-10" in caplog.text and "resumed from" in caplog.text
    assert "checkpoint-5: step 5" in caplog.text
