"""The checkpoint doctor on checkpoints the tests build: this project's, legacy, Hugging Face Trainer's,
and broken ones (missing state, prefixed names, truncated, flipped bytes, malicious pickle)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import fix_all_main, verify_main
from chef_genius.errors import run_cli
from chef_genius.train.schedule import lr_factor
from conftest import run_training, train_args


@pytest.fixture
def run_dir(stopped_run):
    """checkpoint-5 and checkpoint-10 of a run stopped at step 10 (conftest: read only)."""
    return stopped_run


@pytest.fixture
def run_copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def cli(main, *argv, capsys=None) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().out if capsys else ""


def verify_json(path, capsys, *flags) -> tuple[int, dict]:
    code, out = cli(verify_main, path, "--json", *flags, capsys=capsys)
    return code, json.loads(out)


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# this project's checkpoints


def test_healthy_checkpoint_verifies(run_dir, capsys):
    code, out = cli(verify_main, run_dir / "checkpoint-10", "--deep", capsys=capsys)
    assert code == 0
    assert "[ok] model weights readable (52 tensors)" in out
    assert "[ok] optimizer state covers all 52 trainable parameters" in out
    assert "[FAIL]" not in out
    code, report = verify_json(run_dir / "checkpoint-10", capsys)
    assert (code, report["kind"], report["valid"], report["resumable"], report["global_step"]) == (
        0,
        "chef_genius",
        True,
        True,
        10,
    )


def test_fix_leaves_a_healthy_checkpoint_alone(run_copy, capsys):
    folder = run_copy / "checkpoint-10"
    before = snapshot(folder)
    code, report = verify_json(folder, capsys, "--fix")
    assert (code, report["repairs"]) == (0, [])
    assert snapshot(folder) == before


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli(verify_main, tmp_path / "missing")[0] == 2
    (tmp_path / "file").write_text("x")
    assert cli(verify_main, tmp_path / "file")[0] == 2
    assert cli(fix_all_main, tmp_path / "missing")[0] == 2
    assert cli(fix_all_main, tmp_path)[0] == 2  # no checkpoint-N inside
    assert "no such folder" in capsys.readouterr().err


def test_missing_state_fix_resume_train_on(run_copy, tiny_model, small_csv, cache_dir, capsys, caplog):
    """Break (delete training_state.pt), fix, resume from `latest`, train on: step, epoch, data position
    and learning rate continue; the optimizer re-warms over a short ramp instead of the whole warmup."""
    folder = run_copy / "checkpoint-10"
    original = ckstate.load_training_state(folder)
    (folder / ckpt.TRAINING_STATE).unlink()
    code, report = verify_json(folder, capsys)
    assert code == 1 and not report["resumable"]
    assert "state_missing" in {p["code"] for p in report["problems"]}

    code, report = verify_json(folder, capsys, "--fix")
    assert code == 1  # resumable, but without the optimizer's moments
    assert report["resumable"] and {p["code"] for p in report["problems"]} == {"optimizer_empty", "rng_rebuilt"}
    assert {"state_rebuilt", "manifest_rebuilt"} <= {r["code"] for r in report["repairs"]}
    rebuilt = ckstate.load_training_state(folder)
    assert rebuilt["optimizer_state_empty"] is True
    assert rebuilt["data_position"]["epoch"] == original["data_position"]["epoch"] == 0
    assert rebuilt["data_position"]["samples_in_epoch"] == original["data_position"]["samples_in_epoch"] == 80
    assert rebuilt["scheduler_state_dict"]["_last_lr"] == pytest.approx(original["scheduler_state_dict"]["_last_lr"])
    assert ckmanifest.manifest_problems(folder, verify_hashes=True) == []
    assert ckmanifest.find_latest(run_copy)[0] == folder

    caplog.set_level(logging.INFO)
    args = train_args(
        tiny_model,
        small_csv,
        run_copy,
        cache_dir,
        "--resume-from-checkpoint",
        "latest",
        "--optimizer-rewarmup-steps",
        "4",
        "--stop-after-steps",
        "5",
    )
    assert run_training(*args) == 0
    log_text = caplog.text
    assert "resumed from" in log_text and "step 10, epoch 1/2, sample 80 of 92" in log_text
    assert "no optimizer state" in log_text and "ramps back up over 4 steps" in log_text
    lrs = {}
    for line in (run_copy / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "train" and record["step"] > 10:
            lrs[record["step"]] = record["lr"]
    assert sorted(lrs) == list(range(11, 16))  # trained on
    for step, lr in lrs.items():  # the run's schedule at that step, times the short re-warm ramp
        assert lr == pytest.approx(1e-3 * lr_factor(step, 3, 24, "linear", rewarm_from=10, rewarm_steps=4))
    position = ckstate.load_training_state(run_copy / "checkpoint-15")["data_position"]
    assert (position["epoch"], position["samples_in_epoch"]) == (1, 3 * 8)  # 12 steps per epoch, 8 per step
    assert lrs[14] == pytest.approx(1e-3 * lr_factor(14, 3, 24))  # ramp over: back on the original curve


def test_missing_state_without_sibling_needs_steps_per_epoch(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoint-5")
    folder = run_copy / "checkpoint-10"
    (folder / ckpt.TRAINING_STATE).unlink()
    code, report = verify_json(folder, capsys, "--fix")
    assert code == 1 and not report["resumable"] and not (folder / ckpt.TRAINING_STATE).exists()
    code, report = verify_json(
        folder,
        capsys,
        "--fix",
        "--steps-per-epoch",
        "12",
        "--samples-per-step",
        "8",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "3",
        "--total-steps",
        "24",
    )
    assert report["resumable"]
    state = ckstate.load_training_state(folder)
    assert state["data_position"]["samples_in_epoch"] == 80
    assert state["scheduler_state_dict"]["_last_lr"][0] == pytest.approx(1e-3 * lr_factor(10, 3, 24))


def test_missing_config_and_tokenizer_copied_from_run(run_copy, capsys):
    folder = run_copy / "checkpoint-10"
    for name in (ckpt.MODEL_CONFIG, "tokenizer.json", ckpt.MANIFEST):
        (folder / name).unlink()
    code, report = verify_json(folder, capsys, "--fix")
    assert code == 0, report
    assert "file_copied" in {r["code"] for r in report["repairs"]}
    assert (folder / "tokenizer.json").read_bytes() == (run_copy / "checkpoint-5" / "tokenizer.json").read_bytes()


def test_truncated_weights_reported_with_sibling_and_never_touched(run_copy, capsys):
    folder = run_copy / "checkpoint-10"
    weights = folder / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(folder)
    code, report = verify_json(folder, capsys)
    assert code == 1 and "weights_unreadable" in {p["code"] for p in report["problems"]}
    assert report["resume_instead"] == str(run_copy / "checkpoint-5")
    code, out = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "truncated" in out and "resume from" in out
    assert snapshot(folder) == before  # nothing written, no backup of garbage, no manifest blessing it


def test_flipped_byte_found_by_deep_sha_check(run_copy, capsys):
    folder = run_copy / "checkpoint-10"
    weights = folder / ckpt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40
    weights.write_bytes(bytes(data))
    assert verify_json(folder, capsys)[0] == 0  # sizes still match: only the deep check can tell
    code, report = verify_json(folder, capsys, "--deep")
    assert code == 1 and "weights_corrupt" in {p["code"] for p in report["problems"]}
    before = snapshot(folder)
    assert verify_json(folder, capsys, "--fix")[0] == 1
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------------------------
# the replaced system's checkpoints


def make_legacy(run_dir, dest, prefix="_orig_mod."):
    """A checkpoint as the replaced system wrote it: prefixed weights, no manifest, a pickle with numpy
    RNG arrays, a 1-based epoch and a single-group optimizer state."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSeq2SeqLM

    from chef_genius.model.loading import make_optimizer

    source = run_dir / "checkpoint-10"
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in (ckpt.MANIFEST, ckpt.TRAINING_STATE, ckpt.WEIGHTS):
            shutil.copy(path, dest / path.name)
    save_file(
        {prefix + k: v for k, v in load_file(source / ckpt.WEIGHTS).items()},
        dest / ckpt.WEIGHTS,
        metadata={"format": "pt"},
    )
    ours = ckstate.load_training_state(source)
    model = AutoModelForSeq2SeqLM.from_pretrained(source)
    names = {id(p): n for n, p in model.named_parameters()}
    our_order = [
        names[id(p)] for g in make_optimizer(model, 1e-3, 0.01, torch.device("cpu")).param_groups for p in g["params"]
    ]
    moments = {name: ours["optimizer_state_dict"]["state"][i] for i, name in enumerate(our_order)}
    single = [n for n, _ in model.named_parameters()]
    group = dict(ours["optimizer_state_dict"]["param_groups"][0], params=list(range(len(single))))
    legacy = {
        "global_step": 10,
        "epoch": 1,
        "best_loss": 5.7,
        "epoch_losses": [6.1],
        "optimizer_state_dict": {"state": {i: moments[n] for i, n in enumerate(single)}, "param_groups": [group]},
        "scheduler_state_dict": ours["scheduler_state_dict"],
        "rng_states": {
            "python_rng_state": random.getstate(),
            "numpy_rng_state": np.random.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": None,
            "cuda_rng_state_all": [],
        },
    }
    torch.save(legacy, dest / ckpt.TRAINING_STATE, pickle_module=pickle)
    return dest, moments


