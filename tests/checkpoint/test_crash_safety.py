"""Fault injection: the process dies at any instant, saves and deletions included, and no
checkpoint is ever lost or half-written; a resume continues with bitwise-equal losses.

Two harnesses:
- in-process snapshots: a hook at every fault point of every save / deletion records the run
  folder as it is at that instant (hard links: files are never rewritten in place), i.e. exactly
  what a SIGKILL there would leave on disk; every such state is checked, and a few are resumed;
- real kills: a chain of training subprocesses, each resuming from the previous one's leftovers and
  killed with SIGKILL (at a random fault point of a save or deletion, or at a random instant with
  saves slowed down), the last one stopped with SIGTERM (exit 75). Set CHEF_GENIUS_FAULT_TRIALS (SIGKILL
  trials, default 2: one in a save, one at a random instant) for a longer chain and
  CHEF_GENIUS_FAULT_SEED to replay one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import faults
from chef_genius.errors import EXIT_PREEMPTED
from chef_genius.monitoring.metrics import read_metrics
from conftest import REPO, run_training, train_args

CLI = REPO / "cli" / "complete_optimized_training.py"
FAST = (
    "--max-steps",
    12,
    "--save-steps",
    2,
    "--eval-steps",
    4,
    "--save-total-limit",
    2,
    "--max-source-length",
    32,
    "--max-target-length",
    64,
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL / SIGTERM from outside are POSIX")


def losses_by_step(output: Path) -> dict[int, float]:
    """Per-step losses from metrics.jsonl; a torn line is skipped, a re-logged step keeps its last value."""
    losses = {}
    for record in read_metrics(Path(output) / "metrics.jsonl"):
        if record.get("type") == "train":
            first = record["step"] - len(record["step_losses"]) + 1
            for offset, loss in enumerate(record["step_losses"]):
                losses[first + offset] = loss
    return losses


def assert_recoverable(folder: Path) -> int:
    """Every checkpoint-* verifies (hashes too); `latest` finds one that loads. Returns its step (0: none)."""
    for path in ckpt.list_checkpoints(folder):
        assert ckmanifest.manifest_problems(path, verify_hashes=True) == [], path
    latest, skipped = ckmanifest.find_latest(folder, verify_hashes=True)
    assert skipped == []
    if latest is None:
        return 0
    assert ckstate.saved_step(ckstate.load_training_state(latest)) == ckpt.step_of(latest)
    return ckpt.step_of(latest)


def snapshot(src: Path, dst: Path) -> None:
    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns("metrics.jsonl"))


@pytest.fixture(scope="module")
def reference(tiny_model, small_csv, cache_dir, tmp_path_factory):
    """The uninterrupted run, with the on-disk state recorded at every fault point."""
    root = tmp_path_factory.mktemp("reference")
    out, snaps = root / "run", []

    def record(label):
        if out.is_dir():
            dst = root / "snaps" / f"{len(snaps):03d}"
            snapshot(out, dst)
            snaps.append((label, dst))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faults, "hook", record)
        assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *FAST)) == 0
    return {
        "out": out,
        "snaps": snaps,
        "losses": losses_by_step(out),
        "args": lambda output, *extra: train_args(tiny_model, small_csv, output, cache_dir, *FAST, *extra),
    }


def test_every_kill_point_of_every_save_leaves_a_recoverable_folder(reference, tmp_path):
    snaps = reference["snaps"]
    labels = {label for label, _ in snaps}
    assert {"model written", "manifest written", "renamed", "renamed for deletion"} <= labels
    assert len(snaps) >= 40
    newest = 0
    for label, folder in snaps:
        step = assert_recoverable(folder)
        assert step >= newest, f"a kill at '{label}' lost checkpoint-{newest}"
        newest = step
        copy = tmp_path / folder.name  # the snapshots stay as they were for the tests below
        snapshot(folder, copy)
        ckpt.remove_staging(copy)
        assert not [p for p in copy.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("label", ["training state written", "renamed for deletion"])
def test_resume_after_a_kill_inside_a_save_is_bitwise_exact(reference, tmp_path, label, caplog):
    hits = [folder for name, folder in reference["snaps"] if name == label]
    folder = hits[len(hits) // 2]
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers  # the half-done save or deletion
    start = assert_recoverable(out)
    assert run_training(*reference["args"](out, "--resume-from-checkpoint", "latest")) == 0
    for name in leftovers:  # removed at the start, and named in the log
        assert not (out / name).exists() and f"removed {name}" in caplog.text
    resumed = losses_by_step(out)
    assert sorted(resumed) == list(range(start + 1, 13))
    assert resumed == {step: reference["losses"][step] for step in resumed}


# ---------------------------------------------------------------------------------------------
# real processes, real signals


def _launch(args, log_path: Path, env_extra: dict) -> subprocess.Popen:
    env = {**os.environ, **env_extra}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(CLI), *map(str, args)], stdout=log, stderr=subprocess.STDOUT, env=env
        )


def _train_records(output: Path) -> int:
    return sum(r.get("type") == "train" for r in read_metrics(output / "metrics.jsonl"))


def _wait_for_a_new_step(proc: subprocess.Popen, output: Path, before: int, timeout: float = 180) -> bool:
    """Wait until the run logs a training step (a record beyond ``before``); False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _train_records(output) > before:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the training subprocess made no progress")


