"""How a resume decides each setting (``train/settings.decide``), tested as the pure function it is, and
which flags the command line gave (``config.explicit``). Fast: no training run; the resumes of real runs
are in ``test_settings.py``."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import pytest
import torch

from chef_genius.data.fingerprint import data_identity
from chef_genius.errors import UserError
from chef_genius.train import settings
from chef_genius.train.config import TrainConfig, parse_args
from chef_genius.train.schedule import Schedule, make_scheduler
from conftest import SAMPLE_CSV


# ---------------------------------------------------------------------------------------------
# the decision, as a pure function


def _saved(**values) -> dict:
    return TrainConfig(**values).to_dict()


def test_every_setting_belongs_to_exactly_one_group():
    groups = [*settings.APPLIED, *settings.GUARDED, *settings.ADAPTER, *settings.RECORDED, *settings.SESSION]
    assert len(groups) == len(set(groups))
    assert set(groups) == {f.name for f in dataclasses.fields(TrainConfig)} - {"explicit"}


def test_unflagged_settings_come_from_the_checkpoint_and_session_ones_never_do():
    saved = _saved(
        data="a.csv",
        warmup_steps=1000,
        save_total_limit=3,
        lr_scheduler="cosine",
        epochs=5,
        seed=9,
        mixed_precision="no",
        report_to=["wandb"],
        model_output="old/place",
        stop_after_steps=40,
        dataloader_num_workers=8,
        cache_dir="old/cache",
        resume_from_checkpoint="latest",
        demo=True,
    )
    command = _saved(model_output="new/place")
    decision = settings.decide(saved, command, explicit={"model_output"})
    values = decision.values
    assert (
        values["data"],
        values["warmup_steps"],
        values["save_total_limit"],
        values["lr_scheduler"],
        values["epochs"],
        values["seed"],
        values["mixed_precision"],
        values["report_to"],
    ) == ("a.csv", 1000, 3, "cosine", 5, 9, "no", ["wandb"])
    assert (
        values["model_output"],
        values["stop_after_steps"],
        values["dataloader_num_workers"],
        values["cache_dir"],
        values["resume_from_checkpoint"],
        values["demo"],
    ) == ("new/place", 0, 2, None, None, False)
    assert set(decision.kept) == {
        "data",
        "warmup_steps",
        "save_total_limit",
        "lr_scheduler",
        "epochs",
        "seed",
        "mixed_precision",
        "report_to",
    }
    assert decision.applied == decision.refused == decision.unrecorded == []


def test_explicit_flags_are_applied_or_refused_by_group():
    saved = _saved(
        learning_rate=1e-4,
        epochs=2,
        save_steps=500,
        seed=42,
        batch_size=8,
        group_by_length=True,
        max_target_length=512,
        pretrained_model="google/flan-t5-large",
    )
    command = _saved(
        learning_rate=5e-5,
        epochs=3,
        save_steps=500,
        seed=7,
        batch_size=4,
        group_by_length=False,
        max_target_length=512,
        pretrained_model="other",
    )
    explicit = {"learning_rate", "epochs", "save_steps", "seed", "batch_size", "group_by_length", "pretrained_model"}
    decision = settings.decide(saved, command, explicit)
    assert [str(c) for c in decision.applied] == ["--epochs 2 -> 3", "--learning-rate 0.0001 -> 5e-05"]
    assert [str(c) for c in decision.refused] == [
        "--batch-size 8 -> 4",
        "--seed 42 -> 7",
        "--no-group-by-length (group by length on -> off)",
    ]
    assert [c.name for c in decision.ignored] == ["pretrained_model"]
    assert decision.values["pretrained_model"] == "google/flan-t5-large"  # the weights come from the checkpoint
    assert (decision.values["learning_rate"], decision.values["seed"]) == (5e-5, 7)  # applied if allowed


def test_a_checkpoint_without_a_setting_leaves_the_commands_value():
    saved = {"batch_size": 8, "learning_rate": 1e-3}  # an older checkpoint
    position = {"sampler_seed": 5, "group_by_length": False, "length_group_size": 64}
    decision = settings.decide(saved, _saved(warmup_steps=20), explicit=set(), position=position)
    assert (decision.values["seed"], decision.values["group_by_length"], decision.values["length_group_size"]) == (
        5,
        False,
        64,
    )
    assert decision.values["warmup_steps"] == 20 and decision.values["learning_rate"] == 1e-3
    assert "warmup_steps" in decision.unrecorded and "seed" not in decision.unrecorded


def _resume_state(data, **values) -> dict:
    hyper = {**_saved(data=str(data), **values), "data_identity": data_identity(data), "eval_data_identity": None}
    return {"global_step": 3, "hyperparameters": hyper}


def test_the_data_file_is_inherited_compared_by_content_and_must_exist(tmp_path):
    data = tmp_path / "recipes.csv"
    shutil.copy(SAMPLE_CSV, data)
    saved = _resume_state(data)
    # --data is a list of sources since several can be mixed; an older checkpoint's one path becomes a list of one
    assert settings.settle(parse_args(["--resume", "latest"]), saved).data == [str(data)]
    moved = tmp_path / "moved" / "recipes.csv"
    moved.parent.mkdir()
    data.rename(moved)
    with pytest.raises(UserError, match=r"was trained on --data .*recipes.csv, which is not there any more") as err:
        settings.settle(parse_args(["--resume", "latest"]), saved)
    assert err.value.exit_code == 2
    assert settings.settle(parse_args(["--resume", "latest", "--data", str(moved)]), saved).data == [str(moved)]
    moved.write_text(moved.read_text()[:-200])  # edited: another file under the same name
    with pytest.raises(UserError, match=r"--data recipes.csv \(\d+ bytes\) -> recipes.csv"):
        settings.settle(parse_args(["--resume", "latest", "--data", str(moved)]), saved)


def test_an_edit_in_the_middle_with_size_and_time_kept_is_refused(tmp_path):
    import os
    from chef_genius.data.fingerprint import content_identity

    data = tmp_path / "recipes.csv"
    shutil.copy(SAMPLE_CSV, data)
    saved = {
        **_resume_state(data),
        "hyperparameters": {**_resume_state(data)["hyperparameters"], "data_identity": content_identity(data)},
    }
    stat = data.stat()
    text = bytearray(data.read_bytes())
    text[len(text) // 2] = ord("x") if text[len(text) // 2] != ord("x") else ord("y")
    data.write_bytes(bytes(text))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(
        UserError,
        match=r"--data recipes.csv \(\d+ bytes\) -> recipes.csv \(\d+ bytes\), "
        r"other content",
    ) as err:
        settings.settle(parse_args(["--resume", "latest"]), saved)
    assert err.value.exit_code == 2
    allowed = settings.settle(parse_args(["--resume", "latest", "--allow-config-change"]), saved)
    assert allowed.data == [str(data)]


def test_an_old_head_and_tail_identity_is_compared_on_what_it_holds_and_said_so(tmp_path, caplog):
    import logging

    data = tmp_path / "recipes.csv"
    shutil.copy(SAMPLE_CSV, data)
    saved = _resume_state(data)  # the identity checkpoints saved before the content fingerprint
    with caplog.at_level(logging.WARNING):
        assert settings.settle(parse_args(["--resume", "latest"]), saved).data == [str(data)]
    said = [r.getMessage() for r in caplog.records if "first and last MiB only" in r.getMessage()]
    assert len(said) == 1 and "--data" in said[0] and "recorded from the next checkpoint on" in said[0]


def _scheduler(lr=1e-3, **schedule):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param]}], lr=lr)
    return make_scheduler(optimizer, Schedule(**{"warmup_steps": 10, "total_steps": 100, "kind": "linear", **schedule}))


def _reach(epochs: int) -> int:
    """A run at step 6 whose 2 epochs are done, 12 steps per further epoch."""
    return 6 + max(0, epochs - 2) * 12


def test_a_new_end_on_a_resume_is_trained_to_or_refused():
    saved = {"epochs": 2, "max_steps": 6}
    epochs, max_steps, notes = settings.resumed_end(2, 8, saved, {"max_steps"}, 6, _reach)
    assert (epochs, max_steps) == (3, 8) and "now trains 3 epochs, to reach step 8" in notes[0]
    epochs, max_steps, notes = settings.resumed_end(4, 6, saved, {"epochs"}, 6, _reach)
    assert (epochs, max_steps) == (4, 0) and "ends with its last epoch, at step 30" in notes[0]
    assert settings.resumed_end(2, 6, saved, {"epochs", "max_steps"}, 6, _reach) == (2, 6, [])  # the run's own
    with pytest.raises(UserError, match="past the end of --epochs 2 \\(step 6\\)"):
        settings.resumed_end(2, 8, saved, {"epochs", "max_steps"}, 6, _reach)
    with pytest.raises(UserError, match="--epochs 4 ends at step 30, past --max-steps 10"):
        settings.resumed_end(4, 10, saved, {"epochs", "max_steps"}, 6, _reach)
    with pytest.raises(UserError, match="--max-steps 5 ends the run at step 5: nothing would be trained"):
        settings.resumed_end(2, 5, saved, {"max_steps"}, 6, _reach)


def test_the_saved_peak_lr_wins_unless_learning_rate_is_given():
    saved = _scheduler(lr=1e-3).state_dict()
    saved["base_lrs"] = [2e-3]  # the run's peak
    assert settings.resumed_scheduler_state(saved, _scheduler(lr=1e-3), 40, explicit=set())["base_lrs"] == [2e-3]
    assert settings.resumed_scheduler_state(saved, _scheduler(lr=5e-4), 40, {"learning_rate"})["base_lrs"] == [5e-4]


def test_a_rewarm_ramp_of_an_earlier_session_is_kept_and_a_new_end_announced(caplog):
    saved = _scheduler(rewarm_from=30, rewarm_steps=20).state_dict()
    scheduler = _scheduler(total_steps=150)
    caplog.set_level(logging.INFO)
    state = settings.resumed_scheduler_state(saved, scheduler, 40, explicit=set())
    assert state["lr_lambdas"][0]["rewarm_from"] == 30 and state["lr_lambdas"][0]["total_steps"] == 150
    assert scheduler.lr_lambdas[0](40) == pytest.approx((1 - 30 / 140) * 11 / 20)
    assert "the run now ends at step 150 (the checkpoint planned 100)" in caplog.text


def test_an_explicit_weight_decay_survives_loading_the_optimizer_state():
    param = torch.nn.Parameter(torch.zeros(1))
    saved = torch.optim.AdamW([{"params": [param], "weight_decay": 0.01}], lr=1e-3).state_dict()
    optimizer = torch.optim.AdamW([{"params": [param], "weight_decay": 0.1}], lr=1e-3)
    with settings.explicit_optimizer_settings(optimizer, {"weight_decay"}):
        optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    with settings.explicit_optimizer_settings(optimizer, set()):
        optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


# ---------------------------------------------------------------------------------------------
# which flags the command line gave


@pytest.mark.parametrize(
    "argv, given",
    [
        ([], set()),
        (["--epoch", "5"], {"epochs"}),  # an abbreviation
        (["--epochs", "3"], {"epochs"}),  # the default value, given explicitly
        (["--learning-rate=5e-4"], {"learning_rate"}),
        (["--no-group-by-length"], {"group_by_length"}),  # store_false
        (["--enable-mixed-precision"], {"mixed_precision"}),  # store_const
        (["--disable-compilation"], {"compile"}),
        (["--no-async-save"], {"async_save"}),
        (["--resume", "latest"], {"resume_from_checkpoint"}),  # an alias
        (["--report-to", "none"], {"report_to"}),
        (["--save-total", "3", "--warmup=7"], {"save_total_limit", "warmup_steps"}),
    ],
)
def test_explicit_flags_are_read_by_argparse_itself(argv, given):
    config = parse_args(["--data", str(SAMPLE_CSV), *argv])
    assert config.explicit == {"data", *given}
    assert "explicit" not in config.to_dict()  # never saved in a checkpoint


def test_demo_defaults_step_aside_for_any_explicit_flag():
    assert parse_args(["--demo"]).epochs == 10  # the demo's tuned 10 epochs (README: Quickstart)
    assert parse_args(["--demo", "--epoch", "5"]).epochs == 5
    config = parse_args(["--demo", "--warmup=3", "--learning-rate", "5e-4"])
    assert (config.warmup_steps, config.learning_rate, config.batch_size) == (3, 5e-4, 8)


def test_no_auto_micro_batch_turns_off_an_inherited_auto_micro_batch():
    saved = _saved(data="a.csv", auto_micro_batch=True)
    command = parse_args(["--data", str(SAMPLE_CSV), "--no-auto-micro-batch"])
    assert command.explicit == {"data", "auto_micro_batch"} and command.auto_micro_batch is False
    decision = settings.decide(saved, command.to_dict(), command.explicit)
    assert decision.values["auto_micro_batch"] is False
    assert [str(c) for c in decision.applied] == ["--no-auto-micro-batch (auto micro batch on -> off)"]
    # without the flag the resume keeps it
    plain = parse_args(["--data", str(SAMPLE_CSV)])
    assert settings.decide(saved, plain.to_dict(), plain.explicit).values["auto_micro_batch"] is True


def test_lora_settings_are_inherited_and_a_lora_run_may_name_its_base_anew():
    saved = _saved(data="a.csv", lora_r=8, lora_alpha=16.0, pretrained_model="old/base")
    command = parse_args(["--data", str(SAMPLE_CSV), "--pretrained-model", "new/base"])
    decision = settings.decide(saved, command.to_dict(), command.explicit)
    assert (decision.values["lora_r"], decision.values["lora_alpha"]) == (8, 16.0)
    assert decision.values["pretrained_model"] == "new/base"  # rebuilt from there, checked by its fingerprint
    full = _saved(data="a.csv", pretrained_model="old/base")  # a full fine-tuning run: the weights are the checkpoint's
    assert settings.decide(full, command.to_dict(), command.explicit).values["pretrained_model"] == "old/base"
    changed = parse_args(["--data", str(SAMPLE_CSV), "--lora-alpha", "4"])
    assert [c.name for c in settings.decide(saved, changed.to_dict(), changed.explicit).adapter] == ["lora_alpha"]


def test_async_save_is_the_default_on_cuda_only():
    from types import SimpleNamespace
    from chef_genius.train.trainer import Trainer

    def async_save(device, *argv):
        config = parse_args(["--data", str(SAMPLE_CSV), *argv])
        return Trainer._async_save(SimpleNamespace(device=torch.device(device), config=config))

    assert async_save("cuda") and not async_save("cpu")
    assert not async_save("cuda", "--no-async-save") and async_save("cpu", "--async-save")


def test_a_resume_keeps_the_runs_compile_choice_unless_a_flag_changes_it():
    """--disable-compilation (or --compile) is the run's: compiled and eager steps differ in floating point,
    so a resume keeps it; a flag on the resume command changes it with one line."""
    saved = _saved(data="a.csv", compile=False)
    plain = parse_args(["--data", str(SAMPLE_CSV)])
    assert plain.compile is None and settings.decide(saved, plain.to_dict(), plain.explicit).values["compile"] is False
    forced = parse_args(["--data", str(SAMPLE_CSV), "--compile"])
    decision = settings.decide(saved, forced.to_dict(), forced.explicit)
    assert decision.values["compile"] is True
    assert [str(c) for c in decision.applied] == ["--compile (compile off -> on)"]


def test_a_checkpoint_from_before_dedup_resumes_without_it_and_refuses_turning_it_on():
    saved = {"batch_size": 8, "seed": 42}  # written before --dedup existed: its run trained on every row
    decision = settings.decide(saved, _saved(), explicit=set())
    assert decision.values["dedup"] == "off" and "dedup" in decision.kept and decision.refused == []
    turned_on = settings.decide(saved, _saved(dedup="remove"), explicit={"dedup"})
    assert [str(c) for c in turned_on.refused] == ["--dedup off -> remove"]
    recorded = settings.decide(_saved(dedup="keep"), _saved(), explicit=set())
    assert recorded.values["dedup"] == "keep"