def test_legacy_checkpoint_converted_keeping_optimizer(run_dir, tmp_path, capsys):
    folder, moments = make_legacy(run_dir, tmp_path / "old" / "checkpoint-10")
    original = (folder / ckpt.TRAINING_STATE).read_bytes()
    code, report = verify_json(folder, capsys)
    assert code == 1 and report["kind"] == "legacy" and report["epoch"] == 0
    assert {"state_legacy", "weights_prefixed"} <= {p["code"] for p in report["problems"]}

    code, report = verify_json(folder, capsys, "--fix", "--steps-per-epoch", "12", "--samples-per-step", "8")
    assert code == 0, report
    assert report["kind"] == "chef_genius" and report["valid"] and report["epoch"] == 0
    assert {"state_converted_legacy", "prefixes_stripped", "manifest_rebuilt"} <= {r["code"] for r in report["repairs"]}
    backups = list(folder.glob("backup-*"))
    assert len(backups) == 1 and (backups[0] / ckpt.TRAINING_STATE).read_bytes() == original
    state = ckstate.load_training_state(folder)  # weights_only: no numpy left
    assert state["data_position"] == {"epoch": 0, "samples_in_epoch": 80}
    assert ckstate.rank0_rng(state)["numpy"]["keys"].dtype == torch.int64
    from chef_genius.model.loading import load_model

    model = load_model(folder)
    names = {id(p): n for n, p in model.named_parameters()}
    from chef_genius.model.loading import make_optimizer

    order = [
        names[id(p)] for g in make_optimizer(model, 1e-3, 0.01, torch.device("cpu")).param_groups for p in g["params"]
    ]
    for index, name in enumerate(order):
        assert torch.equal(state["optimizer_state_dict"]["state"][index]["exp_avg"], moments[name]["exp_avg"])


