"""``--checkpoint-mirror URL``: every committed checkpoint copied to a second place, in the background.

A component of the checkpoint manager (``manager.py``), not a second save path: the manager commits a
checkpoint locally as always, then hands its folder to ``Mirror.submit`` (it only queues the folder: the
training thread never waits for the store). One background thread uploads it (``remote.py``: hashed
on the way, read back and hashed again, the manifest last), then applies ``--save-total-limit`` to
the mirror as to the run folder (``retention.select_for_deletion``: the newest K complete ones, the
best, the one the run resumed from, and the one just uploaded are kept).

- At most one upload runs and one waits: a checkpoint committed while another waits replaces it (one
  line says so), so a slow store never makes a queue, and the mirror's newest is as new as it can be.
  A local checkpoint being uploaded, or waiting, is never deleted by the local retention meanwhile.
- Each store operation is tried ``Retry.attempts`` times with a doubling wait (1 s, 2 s, 4 s, 8 s); the
  first failure of a checkpoint is logged once, the retries are quiet. A checkpoint still not mirrored
  after that is a failure for ``--on-save-error`` (``stop``: exit 4 at the next step; ``continue``: one
  warning), and the end of the run sums the failures up. The local run is never touched by a failure.
- The stall: none while training. When the run ends (its end, a stop signal) it waits for the upload
  in flight, at most ``FINAL_WAIT_SECONDS`` (600 s; a second stop signal ends the wait at once). An
  upload cut short leaves a remote folder without a manifest, which nothing resumes from.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint.health import health_problem
from chef_genius.checkpoint.remote import RemoteError, RemoteStore, Retry, describe
from chef_genius.checkpoint.retention import select_for_deletion
from chef_genius.checkpoint.training_state import load_training_state

log = logging.getLogger("chef_genius")

FINAL_WAIT_SECONDS = 600.0
_POLL_SECONDS = 0.1


@dataclass
class MirrorFailure:
    what: str  # "checkpoint-N"
    step: int | None  # None: a resume source not named checkpoint-N
    reason: str


@dataclass
class _Work:
    path: Path
    step: int | None  # None: a resume source not named checkpoint-N
    retried: list[str] = field(default_factory=list)


class Mirror:
    """Uploads committed checkpoints to ``store`` in one background thread (see the module docstring)."""

    def __init__(
        self,
        store: RemoteStore,
        keep_last: int = 0,
        best_step: Callable[[], int | None] = lambda: None,
        resumed_step: int | None = None,
        retry: Retry | None = None,
    ):
        self.store = store
        self.keep_last = keep_last
        self.best_step = best_step
        self.resumed_step = resumed_step  # kept on the mirror by retention, like the local resume source
        self.retry = retry or Retry()
        # the steps below are None for a resume source not named checkpoint-N
        self.mirrored: list[int | None] = []  # steps uploaded (or found there already) by this session
        self.failures: list[MirrorFailure] = []  # every checkpoint not mirrored
        self.skipped: list[int | None] = []  # replaced by a newer one before their upload began
        self.healthy: set[int | None] = set()  # uploaded steps whose health record says finite numbers
        self._new_failures: list[MirrorFailure] = []
        self._lock = threading.Lock()
        self._waiting: _Work | None = None
        self._running: _Work | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the manager's side -----------------------------------------------------------------------

    def submit(self, path: Path) -> None:
        """Queue the committed checkpoint ``path`` for upload (replaces one still waiting)."""
        work = _Work(Path(path), ckpt.step_of(path))
        with self._lock:
            if self._waiting is not None:
                self.skipped.append(self._waiting.step)
                log.info(
                    "mirror: %s is not uploaded, %s replaces it (the store is slower than the saves)",
                    self._waiting.path.name,
                    work.path.name,
                )
            self._waiting = work
            self._idle.clear()
            thread = None
            if self._thread is None:
                self._closed = False
                thread = self._thread = threading.Thread(target=self._run, name="chef-genius-mirror", daemon=True)
        if thread is not None:
            thread.start()
        self._wake.set()

    def busy(self) -> list[Path]:
        """The local checkpoints the mirror still reads (being uploaded or waiting): kept locally."""
        with self._lock:
            return [w.path for w in (self._running, self._waiting) if w is not None]

    def take_failures(self) -> list[MirrorFailure]:
        """The failures since the last call (for ``--on-save-error``)."""
        with self._lock:
            new, self._new_failures = self._new_failures, []
        return new

    def drain(self, timeout: float = FINAL_WAIT_SECONDS) -> bool:
        """Wait for the uploads submitted so far, at most ``timeout`` seconds (polling, so that a signal's
        handler runs). Returns whether they are done."""
        deadline = time.monotonic() + timeout
        announced = False
        while not self._idle.wait(_POLL_SECONDS):
            if not announced:
                log.info(
                    "waiting for the mirror to finish uploading %s (at most %.0f s)",
                    ", ".join(p.name for p in self.busy()),
                    timeout,
                )
                announced = True
            if time.monotonic() >= deadline:
                return False
        return True

    def close(self) -> None:
        """Let the thread end once it has nothing left to upload (it never blocks the caller)."""
        with self._lock:
            self._closed = True
        self._wake.set()

    def has(self, step: int) -> bool:
        return step in self.mirrored

    def summary(self, final_step: int | None) -> str:
        """One clause on what did not reach the mirror ("" when everything did)."""
        parts = []
        if self.failures:
            parts.append(
                f"{len(self.failures)} checkpoint(s) did not reach the mirror {self.store.url} "
                f"({', '.join(f.what for f in self.failures)}; the last because {self.failures[-1].reason})"
            )
        if final_step is not None and not self.has(final_step) and final_step not in [f.step for f in self.failures]:
            parts.append(
                f"{ckpt.PREFIX}{final_step} is not on the mirror {self.store.url} (its upload did not finish in time)"
            )
        return "; ".join(parts)

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                work, self._waiting = self._waiting, None
                self._running = work
                if work is None:
                    self._idle.set()
                    if self._closed:
                        self._thread = None
                        return
                    continue
            try:
                self._upload(work)
            except Exception as err:  # a bug must not end the thread silently
                log.debug("mirror thread", exc_info=True)
                self._fail(work, describe(err))
            finally:
                with self._lock:
                    self._running = None
                    if self._waiting is None:
                        self._idle.set()
                    else:
                        self._wake.set()

    def _upload(self, work: _Work) -> None:
        began = time.perf_counter()
        try:
            sent = self.store.upload(work.path, self.retry, lambda err: self._retrying(work, err))
        except RemoteError as err:
            self._fail(work, str(err))
            return
        with self._lock:
            self.mirrored.append(work.step)
            if _recorded_healthy(work.path):
                self.healthy.add(work.step)
        if sent:
            seconds = time.perf_counter() - began
            log.info(
                "mirrored %s to %s (%.1f MB in %.1fs, every file read back and verified)",
                work.path.name,
                self.store.where(work.path.name),
                sent / 1e6,
                seconds,
            )
        self._retention(work)

    def _retrying(self, work: _Work, err: Exception) -> None:
        if not work.retried:
            log.info("mirror: copying %s failed (%s); retrying with backoff", work.path.name, describe(err))
        work.retried.append(describe(err))

    def _fail(self, work: _Work, reason: str) -> None:
        failure = MirrorFailure(work.path.name, work.step, reason)
        with self._lock:
            self.failures.append(failure)
            self._new_failures.append(failure)

    def _retention(self, work: _Work) -> None:
        """``--save-total-limit`` on the mirror: only complete remote checkpoints count and are deleted."""
        if self.keep_last <= 0:
            return
        try:
            listed = self.retry(self.store.objects)
            complete = [
                ckpt.checkpoint_step(name) for name, files in listed.items() if self.store.problem(name, files) is None
            ]
            protected = {step for step in (work.step, self.resumed_step) if step is not None}
            healthy = [step for step in complete if step in self.healthy]
            protected |= {max(healthy)} if healthy else set()  # as locally: the newest with finite numbers
            for step in select_for_deletion(complete, self.keep_last, self.best_step(), protected):
                name = f"{ckpt.PREFIX}{step}"
                self.retry(functools.partial(self.store.delete, name))
                log.info("mirror: deleted %s (--save-total-limit %d)", name, self.keep_last)
        except (RemoteError, OSError) as err:  # kept, tried again after the next upload
            log.warning("mirror: retention could not finish (%s); the older checkpoints are kept for now", err)


def _recorded_healthy(folder: Path) -> bool:
    """Whether the local checkpoint's health record says its numbers are finite (the record only)."""
    try:
        return health_problem(folder, load_training_state(folder, mmap=True), check_numbers=False) is None
    except ckpt.CheckpointError:
        return False
