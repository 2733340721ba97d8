"""The checkpoint manager: the one object that saves and restores a run.

A run registers its stateful components under the names of the format's slices (``format.SLICES``:
run state, data position, optimizer, LR schedule, RNG of every process, reporters, settings), each
with ``state_dict()`` / ``load_state_dict()``, and a ``ModelFiles`` for the weights, which writes them
as ``save_pretrained`` does (safetensors) with the tokenizer, hashing each file as it writes it. The
manager knows nothing of training; the trainer knows nothing of ``training_state.pt``.

One save path. Every save, synchronous or ``--async-save``:
1. waits for the save in flight (there is at most one);
2. gathers every component's state on every process, in the main thread (under FSDP these are
   the collectives that assemble the full state on rank 0);
3. checks the free space (rank 0, as every step below);
4. async only: copies the state to CPU buffers, so training can go on;
5. hands the write to the writer thread: staging folder, fsync, manifest, rename
   (``commit.write_checkpoint``); then learns the real checkpoint size and applies
   ``--save-total-limit`` (newest K, the best, the resume source), only now that the new one is safe;
6. sync only: waits for it. A synchronous save is the asynchronous one followed by a wait.

A failed save (full disk, permissions, too little space) follows ``--on-save-error``: ``stop`` ends
the run with one line and exit code 4 (``SaveError``) at the first point where every process learns
of it (at once for a sync save; the next step for an async one); ``continue`` logs a warning, trains
on, and ``finish`` sums the failures up, ending with exit code 4 when the final state was not saved.
No exit reports a checkpoint the manager has not seen committed: ``wait`` is how the trainer learns
it, and leaving the manager's ``with`` block waits for a write still in flight (a second Ctrl+C
gives it up instead: the write stops at its next step and removes its staging folder). The final
model goes through the same writer, staging and fsync (``commit.write_final_model``).

With ``--checkpoint-mirror``, a ``Mirror`` (``mirror.py``, main process) is one more component of the
same path: step 5 hands it each committed checkpoint to upload in its own thread (the local retention
keeps what it still reads); its failures follow ``--on-save-error`` like a failed write, and ``finish``
waits for it (bounded) and ends with exit code 4 when the final checkpoint did not reach the mirror.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, overload
from collections.abc import Callable, Iterable

import torch

from chef_genius.checkpoint import disk
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint.async_writer import AsyncCheckpointer
from chef_genius.checkpoint.mirror import FINAL_WAIT_SECONDS, Mirror
from chef_genius.checkpoint.retention import apply_retention
from chef_genius.errors import SaveError

log = logging.getLogger("chef_genius")


class Stateful(Protocol):
    def state_dict(self): ...

    def load_state_dict(self, state): ...  # may return a few words on what it restored, for the log


class ModelFiles(Protocol):
    def state_dict(self) -> dict: ...  # the full weights (a collective under FSDP)

    def save(self, folder: Path, weights: dict) -> dict[str, str] | None: ...  # the model files; their sha256

    # optional, for a final model unlike a checkpoint's files (a LoRA run's merged model); default: the above
    # def final_state_dict(self) -> dict: ...
    # def save_final(self, folder: Path, weights: dict) -> None: ...


class SingleProcess:
    """The world of a run on one process (the trainer passes its own for several)."""

    is_main = True

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        return flags

    agree_late = agree  # one process: nothing to wait for, the vote is this step's


@dataclass
class LoadedCheckpoint:
    """A checkpoint read for a resume: its slices, one per component, and how it was written."""

    path: Path
    slices: dict
    world_size: int
    torch_num_threads: int | None

    @property
    def global_step(self) -> int:
        return int(self.slices[ckstate.RUN_STATE]["global_step"])

    @property
    def settings(self) -> dict:
        """The run settings saved with it (every flag, steps per epoch, world size...)."""
        return self.slices[ckstate.SETTINGS]


@overload
def read_checkpoint(path: Path) -> LoadedCheckpoint: ...
@overload
def read_checkpoint(path: None) -> None: ...
@overload
def read_checkpoint(path: Path | None) -> LoadedCheckpoint | None: ...
def read_checkpoint(path: Path | None) -> LoadedCheckpoint | None:
    """The checkpoint at ``path`` (None: a fresh run). Loaded with ``weights_only=True``."""
    if path is None:
        return None
    state = ckstate.load_training_state(path)
    return LoadedCheckpoint(
        Path(path),
        ckstate.unpack_training_state(state),
        ckstate.saved_world_size(state),
        state.get("torch_num_threads"),
    )


@dataclass
class _Outcome:
    what: str  # "checkpoint-N" or "the final model"
    step: int | None  # None for the final model
    path: Path | None = None  # where it was committed; None when it was not
    reason: str | None = None  # why not

    @property
    def ok(self) -> bool:
        return self.path is not None


class CheckpointManager:
    def __init__(
        self,
        output: Path,
        model: ModelFiles,
        components: dict[str, Stateful],
        *,
        world=None,
        async_save: bool = False,
        on_error: str = "stop",
        save_steps: int = 1000,
        save_every_minutes: float = 0.0,
        keep_last: int = 0,
        best_step: Callable[[], int | None] | None = None,
        checkpoint_bytes: int = 0,
        model_bytes: int = 0,
        mirror: Mirror | None = None,
    ):
        unknown = set(components) - set(ckstate.SLICES)
        if unknown:
            raise ValueError(f"no slice of the checkpoint format is named {sorted(unknown)}")
        self.output = Path(output)
        self.model = model
        self.components = components
        self.world = world or SingleProcess()
        self.async_save = async_save
        self.on_error = on_error
        self.save_steps = save_steps
        self.save_every_minutes = save_every_minutes
        self.keep_last = keep_last
        self.best_step: Callable[[], int | None] = best_step or (lambda: None)
        self.checkpoint_bytes = checkpoint_bytes  # an estimate; the real size once a checkpoint is written
        self.model_bytes = model_bytes
        self.mirror = mirror  # main process only
        self.resumed_from: Path | None = None
        self.last_step: int | None = None  # the newest step a save was started for
        self.committed: list[int] = []  # steps committed by this session
        self.failures: list[_Outcome] = []
        self._writer = AsyncCheckpointer()
        self._outcome: _Outcome | None = None  # of the write in flight
        self._unsettled: list[_Outcome] = []  # finished, not yet acted on
        self._unvoted_failures: list[_Outcome] = []  # failures the late stop vote has not reported yet
        self._cancel = threading.Event()
        self._last_save_clock = time.monotonic()

    # -----------------------------------------------------------------------------------------
    # restoring

    def restore(self, loaded: LoadedCheckpoint) -> list[str]:
        """Hand each component its slice; returns what they say they restored (for the log)."""
        restored = []
        for name, component in self.components.items():
            said = component.load_state_dict(loaded.slices[name])
            if isinstance(said, str):
                restored.append(said)
        self.resumed_from = loaded.path
        self.last_step = loaded.global_step  # it is on disk: no save again at that step
        if self.mirror is not None:  # on the mirror too (a no-op when it is there already)
            self.mirror.resumed_step = loaded.global_step
            self.mirror.submit(loaded.path)
        if loaded.torch_num_threads and loaded.torch_num_threads != torch.get_num_threads():
            log.warning(
                "the checkpoint was written with %d torch threads, this run has %d: CPU losses will not "
                "be bitwise equal to an uninterrupted run",
                loaded.torch_num_threads,
                torch.get_num_threads(),
            )
        return restored

    # -----------------------------------------------------------------------------------------
    # when to save

    def __enter__(self) -> CheckpointManager:
        self._last_save_clock = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.mirror is not None:
            self.mirror.close()  # its thread ends after the upload in flight (finish and a stop waited for it)
        if exc_type is None:
            return
        if issubclass(exc_type, KeyboardInterrupt):  # a second stop signal: give the write in flight up
            self._cancel.set()
        try:
            self._collect(block=True)
        except BaseException as err:  # never hide the exception that is ending the run
            log.debug("the write in flight ended with %r while the run stopped", err)
        for outcome in self._unsettled:
            if not outcome.ok and not self._cancel.is_set():
                log.warning("%s was not saved: %s", outcome.what, outcome.reason)
        self._unsettled.clear()

    def due(self, step: int, stop_requested: bool = False) -> tuple[bool, bool]:
        """Once per optimizer step, on every process: (stop now, save now), the same on all of them.
        A save that failed in the background is acted on here (``--on-save-error``)."""
        if self.world.is_main:
            self._collect(block=False)
        failed_here = self._record() + self._mirror_failures()
        self._unvoted_failures += failed_here
        clock_due = (
            bool(self.save_every_minutes) and time.monotonic() - self._last_save_clock >= 60 * self.save_every_minutes
        )
        # Several processes: the vote cast at the previous step (no host wait on the step just queued);
        # every process reads the same one, so all stop / save at the same step, one step late.
        stop, clock_due, failed = self.world.agree_late(stop_requested, clock_due, bool(failed_here))
        if failed:
            failed_here, self._unvoted_failures = self._unvoted_failures, []
            self._act(failed, failed_here)
        save = stop or clock_due or step % self.save_steps == 0
        return stop, save and self.last_step != step

    # -----------------------------------------------------------------------------------------
    # saving

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (every process calls it; see the module docstring for the steps)."""
        if self.world.is_main:
            self._collect(block=True)  # one write in flight at most
        slices = {name: component.state_dict() for name, component in self.components.items()}
        weights = self.model.state_dict()
        if self.world.is_main:
            self._start(step, slices, weights)
        self.last_step = step
        self._last_save_clock = time.monotonic()
        if not self.async_save:
            self.wait()

    def _start(self, step: int, slices: dict, weights: dict) -> None:
        outcome = _Outcome(f"{ckpt.PREFIX}{step}", step)
        problem = disk.space_problem(self.output, self.checkpoint_bytes)
        if problem:
            outcome.reason = problem
            self._unsettled.append(outcome)
            return
        state = ckstate.pack_training_state(slices)
        if self.async_save:
            began = time.perf_counter()
            weights, state = self._writer.snapshot(weights, "model"), self._writer.snapshot(state, "state")
            log.info(
                "copied %s to CPU memory in %.2fs; writing it in the background",
                outcome.what,
                time.perf_counter() - began,
            )
        best, protected = self.best_step(), [self.resumed_from]

        def write() -> None:
            began = time.perf_counter()
            self._attempt(
                outcome,
                self.checkpoint_bytes,
                lambda: ckcommit.write_checkpoint(
                    self.output, step, lambda folder: self.model.save(folder, weights), state, self._cancel.is_set
                ),
            )
            if not outcome.ok:
                return
            assert outcome.path is not None  # set by every save that succeeded
            log.info(
                "saved %s in %.1fs%s",
                outcome.what,
                time.perf_counter() - began,
                " (background)" if self.async_save else "",
            )
            manifest = ckmanifest.read_manifest(outcome.path) or {"files": {}}
            actual = sum(entry.get("size", 0) for entry in manifest["files"].values())
            self.checkpoint_bytes = max(self.checkpoint_bytes, actual)
            kept = list(protected)
            if self.mirror is not None:
                self.mirror.submit(outcome.path)
                kept += self.mirror.busy()  # what it still reads stays on disk
            apply_retention(self.output, self.keep_last, best, kept)

        self._outcome = outcome
        self._writer.submit(write, outcome.what)

    def _attempt(self, outcome: _Outcome, needed: int, write: Callable[[], Path]) -> None:
        """Run ``write`` (in the writer thread): its path, or why it failed, goes into ``outcome``."""
        try:
            outcome.path = write()
        except ckpt.SaveCancelled:
            outcome.reason = "given up on a second stop signal"
        except Exception as err:  # OSError, torch's RuntimeError, safetensors' errors: all mean "not saved"
            log.debug("writing %s failed", outcome.what, exc_info=True)
            outcome.reason = disk.describe_failure(err, self.output, needed)

    def _collect(self, block: bool) -> None:
        """Move the outcome of a finished write (waiting for it if ``block``) to the unsettled ones."""
        if self._outcome is None or (not block and self._writer.in_flight):
            return
        try:
            self._writer.wait()
        finally:
            if not self._writer.in_flight:  # else interrupted while waiting (a second stop signal)
                self._unsettled.append(self._outcome)
                self._outcome = None

    def wait(self) -> bool:
        """Wait for the save in flight (every process calls it). Returns whether the newest save this
        run started is committed; a failure is acted on first (``--on-save-error``)."""
        if self.world.is_main:
            self._collect(block=True)
        failed_here = self._record()
        missing_here = self.world.is_main and self.last_step is not None and not self._has(self.last_step)
        failed, missing = self.world.agree(bool(failed_here), missing_here)
        self._act(failed, failed_here)
        return not missing

    def _mirror_failures(self) -> list[_Outcome]:
        """Checkpoints the mirror could not upload since the last call, as failed saves."""
        if self.mirror is None:
            return []
        return [
            _Outcome(f"the mirror's copy of {f.what}", None, reason=f"{f.reason} ({f.what} itself is saved locally)")
            for f in self.mirror.take_failures()
        ]

    def drain_mirror(self, timeout: float = FINAL_WAIT_SECONDS) -> bool:
        """Wait (every process) for the mirror to upload what it was given, at most ``timeout`` seconds;
        returns whether the newest checkpoint this session saved or resumed from is on the mirror."""
        mirrored = True
        if self.mirror is not None:
            self.mirror.drain(timeout)
            mirrored = self.last_step is None or self.mirror.has(self.last_step)
            if not mirrored:
                log.warning(
                    "%s%s is not on the mirror: %s",
                    ckpt.PREFIX,
                    self.last_step,
                    self.mirror.summary(self.last_step) or "its upload failed",
                )
        (missing,) = self.world.agree(not mirrored)
        return not missing

    def _has(self, step: int) -> bool:
        return step in self.committed or (self.resumed_from is not None and step == ckpt.step_of(self.resumed_from))

    def _record(self) -> list[_Outcome]:
        """Note the finished writes: committed steps and failures; returns the new failures."""
        finished, self._unsettled = self._unsettled, []
        failed = [o for o in finished if not o.ok]
        self.committed += [o.step for o in finished if o.ok and o.step is not None]
        self.failures += failed
        return failed

    def _act(self, failed_anywhere: bool, failed: list[_Outcome]) -> None:
        """A save failed on some process: stop the run (``SaveError``), or warn and go on."""
        if not failed_anywhere:
            return
        if self.on_error == "stop":
            if not failed:  # the main process saw it and says why
                raise SaveError("a checkpoint could not be written (the main process said why)")
            raise SaveError(
                f"{failed[0].what} was not saved: {failed[0].reason}; the earlier checkpoints are "
                "intact (resume with --resume-from-checkpoint latest), or pass --on-save-error "
                "continue to train on without this checkpoint"
            )
        for outcome in failed:
            log.warning(
                "%s was not saved: %s; training goes on (--on-save-error continue); the earlier checkpoints are intact",
                outcome.what,
                outcome.reason,
            )

    # -----------------------------------------------------------------------------------------
    # the end of the run

    def preflight(self, saves_left: int) -> None:
        """Before training (rank 0): refuse when one checkpoint does not fit, warn when those kept will not."""
        if not self.world.is_main:
            return
        if self.keep_last:
            saves_left = min(saves_left, self.keep_last + 2)  # newest K, the best, and the one being written
        disk.preflight(self.output, self.checkpoint_bytes, max(1, saves_left))

    def finish(self, also_lost: Iterable[str] = ()) -> None:
        """End the run (every process): wait for the last checkpoint, commit the final model, and sum up
        what was not saved. Raises ``SaveError`` (exit 4) when the final state was not saved."""
        final_checkpoint = self.wait()
        final_model = self._save_final_model()
        mirrored = self.drain_mirror() if final_checkpoint else True
        self._mirror_failures()  # summed up below, whatever --on-save-error says
        lost = self._lost(list(also_lost))
        if final_checkpoint and final_model and mirrored:
            if lost:
                log.warning("the run finished and its final state is saved, but %s", lost)
            return
        missing = [] if final_checkpoint else [f"{ckpt.PREFIX}{self.last_step}"]
        missing += [] if final_model else ["the final model"]
        missing += [] if mirrored else [f"the mirror's copy of {ckpt.PREFIX}{self.last_step}"]
        if not self.world.is_main:
            raise SaveError(f"the final state was not saved ({' and '.join(missing)}; the main process said why)")
        if self.committed:
            where = f"the newest complete checkpoint is {ckpt.PREFIX}{max(self.committed)}"
        elif self.resumed_from is not None:
            where = f"the run can still resume from {self.resumed_from.name}, where this session began"
        else:
            where = "no checkpoint of this run was saved"
        lost = lost or "its upload did not finish in time"
        raise SaveError(
            f"the final state was not saved ({' and '.join(missing)}): {lost}; {where} "
            "(resume with --resume-from-checkpoint latest)"
        )

    def _lost(self, also_lost: list[str]) -> str:
        """One clause on everything not saved in this run ("" when nothing)."""
        failed = [o for o in self.failures if o.step is not None]
        parts = []
        if failed:
            parts.append(
                f"{len(failed)} of {len(failed) + len(self.committed)} checkpoints were not saved "
                f"({', '.join(o.what for o in failed)}; the last because {failed[-1].reason})"
            )
        parts += [f"the final model was not written ({o.reason})" for o in self.failures if o.step is None]
        if self.mirror is not None and self.mirror.failures:
            parts.append(self.mirror.summary(None))
        return "; ".join(parts + also_lost)

    def _save_final_model(self) -> bool:
        """``save_pretrained`` into MODEL_OUTPUT through the writer (every process calls it)."""
        weights = getattr(self.model, "final_state_dict", self.model.state_dict)()  # under FSDP a collective
        failed_here = False
        if self.world.is_main:
            outcome = _Outcome("the final model", None, reason=disk.space_problem(self.output, self.model_bytes))
            if outcome.reason is None:
                self._outcome = outcome
                self._writer.submit(
                    lambda: self._attempt(outcome, self.model_bytes, lambda: self._write_final(weights)), outcome.what
                )
                self._collect(block=True)
            else:
                self._unsettled.append(outcome)
            self._writer.release()
            failed_here = bool(self._record())
            if failed_here:
                log.error(
                    "the final model could not be written to %s: %s; the checkpoints are intact",
                    self.output,
                    outcome.reason,
                )
            else:
                log.info(
                    "final model saved to %s (%s)",
                    self.output,
                    getattr(self.model, "how_to_load", "load it with from_pretrained"),
                )
        (failed,) = self.world.agree(failed_here)
        return not failed

    def _write_final(self, weights: dict) -> Path:
        save = getattr(self.model, "save_final", self.model.save)
        ckcommit.write_final_model(self.output, lambda folder: save(folder, weights), self._cancel.is_set)
        return self.output
