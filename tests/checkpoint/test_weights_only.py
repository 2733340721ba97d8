"""``trust.refused_by_weights_only``: the one reading of torch's ``weights_only`` failures."""

from __future__ import annotations

import argparse

import pytest
import torch

from chef_genius.checkpoint import trust


def _error(path):
    with pytest.raises(Exception) as caught:
        torch.load(path, map_location="cpu", weights_only=True)
    return caught.value


def test_an_object_beyond_tensors_is_refused_and_a_damaged_archive_is_not(tmp_path):
    torch.save({"args": argparse.Namespace(lr=1.0)}, tmp_path / "unsafe.pt")
    assert trust.refused_by_weights_only(_error(tmp_path / "unsafe.pt"))
    torch.save({"w": torch.ones(4)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert not trust.refused_by_weights_only(_error(tmp_path / "cut.pt"))
    (tmp_path / "empty.pt").write_bytes(b"")
    assert not trust.refused_by_weights_only(_error(tmp_path / "empty.pt"))
