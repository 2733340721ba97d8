"""Preemption: a first stop signal saves and exits 75, a second aborts at once (130) without a
checkpoint that looks complete; --save-every-minutes saves on wall-clock time."""

from __future__ import annotations

import signal
import time

import pytest

from chef_genius.checkpoint import format as ckpt
from chef_genius.checkpoint import faults
from chef_genius.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, run_cli
from chef_genius.train.cli import main
from chef_genius.train.trainer import Trainer
from conftest import train_args

QUICK = ("--max-steps", 6, "--max-source-length", 32, "--max-target-length", 64, "--eval-steps", 100)


def _signal_at_step(monkeypatch, step, sig=signal.SIGINT):
    """Send ``sig`` to this process (as Ctrl+C or a scheduler would) while step ``step`` is logged."""
    original = Trainer.maybe_log

    def maybe_log(self, force=False):
        original(self, force)
        if self.state.global_step == step and not force:
            signal.raise_signal(sig)
    monkeypatch.setattr(Trainer, "maybe_log", maybe_log)


def _exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_ctrl_c_finishes_the_step_saves_and_exits_75(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _signal_at_step(monkeypatch, 3)
    code, line = _exit_code(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--save-steps", 2), capsys)
    assert code == EXIT_PREEMPTED
    assert line.startswith("stopped: SIGINT received: saved checkpoint-3 ")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert ckpt.manifest_problems(out / "checkpoint-3", verify_hashes=True) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_second_signal_aborts_without_a_complete_looking_checkpoint(tiny_model, small_csv, cache_dir, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "run"
    _signal_at_step(monkeypatch, 3, signal.SIGTERM)

    def second_signal(label):
        if label == "model written":  # the preemption save of step 3 is half done
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.5)  # and has more to write (it runs in the writer thread, the signal in the main one)
    monkeypatch.setattr(faults, "hook", second_signal)
    code, line = _exit_code(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--save-steps", 100), capsys)
    assert code == EXIT_INTERRUPTED
    assert "without a new checkpoint" in line
    assert ckpt.list_checkpoints(out) == []
    assert not [p for p in out.iterdir() if p.name.startswith(ckpt.STAGING_PREFIX)]


def test_save_every_minutes_saves_on_wall_clock_time(tiny_model, small_csv, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--max-steps", 3, "--save-steps", 1000,
                      "--save-every-minutes", 1e-6)
    assert main(argv) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
