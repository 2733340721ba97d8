"""``MODEL_OUTPUT/metrics.jsonl``: one JSON object per logging step and per evaluation, appended
across resumes (each session starts with a ``{"type": "start"}`` or ``{"type": "resume"}`` record;
see ``chef_genius/monitoring/reporting.py``, which also feeds TensorBoard and Weights & Biases)."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._tail_checked = False

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            if not self._tail_checked:
                handle.write(_line_break_if_torn(self.path))
                self._tail_checked = True
            handle.write(json.dumps(record) + "\n")


def _line_break_if_torn(path: Path) -> str:
    """A killed run can leave a half-written last line; start the next record on a fresh line."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return ""
        handle.seek(-1, 2)
        return "" if handle.read(1) == b"\n" else "\n"


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file, skipping a torn last line (a run killed mid-write)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
