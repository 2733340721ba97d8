"""Full disk, failing writes, damaged files: earlier checkpoints stay intact, the run stops with one
clear line (exit 4) or goes on (--on-save-error continue), `latest` skips damage. (The manager's own
checks, free space before every save and a failing rename, are in test_manager.py.)"""

from __future__ import annotations

import errno
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import disk
from chef_genius.errors import EXIT_SAVE, SaveError
from chef_genius.checkpoint.resume import resolve
from chef_genius.train.cli import main
from conftest import train_args

QUICK = ("--max-source-length", 32, "--max-target-length", 64, "--eval-steps", 100, "--save-steps", 2)
Usage = namedtuple("Usage", "total used free")


def tree_digest(folder):
    return {
        p.relative_to(folder).as_posix(): ckfiles.sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "checkpoint-" in p.as_posix()
    }


def fail_nth_state_write(monkeypatch, n, err):
    """torch.save of the Nth checkpoint's training state writes part of the file, then fails."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if str(getattr(f, "name", f)).endswith(ckpt.TRAINING_STATE):  # a path, or the stream the save writes into
            calls.append(f)
            if len(calls) == n:
                if isinstance(f, str | Path):
                    with open(f, "wb") as handle:
                        handle.write(b"partial")
                else:
                    f.write(b"partial")
                raise err
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_estimate_matches_a_real_checkpoint(tiny_model, small_csv, cache_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "run"
    assert main(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--max-steps", 2)) == 0
    actual = sum(p.stat().st_size for p in (out / "checkpoint-2").iterdir())
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model)
    estimate = disk.estimate_checkpoint_bytes(disk.model_tensors(model), extra_bytes=disk.tokenizer_bytes(tiny_model))
    assert 0.9 * actual <= estimate <= 1.25 * actual


def test_estimate_is_pure_arithmetic():
    one_fp32 = disk.estimate_checkpoint_bytes([(1000, 4, True)])
    assert one_fp32 - disk.estimate_checkpoint_bytes([]) == 3 * 4000 + disk.PER_TENSOR_BYTES  # weights + 2 moments
    assert disk.estimate_checkpoint_bytes([(1000, 4, False)]) < one_fp32


def test_full_disk_during_a_save_stops_with_exit_4_and_keeps_earlier(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    fail_nth_state_write(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(SaveError) as exc:
        main(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--max-steps", 6))
    assert exc.value.exit_code == EXIT_SAVE
    message = str(exc.value)
    assert "checkpoint-4 was not saved" in message and "is full" in message and "\n" not in message
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert ckmanifest.manifest_problems(out / "checkpoint-2", verify_hashes=True) == []
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_on_save_error_continue_trains_on(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    fail_nth_state_write(monkeypatch, 2, RuntimeError("PytorchStreamWriter failed writing file data/0"))
    argv = train_args(
        tiny_model,
        small_csv,
        out,
        cache_dir,
        *QUICK,
        "--max-steps",
        3,
        "--save-steps",
        1,
        "--on-save-error",
        "continue",
    )
    assert main(argv) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-3"]
    assert "checkpoint-2 was not saved" in caplog.text


def test_too_little_space_is_refused_before_training(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--max-steps", 2)) == 0
    before = tree_digest(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 20, 10 << 20, 100 << 10))
    with pytest.raises(SaveError) as exc:
        main(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--max-steps", 4, "--resume", "latest"))
    assert "not enough free space" in str(exc.value) and "nothing was written" in str(exc.value)
    assert tree_digest(out) == before


def test_latest_skips_truncated_and_bit_flipped_checkpoints(tiny_model, small_csv, cache_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    quick = (*QUICK, "--max-steps", 3, "--save-steps", 1)
    assert main(train_args(tiny_model, small_csv, out, cache_dir, *quick)) == 0
    truncated = out / "checkpoint-3" / ckpt.WEIGHTS
    truncated.write_bytes(truncated.read_bytes()[:-100])
    flipped = out / "checkpoint-2" / ckpt.TRAINING_STATE
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    assert resolve("latest", False, out).name == "checkpoint-2"  # sizes only: the flip goes unseen
    assert resolve("latest", False, out, verify_hashes=True).name == "checkpoint-1"
    assert main(train_args(tiny_model, small_csv, out, cache_dir, *quick, "--resume", "latest", "--verify-hashes")) == 0
    assert "skipping checkpoint-3" in caplog.text and "skipping checkpoint-2" in caplog.text
    assert f"resumed from {out / 'checkpoint-1'}: step 1" in caplog.text
    # the damaged ones were moved aside when the run reached their steps again, never overwritten
    assert len(list((out / "superseded").iterdir())) == 2
