"""Training configuration: one dataclass of plain values, built from the command line and checked.

Every field but ``explicit`` is saved into each checkpoint (``hyperparameters``); a resume takes the
run's settings back from there and keeps only the flags given on its own command line
(``explicit``), see ``chef_genius/train/settings.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from chef_genius.cli_support import Parser
from chef_genius.data.layouts import canonical_columns
from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE, template_fields
from chef_genius.errors import UserError
from chef_genius.model.names import LORA_TARGETS
from chef_genius.paths import MODELS_ROOT, SAMPLE_DATA

DEFAULT_MODEL = "google/flan-t5-large"
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "no")
PROGRESS_MODES = ("auto", "bar", "log")
REPORT_TO = ("tensorboard", "wandb", "none")
DATA_REQUIRED = ("--data is required (a RecipeNLG or Food.com CSV, JSONL or Parquet file, optionally .gz, .bz2 "
                 "or zipped), or use --demo")
OPTIMIZERS = ("adamw", "adafactor", "adamw-8bit")


@dataclass
class TrainConfig:
    data: str | None = None
    eval_data: str | None = None
    eval_split_ratio: float = 0.02
    columns: str | None = None
    source_template: str = DEFAULT_SOURCE_TEMPLATE
    pretrained_model: str = DEFAULT_MODEL
    model_output: str = str(MODELS_ROOT / "chef-genius")
    cache_dir: str | None = None
    resume_from_checkpoint: str | None = None
    auto_resume: bool = False
    allow_config_change: bool = False
    epochs: int = 3
    max_steps: int = 0
    stop_after_steps: int = 0
    batch_size: int = 8
    max_tokens_per_batch: int = 0
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 500
    lr_scheduler: str = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    optimizer_rewarmup_steps: int = 100
    save_steps: int = 1000
    eval_steps: int = 1000
    logging_steps: int = 50
    save_total_limit: int = 0
    save_every_minutes: float = 0.0
    on_save_error: str = "stop"
    verify_hashes: bool = False
    checkpoint_mirror: str | None = None
    requeue_on_preemption: bool = False
    seed: int = 42
    max_source_length: int = 256
    max_target_length: int = 512
    group_by_length: bool = True
    length_group_size: int = 1024
    mixed_precision: str = "auto"
    compile: bool | None = None
    dataloader_num_workers: int = 2
    num_proc: int = 0
    async_save: bool | None = None  # None: on with CUDA, off on CPU
    streaming: bool = False
    gradient_checkpointing: bool = False
    plan_only: bool = False
    auto_micro_batch: bool = False
    lora_r: int = 0
    lora_alpha: float | None = None  # None: 2 x --lora-r (set by validate)
    lora_dropout: float = 0.05
    lora_target_modules: list = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))
    save_adapter_only: bool = False
    demo: bool = False
    progress: str = "auto"
    report_to: list = dataclasses.field(default_factory=list)
    wandb_project: str | None = None
    eval_samples: int = 3
    eval_max_samples: int = 2000
    eval_generate: int = 0
    metric_for_best: str = "eval_loss"
    # The fields the command line set (any spelling of their flags); never saved in a checkpoint.
    explicit: frozenset = frozenset()

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        del values["explicit"]
        return values


EXAMPLES = """examples:
  python cli/complete_optimized_training.py --demo
  python cli/complete_optimized_training.py --data RecipeNLG_dataset.csv --model-output models/flan-large \\
      --batch-size 8 --gradient-accumulation-steps 4 --epochs 2
  python cli/complete_optimized_training.py --model-output models/flan-large --resume-from-checkpoint latest
