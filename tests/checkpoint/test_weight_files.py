"""``checkpoint/weight_files.py``: one reader of weight names per layout, for the loader and the doctor."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import weight_files
from chef_genius.errors import UserError
from chef_genius.model.loading import weight_names

TENSORS = {
    "shared.weight": torch.ones(4, 2),
    "module.lm_head.weight": torch.zeros(4, 2),
    "encoder.final_layer_norm.weight": torch.ones(2),
}


def _single(folder):
    save_file(TENSORS, str(folder / ckpt.WEIGHTS))


def _sharded(folder):
    names = sorted(TENSORS)
    shards = {"model-00001-of-00002.safetensors": names[:1], "model-00002-of-00002.safetensors": names[1:]}
    for shard, inside in shards.items():
        save_file({n: TENSORS[n] for n in inside}, str(folder / shard))
    index = {"weight_map": {n: shard for shard, inside in shards.items() for n in inside}}
    (folder / ckpt.WEIGHTS_INDEX).write_text(json.dumps(index))


def _bin(folder):
    torch.save(TENSORS, folder / ckpt.WEIGHTS_BIN)


@pytest.mark.parametrize("layout, write", [("single", _single), ("sharded", _sharded), ("bin", _bin)])
def test_every_layout_gives_the_same_names_shapes_and_dtypes_to_loader_and_doctor(tmp_path, layout, write):
    write(tmp_path)
    found, header, _ = weight_files.read_weights(tmp_path)
    assert found == layout
    assert {n: list(e["shape"]) for n, e in header.items()} == {n: list(t.shape) for n, t in TENSORS.items()}
    assert sorted(weight_names(tmp_path)) == sorted(TENSORS)
    assert weight_files.get_tensor(header, "module.lm_head.weight").eq(0).all()


def test_a_missing_shard_and_a_pickled_bin_are_refused_in_one_sentence(tmp_path):
    sharded, pickled = tmp_path / "sharded", tmp_path / "pickled"
    sharded.mkdir()
    pickled.mkdir()
    _sharded(sharded)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(weight_files.MissingShard):
        weight_files.read_weights(sharded)
    with pytest.raises(UserError, match="cannot load the model .*model-00002-of-00002.safetensors is missing"):
        weight_names(sharded)
    torch.save({"shared.weight": argparse.Namespace()}, pickled / ckpt.WEIGHTS_BIN)
    with pytest.raises(weight_files.RefusedPickle):
        weight_files.read_weights(pickled)
    with pytest.raises(UserError, match="never unpickled") as info:
        weight_names(pickled)
    assert "weights_only=False" not in str(info.value)
