"""The optimisation settings: epochs and steps, the batch shape, the learning rate and its schedule, the
optimizer, the seed.
"""

from dataclasses import dataclass

from chef_genius.settings import checks
from chef_genius.settings.choices import (
    APPLIED,
    GUARDED,
    SESSION,
    Optimizer,
    Schedule,
)
from chef_genius.settings.fields import setting


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