"""


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = Parser(prog="complete_optimized_training.py",
                description="Fine-tune FLAN-T5 to write recipes from ingredient lists.",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="training recipes: RecipeNLG / Food.com CSV, JSONL or Parquet, also .gz, .bz2 or "
                                  "a .zip holding one (a resume reuses the run's)")
    g.add_argument("--eval-data", help="separate validation file (default: hold out --eval-split-ratio)")
    g.add_argument("--columns", metavar="FIELD=COLUMN,...",
                   help="which columns hold the recipe, for a layout other than RecipeNLG, Food.com or input/output "
                        "pairs, e.g. title=name,directions=steps (fields: title, ingredients, directions, ner, "
                        "input, output; an unnamed field keeps its own name; applies to --eval-data too)")
    g.add_argument("--source-template", default=d.source_template, metavar="TEXT",
                   help="how the model input is built from a recipe: {ingredients} and/or {title}, stored with "
                        "the run and the model and used by samples and generate_recipe.py; input/output pair "
                        f"files keep their own input (default {d.source_template!r})")
    g.add_argument("--eval-split-ratio", type=float, default=d.eval_split_ratio,
                   help=f"fraction of --data held out for validation (default {d.eval_split_ratio})")
    g.add_argument("--max-source-length", type=int, default=d.max_source_length,
                   help=f"max input tokens (default {d.max_source_length})")
    g.add_argument("--max-target-length", type=int, default=d.max_target_length,
                   help=f"max recipe tokens (default {d.max_target_length})")
    g.add_argument("--cache-dir", help="tokenized-data cache (default: MODEL_OUTPUT/../.cache/tokenized)")
    g.add_argument("--num-proc", type=int, default=d.num_proc,
                   help="processes that parse and tokenize a new data file (default 0: one per available core)")
    g.add_argument("--dataloader-num-workers", type=int, default=d.dataloader_num_workers,
                   help=f"DataLoader worker processes (default {d.dataloader_num_workers})")
    g.add_argument("--streaming", action="store_true",
                   help="read and tokenize --data on the fly, no disk cache (for data larger than the disk); "
                        "order is shuffled only within --length-group-size groups; validation needs --eval-data")
    g.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="plain shuffled batches instead of length-grouped ones")
    g.add_argument("--length-group-size", type=int, default=d.length_group_size,
                   help=f"examples sorted together by length (default {d.length_group_size})")

    g = p.add_argument_group("model and output")
    g.add_argument("--pretrained-model", default=d.pretrained_model,
                   help=f"model name or folder to start from (default {d.pretrained_model})")
    g.add_argument("--model-output", default=None,
                   help="run folder: checkpoints and the final model (default models/chef-genius)")
    g.add_argument("--resume-from-checkpoint", "--resume", dest="resume_from_checkpoint",
                   metavar="PATH|latest", help="resume from a checkpoint folder, or the newest complete one")
    g.add_argument("--auto-resume", action="store_true",
                   help="resume from the newest complete checkpoint if there is one, else start fresh")
    g.add_argument("--allow-config-change", action="store_true",
                   help="resume even with flags that change which recipes the rest of the run sees (data, batch "
                        "size, accumulation, seed, grouping, max lengths, eval split, columns, source template)")
    g.add_argument("--demo", action="store_true",
                   help="train the offline tiny model on the bundled sample (CPU, about 2 minutes of CPU time) and show "
                        "what it learned: a held-out recipe before and after, and its recipe metrics")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    g.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="stop after this many optimizer steps in total (default 0: run all epochs)")
    g.add_argument("--stop-after-steps", type=int, default=0,
                   help="end this session after N optimizer steps with a checkpoint, without changing the "
                        "LR schedule (for job time limits; resume later with --resume-from-checkpoint latest)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"examples per device per micro-batch (default {d.batch_size})")
    g.add_argument("--max-tokens-per-batch", type=int, default=d.max_tokens_per_batch, metavar="N",
                   help="micro-batches of about N padded tokens per device (rows x (longest source + longest "
                        "target)) built from length-grouped recipes, instead of --batch-size rows: every step "
                        "does about the same work, little of it padding (default 0: --batch-size rows)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps,
                   help="micro-batches per optimizer step (default 1)")
    g.add_argument("--learning-rate", type=float, default=d.learning_rate,
                   help=f"peak AdamW learning rate (default {d.learning_rate})")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"linear warmup steps (default {d.warmup_steps})")
    g.add_argument("--lr-scheduler", choices=SCHEDULES, default=d.lr_scheduler,
                   help=f"decay after warmup (default {d.lr_scheduler})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay})")
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help=f"gradient clipping norm, 0 to disable (default {d.max_grad_norm})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adamw: fp32 moments, 8 bytes per parameter (default); adafactor: factored second "
                        "moments, a few MB for FLAN-T5-large; adamw-8bit: 8-bit moments, about 2 bytes per "
                        "parameter (needs a CUDA GPU and pip install bitsandbytes)")
    g.add_argument("--optimizer-rewarmup-steps", type=int, default=d.optimizer_rewarmup_steps,
                   help="LR ramp after resuming from a checkpoint without optimizer state (default 100)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")

    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=d.lora_r, metavar="R",
                   help="train rank-R LoRA adapters (peft) on a frozen --pretrained-model instead of every weight; "
                        "the optimizer holds the adapter only (default 0: full fine-tuning)")
    g.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="LoRA scaling numerator: the adapter's update is scaled by A / R (default 2 x --lora-r)")
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout, metavar="P",
                   help=f"dropout on the adapter's input (default {d.lora_dropout})")
    g.add_argument("--lora-target-modules", nargs="+", default=list(d.lora_target_modules), metavar="NAME",
                   help="linear layers that get an adapter, by the last part of their name, those the model has "
                        f"(default T5's attention and feed-forward projections: {' '.join(d.lora_target_modules)})")
    g.add_argument("--save-adapter-only", action="store_true",
                   help="with --lora-r: the final model folder keeps the adapter (and the base's name) instead "
                        "of the merged model")

    g = p.add_argument_group("precision and speed")
    g.add_argument("--mixed-precision", choices=PRECISIONS, default=d.mixed_precision,
                   help="bf16 autocast with fp32 weights; auto = bf16 on a CUDA GPU that supports it")
    g.add_argument("--enable-mixed-precision", dest="mixed_precision", action="store_const", const="bf16",
                   help="same as --mixed-precision bf16 (fp16 is never used: T5 overflows in fp16)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less GPU memory, about 30%% slower steps")
    g.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                   help="turn off the --gradient-checkpointing a resumed run inherits from its checkpoint")
    g.add_argument("--plan-only", action="store_true",
                   help="print the memory plan (weights, gradients, optimizer state, activations) of this "
                        "setting and of cheaper ones, then exit without training; --data is not needed")
    g.add_argument("--auto-micro-batch", action="store_true",
                   help="on a CUDA out-of-memory error, retry the step with half the micro-batch and twice the "
                        "accumulation (same global batch, same recipes per step), and keep that setting")
    g.add_argument("--no-auto-micro-batch", dest="auto_micro_batch", action="store_false",
                   help="turn off the --auto-micro-batch a resumed run inherits from its checkpoint")
    g.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="force torch.compile (default: on with CUDA and Triton, off on CPU)")
    g.add_argument("--disable-compilation", dest="compile", action="store_false",
                   help="never torch.compile")

    g = p.add_argument_group("checkpoints, evaluation and logging")
    g.add_argument("--save-steps", type=int, default=d.save_steps,
                   help=f"checkpoint every N optimizer steps (default {d.save_steps})")
    g.add_argument("--async-save", action="store_true", default=None,
                   help="copy the state to CPU memory and write the checkpoint in a background thread: "
                        "same files, same crash safety, at most one save in flight (default: on with CUDA, "
                        "off on CPU)")
    g.add_argument("--no-async-save", dest="async_save", action="store_false",
                   help="write checkpoints in the training thread (a resume inherits --async-save otherwise)")
    g.add_argument("--save-total-limit", type=int, default=d.save_total_limit,
                   help="keep the newest N checkpoints plus the best one and the one resumed from; older "
                        "ones are deleted after each new checkpoint is committed (default 0: keep all)")
    g.add_argument("--save-every-minutes", type=float, default=d.save_every_minutes,
                   help="also checkpoint when this many minutes of wall-clock time passed since the last "
                        "checkpoint (default 0: only every --save-steps)")
    g.add_argument("--on-save-error", choices=("stop", "continue"), default=d.on_save_error,
                   help="when a checkpoint cannot be written (full disk, permissions): stop with exit code 4 "
                        "(default), or warn and train on")
    g.add_argument("--checkpoint-mirror", metavar="URL", default=d.checkpoint_mirror,
                   help="copy every committed checkpoint, in the background, to this fsspec URL (s3://bucket/prefix "
                        "or a second folder; pip install -r requirements-mirror.txt), each file read back and "
                        "verified, the manifest last; --auto-resume on an empty run folder fetches the newest "
                        "healthy one from there (a resume keeps the run's mirror)")
    g.add_argument("--requeue-on-preemption", action="store_true",
                   help="Slurm: after the checkpoint of a stop signal (SIGTERM, SIGUSR1) is committed, requeue the "
                        "job with scontrol requeue $SLURM_JOB_ID (it resumes with --auto-resume)")
    g.add_argument("--verify-hashes", action="store_true",
                   help="resuming checks every checkpoint file's sha256 against its manifest, not only its "
                        "size (reads the whole checkpoint once)")
    g.add_argument("--eval-steps", type=int, default=d.eval_steps,
                   help=f"validation loss every N optimizer steps (default {d.eval_steps})")
    g.add_argument("--eval-max-samples", type=int, default=d.eval_max_samples, metavar="N",
                   help="validate on a fixed, seeded choice of at most N held-out recipes, the same ones at "
                        f"every evaluation (default {d.eval_max_samples}; 0: all of them)")
    g.add_argument("--logging-steps", type=int, default=d.logging_steps,
                   help=f"log every N optimizer steps (default {d.logging_steps})")
    add_monitoring_flags(p, d)
    add_generation_flags(p, d)
    return p


def add_generation_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    from chef_genius.evaluation.metrics import HIGHER_IS_BETTER
    g = p.add_argument_group("recipe metrics (README: Recipe metrics)")
    g.add_argument("--eval-generate", type=int, default=d.eval_generate, metavar="N",
                   help="at each evaluation, write recipes (greedy, repetition penalty 1.15, no repeated 10-token "
                        "span, batched, at most --max-target-length new tokens) for the first N validation recipes "
                        "and log their recipe metrics "
                        f"(default {d.eval_generate}: off)")
    directions = ", ".join(f"{name} ({'higher' if up else 'lower'} is better)" for name, up in HIGHER_IS_BETTER.items())
    g.add_argument("--metric-for-best", choices=("eval_loss", *HIGHER_IS_BETTER), default=d.metric_for_best,
                   help=f"what makes a checkpoint the best one (kept by --save-total-limit): eval_loss (lower is "
                        f"better, default) or, with --eval-generate, {directions}")


def add_monitoring_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    g = p.add_argument_group("monitoring")
    g.add_argument("--progress", choices=PROGRESS_MODES, default=d.progress,
                   help="bar: a progress bar; log: a log line every --logging-steps; auto: the bar on a "
                        "terminal, log lines when output goes to a file (default auto)")
    g.add_argument("--report-to", nargs="+", choices=REPORT_TO, default=[], metavar="{tensorboard,wandb,none}",
                   help="also send metrics to TensorBoard (MODEL_OUTPUT/tensorboard) and/or Weights & Biases; "
                        "metrics.jsonl is always written (default none)")
    g.add_argument("--wandb-project", default=None, metavar="NAME",
                   help="Weights & Biases project (default: $WANDB_PROJECT, else wandb's own default)")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples, metavar="N",
                   help="recipes generated (greedy, short) from fixed ingredient lists at each evaluation, "
                        f"logged and written to metrics.jsonl; up to 5, 0 turns them off (default {d.eval_samples})")


# The demo's settings, tuned so that its model writes recipes on held-out ingredients (README: Quickstart):
# 10 epochs of 380 recipes (480 steps) at a high peak LR suit its small model; 20 recipes (5 %) are held
# out and all of them are written and scored at each evaluation.
DEMO_OVERRIDES = dict(epochs=10, batch_size=8, learning_rate=3e-3, warmup_steps=30, save_steps=120,
                      eval_steps=240, logging_steps=20, max_source_length=64, max_target_length=256,
                      dataloader_num_workers=0, length_group_size=64, eval_split_ratio=0.05, eval_generate=20,
                      eval_samples=0)


def parse_args(argv=None) -> TrainConfig:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    values = vars(parser.parse_args(argv))
    explicit = explicit_flags(parser, argv)
    if values["demo"]:  # the demo's values are defaults: any flag given, however spelled, wins
        for key, value in DEMO_OVERRIDES.items():
            if key not in explicit:
                values[key] = value
        values["data"] = values["data"] or str(SAMPLE_DATA)
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
    """Reject values that cannot work, with one sentence each (exit code 2)."""
    positive = ("epochs", "batch_size", "gradient_accumulation_steps", "save_steps", "eval_steps",
                "logging_steps", "max_source_length", "max_target_length", "length_group_size")
    for name in positive:
        if getattr(c, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(c, name)}")
    non_negative = ("num_proc", "max_tokens_per_batch", "max_steps", "stop_after_steps", "warmup_steps", "save_total_limit",
                    "dataloader_num_workers", "optimizer_rewarmup_steps", "eval_samples", "eval_max_samples",
                    "eval_generate")
    for name in non_negative:
        if getattr(c, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(c, name)}")
    if not c.save_every_minutes >= 0:
        raise UserError(f"--save-every-minutes must be 0 or more, got {c.save_every_minutes}")
    if not c.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {c.learning_rate}")
    if c.weight_decay < 0 or c.max_grad_norm < 0:
        raise UserError("--weight-decay and --max-grad-norm must be 0 or more")
    if c.lora_r < 0:
        raise UserError(f"--lora-r must be 0 (off) or more, got {c.lora_r}")
    if c.lora_r and c.lora_alpha is None:
        c.lora_alpha = 2.0 * c.lora_r
    if c.lora_alpha is not None and not c.lora_alpha > 0:
        raise UserError(f"--lora-alpha must be positive, got {c.lora_alpha}")
    if not 0 <= c.lora_dropout < 1:
        raise UserError(f"--lora-dropout must be in [0, 1), got {c.lora_dropout}")
    c.lora_target_modules = list(dict.fromkeys(c.lora_target_modules))
    if c.save_adapter_only and not c.lora_r and not (c.resume_from_checkpoint or c.auto_resume):
        raise UserError("--save-adapter-only needs --lora-r R (a full fine-tuning run has no adapter)")
    if not 0 <= c.eval_split_ratio < 1:
        raise UserError(f"--eval-split-ratio must be in [0, 1), got {c.eval_split_ratio}")
    c.columns = canonical_columns(c.columns)
    try:
        template_fields(c.source_template)
    except ValueError as err:
        raise UserError(str(err)) from None
    check_optimizer(c.optimizer)
    if c.data is None and not (c.resume_from_checkpoint or c.auto_resume or c.plan_only):
        raise UserError(DATA_REQUIRED)  # a resume reuses the checkpoint's file (checked in train/settings.py)
    for flag, path in (("--data", c.data), ("--eval-data", c.eval_data)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} file not found: {path}")
    c.report_to = [name for name in dict.fromkeys(c.report_to) if name != "none"]
    check_reporters(c.report_to)
    if c.metric_for_best != "eval_loss" and not c.eval_generate:
        raise UserError(f"--metric-for-best {c.metric_for_best} needs recipes to score: add --eval-generate N")
    if c.max_tokens_per_batch and c.streaming:
        raise UserError("--max-tokens-per-batch needs the tokenized cache: drop --streaming or --max-tokens-per-batch")
    if c.max_tokens_per_batch and c.max_tokens_per_batch < c.max_source_length + c.max_target_length:
        raise UserError(f"--max-tokens-per-batch {c.max_tokens_per_batch} is smaller than one recipe can be "
                        f"(--max-source-length + --max-target-length = {c.max_source_length + c.max_target_length});"
                        " raise it or the max lengths")
    if c.resume_from_checkpoint and c.auto_resume:
        raise UserError("use either --resume-from-checkpoint or --auto-resume, not both")


def check_reporters(report_to: list[str]) -> None:
    """The packages ``--report-to`` needs (also run on the list a resume inherits)."""
    for name, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in report_to and importlib.util.find_spec(package) is None:
            raise UserError(f"--report-to {name} needs the {package} package: pip install {package}")


def check_optimizer(name: str) -> None:
    """``adamw-8bit`` needs bitsandbytes, which needs a CUDA GPU: refused here, before anything is loaded."""
    if name != "adamw-8bit":
        return
    import torch
    if not torch.cuda.is_available():
        raise UserError("--optimizer adamw-8bit needs a CUDA GPU (bitsandbytes); use --optimizer adafactor "
                        "to save optimizer memory without one")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--optimizer adamw-8bit needs the bitsandbytes package: pip install bitsandbytes "
                        "(or use --optimizer adafactor)")
