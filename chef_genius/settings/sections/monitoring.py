"""The monitoring settings (reporters, progress, sample recipes) and the recipe metrics'."""

from dataclasses import dataclass

from chef_genius.evaluation.metrics import HIGHER_IS_BETTER
from chef_genius.settings import checks
from chef_genius.settings.choices import (
    APPLIED,
    SESSION,
    MetricForBest,
    ProgressMode,
    Reporter,
)
from chef_genius.settings.fields import setting


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
