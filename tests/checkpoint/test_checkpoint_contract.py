"""The checkpoint contract every other tool relies on."""

import json

import pytest
import torch
from safetensors import safe_open

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import training_state as ckstate
from conftest import run_training, train_args


@pytest.fixture(scope="module")
def run(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "run"
    assert (
        run_training(
            *train_args(
                tiny_model, small_csv, out, cache_dir, "--max-steps", "10", "--gradient-accumulation-steps", "2"
            )
        )
        == 0
    )
    return out


def test_checkpoints_every_save_steps_optimizer_steps(run):
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-5", "checkpoint-10"]
    assert not ckpt.staging_folders(run)


def test_training_state_loads_weights_only_with_all_keys(run):
    state = torch.load(run / "checkpoint-5" / "training_state.pt", weights_only=True)  # no allowlist
    assert ckstate.state_contract_problem(state) is None  # every key of its version, each of its kind
    for key in (
        "format_version",
        "global_step",
        "best_loss",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "rng_states_per_rank",
        "data_position",
        "hyperparameters",
    ):
        assert key in state
    assert ckstate.saved_step(state) == 5 and ckstate.saved_epoch(state) == 0
    assert state["scheduler_state_dict"]["last_epoch"] == 5
    assert state["optimizer_state_dict"]["state"]  # Adam moments are there
    assert set(ckstate.rank0_rng(state)) >= {"python", "numpy", "torch", "cuda"}
    # 96 recipes; the content split (a hash threshold at --eval-split-ratio 0.02, seed 42: the share is the
    # ratio up to sampling noise) holds out 4 -> 92; 5 steps x 2 micro-batches x 8 = 80 samples in epoch 0
    assert state["data_position"] == {
        **state["data_position"],
        "epoch": 0,
        "samples_in_epoch": 80,
        "sampler_seed": 42,
        "num_samples": 92,
    }
    assert state["hyperparameters"]["batch_size"] == 8
    assert state["hyperparameters"]["gradient_accumulation_steps"] == 2


def test_weights_have_no_wrapper_prefixes_and_load_with_from_pretrained(run):
    from transformers import AutoModelForSeq2SeqLM

    folder = run / "checkpoint-10"
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    assert "lm_head.weight" in keys  # FLAN-T5 style untied head survives the round trip
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (folder / name).is_file()
    final = AutoModelForSeq2SeqLM.from_pretrained(run)  # the final model in MODEL_OUTPUT
    assert torch.equal(final.lm_head.weight, model.lm_head.weight)


def test_manifest_lists_every_file_with_size_and_sha256(run):
    folder = run / "checkpoint-10"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["global_step"] == 10
    on_disk = {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["size"] == (folder / name).stat().st_size
        assert entry["sha256"] == ckfiles.sha256_file(folder / name)
    assert ckmanifest.manifest_problems(folder, verify_hashes=True) == []


def test_a_changed_file_fails_the_manifest(run, tmp_path):
    import shutil

    copy = tmp_path / "checkpoint-10"
    shutil.copytree(run / "checkpoint-10", copy)
    data = bytearray((copy / "training_state.pt").read_bytes())
    data[100] ^= 0xFF
    (copy / "training_state.pt").write_bytes(bytes(data))
    assert ckmanifest.manifest_problems(copy) == []  # same size: only the hash tells
    assert "sha256" in ckmanifest.manifest_problems(copy, verify_hashes=True)[0]
    (copy / "config.json").write_text("{}")
    assert "bytes" in ckmanifest.manifest_problems(copy)[0]


def test_latest_skips_a_checkpoint_without_manifest(run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run, out)
    (out / "checkpoint-10" / "manifest.json").unlink()
    found, skipped = ckmanifest.find_latest(out)
    assert found.name == "checkpoint-5" and skipped[0][0].name == "checkpoint-10"
