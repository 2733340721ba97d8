"""Errors a user can act on, and the exit codes the command-line tools end with.

A ``UserError`` is printed as one readable line on stderr and ends the process with its exit code;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1      # problems remain (verify), or a run failed at run time
EXIT_USAGE = 2        # bad flag, bad path, a resume that does not match the checkpoint
EXIT_DATA = 3         # a data file that cannot be read or holds no usable recipe
EXIT_SAVE = 4         # a checkpoint could not be written (full disk, permission); earlier ones are intact
EXIT_OUT_OF_MEMORY = 5  # the GPU ran out of memory in a step (no --auto-micro-batch); earlier checkpoints intact
EXIT_STOPPED_IN_SETUP = 6  # a stop signal before the first step (tokenizing, loading): nothing half-built kept
EXIT_PREEMPTED = 75   # stopped by SIGTERM / Ctrl+C / CTRL_BREAK after writing a checkpoint; resume with `latest`
EXIT_INTERRUPTED = 130  # a second Ctrl+C (or signal): stopped at once; no new checkpoint, the earlier ones intact


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
    label = "error"  # the word before the message on stderr

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
    the way out runs (staging folders removed, worker processes ended); ends with one line, exit 6."""

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
        print("error: interrupted at once, without a new checkpoint; the earlier checkpoints are intact "
              "(resume with --resume-from-checkpoint latest)", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
