"""The training command's errors: one readable line on stderr, exit code 2, nothing written."""

import re
import subprocess
import sys

import pytest

from chef_genius.paths import SAMPLE_DATA
from chef_genius.train.config import parse_args
from chef_genius.errors import UserError
from conftest import REPO, run_training, train_args


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "-4"], "--batch-size must be a positive integer"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--num-proc", "-1"], "--num-proc must be 0 or more"),
        (["--learning-rate", "0"], "--learning-rate must be positive"),
        (["--eval-split-ratio", "1.5"], "--eval-split-ratio must be in"),
        (["--data", "no/such/file.csv"], "--data file not found"),
        (["--lr-scheduler", "wavy"], "invalid choice"),
        (["--batch-size", "many"], "invalid int value"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_values_are_usage_errors(sample_csv, flags, message):
    with pytest.raises(UserError, match=message) as err:
        parse_args(([] if "--data" in flags else ["--data", str(sample_csv)]) + flags)
    assert err.value.exit_code == 2


def test_data_is_required_unless_demo():
    with pytest.raises(UserError, match="--data is required"):
        parse_args([])
    assert parse_args(["--demo"]).data == [str(SAMPLE_DATA)]  # --data is a list of sources


def test_resume_path_that_is_not_a_checkpoint(tiny_model, small_csv, cache_dir, tmp_path):
    (tmp_path / "notckpt").mkdir()
    for target, message in ((tmp_path / "missing", "no such folder"), (tmp_path / "notckpt", "not a checkpoint")):
        with pytest.raises(UserError, match=message) as err:
            run_training(
                *train_args(tiny_model, small_csv, tmp_path / "out", cache_dir, "--resume-from-checkpoint", str(target))
            )
        assert err.value.exit_code == 2
    assert not (tmp_path / "out" / "checkpoint-5").exists()


def test_cli_prints_one_line_and_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "cli" / "complete_optimized_training.py"), "--data", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --data file not found: {tmp_path / 'missing.csv'}"]


def _help_options(text: str) -> list[set[str]]:
    """The option strings of each option listed in ``--help`` (``--resume-from-checkpoint PATH, --resume
    PATH`` gives one set of both), read from the option lines, not from prose."""
    options = []
    for line in text.splitlines():
        if line.startswith("  -"):  # an option line; wrapped help text is indented further
            head = re.split(r"\s{2,}", line.strip())[0]
            options.append({word.rstrip(",") for word in head.split() if re.fullmatch(r"-{1,2}[a-z][\w-]*,?", word)})
    return options


def test_help_lists_the_replaced_systems_flags():
    text = subprocess.run(
        [sys.executable, str(REPO / "cli" / "complete_optimized_training.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    options = _help_options(text)
    listed = set().union(*options)
    from chef_genius.train.config import build_parser

    assert listed == {o for action in build_parser()._actions for o in action.option_strings}  # read right
    for flag in (
        "--epochs",
        "--batch-size",
        "--model-output",
        "--pretrained-model",
        "--resume-from-checkpoint",
        "--resume",
        "--gradient-accumulation-steps",
        "--enable-mixed-precision",
        "--disable-compilation",
        "--dataloader-num-workers",
        "--demo",
    ):
        assert flag in listed, f"{flag} is not an option of --help"
    # --resume is the short spelling of --resume-from-checkpoint, not a flag of its own
    assert {"--resume-from-checkpoint", "--resume"} in options
    assert parse_args(["--demo", "--resume", "latest"]).resume_from_checkpoint == "latest"
    assert "examples:" in text
