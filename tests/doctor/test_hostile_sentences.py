"""Hostile checkpoints, 5: sentences, not tracebacks: a read-only folder, a folder where the state
belongs, pickled .bin weights, a full disk (and torch's words for it), a binary data file.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import verify_main
from chef_genius.errors import UserError, run_cli
from conftest import train_args

from .conftest import Payload, cli


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_fix_on_a_read_only_folder_is_a_sentence(run, capsys, monkeypatch, err):
    folder = run / "checkpoint-10"
    (folder / ckpt.TRAINING_STATE).unlink()
    inside = str(folder)

    def refuse(real):
        def call(path, *args, **kwargs):
            target = os.fsdecode(args[0] if real is os.replace else path)
            if target.startswith(inside) or os.fsdecode(path).startswith(inside):
                raise OSError(err, os.strerror(err), os.fsdecode(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "mkdir", refuse(os.mkdir))
    monkeypatch.setattr(os, "replace", refuse(os.replace))
    code, out, _ = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1
    assert ("read-only" if err == errno.EROFS else "permission denied") in out
    assert "none half-written" in out
    assert not (folder / ckpt.TRAINING_STATE).exists()


def test_a_folder_where_the_state_belongs(run, capsys):
    folder = run / "checkpoint-10"
    (folder / ckpt.TRAINING_STATE).unlink()
    (folder / ckpt.TRAINING_STATE).mkdir()
    code, out, _ = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "training_state.pt is a folder where a file belongs" in out
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"


def test_pickled_bin_weights_refused_without_suggesting_weights_only_false(run, tmp_path, outside):
    from chef_genius.model.loading import load_model

    secret, marker = outside
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(run / "checkpoint-10" / ckpt.MODEL_CONFIG, folder / ckpt.MODEL_CONFIG)
    torch.save({"shared.weight": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as info:
        load_model(folder)
    assert "never unpickled" in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_torch_disk_full_words_become_disk_full(tmp_path):
    from chef_genius.checkpoint.disk import describe_failure

    for text in (
        "[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4368",
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })',
    ):
        assert "is full" in describe_failure(RuntimeError(text), tmp_path, 1)
    assert "is full" not in describe_failure(RuntimeError("something else"), tmp_path, 1)


def test_fix_when_the_disk_fills(run, capsys, monkeypatch):
    folder = run / "checkpoint-10"
    (folder / ckpt.TRAINING_STATE).unlink()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    code, out, _ = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "the disk is full" in out


def test_binary_data_file_shows_a_short_printable_excerpt(tiny_model, cache_dir, tmp_path, capsys):
    from chef_genius.train.cli import main

    data = tmp_path / "recipes.csv"
    data.write_bytes(bytes(range(1, 256)) * 40_000)  # ~10 MB, no newline
    with pytest.raises(SystemExit) as info:
        run_cli(main, train_args(tiny_model, data, tmp_path / "out", cache_dir))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 3 and len(err) < 600 and err.isprintable()
    assert "binary" in err
