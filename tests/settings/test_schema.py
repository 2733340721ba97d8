"""The settings schema is the one place a setting is declared: these fast tests keep the parser, the
resume policy, the data position and the checkpoint's keys reading it (no training run)."""

# no ``from __future__ import annotations``: the sections below need their real types, as the schema's do
import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

import pytest

from chef_genius.data.position import DataPosition
from chef_genius.errors import UserError
from chef_genius.evaluation.metrics import HIGHER_IS_BETTER
from chef_genius.settings import checks, schema
from chef_genius.settings.fields import (
    AS_FIELD,
    Policy,
    add_section,
    choices_of,
    default_of,
    flags_of,
    own_settings,
    position_keys,
    run_checks,
    setting,
    settings_of,
    spec_of,
    value_type,
)
from chef_genius.train import config, settings
from chef_genius.train.config import TrainConfig, build_parser

# The hyperparameters a checkpoint written by main before the schema holds: none may disappear or be
# renamed, or those checkpoints would resume with "does not record" for settings they do record.
SAVED_BY_MAIN = {
    "data",
    "eval_data",
    "eval_split_ratio",
    "columns",
    "source_template",
    "pretrained_model",
    "model_output",
    "cache_dir",
    "resume_from_checkpoint",
    "auto_resume",
    "allow_config_change",
    "epochs",
    "max_steps",
    "stop_after_steps",
    "batch_size",
    "max_tokens_per_batch",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "lr_scheduler",
    "weight_decay",
    "max_grad_norm",
    "optimizer",
    "optimizer_rewarmup_steps",
    "save_steps",
    "eval_steps",
    "logging_steps",
    "save_total_limit",
    "save_every_minutes",
    "on_save_error",
    "verify_hashes",
    "seed",
    "max_source_length",
    "max_target_length",
    "group_by_length",
    "length_group_size",
    "mixed_precision",
    "compile",
    "dataloader_num_workers",
    "num_proc",
    "async_save",
    "streaming",
    "gradient_checkpointing",
    "plan_only",
    "auto_micro_batch",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "save_adapter_only",
    "demo",
    "progress",
    "report_to",
    "wandb_project",
    "eval_samples",
    "eval_max_samples",
    "eval_generate",
    "metric_for_best",
}


def _actions_by_field() -> dict[str, list[argparse.Action]]:
    out = {}
    for action in build_parser()._actions:
        if not isinstance(action, argparse._HelpAction):
            out.setdefault(action.dest, []).append(action)
    return out


def test_every_setting_has_help_a_policy_and_a_real_type():
    fields = settings_of(TrainConfig)
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in fields} == {"explicit"}
    for f in fields:
        spec = spec_of(f)
        assert spec.help.strip(), f"{f.name} has no help"
        assert isinstance(spec.policy, Policy), f"{f.name} has no resume policy"
        assert not isinstance(f.type, str), (
            f"{f.name}'s type is a string: the schema must not use postponed annotations"
        )
        assert typing.get_origin(f.type) is not None or isinstance(f.type, type), f"{f.name}: {f.type!r}"


def test_choices_come_from_literal_types():
    actions = _actions_by_field()
    for f in settings_of(TrainConfig):
        for action in actions[f.name]:
            if action.choices is not None:
                assert tuple(action.choices) == choices_of(f), f"{f.name}'s choices are not its Literal's"
    assert config.SCHEDULES == typing.get_args(schema.Schedule) == ("linear", "cosine", "constant")
    assert config.OPTIMIZERS == ("adamw", "adafactor", "adamw-8bit")
    # the best-checkpoint metric: eval_loss, then every recipe metric the evaluation computes
    assert typing.get_args(schema.MetricForBest) == ("eval_loss", *HIGHER_IS_BETTER)


def test_parser_and_schema_agree():
    actions = _actions_by_field()
    assert set(actions) == {f.name for f in settings_of(TrainConfig)}  # every setting has a flag, nothing else
    for f in settings_of(TrainConfig):
        first = actions[f.name][0]  # argparse takes a field's default from its first flag
        cli_default = spec_of(f).cli_default
        expected = default_of(f) if cli_default is AS_FIELD else cli_default
        assert first.default == expected, f"--{f.name}: the parser's default is not the schema's"
        assert [a.option_strings for a in actions[f.name]] == [list(flag.names) for flag in flags_of(f)]
        if first.nargs != 0:
            assert first.type is value_type(f)
            assert f.type not in (int, float) or first.type is f.type  # "--epochs 2" is the int 2
    assert build_parser().parse_args([]).model_output is None  # the demo tells "not given" from the default


