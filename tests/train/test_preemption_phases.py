"""Stop signals in every phase, in real training processes: during validation and recipe generation
the evaluation is abandoned, the last finished step is checkpointed and the run exits 75 within
seconds; during a first tokenization it exits 7 with one line, its workers gone and no staging
folder left; a second signal never leaves a line that claims a save the disk does not hold."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.data.cache_store import STAGING
from chef_genius.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_STOPPED_IN_SETUP
from conftest import REPO, SAMPLE_CSV, train_args

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM from outside is POSIX")]

CLI = REPO / "cli" / "complete_optimized_training.py"
ACT_SECONDS = 10.0  # the goal on the tiny model: from the signal to the exit, the save included
# --dedup off: the validation files repeat the training recipes (the point is a long evaluation)
QUICK = (
    "--max-steps",
    6,
    "--max-source-length",
    32,
    "--max-target-length",
    64,
    "--save-steps",
    100,
    "--eval-steps",
    2,
    "--dedup",
    "off",
)


def _sample_times(path: Path, copies: int) -> Path:
    """The bundled sample ``copies`` times over (a long validation, a long tokenization)."""
    rows = list(csv.reader(SAMPLE_CSV.open(encoding="utf-8", newline="")))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0])
        for _ in range(copies):
            writer.writerows(rows[1:])
    return path


class Run:
    """A training subprocess whose output is read line by line as it comes."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(
            [sys.executable, str(CLI), *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"never saw {pattern!r}; output:\n" + "\n".join(self.lines[-30:]))

    def stop(self, *signals, gap: float = 0.0) -> float:
        """Send ``signals``, then wait for the exit; seconds from the first signal to the exit."""
        sent = time.monotonic()
        for sig in signals:
            self.proc.send_signal(sig)
            time.sleep(gap)
        try:
            self.proc.wait(120)
        finally:
            self.proc.kill()
        self._reader.join(10)
        return time.monotonic() - sent

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def long_eval(tmp_path_factory) -> Path:
    """2,000 validation recipes: about 125 batches, a minute or more of validation on 2 busy cores."""
    return _sample_times(tmp_path_factory.mktemp("eval") / "long_eval.csv", 5)


def test_sigterm_during_validation_abandons_it_saves_the_step_and_exits_75(
    tiny_model, small_csv, long_eval, cache_dir, tmp_path
):
    out = tmp_path / "run"
    run = Run(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--eval-data", long_eval))
    run.wait_for(r"step 2/6 ")
    time.sleep(0.5)  # the validation of step 2 is under way
    took = run.stop(signal.SIGTERM)
    assert run.proc.returncode == EXIT_PREEMPTED, run.output
    assert "step 2: validation abandoned after" in run.output
    assert "step 2 validation loss" not in run.output  # nothing of the abandoned pass recorded
    assert run.lines[-1].startswith("stopped: SIGTERM received: saved checkpoint-2 ")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert ckmanifest.manifest_problems(out / "checkpoint-2", verify_hashes=True) == []
    print(f"acted {took:.1f} s after the signal")
    assert took < ACT_SECONDS, f"acted {took:.1f} s after the signal"


def test_sigterm_during_recipe_generation_abandons_it_and_exits_75(tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    run = Run(
        train_args(
            tiny_model,
            small_csv,
            out,
            cache_dir,
            *QUICK,
            "--eval-data",
            SAMPLE_CSV,
            "--eval-generate",
            400,
            "--eval-max-samples",
            64,
        )
    )
    run.wait_for(r"step 2: generating 64 validation recipes")
    time.sleep(0.5)
    took = run.stop(signal.SIGTERM)
    assert run.proc.returncode == EXIT_PREEMPTED, run.output
    assert re.search(r"step 2: recipe generation abandoned after \d+ of 64 recipes", run.output), run.output
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    print(f"acted {took:.1f} s after the signal")
    assert took < ACT_SECONDS, f"acted {took:.1f} s after the signal"


def test_a_second_sigterm_during_validation_never_claims_a_save_that_did_not_happen(
    tiny_model, small_csv, long_eval, cache_dir, tmp_path
):
    out = tmp_path / "run"
    run = Run(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--eval-data", long_eval))
    run.wait_for(r"step 2/6 ")
    time.sleep(0.5)
    run.stop(signal.SIGTERM, signal.SIGTERM, gap=0.02)
    code, last = run.proc.returncode, run.lines[-1]
    saved = [p.name for p in ckpt.list_checkpoints(out)]
    assert code in (EXIT_PREEMPTED, EXIT_INTERRUPTED), run.output  # never 143: the handler had it
    if code == EXIT_PREEMPTED:  # the second came after the commit
        assert last.startswith("stopped: SIGTERM received: saved checkpoint-2 ") and saved == ["checkpoint-2"]
    else:
        assert "without a new checkpoint" in last and saved == []
    assert not [p for p in out.iterdir() if p.name.startswith(ckpt.STAGING_PREFIX)]


def test_sigterm_during_first_tokenization_exits_7_leaving_no_staging_nor_worker(tiny_model, tmp_path):
    data = _sample_times(tmp_path / "big.csv", 80)  # about 22 MB: cut in ranges, tokenized by 2 workers
    cache = tmp_path / "cache"
    run = Run(train_args(tiny_model, data, tmp_path / "run", cache, "--num-proc", 2))
    deadline = time.monotonic() + 240
    while not list(cache.glob(f"*{STAGING}*")):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.output
        time.sleep(0.02)
    time.sleep(1.0)  # the workers are tokenizing
    workers = _children(run.proc.pid)
    took = run.stop(signal.SIGTERM)
    assert run.proc.returncode == EXIT_STOPPED_IN_SETUP, run.output
    assert run.lines[-1].startswith("stopped: SIGTERM received while setting up"), run.output
    assert "Traceback" not in run.output and "BrokenPipeError" not in run.output, run.output
    assert workers and not [pid for pid in workers if _alive(pid)]
    assert not list(cache.glob(f"*{STAGING}*"))  # nothing half-built kept
    assert not [p for p in cache.iterdir() if p.is_dir()]
    print(f"acted {took:.1f} s after the signal")
    assert took < ACT_SECONDS, f"acted {took:.1f} s after the signal"
