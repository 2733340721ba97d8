"""Hostile checkpoints, 2: stay inside the checkpoint. A symlinked checkpoint or file is reported, never
followed, hashed, copied or blessed; manifest paths must stay inside the folder.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import fix_all_main, verify_main

from .conftest import _OPENED, assert_untouched, cli, codes, report_of, snapshot


def test_symlinked_checkpoint_is_reported_never_followed(run, tmp_path, capsys, outside, opened):
    secret, marker = outside
    elsewhere = shutil.copytree(run / "checkpoint-10", tmp_path / "elsewhere" / "ckpt")
    (elsewhere / ckpt.TRAINING_STATE).unlink()  # would be "repaired" (written) if followed
    os.symlink(elsewhere, run / "checkpoint-11")
    before = snapshot(elsewhere)
    code, out, _ = cli(fix_all_main, run, capsys=capsys)
    assert code == 1 and "untrusted_entry" in out
    assert snapshot(elsewhere) == before  # nothing written outside the run
    found, skipped = ckmanifest.find_latest(run)
    assert found == run / "checkpoint-10" and "symbolic link" in skipped[0][1]
    code, report = report_of(run / "checkpoint-11", capsys)
    assert code == 1 and "symbolic link" in report["problems"][0]["message"]
    assert_untouched(secret, marker, opened)


def test_symlinked_files_are_never_hashed_copied_or_blessed(run, capsys, outside, opened):
    secret, marker = outside
    folder = run / "checkpoint-10"
    (folder / "tokenizer.json").unlink()
    os.symlink(secret, folder / "tokenizer.json")
    os.symlink(secret, folder / "notes.txt")
    manifest = ckmanifest.read_manifest(folder)  # an attacker lists the links too
    manifest["files"]["notes.txt"] = {"size": secret.stat().st_size, "sha256": ckfiles.sha256_file(secret)}
    manifest["files"]["tokenizer.json"] = dict(manifest["files"]["notes.txt"])
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    _OPENED.clear()
    before = snapshot(folder)
    for flags in ((), ("--deep",), ("--fix",), ("--fix", "--no-backup")):
        code, report = report_of(folder, capsys, *flags)
        assert code == 1 and "untrusted_entry" in codes(report), flags
        assert "symbolic link" in report["problems"][0]["message"]
    assert cli(fix_all_main, run, capsys=capsys)[0] == 1
    assert snapshot(folder) == before and not list(folder.glob("backup-*"))
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
    with pytest.raises(ckpt.CheckpointError):
        ckmanifest.build_manifest(folder, 10)
    assert_untouched(secret, marker, opened)


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_manifest_paths_must_stay_inside(run, capsys, outside, opened, how):
    secret, marker = outside
    folder = run / "checkpoint-10"
    name = os.path.relpath(secret, folder) if how == "relative" else str(secret)
    manifest = ckmanifest.read_manifest(folder)
    manifest["files"][name] = {"size": 19, "sha256": "0" * 64}
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    _OPENED.clear()
    code, out, _ = cli(verify_main, folder, "--deep", capsys=capsys)
    assert code == 1 and "a path outside the checkpoint" in out and "19 bytes" not in out
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
    assert_untouched(secret, marker, opened)
    code, report = report_of(folder, capsys, "--fix")  # the files load: a confined manifest replaces it
    assert code == 0 and "manifest_rebuilt" in {r["code"] for r in report["repairs"]}
    assert name not in ckmanifest.read_manifest(folder)["files"]
    assert_untouched(secret, marker, opened)
