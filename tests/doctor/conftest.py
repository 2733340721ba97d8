"""Fixtures and helpers of the hostile-checkpoint tests (``test_hostile_*.py``): the doctor and the resume
choice under hostile and damaged checkpoints built from real files: symlinks out of the folder, manifests
naming other files, crafted safetensors headers, payload pickles, truncations, read-only mounts (simulated:
the tests run as root, which ignores permissions).

Each test asserts the exit code, the report line, that no file outside the checkpoint was read or written
(an audit hook records every open: ``opened``, ``assert_untouched``) and that no payload ran (it would
create a marker file: ``outside``, ``Payload``).

The audit hook is installed once, when pytest imports this conftest, and stays for the session (audit
hooks cannot be removed); it records only while a test takes the ``opened`` fixture.
``tests/doctor/__init__.py`` makes this module ``doctor.conftest``: a second top-level ``conftest`` would
replace ``tests/conftest.py`` in ``sys.modules`` and break every ``from conftest import ...``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import verify_main
from chef_genius.errors import run_cli

_OPENED: list[str] = []
_RECORDING = [False]  # the hook stays for the session (audit hooks cannot be removed): on only here


def _audit(event, args):
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def run(stopped_run, tmp_path):
    """A copy of ``stopped_run`` (tests/conftest.py: checkpoint-5 and checkpoint-10 of a run stopped at
    step 10, read only) to change at will."""
    return shutil.copytree(stopped_run, tmp_path / "run")


@pytest.fixture
def outside(tmp_path):
    """A file outside every checkpoint that no tool may open, and the marker a payload would create."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    secret = folder / "secret.txt"
    secret.write_text("TOP SECRET 1234567\n")
    return secret, tmp_path / "payload-ran"


@pytest.fixture
def opened():
    """Paths opened while the test body runs."""
    _OPENED.clear()
    _RECORDING[0] = True
    yield _OPENED
    _RECORDING[0] = False
    _OPENED.clear()


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def cli(main, *argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return exit_info.value.code, captured.out, captured.err


def report_of(folder, capsys, *flags) -> tuple[int, dict]:
    code, out, _ = cli(verify_main, folder, "--json", *flags, capsys=capsys)
    return code, json.loads(out)


def codes(report) -> set[str]:
    return {p["code"] for p in report["problems"]}


def snapshot(folder):
    """Every entry of ``folder`` without following links: files by content, links by target."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[rel] = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    found[rel] = handle.read()
            else:
                found[rel] = "dir"
    return found


def seal(folder, step=None):
    """Write a manifest over ``folder`` as it is now (what an attacker or a bad copy can do)."""
    ckfiles.atomic_write_json(folder / ckpt.MANIFEST, ckmanifest.build_manifest(folder, step or ckpt.step_of(folder)))


def assert_untouched(secret, marker, opened):
    assert not marker.exists(), "a payload ran"
    assert str(secret) not in opened and os.path.realpath(secret) not in opened, "a file outside was opened"
    recording, _RECORDING[0] = _RECORDING[0], False  # the test's own read is not the tools'
    assert secret.read_text() == "TOP SECRET 1234567\n"
    _RECORDING[0] = recording


def hf_like(run, dest):
    """A Hugging Face Trainer checkpoint: the model files, trainer_state.json, no training_state.pt."""
    dest.mkdir(parents=True)
    for path in (run / "checkpoint-10").iterdir():
        if path.name not in (ckpt.MANIFEST, ckpt.TRAINING_STATE):
            shutil.copy(path, dest / path.name)
    (dest / "trainer_state.json").write_text(
        json.dumps({"global_step": 10, "epoch": 0.83, "max_steps": 24, "num_train_epochs": 2, "train_batch_size": 8})
    )
    return dest


def write_safetensors(path, header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
