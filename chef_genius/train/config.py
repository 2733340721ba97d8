"""Training configuration: the settings of ``chef_genius/settings/schema.py``, built from the command
line and checked.

Every field but ``explicit`` is saved into each checkpoint (``hyperparameters``); a resume takes the
run's settings back from there and keeps only the flags given on its own command line
(``explicit``), see ``chef_genius/train/settings.py``. ``--config FILE.yaml`` gives settings as a file
(``chef_genius/settings/config_file.py``): the command line overrides it, and the settings it names
are explicit like flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from chef_genius.cli_support import Parser
from chef_genius.errors import UserError
from chef_genius.paths import MODELS_ROOT, SAMPLE_DATA
from chef_genius.settings import schema
from chef_genius.settings.fields import add_section, own_settings, run_checks
from chef_genius.settings.schema import DEFAULT_MODEL, TrainConfig  # noqa: F401 (the names other modules import)

SCHEDULES = typing.get_args(schema.Schedule)
PRECISIONS = typing.get_args(schema.Precision)
PROGRESS_MODES = typing.get_args(schema.ProgressMode)
REPORT_TO = typing.get_args(schema.Reporter)
OPTIMIZERS = typing.get_args(schema.Optimizer)
DATA_REQUIRED = (
    "--data is required (a RecipeNLG or Food.com CSV, JSONL or Parquet file, optionally .gz, .bz2 "
    "or zipped), or use --demo"
)


EXAMPLES = """examples:
  python cli/complete_optimized_training.py --demo
  python cli/complete_optimized_training.py --data RecipeNLG_dataset.csv --model-output models/flan-large \\
      --batch-size 8 --gradient-accumulation-steps 4 --epochs 2
  python cli/complete_optimized_training.py --model-output models/flan-large --resume-from-checkpoint latest
  python cli/complete_optimized_training.py --config configs/flan-t5-large-24gb.yaml --data RecipeNLG_dataset.csv
  python cli/complete_optimized_training.py --config models/flan-large/settings.yaml --model-output models/again
"""


def build_parser() -> argparse.ArgumentParser:
    """The training command line, one argument group per section of the schema."""
    p = Parser(
        prog="complete_optimized_training.py",
        description="Fine-tune FLAN-T5 to write recipes from ingredient lists.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for section in schema.SECTIONS:
        add_section(p, section.title, own_settings(section))
    return p


# The demo's settings, tuned so that its model writes recipes on held-out ingredients
# (docs/training-and-data.md: The demo):
# 10 epochs of 380 recipes (480 steps) at a high peak LR suit its small model; 20 recipes (5 %) are held
# out and all of them are written and scored at each evaluation. The sample holds no duplicates
# (tests/data/test_dedup.py), so --dedup would remove nothing; the demo keeps the split by row number
# (--dedup off) that its documented held-out scores were measured on.
DEMO_OVERRIDES = dict(
    epochs=10,
    batch_size=8,
    learning_rate=3e-3,
    warmup_steps=30,
    save_steps=120,
    eval_steps=240,
    logging_steps=20,
    max_source_length=64,
    max_target_length=256,
    dataloader_num_workers=0,
    length_group_size=64,
    eval_split_ratio=0.05,
    eval_generate=20,
    eval_samples=0,
    dedup="off",
)


def parse_args(argv=None) -> TrainConfig:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    values = vars(parser.parse_args(argv))
    explicit = explicit_flags(parser, argv)
    if values["config"] is not None:
        # The file's settings are the user's, as if typed before the command line's flags: the flags
        # win, and a resume treats the file's settings as given (train/settings.py).
        from chef_genius.settings.config_file import read_config

        given = read_config(values["config"], TrainConfig, skip=explicit)
        values.update({name: value for name, value in given.items() if name not in explicit})
        explicit = explicit | frozenset(given)
    if values["demo"]:  # the demo's values are defaults: any flag given, however spelled, wins
        for key, value in DEMO_OVERRIDES.items():
            if key not in explicit:
                values[key] = value
        values["data"] = values["data"] or [str(SAMPLE_DATA)]
        if "pretrained_model" not in explicit:
            values["pretrained_model"] = str(MODELS_ROOT / "demo-t5")
        values["model_output"] = values["model_output"] or str(MODELS_ROOT / "demo")
        if "mixed_precision" not in explicit:
            values["mixed_precision"] = "no"
    values["model_output"] = values["model_output"] or TrainConfig.model_output
    config = TrainConfig(**values, explicit=explicit)
    validate(config)
    return config


_UNSET = object()


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> frozenset[str]:
    """The fields ``argv`` sets, as argparse itself reads it (abbreviations, ``--flag=value``, aliases,
    ``store_false`` / ``store_const`` variants): a second parse into a namespace pre-filled with a
    marker, where argparse puts no defaults, so every field still holding the marker was not given."""
    fields = {a.dest for a in parser._actions if a.default is not argparse.SUPPRESS}
    probe = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(fields, _UNSET)))
    return frozenset(name for name, value in vars(probe).items() if value is not _UNSET)


def validate(c: TrainConfig) -> None:
    """Reject values that cannot work, with one sentence each (exit code 2): each setting's own check
    (declared in the schema), then the checks that involve several settings."""
    if c.lora_r and c.lora_alpha is None:
        c.lora_alpha = 2.0 * c.lora_r
    run_checks(c)
    if c.save_adapter_only and not c.lora_r and not (c.resume_from_checkpoint or c.auto_resume):
        raise UserError("--save-adapter-only needs --lora-r R (a full fine-tuning run has no adapter)")
    if c.data is None and not (c.resume_from_checkpoint or c.auto_resume or c.plan_only):
        raise UserError(DATA_REQUIRED)  # a resume reuses the checkpoint's file (checked in train/settings.py)
    check_model_output(c.model_output)
    if c.metric_for_best != "eval_loss" and not c.eval_generate:
        raise UserError(f"--metric-for-best {c.metric_for_best} needs recipes to score: add --eval-generate N")
    if c.max_tokens_per_batch and c.streaming:
        raise UserError("--max-tokens-per-batch needs the tokenized cache: drop --streaming or --max-tokens-per-batch")
    if c.max_tokens_per_batch and c.max_tokens_per_batch < c.max_source_length + c.max_target_length:
        raise UserError(
            f"--max-tokens-per-batch {c.max_tokens_per_batch} is smaller than one recipe can be "
            f"(--max-source-length + --max-target-length = {c.max_source_length + c.max_target_length});"
            " raise it or the max lengths"
        )
    if c.resume_from_checkpoint and c.auto_resume:
        raise UserError("use either --resume-from-checkpoint or --auto-resume, not both")


def check_model_output(model_output: str) -> None:
    """A run folder is never a checkpoint nor inside one: a run's files there would break its seal."""
    from chef_genius.checkpoint.layout import enclosing_checkpoint

    checkpoint = enclosing_checkpoint(model_output)
    if checkpoint is None:
        return
    where = "is" if checkpoint == Path(os.path.abspath(model_output)) else "is inside"
    raise UserError(
        f"--model-output {model_output} {where} the checkpoint {checkpoint.name}, which a run never "
        f"writes into; did you mean its run folder? --model-output {checkpoint.parent}"
    )