def test_resume_policy_groups_are_read_from_the_schema():
    groups = {policy: getattr(settings, policy.name) for policy in Policy}
    for f in settings_of(TrainConfig):
        assert f.name in groups[spec_of(f).policy]
    assert set(settings.RESHAPING) <= set(settings.ADAPTER)
    assert settings.NOTES["learning_rate"] == "the schedule's peak from step {step} on"


def test_the_data_position_keys_are_declared_once():
    keys = position_keys(TrainConfig)
    assert keys == {
        "seed": "sampler_seed",
        "group_by_length": "group_by_length",
        "length_group_size": "length_group_size",
        "max_tokens_per_batch": "max_tokens_per_batch",
    }
    assert settings.POSITION_KEYS == keys
    saved = DataPosition().state_dict()
    assert set(saved) == {"epoch", "samples_in_epoch", "num_samples", *keys.values()}
    assert saved["sampler_seed"] == TrainConfig().seed  # the position's defaults are the settings'


def test_checkpoint_hyperparameters_keep_every_key_main_saved():
    saved = TrainConfig().to_dict()
    assert SAVED_BY_MAIN <= set(saved)
    assert "explicit" not in saved
    assert all(not isinstance(v, dict) for v in saved.values())  # flat, as before


def test_each_section_is_one_help_group():
    titles = [g.title for g in build_parser()._action_groups][2:]  # after argparse's own two
    assert titles == [section.title for section in schema.SECTIONS]
    assert sum(len(own_settings(s)) for s in schema.SECTIONS) == len(settings_of(TrainConfig))


# ---------------------------------------------------------------------------------------------
# adding a setting is one field


@dataclass
class _Extra:
    title = "extra"
    smoothing: float = setting(
        0.1, policy=Policy.APPLIED, check=checks.fraction, help="label smoothing (default {default})"
    )
    style: Literal["short", "long"] = setting("short", policy=Policy.SESSION, help="how recipes read")
    tidy: bool = setting(True, policy=Policy.APPLIED, help="keep the recipe as written")  # on: --no-tidy
    quiet: bool = setting(False, policy=Policy.SESSION, help="say less")  # off: --quiet


def test_one_field_gives_flag_default_help_choices_and_check():
    p = argparse.ArgumentParser()
    add_section(p, _Extra.title, own_settings(_Extra))
    by_dest = {a.dest: a for a in p._actions}
    assert by_dest["smoothing"].help == "label smoothing (default 0.1)" and by_dest["smoothing"].type is float
    assert by_dest["style"].choices == ("short", "long")
    assert vars(p.parse_args(["--smoothing", "0.2", "--no-tidy", "--quiet"])) == {
        "smoothing": 0.2,
        "style": "short",
        "tidy": False,
        "quiet": True,
    }
    assert vars(p.parse_args([])) == {"smoothing": 0.1, "style": "short", "tidy": True, "quiet": False}
    with pytest.raises(SystemExit):
        p.parse_args(["--style", "medium"])
    with pytest.raises(UserError, match=r"--smoothing must be in \[0, 1\), got 1.5"):
        run_checks(_Extra(smoothing=1.5))


def test_a_legacy_value_is_declared_only_where_the_default_changed_what_old_runs_did():
    from chef_genius.settings.fields import default_of, legacy_values

    legacy = legacy_values(TrainConfig)
    assert legacy == {"dedup": "off"} and settings.LEGACY == legacy
    fields = {f.name: f for f in settings_of(TrainConfig)}
    assert all(default_of(fields[name]) != value for name, value in legacy.items())


def test_a_list_flag_given_twice_is_refused_not_halved():
    # argparse keeps the last of two `--data` (training on one source without a word): refused instead
    parser = build_parser()
    with pytest.raises(UserError, match="--data given twice") as refused:
        parser.parse_args(["--data", "a.csv", "--data", "b.csv"])
    assert refused.value.exit_code == 2
    # once, with several values, and a second parse with the same parser, are fine
    assert parser.parse_args(["--data", "a.csv", "b.csv:2"]).data == ["a.csv", "b.csv:2"]
    assert parser.parse_args(["--data", "c.csv"]).data == ["c.csv"]
