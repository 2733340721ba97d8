"""One run per run folder (chef_genius/checkpoint/runlock.py): a second trainer on a folder that a
live run holds is refused with exit 2 and the holder's pid, and leaves the live run's saves alone;
a killed run's lock is taken over with a warning; staging names are unique to their process."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chef_genius.checkpoint import faults
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import runlock
from chef_genius.checkpoint.runlock import RunLock, RunLocked
from chef_genius.doctor.cli import fix_all_main, verify_main
from chef_genius.errors import EXIT_USAGE, UserError, run_cli
from chef_genius.monitoring.metrics import read_metrics
from chef_genius.train.cli import main
from conftest import REPO, run_training, train_args

CLI = REPO / "cli" / "complete_optimized_training.py"
QUICK = ("--max-steps", 2, "--save-steps", 2, "--eval-steps", 100, "--max-source-length", 32, "--max-target-length", 64)
HOLD = textwrap.dedent("""
    import sys, time
    from chef_genius.checkpoint.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def _python(code: str, *args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, **kwargs
    )


def hold(folder: Path) -> subprocess.Popen:
    """A live process that holds ``folder``'s run lock until it is killed."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = _python(HOLD, folder)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()


def _refusal(argv, capsys) -> str:
    """Run the training CLI as a user would; it must exit 2; returns its error line."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exc.value.code == EXIT_USAGE and len(errors) == 1, errors
    return errors[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A run folder held by a live process, with a save and a deletion of that process in progress."""
    out = tmp_path_factory.mktemp("live") / "run"
    proc = hold(out)
    staging = out / f"{ckpt.STAGING_PREFIX}checkpoint-4-{proc.pid}-0123abcd"
    staging.mkdir()
    (staging / ckpt.WEIGHTS).write_bytes(b"half-written weights")
    deleting = out / f"{ckpt.DELETING_PREFIX}checkpoint-2-{proc.pid}-0123abcd"
    deleting.mkdir()
    (deleting / ckpt.MODEL_CONFIG).write_text("{}")
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / ckpt.MODEL_CONFIG).write_text("{}")
    yield {"out": out, "pid": proc.pid, "staging": staging, "deleting": deleting}
    _stop(proc)


# ---------------------------------------------------------------------------------------------
# a live run


def test_a_second_fresh_run_is_refused_and_the_live_run_finishes_alone(
    tiny_model, small_csv, cache_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    log_path = tmp_path / "first.log"
    args = train_args(tiny_model, small_csv, out, cache_dir, *QUICK)
    with open(log_path, "wb") as log:  # saves slowed down, so the second trainer starts inside one
        first = subprocess.Popen(
            [sys.executable, str(CLI), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, faults.FAULT_DELAY_ENV: "0.3"},
        )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(f"{ckpt.STAGING_PREFIX}checkpoint-") for p in ckpt.staging_folders(out)):
            assert first.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        line = _refusal(args, capsys)
        assert f"process {first.pid} on {socket.gethostname()}, started " in line
        assert "in use by another training run" in line and "--model-output" in line
        assert first.wait(timeout=180) == 0, log_path.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    text = log_path.read_text()
    assert "was not saved" not in text and "done: step 2" in text
    # the first run's checkpoints are its own: none moved aside, one session in metrics.jsonl
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert ckmanifest.manifest_problems(out / "checkpoint-2", verify_hashes=True) == []
    assert not (out / "superseded").exists()
    assert [r["type"] for r in read_metrics(out / "metrics.jsonl") if r["type"] in ("start", "resume")] == ["start"]
    assert not (out / ckpt.RUN_LOCK).exists() and not ckpt.staging_folders(out)


def test_a_resume_on_a_live_run_is_refused_and_leaves_its_saves_alone(live, tiny_model, small_csv, cache_dir, capsys):
    out = live["out"]
    before = _tree(out)
    line = _refusal(train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--auto-resume"), capsys)
    assert f"process {live['pid']} on " in line and str(out / ckpt.RUN_LOCK) in line
    assert _tree(out) == before  # its staging and deletion folders, its checkpoint and its lock record
    assert json.loads((out / ckpt.RUN_LOCK).read_text())["pid"] == live["pid"]


def test_the_doctor_refuses_to_repair_a_run_that_is_training(live, capsys):
    out = live["out"]
    before = _tree(out)
    for call in (lambda: fix_all_main([str(out)]), lambda: verify_main([str(out / "checkpoint-3"), "--fix"])):
        with pytest.raises(UserError) as exc:
            call()
        assert exc.value.exit_code == EXIT_USAGE
        assert f"process {live['pid']} on " in str(exc.value) and "before repairing" in str(exc.value)
    fix_all_main([str(out), "--dry-run"])  # looking is allowed, with a note
    assert f"is in use by a training run (process {live['pid']} " in capsys.readouterr().err
    assert _tree(out) == before


# ---------------------------------------------------------------------------------------------
# a killed run


def test_a_killed_runs_lock_is_taken_over_with_a_warning_and_the_run_trains(
    tiny_model, small_csv, cache_dir, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    dead = hold(out)
    leftover = out / f"{ckpt.STAGING_PREFIX}checkpoint-2-{dead.pid}-0123abcd"
    leftover.mkdir()
    _stop(dead)  # SIGKILL (TerminateProcess on Windows): no cleanup ran, the file and its record stay
    assert json.loads((out / ckpt.RUN_LOCK).read_text())["pid"] == dead.pid
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *QUICK)) == 0
    assert re.search(
        rf"took over .*{ckpt.RUN_LOCK} from process {dead.pid} on .*ended without releasing it", caplog.text
    )
    assert f"removed {leftover.name}" in caplog.text and not leftover.exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / ckpt.RUN_LOCK).exists()  # a clean end removes the lock file


# ---------------------------------------------------------------------------------------------
# names

NAMES = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    os.getpid = lambda: 4242  # the same pid: another host of a shared file system, or a pid reused
    from chef_genius.checkpoint import faults
    from chef_genius.checkpoint import layout as ckpt
    from chef_genius.checkpoint import commit as ckcommit
    out, seen = Path(sys.argv[1]), []
    faults.hook = lambda label: seen.extend(p.name for p in out.iterdir() if p.name.startswith("."))
    def save_model(folder):
        (folder / ckpt.MODEL_CONFIG).write_text("{}")
        (folder / ckpt.WEIGHTS).write_bytes(b"w")
    ckcommit.delete_checkpoint(ckcommit.write_checkpoint(out, 1, save_model, {}))
    print(json.dumps(sorted(set(seen))))
""")