def test_module_prefix_stripped_without_backup(run_dir, tmp_path, capsys):
    folder, _ = make_legacy(run_dir, tmp_path / "old" / "checkpoint-10", prefix="module.")
    code, report = verify_json(folder, capsys, "--fix", "--no-backup", "--steps-per-epoch", "12")
    assert report["resumable"] and "prefixes_stripped" in {r["code"] for r in report["repairs"]}
    assert not list(folder.glob("backup-*"))
    from safetensors import safe_open

    with safe_open(str(folder / ckpt.WEIGHTS), "pt") as handle:
        assert not [k for k in handle.keys() if k.startswith("module.")]


# ---------------------------------------------------------------------------------------------
# malicious pickles: reported as unsafe, never executed, by verify, fix, fix-all and resume


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_state_never_executed(run_copy, tiny_model, small_csv, cache_dir, tmp_path, capsys, writer):
    marker = tmp_path / "pwned"
    folder = run_copy / "checkpoint-10"
    value = {"global_step": 10, "epoch": 1, "rng_states": Payload(marker)}
    if writer == "torch":
        torch.save(value, folder / ckpt.TRAINING_STATE)
    else:
        (folder / ckpt.TRAINING_STATE).write_bytes(pickle.dumps(value))
    ckfiles.atomic_write_json(folder / ckpt.MANIFEST, ckmanifest.build_manifest(folder, 10))  # an attacker can do that
    before = snapshot(folder)

    code, report = verify_json(folder, capsys)
    codes = {p["code"] for p in report["problems"]}
    assert code == 1 and codes & {"state_unsafe", "state_unreadable"}
    if writer == "torch":
        assert "state_unsafe" in codes and "system" in report["problems"][0]["message"]
    assert verify_json(folder, capsys, "--fix")[0] == 1
    assert snapshot(folder) == before
    assert cli(fix_all_main, run_copy, capsys=capsys)[0] == 1
    with pytest.raises(ckpt.CheckpointError):
        run_training(*train_args(tiny_model, small_csv, run_copy, cache_dir, "--resume-from-checkpoint", folder))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# checkpoints written by transformers' own Seq2SeqTrainer


