"""Preemption: a first stop signal saves and exits 75, a second aborts at once (130) without a
checkpoint that looks complete; --save-every-minutes saves on wall-clock time; the signal handlers
found before the run are back after it."""

from __future__ import annotations

import signal
import time

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import faults
from chef_genius.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, run_cli
from chef_genius.train.cli import main
from chef_genius.train.preemption import Preemption, stop_signals
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


def _handlers() -> dict:
    return {sig: signal.getsignal(sig) for sig in stop_signals()}


def test_ctrl_c_finishes_the_step_saves_and_exits_75(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    found = _handlers()  # Python's default, or SIG_IGN when the suite runs as a background job / nohup
    _signal_at_step(monkeypatch, 3)
    code, line = _exit_code(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--save-steps", 2), capsys)
    assert code == EXIT_PREEMPTED
    assert line.startswith("stopped: SIGINT received: saved checkpoint-3 ")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert ckmanifest.manifest_problems(out / "checkpoint-3", verify_hashes=True) == []
    assert _handlers() == found  # the handlers the run found are back


def test_second_signal_aborts_without_a_complete_looking_checkpoint(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys
):
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
    argv = train_args(
        tiny_model,
        small_csv,
        out,
        cache_dir,
        *QUICK,
        "--max-steps",
        3,
        "--save-steps",
        1000,
        "--save-every-minutes",
        1e-6,
    )
    assert main(argv) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


@pytest.mark.parametrize("found", ["custom", signal.SIG_IGN, signal.SIG_DFL], ids=["custom", "SIG_IGN", "SIG_DFL"])
def test_the_handlers_found_are_restored_even_when_the_run_fails(found):
    """An embedding program's own handler, SIG_IGN (background job, nohup) or the OS default: whatever
    the trainer found is back afterwards, also when training raised."""

    def custom(signum, frame):
        pass

    wanted = custom if found == "custom" else found
    outside = _handlers()
    try:
        for sig in stop_signals():
            signal.signal(sig, wanted)
        with pytest.raises(RuntimeError):
            with Preemption() as stop:
                assert all(handler == stop._handle for handler in _handlers().values())
                signal.raise_signal(signal.SIGTERM)  # the first signal only sets the flag
                assert stop.signal_name == "SIGTERM"
                raise RuntimeError("training failed")
        assert _handlers() == {sig: wanted for sig in stop_signals()}
    finally:
        for sig, handler in outside.items():
            signal.signal(sig, handler)


def test_a_handler_installed_outside_python_gives_way_to_the_default(monkeypatch):
    """``signal.signal`` answers None for a handler Python did not install (an embedding program's):
    it cannot be put back, so the OS default is, not this run's handler and not a TypeError."""
    real, outside = signal.signal, _handlers()
    monkeypatch.setattr(signal, "signal", lambda sig, handler: (real(sig, handler), None)[1])
    try:
        with Preemption():
            pass
        assert _handlers() == {sig: signal.SIG_DFL for sig in stop_signals()}
    finally:
        for sig, handler in outside.items():
            real(sig, handler)
