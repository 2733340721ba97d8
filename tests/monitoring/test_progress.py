"""The progress display: a bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import io
import logging

from chef_genius.monitoring.progress import Progress, format_duration, use_bar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def record(step, loss=2.0, lr=1e-4):
    return {
        "type": "train",
        "step": step,
        "epoch": step / 10,
        "loss": loss,
        "step_losses": [loss, loss],
        "lr": lr,
        "tokens_per_s": 12345.0,
    }


def test_auto_mode_uses_a_bar_only_on_a_terminal():
    assert use_bar("auto", FakeTTY())
    assert not use_bar("auto", io.StringIO())
    assert use_bar("bar", io.StringIO())
    assert not use_bar("log", FakeTTY())


def test_durations_read_as_clock_times():
    assert format_duration(65) == "01:05"
    assert format_duration(3 * 3600 + 5) == "03:00:05"
    assert format_duration(2 * 86400 + 3600) == "2d 01:00:00"
    assert format_duration(None) == "?"


def test_without_a_terminal_each_logging_step_is_one_log_line(caplog):
    caplog.set_level(logging.INFO, logger="chef_genius")
    stream = io.StringIO()
    with Progress(total_steps=10, start_step=4, mode="auto", stream=stream, epochs=2) as progress:
        progress.step()
        progress.step()
        progress.report(record(6, loss=3.0))
    assert stream.getvalue() == ""  # no bar drawn
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("step 6/10 epoch 1/2 ")  # 0.6 epochs done: the first epoch, counted from 1
    assert "loss 3.0000" in lines[0] and "lr 1.000e-04" in lines[0] and "12.3k tok/s" in lines[0]
    assert "ETA " in lines[0] and "ETA ?" not in lines[0]


def test_bar_shows_step_total_and_windowed_loss(caplog):
    caplog.set_level(logging.INFO, logger="chef_genius")
    stream = FakeTTY()
    with Progress(total_steps=10, start_step=0, mode="auto", stream=stream, epochs=3) as progress:
        for _ in range(1, 5):
            progress.step()
        progress.report(record(2, loss=4.0))
        progress.report(record(4, loss=2.0))
    text = stream.getvalue()
    assert "4/10" in text
    assert "loss 3.0000" in text  # mean of the last steps, not just the last window
    assert "lr 1.00e-04" in text and "12.3k tok/s" in text and "epoch 1/3" in text
    assert not [r for r in caplog.records if r.getMessage().startswith("step ")]  # no duplicate log lines


def test_epochs_are_counted_from_1_and_stop_at_the_last():
    from chef_genius.monitoring.progress import epoch_label, epoch_of_step

    assert [epoch_of_step(x) for x in (0.0, 0.5, 1.0, 1.01, 2.99, 3.0)] == [1, 1, 1, 2, 3, 3]
    assert epoch_label(1, 3) == "1/3" and epoch_label(4, 3) == "3/3" and epoch_label(2) == "2"


def test_other_processes_show_nothing(caplog):
    caplog.set_level(logging.INFO, logger="chef_genius")
    stream = FakeTTY()
    with Progress(total_steps=10, mode="bar", enabled=False, stream=stream) as progress:
        progress.step()
        progress.report(record(1))
    assert stream.getvalue() == "" and not caplog.records


# ---------------------------------------------------------------------------------------------
# counted tasks: validation, generation, evaluation after training


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_counted_task_without_a_terminal_logs_rate_and_eta_every_30_seconds(caplog, monkeypatch):
    from chef_genius.monitoring import progress as progress_module

    monkeypatch.setattr(progress_module, "LINE_SECONDS", 30.0)
    caplog.set_level(logging.INFO, logger="chef_genius")
    clock = Clock()
    with progress_module.CountProgress("generating", 100, "log", unit="recipe", clock=clock) as progress:
        clock.now = 10.0
        progress.update(10)  # 10 s: too soon for a line
        clock.now = 31.0
        progress.update(31)  # 31 s: a line
        clock.now = 40.0
        progress.update(40)  # 9 s after it: none
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["generating: 31/100 recipes, 1.00 recipes/s, elapsed 00:31, ETA 01:09"]


def test_a_slow_unit_still_gets_its_line_from_the_timer(caplog, monkeypatch):
    import time
    from chef_genius.monitoring import progress as progress_module

    monkeypatch.setattr(progress_module, "LINE_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="chef_genius")
    with progress_module.CountProgress("validation", 4, "log", unit="batch") as progress:
        time.sleep(0.3)  # the first batch takes long: no update() comes
        progress.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[0].startswith("validation: 0/4 batches, 0.00 batches/s") and "ETA ?" in lines[0]


def test_a_counted_task_on_a_terminal_is_a_bar_and_no_log_line(caplog, monkeypatch):
    from chef_genius.monitoring import progress as progress_module

    monkeypatch.setattr(progress_module, "LINE_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="chef_genius")
    stream = FakeTTY()
    with progress_module.CountProgress("generating", 5, "auto", stream=stream) as progress:
        progress.update(5)
    assert "generating:" in stream.getvalue() and "/5 [" in stream.getvalue()  # the tqdm bar
    assert not caplog.records
