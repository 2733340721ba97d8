"""Hostile checkpoints, 1: never bless damage. A truncated or flipped file is reported, restored from a
sibling with the manifest's sha256 or rebuilt keeping the original, never sealed by a new manifest;
a payload in an rng file is a problem, not a missing rng.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import verify_main

from .conftest import Payload, assert_untouched, cli, codes, hf_like, report_of, seal, snapshot


@pytest.mark.parametrize("name", ["tokenizer.json", ckpt.MODEL_CONFIG, ckpt.GENERATION_CONFIG])
def test_truncated_file_is_damage_and_never_blessed(run, capsys, name):
    folder = run / "checkpoint-10"
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for other in (run / "checkpoint-5" / name, run / name):  # no copy with the manifest's sha256
        other.write_bytes(other.read_bytes() + b" ")
    seal(run / "checkpoint-5")
    before = snapshot(folder)
    code, report = report_of(folder, capsys)
    assert code == 1 and not report["resumable"]
    assert "file_corrupt" in codes(report) and report["resume_instead"] == str(run / "checkpoint-5")
    assert any(c.endswith("_unreadable") for c in codes(report))  # loaded as the trainer would: fails

    code, out, _ = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "NOT resumable" in out and f"resume from {run / 'checkpoint-5'}" in out
    assert snapshot(folder) == before  # kept as it is, no manifest written over it
    found, skipped = ckmanifest.find_latest(run)
    assert found == run / "checkpoint-5" and skipped[0][0] == folder


def test_damaged_file_restored_from_a_sibling_with_the_manifests_sha256(run, capsys):
    folder = run / "checkpoint-10"
    path = folder / "tokenizer.json"
    original = path.read_bytes()
    path.write_bytes(original[:1000])
    (folder / "tokenizer_config.json").unlink()
    code, report = report_of(folder, capsys, "--fix", "--no-backup")
    assert code == 0, report
    assert [r["code"] for r in report["repairs"]].count("file_restored") == 2
    assert path.read_bytes() == original and ckmanifest.manifest_problems(folder, verify_hashes=True) == []
    (backup,) = folder.glob("backup-*")  # the damaged file is kept, even with --no-backup
    assert (backup / "tokenizer.json").read_bytes() == original[:1000]


def test_damaged_file_without_manifest_gets_no_complete_manifest(run, capsys):
    """With the manifest gone too nothing tells the damage but loading the file: the gate refuses."""
    folder = run / "checkpoint-10"
    (folder / ckpt.MANIFEST).unlink()
    path = folder / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:5000])
    code, out, _ = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "tokenizer.json is not valid JSON" in out and "NOT resumable" in out
    assert not (folder / ckpt.MANIFEST).exists()
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"


def test_same_size_flip_in_state_is_rebuilt_keeping_the_original(run, capsys):
    folder = run / "checkpoint-10"
    path = folder / ckpt.TRAINING_STATE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, report = report_of(folder, capsys, "--deep")
    assert code == 1 and "state_corrupt" in codes(report)
    code, report = report_of(folder, capsys, "--fix", "--no-backup")
    assert report["resumable"] and "state_rebuilt" in {r["code"] for r in report["repairs"]}
    (backup,) = folder.glob("backup-*")  # damaged originals are kept even with --no-backup
    assert (backup / ckpt.TRAINING_STATE).read_bytes() == bytes(data)


def test_rebuilt_state_meets_the_native_contract(run, tmp_path, capsys):
    from chef_genius.train import rng

    folder = run / "checkpoint-10"
    native = ckstate.load_training_state(folder)
    other = shutil.copytree(run, tmp_path / "other")
    for target in (folder, other / "checkpoint-10"):
        (target / ckpt.TRAINING_STATE).unlink()
        assert report_of(target, capsys, "--fix")[1]["resumable"]
    rebuilt = ckstate.load_training_state(folder)
    assert ckstate.missing_state_keys(rebuilt) == []
    assert set(ckstate.rank0_rng(native)) <= set(ckstate.rank0_rng(rebuilt))  # python, numpy, torch, cuda
    assert {ckstate.REBUILT_RNG, "optimizer_state_dict"} <= set(ckstate.rebuilt_facts(rebuilt))
    again = ckstate.load_training_state(other / "checkpoint-10")  # seeded from the run's seed and the step
    assert torch.equal(ckstate.rank0_rng(rebuilt)["torch"], ckstate.rank0_rng(again)["torch"])
    assert not torch.equal(ckstate.rank0_rng(rebuilt)["torch"], ckstate.rank0_rng(native)["torch"])
    saved = rng.capture()
    try:
        rng.restore(ckstate.rank0_rng(rebuilt))  # every consumer of the contract can read it
        first = torch.rand(3)
        rng.restore(ckstate.rank0_rng(again))
        assert torch.equal(first, torch.rand(3))
    finally:
        rng.restore(saved)
    code, report = report_of(folder, capsys)
    assert {p["code"] for p in report["problems"]} == {"optimizer_empty", "rng_rebuilt"}


def test_rng_file_with_payload_is_a_problem_not_no_rng(run, tmp_path, capsys, outside, opened):
    secret, marker = outside
    folder = hf_like(run, tmp_path / "hf" / "checkpoint-10")
    torch.save({"python": Payload(marker), "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    before = snapshot(folder)
    code, report = report_of(folder, capsys)
    assert code == 1 and "rng_unreadable" in codes(report)
    assert "system" in next(p["message"] for p in report["problems"] if p["code"] == "rng_unreadable")
    code, report = report_of(folder, capsys, "--fix", "--steps-per-epoch", "12")
    assert code == 1 and not report["resumable"]
    assert snapshot(folder) == before and not (folder / ckpt.MANIFEST).exists()
    assert_untouched(secret, marker, opened)
