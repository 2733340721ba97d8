"""Checkpoints of a real Hugging Face ``Seq2SeqTrainer`` run with non-default settings (cosine decay,
lr 5e-4, warmup 1, accumulation 2, max 6 steps): the schedule and run shape are read from
``training_args.bin`` without unpickling it, the data position counts the accumulation, and a resume
continues Hugging Face's own learning rate."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.doctor import hf_args
from chef_genius.doctor.cli import verify_main
from chef_genius.errors import run_cli
from conftest import run_training

BATCH, ACCUMULATION, MAX_STEPS = 4, 2, 6


def cli(main, *argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().out


@pytest.fixture(scope="module")
def hf_run(tiny_model, tmp_path_factory):
    """24 rows, 3 optimizer steps per epoch, checkpoints at steps 2, 4 and 6; and the LR Hugging Face
    used at each step (``learning_rate`` logged at step s is the LR of step s)."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    out = tmp_path_factory.mktemp("hf-cosine") / "run"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model)
    rows = [
        {
            "input_ids": tokenizer(f"salt, pepper, egg {i}")["input_ids"],
            "labels": tokenizer(f"whisk the egg {i} with salt")["input_ids"],
        }
        for i in range(24)
    ]
    args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        max_steps=MAX_STEPS,
        lr_scheduler_type="cosine",
        learning_rate=5e-4,
        warmup_steps=1,
        weight_decay=0.01,
        seed=7,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="no",
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model),
    )
    trainer.train()
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert sorted(lrs) == list(range(1, MAX_STEPS + 1))
    return out, lrs


def test_training_args_read_without_running_anything(hf_run, tmp_path, monkeypatch):
    run, _ = hf_run
    settings, problems = hf_args.run_settings(run / "checkpoint-2" / hf_args.HF_ARGS)
    assert problems == []
    assert settings == {
        "learning_rate": 5e-4,
        "weight_decay": 0.01,
        "gradient_accumulation_steps": ACCUMULATION,
        "seed": 7,
        "batch_size": BATCH,
        "lr_scheduler": "cosine",
        "warmup_steps": 1,
        "max_steps": MAX_STEPS,
        "world_size": 1,
    }

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"learning_rate": 1.0, "x": Payload()}, tmp_path / hf_args.HF_ARGS)
    with pytest.raises(hf_args.ArgsError, match="posix.system|os.system"):
        hf_args.run_settings(tmp_path / hf_args.HF_ARGS)
    assert not marker.exists()


