"""The importers of foreign checkpoints behind one interface: what a folder is (``detect_kind``), and
the run settings a folder's own files record reaching the state builder. Fast: folders built by hand."""

from __future__ import annotations

import json

from chef_genius.checkpoint import layout as ckpt
from chef_genius.doctor import foreign, importers
from chef_genius.doctor import state_builder as sb
from chef_genius.doctor.importers import hf


def _folder(tmp_path, *names):
    folder = tmp_path / "checkpoint-6"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("{}")
    return folder


def test_each_kind_has_one_importer():
    kinds = [importer.kind for importer in importers.IMPORTERS]
    assert sorted(kinds) == sorted([foreign.LEGACY, foreign.HF, foreign.ACCELERATE])
    assert all(importers.importer_for(kind).kind == kind for kind in kinds)
    assert importers.importer_for(foreign.CHEF) is None
    assert len({importer.converted for importer in importers.IMPORTERS}) == 3


def test_detect_kind_asks_the_importers_in_order(tmp_path):
    assert importers.detect_kind(_folder(tmp_path / "a", hf.HF_STATE, "optimizer.bin"), "missing") == foreign.HF
    assert importers.detect_kind(_folder(tmp_path / "b", "optimizer.bin"), "missing") == foreign.ACCELERATE
    assert importers.detect_kind(_folder(tmp_path / "c", foreign.ACC_RNG), "unreadable") == foreign.ACCELERATE
    assert importers.detect_kind(_folder(tmp_path / "d", hf.HF_STATE), "legacy") == foreign.LEGACY
    assert importers.detect_kind(_folder(tmp_path / "e", ckpt.MODEL_CONFIG), "missing") == foreign.LEGACY
    assert importers.detect_kind(_folder(tmp_path / "f", hf.HF_STATE), "ours") == foreign.CHEF
    assert importers.detect_kind(_folder(tmp_path / "g"), "missing") == foreign.UNKNOWN


def test_a_hugging_face_folder_records_its_run_shape_for_the_state_builder(tmp_path):
    folder = _folder(tmp_path)
    (folder / hf.HF_STATE).write_text(json.dumps({"global_step": 6, "num_train_epochs": 3, "max_steps": 30}))
    values, source = sb.run_settings(folder, sb.Overrides(samples_per_step=8))
    assert (values["steps_per_epoch"], values["total_steps"], values["epochs"]) == (10, 30, 3)
    assert values["samples_per_step"] == 8 and source == f"{hf.HF_STATE} + command line"
    assert importers.importer_for(foreign.ACCELERATE).recorded_settings(folder) is None
