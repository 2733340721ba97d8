"""``MODEL_OUTPUT/metrics.jsonl``: one JSON object per logging step and per evaluation, appended
across resumes (each session starts with a ``{"type": "start"}`` or ``{"type": "resume"}`` record;
see ``chef_genius/monitoring/reporting.py``, which also feeds TensorBoard and Weights & Biases).

A record is appended whole or not at all: a write that fails (a full disk) is cut back to the end of
the previous record, so no torn line remains. What a failure does follows ``--on-save-error``:
``stop`` ends the run with one line and exit code 4 (``SaveError``); ``continue`` warns once, drops
the records it cannot write (``dropped`` counts them; the run's summary names them) and tries again
with the next one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from chef_genius.errors import SaveError

log = logging.getLogger("chef_genius")


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True, on_error: str = "stop"):
        self.path = Path(path)
        self.enabled = enabled
        self.on_error = on_error
        self.dropped = 0
        self._tail_checked = False

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({"time": time.time(), **record}) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._tail_checked:
                line = _line_break_if_torn(self.path) + line
            _append_whole(self.path, line.encode("utf-8"))
            self._tail_checked = True
        except OSError as err:
            self._failed(err)

    def _failed(self, err: OSError) -> None:
        reason = err.strerror or type(err).__name__
        if self.on_error == "stop":
            raise SaveError(
                f"{self.path} could not be written ({reason}); the checkpoints are intact (resume "
                "with --resume-from-checkpoint latest), or pass --on-save-error continue to train on "
                "without these records"
            ) from None
        if not self.dropped:
            log.warning(
                "%s could not be written (%s): its records are dropped until it can be written again "
                "(--on-save-error continue)",
                self.path,
                reason,
            )
        self.dropped += 1

    def losses(self) -> list[str]:
        """What was not written, for the run's summary."""
        return [f"{self.dropped} records were not written to {self.path.name}"] if self.dropped else []


def _append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path``; if that fails part way, cut the file back to where it was."""
    with open(path, "ab", buffering=0) as handle:  # unbuffered: what write() returned is in the file
        start = handle.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[handle.write(view) :]
        except OSError:
            handle.truncate(start)
            raise


def _line_break_if_torn(path: Path) -> str:
    """A killed run can leave a half-written last line; start the next record on a fresh line."""
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return ""
        handle.seek(-1, 2)
        return "" if handle.read(1) == b"\n" else "\n"


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file, skipping a torn last line (a run killed mid-write)."""
    records: list[dict] = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
