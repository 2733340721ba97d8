"""Hostile checkpoints: payloads and wrong values in the other files the tools open (a Hugging Face
optimizer, scheduler or trainer_state.json, training_state.pt), a full disk under the final model,
a link in the run folder, a FIFO and escape sequences in names.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import fix_all_main, verify_main
from chef_genius.errors import run_cli
from conftest import train_args

from .conftest import _OPENED, Payload, assert_untouched, cli, codes, hf_like, report_of, seal, snapshot


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt"])
def test_hf_optimizer_or_scheduler_payload_never_runs(run, tmp_path, capsys, outside, opened, name):
    secret, marker = outside
    folder = hf_like(run, tmp_path / "hf" / "checkpoint-10")
    torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, folder / name)
    before = snapshot(folder)
    # every setting given (no training_args.bin here), so the conversion gets to the payload file
    code, out, _ = cli(
        verify_main,
        folder,
        "--fix",
        "--steps-per-epoch",
        "12",
        "--samples-per-step",
        "8",
        "--learning-rate",
        "1e-4",
        "--lr-scheduler",
        "linear",
        "--warmup-steps",
        "0",
        capsys=capsys,
    )
    assert code == 1 and f"cannot build {ckpt.TRAINING_STATE}" in out and "not plain tensors" in out
    assert snapshot(folder) == before
    code, out, _ = cli(fix_all_main, folder.parent, capsys=capsys)
    assert code == 1 and "broken" in out
    assert_untouched(secret, marker, opened)


@pytest.mark.parametrize("values", [{"global_step": "ten", "epoch": 0.5}, [1, 2], {"epoch": {"a": 1}}])
def test_hostile_trainer_state_json_is_a_report_line(run, tmp_path, capsys, values):
    folder = hf_like(run, tmp_path / "hf" / "checkpoint-10")
    (folder / "trainer_state.json").write_text(json.dumps(values))
    code, out, _ = cli(verify_main, folder, "--fix", "--steps-per-epoch", "12", capsys=capsys)
    assert code == 1 and f"cannot build {ckpt.TRAINING_STATE}" in out


@pytest.mark.parametrize(
    "state",
    [
        {
            "format": ckpt.FORMAT_NAME,
            "global_step": 10,
            "epoch": 0,
            "optimizer_state_dict": [1],
            "scheduler_state_dict": {"last_epoch": 10},
            "rng_states": {},
        },
        {"global_step": 10, "epoch": "one", "optimizer_state_dict": {}, "scheduler_state_dict": {}, "rng_states": {}},
        {  # version 2: the epoch is data_position's
            "format": ckpt.FORMAT_NAME,
            "format_version": 2,
            "global_step": 10,
            "best_loss": None,
            "data_position": {"epoch": "one", "samples_in_epoch": 0},
            "optimizer_state_dict": {},
            "scheduler_state_dict": {"last_epoch": 10},
            "rng_states_per_rank": "not a list",
            "hyperparameters": {},
        },
    ],
)
def test_state_with_values_of_the_wrong_kind(run, capsys, state):
    folder = run / "checkpoint-10"
    torch.save(state, folder / ckpt.TRAINING_STATE)
    seal(folder)
    code, report = report_of(folder, capsys)
    assert code == 1 and not report["resumable"]
    found, skipped = ckmanifest.find_latest(run)
    assert found == run / "checkpoint-5" and skipped[0][0] == folder


def test_a_state_of_a_newer_format_is_never_judged_nor_lost(run, capsys):
    from chef_genius.checkpoint import training_state as ckstate

    folder = run / "checkpoint-10"
    state = ckstate.load_training_state(folder)
    newer = {**state, "format_version": ckpt.FORMAT_VERSION + 1}
    torch.save(newer, folder / ckpt.TRAINING_STATE)
    seal(folder)
    original = (folder / ckpt.TRAINING_STATE).read_bytes()
    code, report = report_of(folder, capsys)
    assert code == 1 and not report["resumable"] and codes(report) == {"state_unreadable"}
    assert f"format version {ckpt.FORMAT_VERSION + 1}, newer than this chef-genius reads" in str(report["problems"])
    found, skipped = ckmanifest.find_latest(run)
    assert found == run / "checkpoint-5" and "newer than this chef-genius reads" in skipped[0][1]
    cli(verify_main, folder, "--fix", "--no-backup", capsys=capsys)
    kept = [p for p in folder.rglob(ckpt.TRAINING_STATE) if p.read_bytes() == original]
    assert kept, "the newer state was not kept"


def test_disk_full_while_writing_the_final_model(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys):
    from chef_genius.train.cli import main
    from chef_genius.train.components import ModelFiles

    real = ModelFiles.save

    def full(self, folder, *args, **kwargs):  # the checkpoint is written, the final model meets a full disk
        if "final" in folder.name:
            raise RuntimeError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                '"No space left on device" })'
            )
        return real(self, folder, *args, **kwargs)

    monkeypatch.setattr(ModelFiles, "save", full)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_cli(main, train_args(tiny_model, small_csv, out, cache_dir, "--max-steps", "1"))
    err = capsys.readouterr().err
    assert info.value.code == 4 and "Traceback" not in err
    assert "the final model was not written (the disk under" in err and "is full" in err


def test_a_link_in_the_run_folder_is_never_a_copy_source(run, capsys, outside, opened):
    secret, marker = outside
    folder = run / "checkpoint-10"
    for where in (folder, run / "checkpoint-5"):
        (where / "tokenizer.json").unlink()
        (where / ckpt.MANIFEST).unlink()
    (run / "tokenizer.json").unlink()
    os.symlink(secret, run / "tokenizer.json")
    _OPENED.clear()
    code, report = report_of(folder, capsys, "--fix")
    assert code == 1 and "tokenizer_missing" in codes(report)
    assert not os.path.lexists(folder / "tokenizer.json")  # neither the link nor its target copied
    assert_untouched(secret, marker, opened)


def test_fifo_and_escape_names_are_report_lines_that_never_block(run, capsys):
    folder = run / "checkpoint-10"
    (folder / "tokenizer_config.json").unlink()
    os.mkfifo(folder / "tokenizer_config.json")  # opening it would wait forever for a writer
    (folder / "notes\x1b[2J\nfake [ok] line").write_text("x")
    code, out, _ = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "tokenizer_config.json is not a regular file" in out
    assert "\x1b" not in out and "\nfake" not in out
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
