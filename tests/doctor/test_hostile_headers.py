"""Hostile checkpoints, 3: every malformed input is a report line, at bounded cost: crafted safetensors
headers, a huge header, a config claiming thousands of layers, deeply nested manifests and pickles;
``fix-all`` reports each checkpoint and goes on.

The fixtures, and the checks that nothing outside the checkpoint was opened and no payload ran, are in
conftest.py.
"""

from __future__ import annotations

import json
import struct
import time

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import fix_all_main

from .conftest import cli, codes, report_of, write_safetensors


def _good_entry():
    return {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


HEADERS = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "a list": [1, 2, 3],
    "missing data_offsets": {"shared.weight": {"dtype": "F32", "shape": [2]}},
    "string offsets": {"shared.weight": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}},
    "bad dtype": {"shared.weight": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}},
    "negative shape": {"shared.weight": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
    "entry not an object": {"shared.weight": "F32"},
    "offsets past the end": {"shared.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
    "too many entries": {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100_001)},
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_malformed_header_is_a_report_line(run, capsys, case):
    folder = run / "checkpoint-10"
    write_safetensors(folder / ckpt.WEIGHTS, HEADERS[case], b"\0" * 8)
    for flags in ((), ("--deep",)):
        start = time.perf_counter()
        code, report = report_of(folder, capsys, *flags)
        assert time.perf_counter() - start < 15
        assert code == 1 and "weights_unreadable" in codes(report), (case, report["problems"])
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"


def test_huge_header_refused_before_it_is_read(run, capsys):
    folder = run / "checkpoint-10"
    path = folder / ckpt.WEIGHTS
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", 90 << 20))
        handle.truncate(8 + (90 << 20) + 8)  # sparse: the size is real, the bytes cost nothing
    start = time.perf_counter()
    code, report = report_of(folder, capsys, "--deep")
    assert time.perf_counter() - start < 10
    assert (
        code == 1
        and "more than the 16 MiB allowed" in report["problems"][0]["message"]
        or any("16 MiB" in p["message"] for p in report["problems"])
    )


def test_config_claiming_thousands_of_layers_costs_nothing(run, capsys):
    folder = run / "checkpoint-10"
    config = json.loads((folder / ckpt.MODEL_CONFIG).read_text())
    config.update(num_layers=3000, num_decoder_layers=3000)
    (folder / ckpt.MODEL_CONFIG).write_text(json.dumps(config))
    start = time.perf_counter()
    code, report = report_of(folder, capsys, "--deep")
    assert time.perf_counter() - start < 10
    assert code == 1 and any("describes 6000 layers" in p["message"] for p in report["problems"])


def test_fix_all_reports_each_checkpoint_and_goes_on(run, capsys):
    write_safetensors(run / "checkpoint-5" / ckpt.WEIGHTS, HEADERS["a list"])
    (run / "checkpoint-10" / ckpt.TRAINING_STATE).unlink()
    code, out, _ = cli(fix_all_main, run, "--json", capsys=capsys)
    table = json.loads(out)
    assert code == 1 and [c["global_step"] for c in table["checkpoints"]] == [5, 10]
    first, second = table["checkpoints"]
    assert not first["resumable"] and "weights_unreadable" in codes(first)
    assert second["resumable"] and "state_rebuilt" in {r["code"] for r in second["repairs"]}


def test_deep_nested_manifest_and_state_are_report_lines(run, capsys):
    folder = run / "checkpoint-10"
    (folder / ckpt.MANIFEST).write_bytes(b"[" * 200_000)
    code, report = report_of(folder, capsys)
    assert code == 1 and "manifest_invalid" in codes(report)
    (folder / ckpt.TRAINING_STATE).write_bytes(b"\x80\x04" + b"(" * 100_000)  # a pickle of nested marks
    code, report = report_of(folder, capsys)
    assert code == 1 and "state_unreadable" in codes(report)
