"""Every training setting, declared once: its type, default, help, flag(s), check and resume policy.

``TrainConfig`` is one flat dataclass made of the sections below (``cfg.learning_rate``); each section
is one group of ``--help``. Every field but ``explicit`` is saved in each checkpoint as
``hyperparameters`` (flat, one key per field), and a resume reads them back through this schema
(``chef_genius/train/settings.py``).

To add a setting, add one field to the section it belongs to, e.g. in ``OptimisationSettings``::

    label_smoothing: float = setting(0.0, policy=Policy.APPLIED, check=checks.fraction,
                                     help="label smoothing of the loss (default {default})")

That is the whole edit: the flag ``--label-smoothing`` (its type from the annotation, its default and
help from the field), its check in ``validate``, its resume policy, its key in ``--config`` files and
in a run's ``settings.yaml`` (``settings/config_file.py``) and the reference pages follow
(regenerate them: ``python -m chef_genius.devtools.references --write``; docs/reference/flags.md and
docs/reference/resume-policy.md).

- Choices are a ``Literal[...]`` annotation (``list[Literal[...]]`` for several values).
- A bool is a switch: ``--name`` turns on one that is off by default, ``--no-name`` turns off one
  that is on; ``flags=[Flag(...), ...]`` spells the flags otherwise (both ways, a ``store_const``).
- ``flags=("--name", "--alias")`` adds aliases; ``metavar`` names the value in ``--help``.
- ``cli_default``: the parser's default where it must differ from the field's.
- ``position_key``: the key under which the data position also saves a setting the sample order
  depends on; ``note``: what a resume that changes the setting announces.
- A check that involves several settings goes into ``validate`` (``train/config.py``).
- Checkpoints from before the setting existed do not record it: their resume keeps the command's value
  and says so (``train/settings.py``), nothing else to do; unless the new default would change what
  such a run did: then ``legacy`` declares the value those runs had (``dedup``: they trained on every
  row), and a resume of them keeps it like a recorded value.
- Keep these annotations real types (no ``from __future__ import annotations`` here): the parser
  reads them.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, cast

from chef_genius.data.dedup import DEFAULT_THRESHOLD
from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE
from chef_genius.evaluation.metrics import HIGHER_IS_BETTER
from chef_genius.model.names import LORA_TARGETS
from chef_genius.paths import MODELS_ROOT
from chef_genius.settings import checks
from chef_genius.settings.fields import Flag, Policy, setting

DEFAULT_MODEL = "google/flan-t5-large"
Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "bf16", "no"]
ProgressMode = Literal["auto", "bar", "log"]
Reporter = Literal["tensorboard", "wandb", "none"]
Optimizer = Literal["adamw", "adafactor", "adamw-8bit"]
OnSaveError = Literal["stop", "continue"]
# eval_loss, then the recipe metrics of evaluation/metrics.py (a test keeps the two in step)
MetricForBest = Literal[
    "eval_loss",
    "rouge_l",
    "bleu",
    "ingredient_coverage",
    "invented_ingredients",
    "structure_valid",
    "repetition",
    "step_loops",
]
DedupMode = Literal["remove", "keep", "off"]

APPLIED, GUARDED, ADAPTER, RECORDED, SESSION = Policy  # short names for the declarations below


@dataclass
class DataSettings:
    title = "data"
    data: list[str] | None = setting(
        None,
        policy=GUARDED,
        check=checks.data_sources,
        metavar="FILE[:WEIGHT]",
        help=(
            "training recipes: RecipeNLG / Food.com CSV, JSONL or Parquet, also .gz, .bz2 or a .zip holding one; "
            "several sources mix, each with an optional weight, its share of an epoch (1: every recipe once, 2: "
            "twice, 0.5: a different half each epoch; docs/data.md) (a resume reuses the run's)"
        ),
    )
    eval_data: str | None = setting(
        None,
        policy=GUARDED,
        check=checks.existing_file,
        help="separate validation file (default: hold out --eval-split-ratio)",
    )
    columns: str | None = setting(
        None,
        policy=GUARDED,
        check=checks.columns,
        metavar="FIELD=COLUMN,...",
        help=(
            "which columns hold the recipe, for a layout other than RecipeNLG, Food.com or input/output pairs, e.g. "
            "title=name,directions=steps (fields: title, ingredients, directions, ner, input, output; an unnamed "
            "field keeps its own name; applies to --eval-data too)"
        ),
    )
    source_template: str = setting(
        DEFAULT_SOURCE_TEMPLATE,
        policy=GUARDED,
        check=checks.source_template,
        metavar="TEXT",
        help=(
            "how the model input is built from a recipe: {ingredients} and/or {title}, stored with the run and the "
            "model and used by samples and generate_recipe.py; input/output pair files keep their own input "
            "(default {default!r})"
        ),
    )
    eval_split_ratio: float = setting(
        0.02,
        policy=GUARDED,
        check=checks.fraction,
        help="fraction of --data held out for validation (default {default})",
    )
    dedup: DedupMode = setting(
        "remove",
        policy=GUARDED,
        legacy="off",
        help=(
            "duplicate recipes of --data (exact after normalising case, spacing, punctuation and ingredient order; "
            "near: MinHash similarity >= --dedup-threshold) and twins of --eval-data recipes: remove them from "
            "training and list them in removed_duplicates.csv, keep them (found, listed, held out or trained on "
            "together), or off (not looked for; the validation split by row number, as before) (default {default})"
        ),
    )
    dedup_threshold: float = setting(
        DEFAULT_THRESHOLD,
        policy=GUARDED,
        check=checks.similarity,
        metavar="J",
        help=(
            "estimated Jaccard similarity of word 3-grams from which two recipes are near-duplicates (default "
            "{default}, set by measurement: docs/data.md)"
        ),
    )
    max_source_length: int = setting(
        256, policy=GUARDED, check=checks.positive_int, help="max input tokens (default {default})"
    )
    max_target_length: int = setting(
        512, policy=GUARDED, check=checks.positive_int, help="max recipe tokens (default {default})"
    )
    cache_dir: str | None = setting(
        None, policy=SESSION, help="tokenized-data cache (default: MODEL_OUTPUT/../.cache/tokenized)"
    )
    num_proc: int = setting(
        0,
        policy=SESSION,
        check=checks.at_least_zero,
        help=("processes that parse and tokenize a new data file (default {default}: one per available core)"),
    )
    dataloader_num_workers: int = setting(
        2, policy=SESSION, check=checks.at_least_zero, help="DataLoader worker processes (default {default})"
    )
    streaming: bool = setting(
        False,
        policy=GUARDED,
        help=(
            "read and tokenize --data on the fly, no disk cache (for data larger than the disk); order is shuffled "
            "only within --length-group-size groups; validation needs --eval-data"
        ),
    )
    group_by_length: bool = setting(
        True,
        policy=GUARDED,
        position_key="group_by_length",  # --no-group-by-length
        help="plain shuffled batches instead of length-grouped ones",
    )
    length_group_size: int = setting(
        1024,
        policy=GUARDED,
        check=checks.positive_int,
        position_key="length_group_size",
        help="examples sorted together by length (default {default})",
    )


@dataclass
class ModelSettings:
    title = "model and output"
    pretrained_model: str = setting(
        DEFAULT_MODEL,
        policy=RECORDED,
        note=("the LoRA run's base model is rebuilt from it (its weights must match the checkpoint's fingerprint)"),
        help="model name or folder to start from (default {default})",
    )
    config: str | None = setting(
        None,
        policy=SESSION,
        metavar="FILE.yaml",
        help=(
            "read settings from a YAML file (name: value, one a line; see configs/); flags given on the command line "
            "override it, and a resume treats the file's settings as flags given"
        ),
    )
    model_output: str = setting(
        str(MODELS_ROOT / "chef-genius"),
        policy=SESSION,
        cli_default=None,
        help="run folder: checkpoints and the final model (default models/chef-genius)",
    )
    resume_from_checkpoint: str | None = setting(
        None,
        policy=SESSION,
        flags=("--resume-from-checkpoint", "--resume"),
        metavar="PATH|latest",
        help="resume from a checkpoint folder, or the newest complete one",
    )
    auto_resume: bool = setting(
        False, policy=SESSION, help=("resume from the newest complete checkpoint if there is one, else start fresh")
    )
    allow_config_change: bool = setting(
        False,
        policy=SESSION,
        help=(
            "resume even with flags that change which recipes the rest of the run sees (data, batch size, "
            "accumulation, seed, grouping, max lengths, eval split, columns, source template)"
        ),
    )
    demo: bool = setting(
        False,
        policy=SESSION,
        help=(
            "train the offline tiny model on the bundled sample (CPU, about 2 minutes of CPU time) and show what it "
            "learned: a held-out recipe before and after, and its recipe metrics"
        ),
    )


@dataclass
class OptimisationSettings:
    title = "optimisation"
    epochs: int = setting(
        3,
        policy=APPLIED,
        check=checks.positive_int,
        help="epochs (default {default})",
        note="the planned end of the run, and the learning-rate schedule with it",
    )
    max_steps: int = setting(
        0,
        policy=APPLIED,
        check=checks.at_least_zero,
        note="the planned end of the run, and the learning-rate schedule with it",
        help="stop after this many optimizer steps in total (default {default}: run all epochs)",
    )
    stop_after_steps: int = setting(
        0,
        policy=SESSION,
        check=checks.at_least_zero,
        help=(
            "end this session after N optimizer steps with a checkpoint, without changing the LR schedule (for job "
            "time limits; resume later with --resume-from-checkpoint latest)"
        ),
    )
    batch_size: int = setting(
        8, policy=GUARDED, check=checks.positive_int, help="examples per device per micro-batch (default {default})"
    )
    max_tokens_per_batch: int = setting(
        0,
        policy=GUARDED,
        check=checks.at_least_zero,
        metavar="N",
        position_key="max_tokens_per_batch",
        help=(
            "micro-batches of about N padded tokens per device (rows x (longest source + longest target)) built from "
            "length-grouped recipes, instead of --batch-size rows: every step does about the same work, little of it "
            "padding (default {default}: --batch-size rows)"
        ),
    )
    gradient_accumulation_steps: int = setting(
        1, policy=GUARDED, check=checks.positive_int, help="micro-batches per optimizer step (default {default})"
    )
    learning_rate: float = setting(
        1e-4,
        policy=APPLIED,
        check=checks.learning_rate,
        note="the schedule's peak from step {step} on",
        help="peak AdamW learning rate (default {default})",
    )
    warmup_steps: int = setting(
        500,
        policy=APPLIED,
        check=checks.at_least_zero,
        note="the learning-rate schedule from step {step} on",
        help="linear warmup steps (default {default})",
    )
    lr_scheduler: Schedule = setting(
        "linear",
        policy=APPLIED,
        note="the learning-rate schedule from step {step} on",
        help="decay after warmup (default {default})",
    )
    weight_decay: float = setting(
        0.01, policy=APPLIED, check=checks.decay_or_clip, help="AdamW weight decay (default {default})"
    )
    max_grad_norm: float = setting(
        1.0, policy=APPLIED, check=checks.decay_or_clip, help="gradient clipping norm, 0 to disable (default {default})"
    )
    optimizer: Optimizer = setting(
        "adamw",
        policy=APPLIED,
        check=checks.optimizer,
        note=(
            "the saved optimizer state is not loaded: the new one starts fresh and the learning rate re-warms over "
            "--optimizer-rewarmup-steps"
        ),
        help=(
            "adamw: fp32 moments, 8 bytes per parameter (default); adafactor: factored second moments, a few MB for "
            "FLAN-T5-large; adamw-8bit: 8-bit moments, about 2 bytes per parameter (needs a CUDA GPU and pip install "
            "bitsandbytes)"
        ),
    )
    optimizer_rewarmup_steps: int = setting(
        100,
        policy=APPLIED,
        check=checks.at_least_zero,
        note="used only when a checkpoint has no optimizer state",
        help=("LR ramp after resuming from a checkpoint without optimizer state (default {default})"),
    )
    seed: int = setting(42, policy=GUARDED, position_key="sampler_seed", help="random seed (default {default})")


@dataclass
class LoRASettings:
    title = "LoRA"
    lora_r: int = setting(
        0,
        policy=ADAPTER,
        check=checks.lora_rank,
        metavar="R",
        help=(
            "train rank-R LoRA adapters (peft) on a frozen --pretrained-model instead of every weight; the optimizer "
            "holds the adapter only (default {default}: full fine-tuning)"
        ),
    )
    lora_alpha: float | None = setting(
        None,
        policy=ADAPTER,
        check=checks.positive,
        metavar="A",
        help=("LoRA scaling numerator: the adapter's update is scaled by A / R (default 2 x --lora-r)"),
    )
    lora_dropout: float = setting(
        0.05,
        policy=APPLIED,
        check=checks.fraction,
        metavar="P",
        help="dropout on the adapter's input (default {default})",
    )
    lora_target_modules: list[str] = setting(
        factory=lambda: list(LORA_TARGETS),
        policy=ADAPTER,
        check=checks.unique,
        metavar="NAME",
        help=(
            "linear layers that get an adapter, by the last part of their name, those the model has (default T5's "
            "attention and feed-forward projections: {default})"
        ),
    )
    save_adapter_only: bool = setting(
        False,
        policy=APPLIED,
        help=(
            "with --lora-r: the final model folder keeps the adapter (and the base's name) instead of the merged model"
        ),
    )


@dataclass
class PrecisionSettings:
    title = "precision and speed"
    mixed_precision: Precision = setting(
        "auto",
        policy=APPLIED,
        note=("from step {step} on; the losses are no longer bitwise equal to an uninterrupted run's"),
        flags=[
            Flag(("--mixed-precision",)),
            Flag(
                ("--enable-mixed-precision",),
                action="store_const",
                const="bf16",
                help="same as --mixed-precision bf16 (fp16 is never used: T5 overflows in fp16)",
            ),
        ],
        help="bf16 autocast with fp32 weights; auto = bf16 on a CUDA GPU with native bf16 (compute capability 8.0 "
        "or newer; older GPUs only emulate it, slower than fp32), else fp32",
    )
    gradient_checkpointing: bool = setting(
        False,
        policy=APPLIED,
        flags=[
            Flag(("--gradient-checkpointing",), action="store_true"),
            Flag(
                ("--no-gradient-checkpointing",),
                action="store_false",
                help="turn off the --gradient-checkpointing a resumed run inherits from its checkpoint",
            ),
        ],
        help="recompute activations in the backward pass: less GPU memory, about 30%% slower steps",
    )
    plan_only: bool = setting(
        False,
        policy=SESSION,
        help=(
            "print the memory plan (weights, gradients, optimizer state, activations) of this setting and of cheaper "
            "ones, then exit without training; --data is not needed"
        ),
    )
    auto_micro_batch: bool = setting(
        False,
        policy=APPLIED,
        flags=[
            Flag(("--auto-micro-batch",), action="store_true"),
            Flag(
                ("--no-auto-micro-batch",),
                action="store_false",
                help="turn off the --auto-micro-batch a resumed run inherits from its checkpoint",
            ),
        ],
        help=(
            "on a CUDA out-of-memory error, retry the step with half the micro-batch and twice the accumulation (same "
            "global batch, same recipes per step), and keep that setting"
        ),
    )
    # None: on where Triton can compile. A resume keeps the run's choice: compiled and eager steps differ in
    # floating point (the checkpoint also records whether its run compiled: the trainer warns when the
    # same choice resolves otherwise on this machine)
    compile: bool | None = setting(
        None,
        policy=APPLIED,
        note=(
            "from step {step} on; compiled and eager steps differ in floating point, so the losses are no longer "
            "bitwise equal to an uninterrupted run's"
        ),
        flags=[
            Flag(("--compile",), action="store_true"),
            Flag(("--disable-compilation",), action="store_false", help="never torch.compile"),
        ],
        help="force torch.compile (default: on with a CUDA GPU of compute capability 7.0 or newer and Triton "
        "installed, off on CPU; refused at start where it cannot work)",
    )


@dataclass
class CheckpointSettings:
    title = "checkpoints, evaluation and logging"
    save_steps: int = setting(
        1000, policy=APPLIED, check=checks.positive_int, help="checkpoint every N optimizer steps (default {default})"
    )
    async_save: bool | None = setting(
        None,
        policy=APPLIED,
        flags=[  # None: on with CUDA, off on CPU
            Flag(("--async-save",), action="store_true"),
            Flag(
                ("--no-async-save",),
                action="store_false",
                help="write checkpoints in the training thread (a resume inherits --async-save otherwise)",
            ),
        ],
        help=(
            "copy the state to CPU memory and write the checkpoint in a background thread: same files, same crash "
            "safety, at most one save in flight (default: on with CUDA, off on CPU)"
        ),
    )
    save_total_limit: int = setting(
        0,
        policy=APPLIED,
        check=checks.at_least_zero,
        help=(
            "keep the newest N checkpoints plus the best one, the one resumed from and the newest healthy one (finite "
            "numbers); older ones are deleted after "
            "each new checkpoint is committed (default {default}: keep all)"
        ),
    )
    save_every_minutes: float = setting(
        0.0,
        policy=APPLIED,
        check=checks.at_least_zero,
        help=(
            "also checkpoint when this many minutes of wall-clock time passed since the last checkpoint (default 0: "
            "only every --save-steps)"
        ),
    )
    on_save_error: OnSaveError = setting(
        "stop",
        policy=APPLIED,
        help=(
            "when a checkpoint cannot be written (full disk, permissions): stop with exit code 4 (default), or "
            "warn and train on"
        ),
    )
    checkpoint_mirror: str | None = setting(
        None,
        policy=APPLIED,
        metavar="URL",
        help=(
            "copy every committed checkpoint, in the background, to this fsspec URL (s3://bucket/prefix or a second "
            "folder; pip install -r requirements-mirror.txt), each file read back and verified, the manifest last; "
            "--auto-resume on an empty run folder fetches the newest healthy one from there (a resume keeps the "
            "run's mirror)"
        ),
    )
    requeue_on_preemption: bool = setting(
        False,
        policy=SESSION,
        help=(
            "Slurm: after the checkpoint of a stop signal (SIGTERM, SIGUSR1) is committed, requeue the job with "
            "scontrol requeue $SLURM_JOB_ID (it resumes with --auto-resume)"
        ),
    )
    verify_hashes: bool = setting(
        False,
        policy=SESSION,
        help=(
            "resuming checks every checkpoint file's sha256 against its manifest, not only its size (reads the whole "
            "checkpoint once)"
        ),
    )
    eval_steps: int = setting(
        1000,
        policy=APPLIED,
        check=checks.positive_int,
        help="validation loss every N optimizer steps (default {default})",
    )
    eval_max_samples: int = setting(
        2000,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="N",
        help=(
            "validate on a fixed, seeded choice of at most N held-out recipes, the same ones at every evaluation "
            "(default {default}; 0: all of them)"
        ),
    )
    logging_steps: int = setting(
        50, policy=APPLIED, check=checks.positive_int, help="log every N optimizer steps (default {default})"
    )


@dataclass
class DivergenceSettings:
    title = "divergence guard (docs/checkpoints.md: Divergence)"
    spike_factor: float = setting(
        3.0,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="F",
        help=(
            "a loss above F times the median of the last 32 finite losses is a spike: the run rolls back to the "
            "newest healthy checkpoint before it and skips the recipes that led into it (default {default}; 0: off)"
        ),
    )
    max_nonfinite_steps: int = setting(
        3,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="K",
        help=(
            "K steps in a row whose loss or gradient norm is NaN/Inf (each skipped: no weight changes) roll the run "
            "back the same way (default {default}; 0: never, the steps are only skipped)"
        ),
    )
    max_rollbacks: int = setting(
        3,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="R",
        help=(
            "rollbacks in one session before the run stops with exit code 6, naming the newest healthy checkpoint "
            "(default {default}; 0: stop at the first divergence)"
        ),
    )


@dataclass
class MonitoringSettings:
    title = "monitoring"
    progress: ProgressMode = setting(
        "auto",
        policy=SESSION,
        help=(
            "bar: a progress bar; log: a log line every --logging-steps; auto: the bar on a terminal, log lines when "
            "output goes to a file (default {default})"
        ),
    )
    report_to: list[Reporter] = setting(
        factory=list,
        policy=APPLIED,
        check=checks.reporters,
        metavar="{tensorboard,wandb,none}",
        help=(
            "also send metrics to TensorBoard (MODEL_OUTPUT/tensorboard) and/or Weights & Biases; metrics.jsonl is "
            "always written (default none)"
        ),
    )
    wandb_project: str | None = setting(
        None,
        policy=APPLIED,
        metavar="NAME",
        help=("Weights & Biases project (default: $WANDB_PROJECT, else wandb's own default)"),
    )
    eval_samples: int = setting(
        3,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="N",
        help=(
            "recipes generated (greedy, short) from fixed ingredient lists at each evaluation, logged and written to "
            "metrics.jsonl; up to 5, 0 turns them off (default {default})"
        ),
    )


_DIRECTIONS = ", ".join(f"{name} ({'higher' if up else 'lower'} is better)" for name, up in HIGHER_IS_BETTER.items())


@dataclass
class RecipeMetricsSettings:
    title = "recipe metrics (docs/monitoring.md)"
    eval_generate: int = setting(
        0,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="N",
        help=(
            "at each evaluation, write recipes (greedy, repetition penalty 1.15, no repeated 10-token span, batched, "
            "at most --max-target-length new tokens) for the first N validation recipes and log their recipe metrics "
            "(default {default}: off)"
        ),
    )
    metric_for_best: MetricForBest = setting(
        "eval_loss",
        policy=APPLIED,
        help=(
            "what makes a checkpoint the best one (kept by --save-total-limit): eval_loss (lower is better, default) "
            f"or, with --eval-generate, {_DIRECTIONS}"
        ),
    )


@dataclass
class TrainConfig(
    DataSettings,
    ModelSettings,
    OptimisationSettings,
    LoRASettings,
    PrecisionSettings,
    CheckpointSettings,
    DivergenceSettings,
    MonitoringSettings,
    RecipeMetricsSettings,
):
    """All settings, flat. (As dataclasses do, the fields run from the last section to the first; a
    resume lists its changes in that order.)"""

    # The fields the command line set (any spelling of their flags); never saved in a checkpoint.
    explicit: frozenset = frozenset()

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        del values["explicit"]
        return values


class Section(Protocol):
    """What the parser and the reference pages read of a section besides its fields: its title."""

    title: ClassVar[str]


SECTIONS = cast("tuple[type[Section], ...]", TrainConfig.__bases__)  # in --help order
