"""Hostile checkpoints: every weight layout gets the same trust checks: each shard, the index, a .bin.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import json
import os

import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest

from .conftest import assert_untouched, codes, report_of, seal, snapshot, write_safetensors


def test_each_shard_and_the_index_get_the_trust_checks(run, tmp_path, capsys, outside, opened):
    from transformers import AutoModelForSeq2SeqLM

    secret, marker = outside
    folder = run / "checkpoint-10"
    AutoModelForSeq2SeqLM.from_pretrained(folder).save_pretrained(folder, max_shard_size="200KB")
    (folder / ckpt.WEIGHTS).unlink()
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    seal(folder)
    assert ckmanifest.usability_problem(folder) is None
    # a shard whose header lies, under a manifest that lists it: `latest` skips it, verify says which
    write_safetensors(shards[1], {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}})
    seal(folder)
    assert shards[1].name in ckmanifest.usability_problem(folder)
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
    code, report = report_of(folder, capsys)
    assert code == 1 and any(
        p["code"] == "weights_unreadable" and shards[1].name in p["message"] for p in report["problems"]
    )
    before = snapshot(folder)
    code, report = report_of(folder, capsys, "--fix")
    assert code == 1 and snapshot(folder) == before
    # a shard that is a link: never read, the checkpoint left alone
    shards[1].unlink()
    os.symlink(secret, shards[1])
    code, report = report_of(folder, capsys, "--fix")
    assert code == 1 and "untrusted_entry" in codes(report) and not report["repairs"]
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
    # an index naming a shard outside the folder: a sentence, never opened
    shards[1].unlink()
    index = json.loads((folder / ckpt.WEIGHTS_INDEX).read_text())
    index["weight_map"] = {k: "../elsewhere.safetensors" for k in index["weight_map"]}
    (folder / ckpt.WEIGHTS_INDEX).write_text(json.dumps(index))
    code, report = report_of(folder, capsys)
    assert code == 1 and any(
        p["code"] == "weights_unreadable" and "outside the folder" in p["message"] for p in report["problems"]
    )
    assert_untouched(secret, marker, opened)


def test_bin_weights_that_are_a_link_are_never_loaded(run, capsys, outside, opened):
    from safetensors.torch import load_file

    secret, marker = outside
    folder = run / "checkpoint-10"
    target = folder.parent / "elsewhere.bin"
    torch.save(load_file(folder / ckpt.WEIGHTS), target)
    (folder / ckpt.WEIGHTS).unlink()
    os.symlink(target, folder / ckpt.WEIGHTS_BIN)
    code, report = report_of(folder, capsys, "--fix")
    assert code == 1 and "untrusted_entry" in codes(report) and not report["repairs"]
    assert "a symbolic link" in ckmanifest.usability_problem(folder)
    assert_untouched(secret, marker, opened)
