"""What a person watching a run sees: a progress bar on a terminal, plain log lines elsewhere.

On a terminal (``--progress auto`` and stderr is a TTY, or ``--progress bar``) a tqdm bar shows the
step, the ETA to the end of the run, and, refreshed at each ``--logging-steps``, the mean loss over
the last ``LOSS_WINDOW`` steps, the learning rate, tokens/s and the epoch. Log messages printed while
the bar runs go above it instead of breaking it. Anywhere else (a file, ``nohup``, a CI log, a
scheduler's captured output) the same numbers come as one plain log line per ``--logging-steps``.

Only the main process shows anything. The hot loop calls ``step()``, which is a counter increment
and a tqdm update that redraws at most every ``REFRESH_SECONDS``; numbers that need a host sync are
only handed over at logging steps, by the caller that already synced them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections import deque

log = logging.getLogger("chef_genius")

MODES = ("auto", "bar", "log")
LOSS_WINDOW = 100  # steps in the bar's mean loss
REFRESH_SECONDS = 0.5  # the bar redraws at most this often


def use_bar(mode: str, stream=None) -> bool:
    """True for a bar: asked for, or ``auto`` and both stdout and stderr are terminals."""
    if mode == "bar":
        return True
    if mode == "log":
        return False
    streams = [stream] if stream is not None else [sys.stdout, sys.stderr]
    return all(_is_tty(s) for s in streams)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float | None) -> str:
    """``1d 02:03:04`` / ``02:03:04`` / ``03:04``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(seconds, 0)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours or days else f"{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def epoch_label(number: int, epochs: int = 0) -> str:
    """``number`` (counted from 1, as every line a person reads counts epochs) of ``epochs``: ``1/3``."""
    return f"{min(number, epochs)}/{epochs}" if epochs else str(number)


def epoch_of_step(epochs_done: float) -> int:
    """The epoch (from 1) that the step which brought the run to ``epochs_done`` trained in
    (metrics.jsonl's fractional ``epoch``): 0.82 and 1.0 are the first epoch, 1.01 the second."""
    return max(1, math.ceil(epochs_done - 1e-9))


def format_count(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


class Progress:
    """Progress of one training session from ``start_step`` to ``total_steps``."""

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        mode: str = "auto",
        enabled: bool = True,
        stream=None,
        epochs: int = 0,
    ):
        self.total_steps = total_steps
        self.epochs = epochs
        self.start_step = start_step
        self.step_now = start_step
        self.enabled = enabled
        self.bar_mode = enabled and use_bar(mode, stream)
        self.stream = stream
        self.losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        self.started = time.perf_counter()
        self._bar = None
        self._redirect = contextlib.ExitStack()

    def __enter__(self) -> Progress:
        self.started = time.perf_counter()
        if self.bar_mode:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(
                total=self.total_steps,
                initial=self.start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=REFRESH_SECONDS,
                smoothing=0.05,
                file=self.stream or sys.stderr,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            )
            # Log lines (evaluation, checkpoints, warnings) are printed above the bar.
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger()], tqdm_class=tqdm))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._redirect.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def step(self) -> None:
        """One optimizer step done (called every step: no host sync, nothing formatted)."""
        self.step_now += 1
        if self._bar is not None:
            self._bar.update(1)

    def eta_seconds(self) -> float | None:
        """Seconds to the end of the run at this session's mean pace so far."""
        done = self.step_now - self.start_step
        if done <= 0:
            return None
        pace = (time.perf_counter() - self.started) / done
        return max(self.total_steps - self.step_now, 0) * pace

    def report(self, record: dict) -> None:
        """A ``{"type": "train"}`` metrics record of a logging step (values already on the host)."""
        if not self.enabled:
            return
        self.losses.extend(v for v in record.get("step_losses") or [record["loss"]] if v is not None)  # None: skipped
        if not self.losses:
            return
        mean = sum(self.losses) / len(self.losses)
        epoch = epoch_label(epoch_of_step(record["epoch"]), self.epochs)
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"loss {mean:.4f}, lr {record['lr']:.2e}, {format_count(record['tokens_per_s'])} tok/s, epoch {epoch}",
                refresh=False,
            )
            return
        log.info(
            "step %d/%d epoch %s loss %.4f (mean of last %d: %.4f) lr %.3e %s tok/s ETA %s",
            record["step"],
            self.total_steps,
            epoch,
            record["loss"] if record["loss"] is not None else math.nan,
            len(self.losses),
            mean,
            record["lr"],
            format_count(record["tokens_per_s"]),
            format_duration(self.eta_seconds()),
        )


LINE_SECONDS = 30.0  # without a bar, a counted task logs a line at least this often


class CountProgress:
    """Progress of a counted task outside the training steps (validation, generating, scoring,
    tokenizing): a tqdm bar on a terminal, else a log line with rate and ETA at least every
    ``LINE_SECONDS``, also while one slow unit (a batch of long recipes on a CPU) is still running: a
    background timer writes it. ``total`` None: not known ahead (the line then shows the count and
    the rate)."""

    def __init__(
        self,
        what: str,
        total: int | None,
        mode: str = "auto",
        enabled: bool = True,
        unit: str = "recipe",
        stream=None,
        clock=time.perf_counter,
        plural: str | None = None,
    ):
        self.what, self.total, self.unit, self.enabled, self.clock = what, total, unit, enabled, clock
        self.units = plural or unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")
        self.bar_mode = enabled and use_bar(mode, stream)
        self.stream = stream
        self.done = 0
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def __enter__(self) -> CountProgress:
        self.started = self.last_line = self.clock()
        if self.bar_mode:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.what,
                unit=self.unit,
                leave=False,
                dynamic_ncols=True,
                mininterval=REFRESH_SECONDS,
                file=self.stream or sys.stderr,
            )
        elif self.enabled:
            self._timer = threading.Thread(target=self._heartbeat, name="count-progress", daemon=True)
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def update(self, done: int) -> None:
        """``done`` of ``total`` finished so far."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(done - self.done)
        with self._lock:
            self.done = done
        self._maybe_line()

    def _maybe_line(self) -> None:
        with self._lock:
            now = self.clock()
            if (
                self._bar is not None
                or now - self.last_line < LINE_SECONDS
                or (self.total is not None and self.done >= self.total)
            ):
                return
            self.last_line = now
            text = self.line(now)
        log.info("%s", text)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(max(LINE_SECONDS, 0.01), 1.0)):
            self._maybe_line()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total is None:
            return (
                f"{self.what}: {self.done} {self.units}, {rate:.2f} {self.units}/s, elapsed {format_duration(elapsed)}"
            )
        eta = (self.total - self.done) / rate if rate > 0 else None
        return (
            f"{self.what}: {self.done}/{self.total} {self.units}, {rate:.2f} {self.units}/s, "
            f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}"
        )
