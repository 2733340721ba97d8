"""Errors a user can act on, and the exit codes the command-line tools end with.

A ``UserError`` is printed as one readable line on stderr and ends the process with its exit code;
any other exception is a bug and keeps its traceback. Every exit code is declared once, with its meaning,
in ``EXIT_CODES`` below.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from collections.abc import Callable, Sequence


@dataclass(frozen=True)
class ExitCode:
    """What one exit code means: for every tool, and in detail for the trainer and the doctor's two tools
    (``docs/reference/exit-codes.md`` is generated from ``EXIT_CODES``)."""

    code: int
    meaning: str
    training: str = ""  # cli/complete_optimized_training.py
    doctor: str = ""  # cli/verify_and_fix_checkpoint.py / cli/fix_all_checkpoints.py


EXIT_CODES: dict[int, ExitCode] = {}  # the registry, in code order


def _code(code: int, meaning: str, training: str = "", doctor: str = "") -> int:
    assert code not in EXIT_CODES, f"exit code {code} declared twice"
    EXIT_CODES[code] = ExitCode(code, meaning, training, doctor)
    return code


EXIT_OK = _code(
    0,
    "done",
    training="finished",
    doctor=("verify: complete and resumable with full state; fix-all: every checkpoint ends resumable"),
)
EXIT_FAILURE = _code(
    1,
    "failed, or problems remain (verify)",
    doctor=(
        "verify: problems remain (after `--fix`: what could not be repaired, or a resumable checkpoint with less "
        "state); fix-all: at least one checkpoint is not resumable"
    ),
)
EXIT_USAGE = _code(
    2,
    "bad flag or path, a resume that does not match its checkpoint",
    training=(
        "bad flag or path (e.g. `--model-output` under a file or not writable, or equal to or inside a checkpoint "
        "folder: the line names the run folder to give instead), a resume that does not match its checkpoint or whose "
        "`--max-steps` / `--epochs` it cannot train to, a `--model-output` that a live run holds (`run.lock`), or a "
        "`--checkpoint-mirror` that cannot be used (credentials, missing bucket, unreachable: refused before training)"
    ),
    doctor=(
        "verify: CKPT missing or not a folder, bad flag; `--fix` on a checkpoint whose run is training now, or "
        "on a mirror's URL; a mirror that cannot be read; fix-all: MODEL_DIR missing or holds no "
        "`checkpoint-N`; a repair while a run is training in MODEL_DIR; a mirror's URL without `--dry-run`"
    ),
)
EXIT_DATA = _code(
    3,
    "a data file that cannot be read or holds no usable recipe",
    training=(
        "a data file that is not a recipe file: wrong columns (the message gives the `--columns` line), binary, empty, "
        "UTF-16 without a BOM, a zip without exactly one data file, a damaged archive, or no usable row (bad rows in a "
        "good file are skipped and counted)"
    ),
)
EXIT_SAVE = _code(
    4,
    "a checkpoint (or `metrics.jsonl`, or the final model) could not be written; earlier ones are intact",
    training=(
        "a checkpoint, `metrics.jsonl` or the final model could not be written (with `--on-save-error continue`: the "
        "run's final checkpoint or final model), the final checkpoint did not reach the `--checkpoint-mirror` (the "
        "local one is intact), or too little free disk space; earlier checkpoints intact"
    ),
)
EXIT_OUT_OF_MEMORY = _code(
    5,
    "out of GPU memory in a step; earlier checkpoints intact",
    training=(
        "out of GPU memory in a step, without `--auto-micro-batch` (or at a micro-batch of 1): the line names settings "
        "that fit and the intact checkpoint to resume from"
    ),
)
EXIT_DIVERGED = _code(
    6,
    "the run diverged and rolling back did not cure it; the line names the newest healthy checkpoint",
    training=(
        "the run diverged (a loss spike or non-finite steps; docs/checkpoints.md: Divergence) and "
        "`--max-rollbacks` is used up, no healthy checkpoint precedes the divergence, or the run is under FSDP; or its "
        "final weights are not finite (no final model saved): the line names the newest healthy checkpoint"
    ),
)
EXIT_STOPPED_IN_SETUP = _code(
    7,
    "stopped by a signal before the first step; nothing half-built kept",
    training=(
        "stopped by SIGTERM / Ctrl+C before the first step (reading the checkpoint, a first tokenization, loading the "
        "model): no checkpoint written, the tokenizing workers ended, no staging folder kept; run the same command "
        "again"
    ),
)
EXIT_PREEMPTED = _code(
    75,
    "stopped by SIGTERM, SIGUSR1 or Ctrl+C after a checkpoint; resume with `latest`",
    training=(
        "preempted (SIGTERM / SIGUSR1 / Ctrl+C / Ctrl+Break): the checkpoint it names was committed (`--async-save` "
        "waits for it; with `--requeue-on-preemption` the Slurm job is then requeued); resume with `latest`"
    ),
)
EXIT_INTERRUPTED = _code(
    130,
    "a second Ctrl+C (or signal): stopped at once; no new checkpoint, the earlier ones intact",
    training="a second Ctrl+C: stopped at once without a new checkpoint",
)


def printable(text, limit: int = 60) -> str:
    """A short printable excerpt of ``text`` (bytes or str) for an error line: never the raw bytes of
    a binary file, never a line longer than ``limit`` characters plus an ellipsis."""
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else "?" for c in str(text)[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


class UserError(Exception):
    """Something the user can fix; the message is one sentence that says what to do."""

    exit_code = EXIT_USAGE
    label: str | None = "error"  # the word before the message on stderr (None: print nothing)

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DataError(UserError):
    exit_code = EXIT_DATA


class SaveError(UserError):
    exit_code = EXIT_SAVE


class OutOfMemory(UserError):
    """A step did not fit the GPU; the message names the settings that would (from the memory plan)."""

    exit_code = EXIT_OUT_OF_MEMORY


class Diverged(UserError):
    """The run's numbers went bad and rolling back did not cure them (or could not): the message names the
    newest healthy checkpoint; nothing non-finite was saved as the final model."""

    exit_code = EXIT_DIVERGED


class ReportedByRankZero(UserError):
    """The error of the main process, which printed it: ends another process of the run with the same
    exit code and no second copy of the line."""

    label = None


class Preempted(UserError):
    """The run stopped on a signal after committing a checkpoint (not a failure: resume it)."""

    exit_code = EXIT_PREEMPTED
    label = "stopped"


class StoppedInSetup(KeyboardInterrupt):
    """A stop signal before training began (first-time tokenization, loading the model): raised by the
    signal handler (a ``KeyboardInterrupt``, so no ``except Exception`` swallows it), so every cleanup on
    the way out runs (staging folders removed, worker processes ended); ends with one line, exit 7."""

    exit_code = EXIT_STOPPED_IN_SETUP


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run ``main`` and turn a ``UserError`` into one line on stderr and its exit code."""
    try:
        code = main(argv)
    except UserError as err:
        if err.label:
            print(f"{err.label}: {err}", file=sys.stderr)
        code = err.exit_code
    except StoppedInSetup as err:
        print(f"stopped: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print(
            "error: interrupted at once, without a new checkpoint; the earlier checkpoints are intact "
            "(resume with --resume-from-checkpoint latest)",
            file=sys.stderr,
        )
        code = EXIT_INTERRUPTED
    sys.exit(code)
