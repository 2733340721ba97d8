"""A resume takes the run's settings from its checkpoint; explicit flags are applied or refused.

One uninterrupted reference run with non-default warmup, retention and precision; the resumes start
from copies of its checkpoints with the short command README gives (no --data, no run flags).
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.errors import UserError
from chef_genius.train.config import parse_args
from conftest import run_training, step_losses, train_args

# 94 training recipes / batch 8: 12 steps in the one epoch; checkpoints every 3, evaluations every 5.
RUN = (
    "--epochs",
    "1",
    "--warmup-steps",
    "7",
    "--save-total-limit",
    "2",
    "--save-steps",
    "3",
    "--mixed-precision",
    "no",
)
REFUSED = [
    ("--seed", "7"),
    ("--no-group-by-length",),
    ("--length-group-size", "16"),
    ("--max-source-length", "32"),
    ("--max-target-length", "64"),
    ("--eval-split-ratio", "0.1"),
    ("--source-template", "Cook {title}: {ingredients}"),
    ("--columns", "directions=directions"),
]


@pytest.fixture(scope="module")
def reference(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("settings-ref") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *RUN)) == 0
    assert _steps(out) == [9, 12]  # --save-total-limit 2 (the best, at step 5 or 10, has no checkpoint)
    return out


def short_resume(out, cache_dir, *extra) -> list[str]:
    """README's resume command: the run folder and `latest`, nothing about the run itself."""
    return [
        "--model-output",
        str(out),
        "--resume-from-checkpoint",
        "latest",
        "--cache-dir",
        str(cache_dir),
        "--dataloader-num-workers",
        "0",
        *map(str, extra),
    ]


def _copy(reference, tmp_path, step):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out


def _steps(out) -> list[int]:
    return [ckpt.step_of(p) for p in ckpt.list_checkpoints(out)]


def _lrs(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if r["type"] == "train"}


def _edit_hyperparameters(folder, drop=(), **values):
    """Rewrite a checkpoint's saved settings (as an older or another run's would be), manifest included."""
    state = ckstate.load_training_state(folder)
    for key in drop:
        del state["hyperparameters"][key]
    state["hyperparameters"].update(values)
    ckfiles.atomic_torch_save(folder / ckpt.TRAINING_STATE, state)
    ckfiles.atomic_write_json(folder / ckpt.MANIFEST, ckmanifest.build_manifest(folder, state["global_step"]))


# ---------------------------------------------------------------------------------------------
# resumes of real runs


def test_short_resume_keeps_warmup_retention_and_every_step(reference, small_csv, cache_dir, tmp_path, caplog):
    out = _copy(reference, tmp_path, 9)
    caplog.set_level(logging.INFO)
    # saves at 10, 11, 12 and the best at 12 (no evaluation at 10), to see retention
    assert run_training(*short_resume(out, cache_dir, "--save-steps", "1", "--eval-steps", "100")) == 0
    expected = _lrs(reference)
    assert _lrs(out) == {step: expected[step] for step in (10, 11, 12)}  # warmup 7 and the planned end kept
    losses = step_losses(reference)
    assert step_losses(out) == {step: losses[step] for step in (10, 11, 12)}  # bit for bit: seed, lengths... kept
    assert _steps(out) == [9, 11, 12]  # the newest 2 and the one resumed from: --save-total-limit 2 kept
    kept = next(r.getMessage() for r in caplog.records if "keeps the run's" in r.getMessage())
    assert "--warmup-steps 7" in kept and "--save-total-limit 2" in kept and f"--data {small_csv}" in kept
    assert "resume changes --save-steps 3 -> 1: from step 10 on" in caplog.text


def test_explicit_learning_rate_is_applied_from_the_resumed_step_and_announced(reference, cache_dir, tmp_path, caplog):
    out = _copy(reference, tmp_path, 9)
    caplog.set_level(logging.INFO)
    assert run_training(*short_resume(out, cache_dir, "--learning-rate", "5e-4")) == 0
    got, expected = _lrs(out), _lrs(reference)
    assert sorted(got) == [10, 11, 12]
    assert got[10] != expected[10]
    assert got == {step: pytest.approx(expected[step] * 0.5, rel=1e-12) for step in got}
    assert "resume changes --learning-rate 0.001 -> 0.0005: the schedule's peak from step 10 on" in caplog.text


@pytest.mark.parametrize("flag", REFUSED, ids=lambda f: f[0])
def test_flags_that_change_the_sample_order_are_refused(reference, cache_dir, tmp_path, flag):
    out = _copy(reference, tmp_path, 12)
    with pytest.raises(UserError, match="does not match the checkpoint") as err:
        run_training(*short_resume(out, cache_dir, *flag))
    assert err.value.exit_code == 2
    assert f"{flag[0]} " in str(err.value) and "--allow-config-change" in str(err.value)
    assert _steps(out) == [12] and not (out / "metrics.jsonl").exists()


