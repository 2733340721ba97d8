"""What a run holding the lock removes from its folder at start: the leftovers of saves and atomic writes
that a killed process did not finish, and nothing else."""

from __future__ import annotations

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint.files import atomic_write_bytes


def test_a_killed_atomic_write_leaves_a_temp_file_that_the_next_run_removes(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    atomic_write_bytes(run / "settings.yaml", b"seed: 1\n")
    stale = run / f".settings.yaml.tmp-{ckpt.process_tag()}"  # what a kill between write and rename leaves
    stale.write_bytes(b"seed: 2\n")
    staging = run / f"{ckpt.STAGING_PREFIX}checkpoint-10-1-abcd"
    staging.mkdir()
    kept = [run / ".hidden", run / "notes.tmp-1-ab", run / "checkpoint-5", run / "settings.yaml"]
    kept[0].write_text("mine")
    kept[1].write_text("mine")
    assert ckpt.remove_staging(run) == sorted([stale, staging])
    assert not stale.exists() and not staging.exists()
    assert all(p.exists() for p in kept)
    assert (run / "settings.yaml").read_bytes() == b"seed: 1\n"