@posix_only
def test_sigkill_at_random_instants_then_sigterm_and_exact_resume(reference, tmp_path):
    seed = int(os.environ.get("CHEF_GENIUS_FAULT_SEED", time.time_ns() % 2**31))
    kills = int(os.environ.get("CHEF_GENIUS_FAULT_TRIALS", 2))
    rng = random.Random(seed)
    out = tmp_path / "run"
    # trials alternate: SIGKILL at a random fault point inside a save or deletion, SIGKILL at a random instant
    plan = [("in-save", "random-instant")[i % 2] for i in range(kills)] + ["sigterm"]
    history = []
    for trial, kind in enumerate(plan):
        start = assert_recoverable(out) if out.is_dir() else 0
        env = {}
        if kind == "in-save":
            env[faults.FAULT_AT_ENV] = str(rng.randint(1, 16))  # within the first two saves of the run
        if kind == "random-instant":
            env[faults.FAULT_DELAY_ENV] = "0.05"  # saves take longer, so random kills land in them often
        log_path = tmp_path / f"trial-{trial}.log"
        began = time.monotonic()
        before = _train_records(out)
        proc = _launch(reference["args"](out, "--auto-resume"), log_path, env)
        if kind in ("random-instant", "sigterm") and _wait_for_a_new_step(proc, out, before):
            time.sleep(rng.uniform(0, 3.0 if kind == "random-instant" else 1.5))
            if kind == "sigterm":
                proc.send_signal(signal.SIGTERM)
            else:
                proc.kill()
        rc = proc.wait(timeout=300)
        text = log_path.read_text(errors="replace")
        how = next((line for line in text.splitlines() if line.startswith("fault injection:")), "")
        history.append(f"{kind} from step {start}: rc {rc} in {time.monotonic() - began:.1f}s {how}".rstrip())
        context = f"seed {seed}; " + "; ".join(history) + "\n" + text[-3000:]
        if start and _train_records(out) > before:  # it trained, so it resumed from what the kill left
            assert f"resumed from {out / f'{ckpt.PREFIX}{start}'}: step {start}," in text, context
        if kind == "sigterm" and rc == EXIT_PREEMPTED:
            step = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r.get("type") == "train"][-1]
            assert f"stopped: SIGTERM received: saved checkpoint-{step} " in text, context
            assert (out / f"{ckpt.PREFIX}{step}").is_dir(), context
        expected = {"sigterm": (EXIT_PREEMPTED, 0)}.get(kind, (-signal.SIGKILL, 0))
        if (out / f"{ckpt.PREFIX}12").is_dir() and "done: step 12" in text:
            expected += (-signal.SIGTERM,)  # the signal came after the run had finished and saved everything
        assert rc in expected, context
        assert assert_recoverable(out) >= start, context
        if rc == 0:
            break
    # every step trained so far, across kills and resumes, has exactly the uninterrupted run's loss
    losses = losses_by_step(out)
    assert losses and losses == {step: reference["losses"][step] for step in losses}, context
    assert sorted(losses) == list(range(1, max(losses) + 1)), context
    print("\n".join(history))
