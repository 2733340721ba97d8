"""One-pass saves: every file of a checkpoint is hashed while it is written (never read back), the
files are fsynced together before the manifest, and they are the files save_pretrained writes."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from chef_genius.checkpoint import commit as ckcommit
from chef_genius.checkpoint import faults
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint.safetensors_writer import write_safetensors
from chef_genius.model.saving import PretrainedFiles


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from chef_genius.model.loading import load_model, load_tokenizer

    return load_model(tiny_model), load_tokenizer(str(tiny_model))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors_writer_writes_the_bytes_of_save_file():
    tensors = {
        "b.weight": torch.randn(3, 4),
        "a.weight": torch.randn(5).bfloat16(),
        "steps": torch.arange(7),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.0),
        "half": torch.randn(2, 2).half(),
        "wide": torch.randn(3).double(),
        "small": torch.ones(4, dtype=torch.int8),
        "strided": torch.randn(4, 6)[:, ::2],
    }
    ours = io.BytesIO()
    write_safetensors(ours, tensors, {"format": "pt"})
    theirs = {k: v.contiguous() for k, v in tensors.items()}  # save_file refuses a strided tensor
    assert ours.getvalue() == safetensors_bytes(theirs, metadata={"format": "pt"})
    plain = io.BytesIO()
    write_safetensors(plain, {"x": torch.ones(2)})
    assert plain.getvalue() == safetensors_bytes({"x": torch.ones(2)})


@pytest.mark.parametrize("max_shard_size", ["1000GB", "300KB"])
def test_model_files_are_save_pretrained_s_bytes_and_their_hashes(model_and_tokenizer, tmp_path, max_shard_size):
    model, tokenizer = model_and_tokenizer
    reference, ours = tmp_path / "save_pretrained", tmp_path / "ours"
    model.save_pretrained(reference, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(reference)
    ours.mkdir()
    digests = PretrainedFiles(model, tokenizer, max_shard_size=max_shard_size).write(ours, model.state_dict())
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names == sorted(digests)
    if max_shard_size == "300KB":
        assert ckpt.WEIGHTS_INDEX in names  # the tiny model in several shards
    for name in names:
        assert (ours / name).read_bytes() == (reference / name).read_bytes(), name
        assert digests[name] == _sha(ours / name), name


def test_hashing_file_hashes_what_it_writes_small_and_large(tmp_path):
    blob = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8).numpy().tobytes()  # above the threshold
    path = tmp_path / "f"
    digest = ckfiles.write_hashed(path, lambda stream: [stream.write(b"head"), stream.write(blob), stream.write(b"")])
    assert path.read_bytes() == b"head" + blob and digest == _sha(path)
    state = {"w": torch.randn(600, 600), "step": 3}  # torch.save into the stream, loaded weights_only
    digest = ckfiles.write_hashed(tmp_path / "s.pt", lambda stream: torch.save(state, stream))
    assert digest == _sha(tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3


def test_large_writes_start_going_to_disk_while_the_file_is_written(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(ckfiles, "_WRITEBACK_BYTES", 1 << 20)
    monkeypatch.setattr(ckfiles, "_datasync", lambda fd: synced.append(os.fstat(fd).st_size))
    chunk = torch.randint(0, 256, (512 << 10,), dtype=torch.uint8).numpy().tobytes()
    path = tmp_path / "f"
    digest = ckfiles.write_hashed(path, lambda stream: [stream.write(chunk) for _ in range(8)])
    assert path.read_bytes() == chunk * 8 and digest == _sha(path)
    assert len(synced) >= 2 and 1 << 20 <= synced[0] < len(chunk) * 8  # while the file was being written


def test_the_training_state_is_written_without_the_zip_checksum_and_loads(tmp_path):
    state = {"moments": torch.randn(64, 64), "step": 7}
    digest = ckfiles.torch_save_hashed(tmp_path / "s.pt", state)
    assert digest == _sha(tmp_path / "s.pt")
    assert torch.serialization.get_crc32_options()  # torch's process-wide switch is back as it was
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(loaded["moments"], state["moments"]) and loaded["step"] == 7


@pytest.mark.parametrize("parallel", [False, True], ids=["state-after-model", "state-in-its-own-thread"])
def test_a_save_reads_nothing_back_and_fsyncs_every_file_before_the_manifest(
    model_and_tokenizer, tmp_path, monkeypatch, parallel
):
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(ckcommit, "_PARALLEL_BYTES", 0 if parallel else 1 << 40)
    files = PretrainedFiles(model, tokenizer, source_template="{ingredients}")
    files.fixed_files()  # made once per run, before its first save
    events = []

    def no_read_back(path):
        raise AssertionError(f"{path} was read back to hash it")

    real_fsync = ckfiles.fsync_file
    monkeypatch.setattr(ckcommit, "sha256_file", no_read_back)
    monkeypatch.setattr(ckmanifest, "sha256_file", no_read_back)
    monkeypatch.setattr(ckfiles, "fsync_file", lambda path: (events.append(("fsync", path.name)), real_fsync(path)))
    monkeypatch.setattr(faults, "hook", lambda label: events.append(("fault", label)))
    state = {"global_step": 3, "moments": torch.randn(300, 300)}
    folder = ckcommit.write_checkpoint(tmp_path, 3, lambda f: files.write(f, model.state_dict()), state)
    monkeypatch.undo()

    written = sorted(p.name for p in folder.iterdir() if p.name != ckpt.MANIFEST)
    assert {ckpt.WEIGHTS, ckpt.TRAINING_STATE, ckpt.PROMPT, ckpt.MODEL_CONFIG} <= set(written)
    sealed = events.index(("fault", "files fsynced"))
    assert sorted(name for kind, name in events[:sealed] if kind == "fsync") == written
    assert events.index(("fault", "training state written")) < events.index(("fsync", ckpt.WEIGHTS))  # batched
    assert ckmanifest.manifest_problems(folder, verify_hashes=True) == []
    assert torch.equal(ckstate.load_training_state(folder)["moments"], state["moments"])


def test_a_save_model_that_writes_its_own_files_still_gets_them_hashed(tmp_path):
    def save_model(folder):  # an older caller: no hashes returned
        (folder / ckpt.MODEL_CONFIG).write_text("{}")
        (folder / ckpt.WEIGHTS).write_bytes(safetensors_bytes({"w": torch.ones(2)}))

    folder = ckcommit.write_checkpoint(tmp_path, 1, save_model, {"global_step": 1})
    assert ckmanifest.manifest_problems(folder, verify_hashes=True) == []