def test_allow_config_change_applies_them_with_a_warning_each(reference, cache_dir, tmp_path, caplog):
    out = _copy(reference, tmp_path, 9)
    flags = [part for flag in REFUSED for part in flag]
    assert run_training(*short_resume(out, cache_dir, *flags, "--allow-config-change", "--max-steps", "10")) == 0
    warnings = [r.getMessage() for r in caplog.records if "config changed on resume" in r.getMessage()]
    assert sorted(w.split(": ", 1)[1].split(" ")[0] for w in warnings) == sorted(flag[0] for flag in REFUSED)
    saved = ckstate.load_training_state(out / "checkpoint-10")["hyperparameters"]
    assert (
        saved["seed"],
        saved["group_by_length"],
        saved["length_group_size"],
        saved["max_source_length"],
        saved["max_target_length"],
        saved["eval_split_ratio"],
    ) == (7, False, 16, 32, 64, 0.1)
    assert (saved["warmup_steps"], saved["save_total_limit"], saved["max_steps"]) == (7, 2, 10)
    assert (saved["source_template"], saved["columns"]) == ("Cook {title}: {ingredients}", "directions=directions")


def test_older_checkpoint_without_some_settings_still_resumes_exactly(
    reference, tiny_model, small_csv, cache_dir, tmp_path, caplog
):
    out = _copy(reference, tmp_path, 9)
    _edit_hyperparameters(out / "checkpoint-9", drop=("warmup_steps", "seed", "max_source_length"))
    caplog.set_level(logging.INFO)
    # the seed comes back from the data position; the other two from the flags
    argv = short_resume(out, cache_dir, "--warmup-steps", "7", "--max-source-length", "64")
    assert run_training(*argv) == 0
    expected = step_losses(reference)
    assert step_losses(out) == {step: expected[step] for step in (10, 11, 12)}
    assert "checkpoint-9 does not record --warmup-steps, --max-source-length" in caplog.text


def test_a_run_trained_in_fp32_resumes_in_fp32_with_its_async_saves(reference, cache_dir, tmp_path, monkeypatch):
    """`__init__` built the accelerator from the command line; the settings win, for it and the saves."""
    from accelerate.state import AcceleratorState
    from chef_genius.train import trainer as trainer_module

    out = _copy(reference, tmp_path, 12)
    _edit_hyperparameters(out / "checkpoint-12", async_save=True)
    # As on a bf16 GPU: the command's default `auto` means bf16, the run's `no` means fp32.
    monkeypatch.setattr(trainer_module, "resolve_precision", _as_on_a_bf16_gpu)
    AcceleratorState._reset_state()
    try:
        trainer = trainer_module.Trainer(parse_args(short_resume(out, cache_dir)))
        assert trainer.accelerator.mixed_precision == "bf16" and not trainer.config.async_save
        trainer.setup()
        assert trainer.accelerator.mixed_precision == "no" and not trainer.accelerator.native_amp
        assert trainer.checkpoints.async_save
        trainer.reporters.close()
        trainer.close()
    finally:
        AcceleratorState._reset_state()


def _as_on_a_bf16_gpu(requested, device):
    return "no" if requested == "no" else "bf16"


def test_auto_resume_into_an_empty_folder_still_needs_data(tiny_model, cache_dir, tmp_path):
    parse_args(["--auto-resume"])  # a resume may omit --data ...
    with pytest.raises(UserError, match="--data is required") as err:  # ... a fresh start may not
        run_training(
            "--auto-resume",
            "--model-output",
            str(tmp_path / "run"),
            "--pretrained-model",
            str(tiny_model),
            "--cache-dir",
            str(cache_dir),
        )
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "saved, command, said",
    [
        (True, [], "this session trains eager while the checkpoint's run trained compiled"),
        (None, [], None),  # a checkpoint older than the record: nothing known, nothing said
        (False, [], None),
    ],
)
def test_a_resume_says_when_compilation_differs_from_the_checkpoints_run(
    reference, cache_dir, tmp_path, caplog, saved, command, said
):
    """The run's --compile setting (None: decided by the machine) may resolve otherwise on another machine;
    the numerics of a compiled step differ from an eager one's, so a resume that trains otherwise says so
    in one line (the checkpoint records whether its run compiled)."""
    from chef_genius.train.trainer import Trainer

    out = _copy(reference, tmp_path, 12)
    assert ckstate.load_training_state(out / "checkpoint-12")["hyperparameters"]["compiled"] is False  # a CPU run
    if saved is None:
        _edit_hyperparameters(out / "checkpoint-12", drop=("compiled",))
    else:
        _edit_hyperparameters(out / "checkpoint-12", compiled=saved)
    caplog.set_level(logging.INFO)
    trainer = Trainer(parse_args(short_resume(out, cache_dir, *command)))
    try:
        trainer.setup()
    finally:
        trainer.reporters.close()
        trainer.close()
    said_lines = (r.getMessage() for r in caplog.records)
    lines = [line for line in said_lines if "bitwise equal to an uninterrupted run's (pass" in line]
    if said is None:
        assert lines == []
    else:
        assert len(lines) == 1 and said in lines[0] and "from step 12 on" in lines[0] and "--compile" in lines[0]
