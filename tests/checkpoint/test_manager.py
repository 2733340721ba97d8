"""The checkpoint manager: one save path (sync = async + wait), no exit before the commit, full disks.

Runs are tiny (6 optimizer steps, a checkpoint every 2); the writes are slowed through the fault hook
(which runs in the writer thread) so that a stop really lands while a background write is in flight.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from chef_genius.checkpoint import disk
from chef_genius.checkpoint import faults
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint.manager import CheckpointManager
from chef_genius.errors import EXIT_PREEMPTED, EXIT_SAVE, SaveError, run_cli
from chef_genius.monitoring import metrics as metrics_module
from chef_genius.train.cli import main
from chef_genius.train.trainer import Trainer
from conftest import REPO, run_training, step_losses, train_args

QUICK = ("--max-steps", 6, "--save-steps", 2, "--eval-steps", 100, "--max-source-length", 32, "--max-target-length", 64)
CLI = REPO / "cli" / "complete_optimized_training.py"


@pytest.fixture(scope="module")
def reference(tiny_model, small_csv, cache_dir, tmp_path_factory):
    """The uninterrupted run: its per-step losses and its checkpoints."""
    out = tmp_path_factory.mktemp("manager-reference") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *QUICK)) == 0
    return out


def _args(tiny_model, small_csv, cache_dir, out, *extra):
    return train_args(tiny_model, small_csv, out, cache_dir, *QUICK, *extra)


def _exit(argv, capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of the training command run in this process."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def _no_staging(out: Path) -> bool:
    return not [p for p in out.iterdir() if p.name.startswith((ckpt.STAGING_PREFIX, ckpt.DELETING_PREFIX))]


def _assert_resumes_like_the_reference(reference, argv, out, step):
    assert run_training(*argv, "--resume-from-checkpoint", "latest") == 0
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    assert {s: got[s] for s in range(step + 1, 7)} == {s: expected[s] for s in range(step + 1, 7)}  # bitwise


# ---------------------------------------------------------------------------------------------
# a stop waits for the commit


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM from outside is POSIX")
def test_sigterm_during_an_async_save_exits_75_only_with_a_committed_checkpoint(
    reference, tiny_model, small_csv, cache_dir, tmp_path
):
    """A real process, a real SIGTERM while checkpoint-2 is written in the background: the write must not
    be cut off at interpreter shutdown, and 75 must name a checkpoint that exists."""
    out = tmp_path / "run"
    argv = _args(tiny_model, small_csv, cache_dir, out, "--async-save")
    env = {**os.environ, faults.FAULT_DELAY_ENV: "0.3"}  # every step of a write takes 0.3 s longer
    with open(tmp_path / "log", "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(CLI), *map(str, argv)], stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 180
    while not (out.is_dir() and [p for p in out.iterdir() if p.name.startswith(f"{ckpt.STAGING_PREFIX}checkpoint")]):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # checkpoint-2 is being written in the background
    assert proc.wait(timeout=180) == EXIT_PREEMPTED
    text = (tmp_path / "log").read_text()
    last = text.strip().splitlines()[-1]
    match = re.match(r"stopped: SIGTERM received: saved checkpoint-(\d+) and exited with code 75", last)
    assert match, text[-3000:]
    step = int(match.group(1))
    assert ckmanifest.manifest_problems(out / f"checkpoint-{step}", verify_hashes=True) == [], text[-3000:]
    assert ckmanifest.find_latest(out, verify_hashes=True)[0].name == f"checkpoint-{step}"
    assert _no_staging(out) and "failed" not in text
    _assert_resumes_like_the_reference(reference, argv, out, step)


def test_ctrl_c_right_after_an_async_save_waits_for_both_writes(
    reference, tiny_model, small_csv, cache_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = _args(tiny_model, small_csv, cache_dir, out, "--async-save")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faults, "hook", lambda label: time.sleep(0.5) if label == "model written" else None)
        original = Trainer.maybe_log

        def maybe_log(self, force=False):  # Ctrl+C at step 3, checkpoint-2 still being written
            original(self, force)
            if self.state.global_step == 3 and not force:
                signal.raise_signal(signal.SIGINT)

        mp.setattr(Trainer, "maybe_log", maybe_log)
        code, err = _exit(argv, capsys)
    assert code == EXIT_PREEMPTED
    assert err[-1].startswith("stopped: SIGINT received: saved checkpoint-3 ")
    for step in (2, 3):  # committed when the process reports it, not some time later
        assert ckmanifest.manifest_problems(out / f"checkpoint-{step}", verify_hashes=True) == []
    assert _no_staging(out)
    _assert_resumes_like_the_reference(reference, argv, out, 3)


def test_a_second_ctrl_c_gives_up_the_async_write_in_flight(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    calls = []

    def hook(label):  # the preemption save of step 1 is half written when the second signal comes
        if label == "model written":
            calls.append(label)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.3)

    monkeypatch.setattr(faults, "hook", hook)
    original = Trainer.maybe_log

    def maybe_log(self, force=False):
        original(self, force)
        if self.state.global_step == 1 and not force:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "maybe_log", maybe_log)
    code, err = _exit(_args(tiny_model, small_csv, cache_dir, out, "--async-save"), capsys)
    assert code == 130 and "without a new checkpoint" in err[-1]
    assert calls and ckpt.list_checkpoints(out) == [] and _no_staging(out), sorted(p.name for p in out.iterdir())


# ---------------------------------------------------------------------------------------------
# every save gets the same guarantees


def test_async_saves_apply_save_total_limit(tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    assert run_training(*_args(tiny_model, small_csv, cache_dir, out, "--async-save", "--save-total-limit", 2)) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    assert all(ckmanifest.manifest_problems(p, verify_hashes=True) == [] for p in ckpt.list_checkpoints(out))


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_async_save_on_a_full_disk_stops_with_one_line_and_exit_4(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    monkeypatch.setattr(ckcommit, "write_checkpoint", _full_disk)
    code, err = _exit(_args(tiny_model, small_csv, cache_dir, out, "--async-save"), capsys)
    assert code == EXIT_SAVE
    assert err[-1].startswith("error: checkpoint-2 was not saved: the disk under ") and " is full " in err[-1]
    assert not [line for line in err if "Traceback" in line]
    assert ckpt.list_checkpoints(out) == []


@pytest.mark.parametrize("mode", [(), ("--async-save",)], ids=["sync", "async"])
def test_continue_trains_on_and_ends_with_exit_4_when_the_final_checkpoint_failed(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys, caplog, mode
):
    out = tmp_path / "run"
    monkeypatch.setattr(ckcommit, "write_checkpoint", _full_disk)
    code, err = _exit(_args(tiny_model, small_csv, cache_dir, out, "--on-save-error", "continue", *mode), capsys)
    assert code == EXIT_SAVE
    assert sorted(step_losses(out)) == list(range(1, 7))  # the run went on
    assert caplog.text.count("was not saved") >= 3  # a warning for each
    assert err[-1].startswith(
        "error: the final state was not saved (checkpoint-6): 3 of 3 checkpoints were not "
        "saved (checkpoint-2, checkpoint-4, checkpoint-6; the last because the disk under "
    )
    assert not [line for line in err if line.startswith("done:")]
    assert (out / ckpt.WEIGHTS).is_file() and ckpt.list_checkpoints(out) == []  # the final model is there


def test_the_final_model_is_staged_and_fsynced_before_it_is_moved_in(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    seen = {}

    def hook(label):
        if label == "final model written":
            staged = [p for p in out.iterdir() if p.name.startswith(ckpt.STAGING_PREFIX)]
            seen["staged"] = sorted(p.name for folder in staged for p in folder.iterdir())
            seen["in place"] = (out / ckpt.WEIGHTS).exists()

    monkeypatch.setattr(faults, "hook", hook)
    assert run_training(*_args(tiny_model, small_csv, cache_dir, out, "--max-steps", 2)) == 0
    assert {ckpt.WEIGHTS, ckpt.MODEL_CONFIG, "tokenizer.json"} <= set(seen["staged"])
    assert seen["in place"] is False  # nothing half-moved while it was being written
    assert (out / ckpt.WEIGHTS).is_file() and _no_staging(out)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl on a full disk


class _DiskFillsUp:
    """``open`` for the metrics module: appends fail half way with ENOSPC once ``ok`` records were written."""

    def __init__(self, ok: int):
        self.ok, self.failures = ok, 0
        self.real_open = open

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = self.real_open(file, mode, *args, **kwargs)
        return _Torn(handle, self) if "a" in mode else handle


class _Torn:
    def __init__(self, handle, disk_state: _DiskFillsUp):
        self.handle, self.disk = handle, disk_state

    def write(self, data):
        if not data:
            return 0
        if self.disk.ok > 0:
            self.disk.ok -= 1
            return self.handle.write(data)
        self.disk.failures += 1
        self.handle.write(data[: len(data) // 2])
        if hasattr(self.handle, "flush"):
            self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.handle.close()
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self.handle, name)


def _records_all_parse(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # a torn line would not parse


def test_metrics_on_a_full_disk_stop_with_exit_4_and_no_torn_line(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    monkeypatch.setattr(metrics_module, "open", _DiskFillsUp(ok=3), raising=False)  # start, steps 1 and 2
    code, err = _exit(_args(tiny_model, small_csv, cache_dir, out), capsys)
    assert code == EXIT_SAVE
    assert err[-1].startswith(f"error: {out / 'metrics.jsonl'} could not be written (No space left on device)")
    assert not [line for line in err if "Traceback" in line]
    assert [r["type"] for r in _records_all_parse(out / "metrics.jsonl")] == ["start", "train", "train"]


def test_metrics_on_a_full_disk_under_continue_warn_and_train_on(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    full = _DiskFillsUp(ok=3)
    monkeypatch.setattr(metrics_module, "open", full, raising=False)
    assert main(_args(tiny_model, small_csv, cache_dir, out, "--on-save-error", "continue")) == 0
    assert len(_records_all_parse(out / "metrics.jsonl")) == 3
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert caplog.text.count("could not be written (No space left on device)") == 1  # warned once
    assert f"{full.failures} records were not written to metrics.jsonl" in caplog.text  # and summed up
    assert full.failures >= 4


# ---------------------------------------------------------------------------------------------
# the manager on its own (no training)


class _Model:
    """What the manager needs of the model: weights, and writing them."""

    def __init__(self):
        self.weight = torch.arange(6.0)
        self.threads = []

    def state_dict(self) -> dict:
        self.threads.append(threading.current_thread())
        return {"weight": self.weight}

    def save(self, folder: Path, weights: dict) -> None:
        (folder / ckpt.MODEL_CONFIG).write_text("{}")
        (folder / ckpt.WEIGHTS).write_bytes(weights["weight"].numpy().tobytes())


class _Counter:
    def __init__(self):
        self.value, self.threads = 0, []

    def state_dict(self) -> dict:
        self.threads.append(threading.current_thread())
        return {"global_step": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["global_step"]


def _manager(root: Path, **kwargs) -> tuple[CheckpointManager, _Model, _Counter]:
    model, run = _Model(), _Counter()
    kwargs = {"checkpoint_bytes": 1000, "save_steps": 1, **kwargs}
    return CheckpointManager(root, model, {ckstate.RUN_STATE: run}, **kwargs), model, run


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_one_save_path_gathers_in_the_main_thread_writes_copies_and_applies_retention(tmp_path, async_save):
    manager, model, run = _manager(tmp_path, async_save=async_save, keep_last=2)
    with manager:
        for step in (1, 2, 3):
            run.value = step
            manager.save(step)
            model.weight.add_(1)  # training goes on while an async write is in flight
        assert manager.wait()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    for step in (2, 3):
        folder = tmp_path / f"checkpoint-{step}"
        assert ckmanifest.manifest_problems(folder, verify_hashes=True) == []
        assert ckstate.saved_step(ckstate.load_training_state(folder)) == step
        assert (folder / ckpt.WEIGHTS).read_bytes() == (torch.arange(6.0) + step - 1).numpy().tobytes()
    assert set(model.threads + run.threads) == {threading.main_thread()}  # collectives stay in the main thread
    assert manager.committed == [1, 2, 3]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_free_space_is_checked_before_every_save(tmp_path, monkeypatch, caplog, async_save):
    manager, _, _ = _manager(tmp_path, async_save=async_save, on_error="continue", checkpoint_bytes=10_000)
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)
    with manager:
        manager.save(9)
        manager.due(10)  # an async failure is acted on at the next step
        assert not manager.wait()
    assert "checkpoint-9 was not saved: not enough free space" in caplog.text and list(tmp_path.iterdir()) == []
    stop, _, _ = _manager(tmp_path, async_save=async_save, checkpoint_bytes=10_000)
    with pytest.raises(SaveError, match="checkpoint-9 was not saved: not enough free space"), stop:
        stop.save(9)
        stop.due(10)


def test_a_failing_rename_leaves_no_staging_and_stops_with_exit_4(tmp_path, monkeypatch):
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(ckpt.STAGING_PREFIX):
            raise PermissionError(errno.EACCES, "Access is denied", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    manager, _, _ = _manager(tmp_path)
    with pytest.raises(SaveError, match="checkpoint-7 was not saved: Access is denied") as err, manager:
        manager.save(7)
    assert err.value.exit_code == EXIT_SAVE and list(tmp_path.iterdir()) == []


def test_leaving_on_a_second_signal_gives_the_write_up(tmp_path, monkeypatch):
    started = threading.Event()

    def hook(label):
        if label == "model written":
            started.set()
            time.sleep(0.3)

    monkeypatch.setattr(faults, "hook", hook)
    manager, _, _ = _manager(tmp_path, async_save=True)
    with pytest.raises(KeyboardInterrupt), manager:
        manager.save(1)
        started.wait(10)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # no checkpoint-1, no staging folder


# ---------------------------------------------------------------------------------------------
# the data position refuses another sample order


def test_resume_with_another_seed_is_refused_unless_allowed(
    reference, tiny_model, small_csv, cache_dir, tmp_path, caplog
):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "checkpoint-2", out / "checkpoint-2")
    argv = _args(tiny_model, small_csv, cache_dir, out, "--resume-from-checkpoint", "latest", "--seed", 7)
    from chef_genius.errors import UserError

    with pytest.raises(UserError, match="seed") as err:
        run_training(*argv)
    assert err.value.exit_code == 2 and ckpt.list_checkpoints(out) == [out / "checkpoint-2"]
    assert run_training(*argv, "--allow-config-change", "--max-steps", "3") == 0
    assert "another sample order" in caplog.text and (out / "checkpoint-3").is_dir()