def test_conversion_keeps_schedule_position_and_moments_and_resume_follows_hf(
    hf_run, tmp_path, small_csv, cache_dir, capsys
):
    source, hf_lrs = hf_run
    run = shutil.copytree(source, tmp_path / "run")
    folder = run / "checkpoint-2"
    code, out = cli(verify_main, folder, capsys=capsys)
    assert code == 1 and "(hf_trainer)" in out
    assert (
        "Hugging Face run settings read without unpickling: learning_rate 0.0005, lr_scheduler cosine, "
        "warmup_steps 1, samples_per_step 8"
    ) in out

    code, out = cli(verify_main, folder, "--fix", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["valid"], report
    state = ckstate.load_training_state(folder)
    assert state["data_position"]["samples_in_epoch"] == 2 * BATCH * ACCUMULATION  # 16, not 8
    hyper = state["hyperparameters"]
    assert (
        hyper["learning_rate"],
        hyper["lr_scheduler"],
        hyper["warmup_steps"],
        hyper["max_steps"],
        hyper["batch_size"],
        hyper["gradient_accumulation_steps"],
        hyper["seed"],
    ) == (5e-4, "cosine", 1, MAX_STEPS, BATCH, ACCUMULATION, 7)
    assert state["scheduler_state_dict"]["_last_lr"][0] == pytest.approx(hf_lrs[3], rel=1e-6)
    hf_opt = torch.load(folder / "optimizer.pt", weights_only=True)
    ours = sorted(t["exp_avg_sq"].sum().item() for t in state["optimizer_state_dict"]["state"].values())
    theirs = sorted(t["exp_avg_sq"].sum().item() for t in hf_opt["state"].values())
    assert ours == theirs and len(ours) == 52

    # the resume inherits the converted settings: no batch, LR or schedule flag is given
    argv = [
        "--data",
        small_csv,
        "--model-output",
        run,
        "--cache-dir",
        cache_dir,
        "--resume-from-checkpoint",
        folder,
        "--logging-steps",
        1,
        "--save-steps",
        100,
        "--eval-steps",
        100,
        "--eval-samples",
        0,
        "--max-source-length",
        64,
        "--max-target-length",
        128,
        "--dataloader-num-workers",
        0,
        "--disable-compilation",
    ]
    assert run_training(*map(str, argv)) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr"] for r in records if r["type"] == "train"}  # the LR of the next step
    assert sorted(logged) == [3, 4, 5, 6]
    for step in (3, 4, 5):
        assert logged[step] == pytest.approx(hf_lrs[step + 1], rel=1e-6, abs=0), step


def test_unreadable_training_args_named_and_fix_asks_for_flags(hf_run, tmp_path, capsys):
    source, hf_lrs = hf_run
    run = shutil.copytree(source, tmp_path / "run")
    folder = run / "checkpoint-4"
    (folder / hf_args.HF_ARGS).unlink()
    code, out = cli(verify_main, folder, "--json", capsys=capsys)
    problems = {p["code"]: p["message"] for p in json.loads(out)["problems"]}
    assert "hf_settings_missing" in problems and "training_args.bin is missing" in problems["hf_settings_missing"]
    missing = problems["hf_settings_missing"]
    assert "--lr-scheduler" in missing and "--samples-per-step" in missing
    code, out = cli(verify_main, folder, "--fix", capsys=capsys)
    assert code == 1 and "pass --lr-scheduler --warmup-steps --samples-per-step" in out
    assert not (folder / ckpt.TRAINING_STATE).exists()

    code, out = cli(
        verify_main,
        folder,
        "--fix",
        "--json",
        "--lr-scheduler",
        "cosine",
        "--warmup-steps",
        1,
        "--samples-per-step",
        BATCH * ACCUMULATION,
        capsys=capsys,
    )
    assert code == 0, out
    state = ckstate.load_training_state(folder)
    assert state["data_position"]["samples_in_epoch"] == (4 - 3) * BATCH * ACCUMULATION
    assert state["scheduler_state_dict"]["_last_lr"][0] == pytest.approx(hf_lrs[5], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# accelerate's save_state folders


@pytest.fixture(scope="module")
def accelerate_run(tiny_model, tmp_path_factory):
    """Three optimizer steps of the tiny model under ``Accelerator``, then ``save_state``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path_factory.mktemp("accelerate") / "run" / "checkpoint-3"
    accelerator = Accelerator(cpu=True)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model)
        batch = tokenizer(["salt, pepper, egg"], return_tensors="pt")
        labels = tokenizer(["whisk the egg with salt"], return_tensors="pt")["input_ids"]
        for _ in range(3):
            accelerator.backward(model(**batch, labels=labels).loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        accelerator.save_state(str(out))
        names = [n for n, _ in model.named_parameters()]
    finally:
        AcceleratorState._reset_state(True)
    return out, names


def test_accelerate_folder_named_and_built_into_a_resumable_checkpoint(
    accelerate_run, tiny_model, small_csv, cache_dir, tmp_path, capsys, caplog
):
    import logging

    source, names = accelerate_run
    run = shutil.copytree(source.parent, tmp_path / "run")
    folder = run / source.name
    code, out = cli(verify_main, folder, "--json", capsys=capsys)
    report = json.loads(out)
    codes = {p["code"]: p["message"] for p in report["problems"]}
    assert code == 1 and report["kind"] == "accelerate"
    assert {"config_missing", "tokenizer_missing", "accelerate_state"} <= set(codes)
    assert "optimizer.bin" in codes["accelerate_state"] and "--steps-per-epoch" in codes["accelerate_unknown"]

    code, out = cli(verify_main, folder, "--fix", "--steps-per-epoch", 12, capsys=capsys)
    assert code == 1 and "pass --pretrained-model" in out and not (folder / ckpt.TRAINING_STATE).exists()

    code, out = cli(
        verify_main,
        folder,
        "--fix",
        "--json",
        "--pretrained-model",
        tiny_model,
        "--steps-per-epoch",
        12,
        "--samples-per-step",
        8,
        capsys=capsys,
    )
    report = json.loads(out)
    assert code == 0 and report["valid"], report
    repairs = {r["code"]: r["message"] for r in report["repairs"]}
    assert str(tiny_model) in repairs["file_copied"]
    assert "optimizer state kept" in repairs["state_converted_accelerate"]
    assert "assumed the training defaults for warmup_steps, lr_scheduler" in repairs["state_converted_accelerate"]
    state = ckstate.load_training_state(folder)
    assert ckstate.saved_step(state) == 3 and state["data_position"]["samples_in_epoch"] == 24
    assert state["scheduler_state_dict"]["base_lrs"][0] == 1e-3
    saved = torch.load(folder / "optimizer.bin", weights_only=True)
    from chef_genius.checkpoint.weight_files import read_weights
    from chef_genius.doctor.weights import meta_model, our_layout

    order = [n for g in our_layout(meta_model(folder, None, read_weights(folder)[1])) for n in g]
    assert len(order) == len(names) == 52
    for index, name in enumerate(order):
        assert torch.equal(
            state["optimizer_state_dict"]["state"][index]["exp_avg"], saved["state"][names.index(name)]["exp_avg"]
        )
    assert ckstate.rank0_rng(state)["torch"].dtype == torch.uint8

    caplog.set_level(logging.INFO)
    assert (
        run_training(
            "--data",
            str(small_csv),
            "--model-output",
            str(run),
            "--cache-dir",
            str(cache_dir),
            "--resume-from-checkpoint",
            str(folder),
            "--stop-after-steps",
            "1",
            "--batch-size",
            "8",
            "--max-source-length",
            "64",
            "--max-target-length",
            "128",
            "--dataloader-num-workers",
            "0",
            "--disable-compilation",
            "--eval-samples",
            "0",
        )
        == 0
    )
    assert "restored optimizer" in caplog.text


def test_accelerate_rng_pickle_scanned_never_run(accelerate_run, tiny_model, tmp_path, capsys):
    source, _ = accelerate_run
    folder = shutil.copytree(source.parent, tmp_path / "run") / source.name
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"step": 3, "random_state": Payload()}, folder / "random_states_0.pkl")
    code, out = cli(verify_main, folder, "--json", capsys=capsys)
    assert "accelerate_rng_unsafe" in {p["code"] for p in json.loads(out)["problems"]}
    code, out = cli(
        verify_main, folder, "--fix", "--json", "--pretrained-model", tiny_model, "--steps-per-epoch", 12, capsys=capsys
    )
    report = json.loads(out)
    repairs = {r["code"]: r["message"] for r in report["repairs"]}
    assert report["resumable"] and "not recovered: the RNG state" in repairs["state_converted_accelerate"]
    assert "rng_missing" in {p["code"] for p in report["problems"]}
    assert not marker.exists()


def test_hf_resume_with_a_larger_max_steps_trains_to_it(hf_run, tmp_path, small_csv, cache_dir, capsys):
    """Hugging Face's max_steps wins over its epochs: checkpoint-6 of a max_steps=6 run (its epochs
    all done), resumed with --max-steps 8, trains steps 7 and 8 and labels the epoch it is in."""
    source, _ = hf_run
    run = shutil.copytree(source, tmp_path / "run")
    folder = run / f"checkpoint-{MAX_STEPS}"
    code, out = cli(verify_main, folder, "--fix", "--json", capsys=capsys)
    assert code == 0, out
    assert ckstate.load_training_state(folder)["data_position"]["epoch"] == 2  # the run's 2 epochs are done
    argv = [
        "--data",
        small_csv,
        "--model-output",
        run,
        "--cache-dir",
        cache_dir,
        "--resume-from-checkpoint",
        folder,
        "--max-steps",
        MAX_STEPS + 2,
        "--logging-steps",
        1,
        "--save-steps",
        100,
        "--eval-steps",
        100,
        "--eval-samples",
        0,
        "--max-source-length",
        64,
        "--max-target-length",
        128,
        "--dataloader-num-workers",
        0,
        "--disable-compilation",
    ]
    capsys.readouterr()
    assert run_training(*map(str, argv)) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [7, 8]
    hyper = ckstate.load_training_state(run / "checkpoint-8")["hyperparameters"]
    assert (hyper["epochs"], hyper["max_steps"]) == (3, 8)  # a later resume inherits the run it continues
    assert "done: step 8, epoch 3/3" in capsys.readouterr().out
