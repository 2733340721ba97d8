"""Preemption: stop cleanly on SIGTERM, Ctrl+C (SIGINT), SIGUSR1 (Slurm's notice before a time limit or
a preemption, ``#SBATCH --signal=B:USR1@300``) and, on Windows, CTRL_BREAK (SIGBREAK).

The first signal only sets a flag. The training loop reads it once per optimizer step (an attribute
read), so the step in progress finishes, a checkpoint is committed and the process exits with
``EXIT_PREEMPTED`` (75): spot/preemptible VMs, Slurm and Kubernetes send SIGTERM and allow a grace
period before SIGKILL. An evaluation reads it between validation batches and after every generated
token, and is abandoned: the stop never waits for a validation pass or for ``--eval-generate``. A second signal
aborts at once (``KeyboardInterrupt`` -> exit 130): a save in progress removes its staging folder, so
no ``checkpoint-N`` that looks complete is left behind; once the stop's checkpoint is committed a
further signal changes nothing (the exit with 75 is already under way, and its line stays true).

Before training starts there is nothing to save: ``abort_on_signal`` (around the setup: first-time
tokenization, loading) turns the first signal into ``StoppedInSetup`` (exit 7), raised where the main
thread is, so every cleanup on the way out runs (the tokenizing workers are ended, the cache's
staging folder removed); further signals are ignored while that cleanup runs.

DataLoader workers ignore these signals (Ctrl+C reaches the whole process group): the main process
decides when to stop and shuts its workers down itself.

Leaving the context puts back the handlers found on entering it, whatever they were (Python's
default, ``SIG_IGN`` in a background job, a calling program's own), also when training raised.

``--requeue-on-preemption`` (Slurm): once the stop's checkpoint is committed (and on the mirror, when
there is one), ``requeue_slurm_job`` runs ``scontrol requeue`` for this job, so it starts again later
and resumes with ``--auto-resume``. Slurm then ends this job with SIGTERM: from that point on a signal
is only noted (``Preemption.settled``), it no longer aborts the exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading

from chef_genius.errors import StoppedInSetup

log = logging.getLogger("chef_genius")


def stop_signals() -> list[signal.Signals]:
    names = ["SIGTERM", "SIGINT", "SIGUSR1"] + (["SIGBREAK"] if sys.platform == "win32" else [])
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


class Preemption:
    """Signal handlers that turn the first stop signal into a flag; a context manager."""

    def __init__(self):
        self.signal_name: str | None = None
        self.settled = False  # the stop's checkpoint is committed: later signals are only noted
        self._previous: dict = {}
        self._depth = 0  # entered again (the CLI holds it past the loop, until the run folder is given back)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> Preemption:
        self._depth += 1
        if self._depth > 1:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: stop signals keep their default handlers")
            return self
        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        _restore(self._previous)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.settled:
            log.info("%s received while exiting; the checkpoint is already committed", name)
            return
        if self.signal_name is not None:
            log.warning("second stop signal (%s): aborting now without a checkpoint", name)
            raise KeyboardInterrupt
        self.signal_name = name
        log.warning(
            "%s received: finishing this step (an evaluation in progress is abandoned), saving a "
            "checkpoint, then exiting (send it again to abort at once without saving)",
            name,
        )


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        # None: a handler installed outside Python, which Python cannot put back; the OS default
        # is closer to it than leaving this run's handler behind.
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    previous.clear()


@contextlib.contextmanager
def abort_on_signal(what: str):
    """While ``what`` runs (before any step, so nothing to save), the first stop signal raises
    ``StoppedInSetup`` in the main thread; later ones are logged and ignored, so the cleanup that the
    exception sets off is not cut short. The handlers found are back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[str] = []

    def handle(signum, frame) -> None:
        name = signal.Signals(signum).name
        if received:
            log.warning("%s received: already stopping, cleaning up", name)
            return
        received.append(name)
        raise StoppedInSetup(
            f"{name} received while {what}: nothing to save yet, nothing half-built kept; "
            "run the same command again to start over"
        )

    previous = {sig: signal.signal(sig, handle) for sig in stop_signals()}
    try:
        yield
    finally:
        _restore(previous)


def slurm_job_id() -> str | None:
    """This Slurm job's id for ``scontrol`` (an array task's ``JOBID_TASK``), None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this job (after the stop's checkpoint is committed); one line either way.
    Returns whether Slurm accepted it."""
    job = slurm_job_id()
    if job is None:
        log.warning("--requeue-on-preemption: not a Slurm job (no SLURM_JOB_ID), nothing requeued")
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("--requeue-on-preemption: scontrol requeue %s failed (%s); requeue the job by hand", job, err)
        return False
    if done.returncode != 0:
        log.warning(
            "--requeue-on-preemption: scontrol requeue %s failed (exit %d: %s); requeue the job by hand",
            job,
            done.returncode,
            " ".join(done.stderr.split())[:200],
        )
        return False
    log.info("requeued Slurm job %s (scontrol requeue): it resumes from this checkpoint when it starts again", job)
    return True


def agree(accelerator, *flags: bool) -> tuple[bool, ...]:
    """The flags OR-ed over all processes, so every rank stops / saves at the same step. One
    process: returned as they are (no collective, no host sync)."""
    if accelerator.num_processes == 1:
        return flags
    import torch

    values = torch.tensor([float(f) for f in flags], device=accelerator.device)
    values = accelerator.reduce(values, reduction="sum")
    return tuple(bool(v > 0) for v in values.tolist())


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave stop signals to the main process."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)
