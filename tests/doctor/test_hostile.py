"""The doctor and the resume choice under hostile and damaged checkpoints built from real files:
symlinks out of the folder, manifests naming other files, crafted safetensors headers, payload
pickles, truncations, read-only mounts (simulated: the tests run as root, which ignores permissions).

Each test asserts the exit code, the report line, that no file outside the checkpoint was read or
written (an audit hook records every open) and that no payload ran (it would create a marker file).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import sys
import time

import pytest
import torch

from chef_genius.checkpoint import format as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import resume
from chef_genius.doctor.cli import fix_all_main, verify_main
from chef_genius.errors import UserError, run_cli
from conftest import run_training, train_args

# ---------------------------------------------------------------------------------------------
# fixtures and helpers

_OPENED: list[str] = []
_RECORDING = [False]  # the hook stays for the session (audit hooks cannot be removed): on only here


def _audit(event, args):
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def run_dir(stopped_run):
    """checkpoint-5 and checkpoint-10 of a run stopped at step 10 (conftest: read only)."""
    return stopped_run


@pytest.fixture
def run(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


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


# ---------------------------------------------------------------------------------------------
# 1. never bless damage

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
    native = ckpt.load_training_state(folder)
    other = shutil.copytree(run, tmp_path / "other")
    for target in (folder, other / "checkpoint-10"):
        (target / ckpt.TRAINING_STATE).unlink()
        assert report_of(target, capsys, "--fix")[1]["resumable"]
    rebuilt = ckpt.load_training_state(folder)
    assert ckpt.missing_state_keys(rebuilt) == []
    assert set(native["rng_states"]) <= set(rebuilt["rng_states"])  # python, numpy, torch, cuda
    assert {"rng_states", "optimizer_state_dict"} <= set(rebuilt["rebuilt"])
    again = ckpt.load_training_state(other / "checkpoint-10")  # seeded from the run's seed and the step
    assert torch.equal(rebuilt["rng_states"]["torch"], again["rng_states"]["torch"])
    assert not torch.equal(rebuilt["rng_states"]["torch"], native["rng_states"]["torch"])
    saved = rng.capture()
    try:
        rng.restore(rebuilt["rng_states"])  # every consumer of the contract can read it
        first = torch.rand(3)
        rng.restore(again["rng_states"])
        assert torch.equal(first, torch.rand(3))
    finally:
        rng.restore(saved)
    code, report = report_of(folder, capsys)
    assert {p["code"] for p in report["problems"]} == {"optimizer_empty", "rng_rebuilt"}


def hf_like(run, dest):
    """A Hugging Face Trainer checkpoint: the model files, trainer_state.json, no training_state.pt."""
    dest.mkdir(parents=True)
    for path in (run / "checkpoint-10").iterdir():
        if path.name not in (ckpt.MANIFEST, ckpt.TRAINING_STATE):
            shutil.copy(path, dest / path.name)
    (dest / "trainer_state.json").write_text(json.dumps({"global_step": 10, "epoch": 0.83, "max_steps": 24,
                                                         "num_train_epochs": 2, "train_batch_size": 8}))
    return dest


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


# ---------------------------------------------------------------------------------------------
# 4. requeue loops keep going

def test_latest_skips_a_verifying_checkpoint_with_an_unsafe_state(run, capsys, outside, caplog, opened):
    secret, marker = outside
    folder = run / "checkpoint-10"
    torch.save({"global_step": 10, "epoch": 0, "rng_states": Payload(marker)}, folder / ckpt.TRAINING_STATE)
    seal(folder)
    caplog.set_level(logging.WARNING)
    assert resume.resolve("latest", False, run) == run / "checkpoint-5"
    assert resume.resolve(None, True, run) == run / "checkpoint-5"
    assert "skipping checkpoint-10" in caplog.text and "not unpickled" in caplog.text
    assert "newest usable checkpoint" in caplog.text
    assert_untouched(secret, marker, opened)


def test_latest_skips_a_step_that_differs_from_the_folder_name(run, caplog):
    (run / "checkpoint-10").rename(run / "checkpoint-11")
    caplog.set_level(logging.WARNING)
    assert resume.resolve("latest", False, run) == run / "checkpoint-5"
    assert "skipping checkpoint-11: training_state.pt is at step 10" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="not usable"):
        resume.resolve(str(run / "checkpoint-11"), False, run)


def test_same_size_header_flip_is_skipped_without_verify_hashes(run, caplog):
    path = run / "checkpoint-10" / ckpt.WEIGHTS
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length]
    flipped = header.replace(b'"F32"', b'"F3!"', 1)
    assert len(flipped) == len(header) and flipped != header
    path.write_bytes(data[:8] + flipped + data[8 + length:])
    caplog.set_level(logging.WARNING)
    assert resume.resolve(None, True, run) == run / "checkpoint-5"
    assert "unknown dtype" in caplog.text


def test_auto_resume_trains_on_from_the_newest_usable(run, tiny_model, small_csv, cache_dir, caplog):
    (run / "checkpoint-10" / "tokenizer.json").write_bytes(b"{")  # damaged after the save
    caplog.set_level(logging.INFO)
    args = train_args(tiny_model, small_csv, run, cache_dir, "--auto-resume", "--stop-after-steps", "2")
    assert run_training(*args) == 0
    assert "skipping checkpoint-10" in caplog.text and "resumed from" in caplog.text
    assert "checkpoint-5: step 5" in caplog.text


# ---------------------------------------------------------------------------------------------
# 2. stay inside the checkpoint

def test_symlinked_checkpoint_is_reported_never_followed(run, tmp_path, capsys, outside, opened):
    secret, marker = outside
    elsewhere = shutil.copytree(run / "checkpoint-10", tmp_path / "elsewhere" / "ckpt")
    (elsewhere / ckpt.TRAINING_STATE).unlink()  # would be "repaired" (written) if followed
    os.symlink(elsewhere, run / "checkpoint-11")
    before = snapshot(elsewhere)
    code, out, _ = cli(fix_all_main, run, capsys=capsys)
    assert code == 1 and "untrusted_entry" in out
    assert snapshot(elsewhere) == before  # nothing written outside the run
    found, skipped = ckmanifest.find_latest(run)
    assert found == run / "checkpoint-10" and "symbolic link" in skipped[0][1]
    code, report = report_of(run / "checkpoint-11", capsys)
    assert code == 1 and "symbolic link" in report["problems"][0]["message"]
    assert_untouched(secret, marker, opened)


def test_symlinked_files_are_never_hashed_copied_or_blessed(run, capsys, outside, opened):
    secret, marker = outside
    folder = run / "checkpoint-10"
    (folder / "tokenizer.json").unlink()
    os.symlink(secret, folder / "tokenizer.json")
    os.symlink(secret, folder / "notes.txt")
    manifest = ckmanifest.read_manifest(folder)  # an attacker lists the links too
    manifest["files"]["notes.txt"] = {"size": secret.stat().st_size, "sha256": ckfiles.sha256_file(secret)}
    manifest["files"]["tokenizer.json"] = dict(manifest["files"]["notes.txt"])
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    _OPENED.clear()
    before = snapshot(folder)
    for flags in ((), ("--deep",), ("--fix",), ("--fix", "--no-backup")):
        code, report = report_of(folder, capsys, *flags)
        assert code == 1 and "untrusted_entry" in codes(report), flags
        assert "symbolic link" in report["problems"][0]["message"]
    assert cli(fix_all_main, run, capsys=capsys)[0] == 1
    assert snapshot(folder) == before and not list(folder.glob("backup-*"))
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
    with pytest.raises(ckpt.CheckpointError):
        ckmanifest.build_manifest(folder, 10)
    assert_untouched(secret, marker, opened)


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_manifest_paths_must_stay_inside(run, capsys, outside, opened, how):
    secret, marker = outside
    folder = run / "checkpoint-10"
    name = os.path.relpath(secret, folder) if how == "relative" else str(secret)
    manifest = ckmanifest.read_manifest(folder)
    manifest["files"][name] = {"size": 19, "sha256": "0" * 64}
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    _OPENED.clear()
    code, out, _ = cli(verify_main, folder, "--deep", capsys=capsys)
    assert code == 1 and "a path outside the checkpoint" in out and "19 bytes" not in out
    assert ckmanifest.find_latest(run)[0] == run / "checkpoint-5"
    assert_untouched(secret, marker, opened)
    code, report = report_of(folder, capsys, "--fix")  # the files load: a confined manifest replaces it
    assert code == 0 and "manifest_rebuilt" in {r["code"] for r in report["repairs"]}
    assert name not in ckmanifest.read_manifest(folder)["files"]
    assert_untouched(secret, marker, opened)


# ---------------------------------------------------------------------------------------------
# 3. every malformed input is a report line, at bounded cost

def write_safetensors(path, header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


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
    assert code == 1 and "more than the 16 MiB allowed" in report["problems"][0]["message"] or \
        any("16 MiB" in p["message"] for p in report["problems"])


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


# ---------------------------------------------------------------------------------------------
# 5. sentences, not tracebacks

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
    for text in ("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4368",
                 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'):
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


# ---------------------------------------------------------------------------------------------
# payloads and wrong values in the other files the tools open

@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt"])
def test_hf_optimizer_or_scheduler_payload_never_runs(run, tmp_path, capsys, outside, opened, name):
    secret, marker = outside
    folder = hf_like(run, tmp_path / "hf" / "checkpoint-10")
    torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, folder / name)
    before = snapshot(folder)
    # every setting given (no training_args.bin here), so the conversion gets to the payload file
    code, out, _ = cli(verify_main, folder, "--fix", "--steps-per-epoch", "12", "--samples-per-step", "8",
                       "--learning-rate", "1e-4", "--lr-scheduler", "linear", "--warmup-steps", "0", capsys=capsys)
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


@pytest.mark.parametrize("state", [
    {"format": ckpt.FORMAT_NAME, "global_step": 10, "epoch": 0, "optimizer_state_dict": [1],
     "scheduler_state_dict": {"last_epoch": 10}, "rng_states": {}},
    {"global_step": 10, "epoch": "one", "optimizer_state_dict": {}, "scheduler_state_dict": {},
     "rng_states": {}},
])
def test_state_with_values_of_the_wrong_kind(run, capsys, state):
    folder = run / "checkpoint-10"
    torch.save(state, folder / ckpt.TRAINING_STATE)
    seal(folder)
    code, report = report_of(folder, capsys)
    assert code == 1 and not report["resumable"]
    found, skipped = ckmanifest.find_latest(run)
    assert found == run / "checkpoint-5" and skipped[0][0] == folder


def test_disk_full_while_writing_the_final_model(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, capsys):
    from chef_genius.train.cli import main
    from chef_genius.train.components import ModelFiles

    real = ModelFiles.save

    def full(self, folder, *args, **kwargs):  # the checkpoint is written, the final model meets a full disk
        if "final" in folder.name:
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                               '"No space left on device" })')
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


# ---------------------------------------------------------------------------------------------
# every weight layout gets the same trust checks: each shard, the index, a .bin

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
    assert code == 1 and any(p["code"] == "weights_unreadable" and shards[1].name in p["message"]
                             for p in report["problems"])
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
    assert code == 1 and any(p["code"] == "weights_unreadable" and "outside the folder" in p["message"]
                             for p in report["problems"])
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