def _names_seen(folder: Path) -> list[str]:
    folder.mkdir()
    proc = _python(NAMES, folder)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return json.loads(stdout)


@pytest.mark.slow  # starts processes
def test_staging_and_deletion_names_differ_between_processes_even_with_the_same_pid(tmp_path):
    one, other = _names_seen(tmp_path / "a"), _names_seen(tmp_path / "b")
    assert sorted({name.split("-")[0] + "-" for name in one}) == [ckpt.DELETING_PREFIX, ckpt.STAGING_PREFIX]
    assert all("-4242" in name for name in one + other)
    assert not set(one) & set(other), (one, other)


def test_the_final_model_is_staged_under_a_name_unique_to_the_process(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    from chef_genius.train.components import ModelFiles

    used = []
    original = ModelFiles.save

    def save_model(self, folder, weights):
        used.append(Path(folder).name)
        return original(self, folder, weights)

    monkeypatch.setattr(ModelFiles, "save", save_model)
    out = tmp_path / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *QUICK)) == 0
    final = [name for name in used if not name.startswith(f"{ckpt.STAGING_PREFIX}checkpoint-")]
    assert len(final) == 1 and re.fullmatch(rf"\.staging-final-{os.getpid()}-[0-9a-f]{{8}}", final[0]), used
    assert (out / ckpt.WEIGHTS).is_file() and not ckpt.staging_folders(out)


# ---------------------------------------------------------------------------------------------
# the lock itself


def test_the_lock_is_held_until_released_then_removed(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLocked, match=rf"process {os.getpid()} on "):
        RunLock(tmp_path).acquire(grace=0)
    assert runlock.live_holder(tmp_path).pid == os.getpid()
    first.release()
    assert not (tmp_path / ckpt.RUN_LOCK).exists() and runlock.live_holder(tmp_path) is None
    RunLock(tmp_path).acquire()  # dropping the object does not release it: held for the life of the process
    gc.collect()
    with pytest.raises(RunLocked):
        RunLock(tmp_path).acquire(grace=0)
    for lock in list(runlock._HELD):
        lock.release()
    assert runlock.live_holder(tmp_path) is None


def test_without_working_locks_the_run_goes_on_with_a_warning_and_keeps_leftovers(tmp_path, monkeypatch, caplog):
    def no_locks(fd, shared):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock, "_lock", no_locks)
    leftover = tmp_path / f"{ckpt.STAGING_PREFIX}checkpoint-2-1-0123abcd"
    leftover.mkdir()
    lock = RunLock(tmp_path).acquire()
    assert not lock.held and "does not support file locks (No locks available)" in caplog.text
    assert lock.remove_leftovers() == [] and leftover.is_dir()
    assert f"kept {leftover.name}" in caplog.text
    lock.release()