@pytest.fixture(scope="module")
def hf_run(tiny_model, tmp_path_factory):
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    out = tmp_path_factory.mktemp("hf") / "run"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model)
    rows = [
        {
            "input_ids": tokenizer(f"salt, pepper, egg {i}")["input_ids"],
            "labels": tokenizer(f"whisk the egg {i} with salt")["input_ids"],
        }
        for i in range(32)
    ]
    args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
        warmup_steps=1,
        weight_decay=0.01,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model),
    ).train()
    return out


def test_hf_trainer_checkpoints_converted_by_fix_all(
    hf_run, tmp_path, tiny_model, small_csv, cache_dir, capsys, caplog
):
    run = shutil.copytree(hf_run, tmp_path / "hf")
    code, out = cli(fix_all_main, run, "--dry-run", capsys=capsys)
    assert code == 1 and "would repair" in out and "state_converted_hf" in out
    assert not (run / "checkpoint-2" / ckpt.TRAINING_STATE).exists()

    code, out = cli(fix_all_main, run, "--json", capsys=capsys)
    table = json.loads(out)
    assert code == 0 and table["newest_resumable"] == str(run / "checkpoint-4")
    assert [c["global_step"] for c in table["checkpoints"]] == [2, 4]
    folder = run / "checkpoint-2"
    state = ckstate.load_training_state(folder)
    assert ckstate.saved_step(state) == 2 and ckstate.saved_epoch(state) == 0 and not state["optimizer_state_empty"]
    assert ckstate.rank0_rng(state)["torch"].dtype == torch.uint8
    hf_opt = torch.load(folder / "optimizer.pt", weights_only=True)
    from chef_genius.checkpoint.weight_files import read_header
    from chef_genius.doctor.weights import hf_layout, meta_model, our_layout

    model = meta_model(folder, folder / ckpt.WEIGHTS, read_header(folder / ckpt.WEIGHTS))
    hf_names = [n for g in hf_layout(model) for n in g]
    ours = [n for g in our_layout(model) for n in g]
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # in another group in HF
    assert torch.equal(
        state["optimizer_state_dict"]["state"][ours.index(bias)]["exp_avg"],
        hf_opt["state"][hf_names.index(bias)]["exp_avg"],
    )
    assert verify_json(folder, capsys, "--deep")[0] == 0

    caplog.set_level(logging.INFO)
    args = train_args(
        tiny_model, small_csv, run, cache_dir, "--resume-from-checkpoint", folder, "--stop-after-steps", "1"
    )
    assert run_training(*args) == 0
    assert "resumed from" in caplog.text and "restored optimizer" in caplog.text


def test_truncated_state_rebuilt_and_original_kept_even_without_backup(run_copy, capsys):
    folder = run_copy / "checkpoint-10"
    path = folder / ckpt.TRAINING_STATE
    truncated = path.read_bytes()[:1000]
    path.write_bytes(truncated)
    code, report = verify_json(folder, capsys)
    assert code == 1 and "state_unreadable" in {p["code"] for p in report["problems"]}
    code, report = verify_json(folder, capsys, "--fix", "--no-backup")
    assert report["resumable"] and "state_rebuilt" in {r["code"] for r in report["repairs"]}
    (backup,) = folder.glob("backup-*")
    assert (backup / ckpt.TRAINING_STATE).read_bytes() == truncated


def test_step_and_optimizer_mismatch_reported(run_copy, capsys):
    folder = run_copy / "checkpoint-10"
    state = ckstate.load_training_state(folder)
    del state["optimizer_state_dict"]["state"][3]
    ckfiles.atomic_torch_save(folder / ckpt.TRAINING_STATE, state)
    ckfiles.atomic_write_json(folder / ckpt.MANIFEST, ckmanifest.build_manifest(folder, 10))
    moved = folder.rename(run_copy / "checkpoint-11")
    code, report = verify_json(moved, capsys)
    assert code == 1 and {"step_mismatch", "optimizer_mismatch"} <= {p["code"] for p in report["problems"]}
    assert not report["resumable"]
