"""``manifest_findings``: each reason a manifest does not verify, typed, so the doctor tells damage
(a listed file changed) from an invalid manifest without reading the sentences. Fast: files by hand."""

from __future__ import annotations

import json

from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint.layout import MANIFEST, MODEL_CONFIG, REQUIRED_FILES, TRAINING_STATE, WEIGHTS


def _sealed(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    for name in REQUIRED_FILES:
        (folder / name).write_bytes(name.encode() * 8)
    (folder / "sha256_notes.txt").write_text("a name that holds the word sha256")
    ckfiles.atomic_write_json(folder / MANIFEST, ckmanifest.build_manifest(folder, 3))
    return folder


def test_a_sealed_folder_has_no_findings(tmp_path):
    assert ckmanifest.manifest_findings(_sealed(tmp_path), verify_hashes=True) == []


def test_changed_files_are_named_and_told_from_an_invalid_manifest(tmp_path):
    folder = _sealed(tmp_path)
    (folder / WEIGHTS).write_bytes(b"x" * 3)  # another size
    (folder / TRAINING_STATE).write_bytes(b"y" * len(TRAINING_STATE) * 8)  # same size, other bytes
    (folder / "sha256_notes.txt").unlink()  # listed, gone: the manifest no longer fits
    findings = ckmanifest.manifest_findings(folder, verify_hashes=True)
    assert {(f.kind, f.name) for f in findings} == {
        ("changed", WEIGHTS),
        ("changed", TRAINING_STATE),
        ("missing", "sha256_notes.txt"),
    }
    assert ckmanifest.manifest_problems(folder, verify_hashes=True) == [f.message for f in findings]
    assert [f.kind for f in ckmanifest.manifest_findings(folder)] == ["changed", "missing"]  # sizes only


def test_an_unsealed_or_unfinished_manifest(tmp_path):
    folder = _sealed(tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(dict(manifest, complete=False)))
    assert [f.kind for f in ckmanifest.manifest_findings(folder)] == ["incomplete"]
    del manifest["files"][MODEL_CONFIG]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert [(f.kind, f.name) for f in ckmanifest.manifest_findings(folder)] == [("unlisted", MODEL_CONFIG)]
    (folder / MANIFEST).unlink()
    assert [f.kind for f in ckmanifest.manifest_findings(folder)] == ["unreadable"]
