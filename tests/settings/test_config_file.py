"""Run configuration files (``--config FILE.yaml``): read, checked, overridden by flags, treated as
given on a resume; the shipped configs valid; a run's ``settings.yaml`` giving its settings back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chef_genius.checkpoint.training_state import load_training_state
from chef_genius.data.fingerprint import data_identity
from chef_genius.errors import UserError
from chef_genius.settings import schema
from chef_genius.settings.config_file import NOT_WRITTEN, SETTINGS_FILE, settings_yaml
from chef_genius.train import settings
from chef_genius.train.config import DEMO_OVERRIDES, TrainConfig, parse_args
from conftest import REPO, SAMPLE_CSV

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if p.name != "accelerate_fsdp.yaml"]  # that one is accelerate's


def _file(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _refusal(argv) -> str:
    with pytest.raises(UserError) as err:
        parse_args(argv)
    assert err.value.exit_code == 2
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_file_sets_settings_in_either_spelling_and_flags_override_it(tmp_path):
    path = _file(
        tmp_path,
        f"data: {SAMPLE_CSV}\nbatch-size: 4\nlearning_rate: 3e-4\nmixed_precision: no\n"
        "gradient_checkpointing: true\nreport_to: none\nlora_r: 8\n",
    )
    config = parse_args(["--config", path])
    assert (
        config.batch_size,
        config.learning_rate,
        config.mixed_precision,
        config.gradient_checkpointing,
        config.report_to,
        config.lora_r,
        config.lora_alpha,
    ) == (4, 3e-4, "no", True, [], 8, 16.0)
    assert {"data", "batch_size", "learning_rate", "mixed_precision", "lora_r"} <= config.explicit
    assert "epochs" not in config.explicit  # not in the file nor on the command line
    overridden = parse_args(["--config", path, "--batch-size", "16", "--no-gradient-checkpointing"])
    assert (overridden.batch_size, overridden.gradient_checkpointing, overridden.learning_rate) == (16, False, 3e-4)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("batch_sise: 4\n", "run.yaml: batch_sise: not a setting; did you mean batch_size?"),
        ("batch_size: 0\n", "run.yaml: batch_size: --batch-size must be a positive integer, got 0"),
        ("batch_size: 2.5\n", "run.yaml: batch_size: must be an integer, got 2.5"),
        ("batch_size: eight\n", "run.yaml: batch_size: must be an integer, got 'eight'"),
        ("streaming: yes\n", "run.yaml: streaming: must be true or false, got 'yes'"),
        ("lr_scheduler: cosin\n", "run.yaml: lr_scheduler: must be one of linear, cosine, constant, got 'cosin'"),
        ("pretrained_model: 7\n", "run.yaml: pretrained_model: must be a string (put it in quotes), got 7"),
        ("eval_data: missing.csv\n", "run.yaml: eval_data: --eval-data file not found: missing.csv"),
        ("seed: 1\nseed: 2\n", "run.yaml: seed: seed is given twice"),
        ("seed: 1\nseed: [2\n", "run.yaml: not valid YAML (line 3)"),
        ("- batch_size: 4\n", "run.yaml: a config file is a mapping of setting names to values"),
        ("config: other.yaml\n", "run.yaml: config: a config file cannot name another"),
    ],
    ids=[
        "unknown",
        "check",
        "float-for-int",
        "word-for-int",
        "yaml-1.1-bool",
        "choice",
        "number-for-string",
        "missing-file",
        "twice",
        "syntax",
        "not-a-mapping",
        "nested",
    ],
)
def test_a_bad_file_is_refused_in_one_line_naming_the_file_and_key(tmp_path, text, expected):
    message = _refusal(["--config", _file(tmp_path, text), "--data", SAMPLE_CSV])
    assert expected in message and str(tmp_path / "run.yaml") in message


def test_a_missing_config_file_is_refused():
    assert "--config file not found: nowhere.yaml" in _refusal(["--config", "nowhere.yaml"])


def test_a_flag_overriding_a_bad_value_in_the_file_wins(tmp_path):
    path = _file(tmp_path, "eval_data: missing.csv\n")
    assert parse_args(["--config", path, "--data", SAMPLE_CSV, "--eval-data", SAMPLE_CSV]).eval_data == str(SAMPLE_CSV)


def test_a_resume_treats_the_files_settings_as_flags_given(tmp_path):
    """The file's values go through a resume's rules like typed flags: GUARDED ones refused, APPLIED
    ones applied; settings the file does not name come from the checkpoint."""
    data = tmp_path / "recipes.csv"
    shutil.copy(SAMPLE_CSV, data)
    hyper = {
        **TrainConfig(data=str(data), batch_size=8, learning_rate=1e-4, warmup_steps=50).to_dict(),
        "data_identity": data_identity(data),
        "eval_data_identity": None,
    }
    saved = {"global_step": 3, "hyperparameters": hyper}
    guarded = _file(tmp_path, "batch_size: 4\n")
    with pytest.raises(UserError, match=r"--batch-size 8 -> 4") as err:
        settings.settle(parse_args(["--config", guarded, "--resume", "latest"]), saved)
    assert err.value.exit_code == 2
    applied = _file(tmp_path, "learning_rate: 5.0e-5\n")
    resumed = settings.settle(parse_args(["--config", applied, "--resume", "latest"]), saved)
    assert (resumed.learning_rate, resumed.warmup_steps, resumed.batch_size) == (5e-5, 50, 8)


def test_the_demo_config_trains_like_the_demo_flag():
    from_file = parse_args(["--config", REPO / "configs" / "demo.yaml"]).to_dict()
    from_flag = parse_args(["--demo"]).to_dict()
    assert from_file.pop("config").endswith("demo.yaml") and from_flag.pop("config") is None
    assert from_file == from_flag
    assert set(DEMO_OVERRIDES) <= set(parse_args(["--config", REPO / "configs" / "demo.yaml"]).explicit)


def test_the_shipped_configs_are_the_four_the_readme_names():
    assert {p.name for p in RUN_CONFIGS} == {
        "demo.yaml",
        "flan-t5-large-24gb.yaml",
        "lora-12gb.yaml",
        "flan-t5-xl-fsdp.yaml",
    }


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=[p.stem for p in RUN_CONFIGS])
def test_every_shipped_config_parses_and_validates_offline(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = parse_args(["--config", path, "--data", SAMPLE_CSV])
    assert config.explicit - {"config", "data"}, f"{path.name} sets nothing"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), f"{path.name} should say at its top what it is for and how it was sized"


# ---------------------------------------------------------------------------------------------
# the run's settings.yaml


def test_written_settings_give_the_same_settings_back(tmp_path):
    config = parse_args(
        [
            "--data",
            SAMPLE_CSV,
            "--columns",
            "title=name",
            "--lora-r",
            "4",
            "--report-to",
            "tensorboard",
            "--mixed-precision",
            "no",
            "--learning-rate",
            "3e-5",
            "--source-template",
            "Cook: {ingredients}",
            "--max-steps",
            "7",
            "--lora-target-modules",
            "q",
            "v",
        ]
    )
    path = tmp_path / SETTINGS_FILE
    path.write_text(settings_yaml(config, schema.SECTIONS), encoding="utf-8")
    again = parse_args(["--config", path]).to_dict()
    original = config.to_dict()
    for name in NOT_WRITTEN:
        again.pop(name), original.pop(name)
    assert again == original


def test_a_run_writes_its_resolved_settings_and_they_round_trip(stopped_run, tmp_path):
    """The run folder's settings.yaml holds every setting the run trained with (as its checkpoint
    records them), and --config with it parses to the same settings."""
    written = stopped_run / SETTINGS_FILE
    assert written.is_file()
    hyper = load_training_state(stopped_run / "checkpoint-10")["hyperparameters"]
    reread = parse_args(["--config", written]).to_dict()
    names = [n for n in TrainConfig().to_dict() if n not in NOT_WRITTEN]
    assert {n: reread[n] for n in names} == {n: hyper[n] for n in names}
    assert reread["stop_after_steps"] == 10 and reread["batch_size"] == 8


@pytest.mark.parametrize("name, card_gb", [("flan-t5-large-24gb.yaml", 24), ("lora-12gb.yaml", 12)])
def test_the_single_gpu_configs_plan_to_fit_their_card_with_room_to_spare(name, card_gb, monkeypatch):
    """The memory plan (built-in FLAN-T5-large shape, no download) of each single-GPU config stays
    under 75 % of its card, the margin its comment promises for the activation estimate."""
    from chef_genius.model import memory
    from chef_genius.train.memory_plan import plan_model, setting_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = parse_args(["--config", REPO / "configs" / name, "--plan-only"])
    planned = memory.plan(plan_model(config), setting_of(config, bf16=config.mixed_precision == "bf16")).total
    assert planned < 0.75 * card_gb * 1e9, f"{name} plans {planned / memory.GIB:.1f} GiB"
