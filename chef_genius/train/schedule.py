"""The learning rate as a pure function of the optimizer step."""

from __future__ import annotations

import math

import torch


def lr_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    kind: str = "linear",
    rewarm_from: int | None = None,
    rewarm_steps: int = 0,
) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps``, then linear / cosine decay to 0 at ``total_steps``, or
    constant. ``rewarm_from``: the step a run resumed at without optimizer state; the LR then ramps
    up again over ``rewarm_steps`` so fresh Adam moments do not take full-size steps.
    """
    if step < warmup_steps:
        factor = (step + 1) / warmup_steps
    elif kind == "constant":
        factor = 1.0
    else:
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        factor = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    if rewarm_from is not None and rewarm_steps > 0 and step >= rewarm_from:
        factor *= min(1.0, (step - rewarm_from + 1) / rewarm_steps)
    return factor


class Schedule:
    """Callable for ``LambdaLR``; its attributes are plain values, so its state saves safely."""

    def __init__(
        self, warmup_steps: int, total_steps: int, kind: str, rewarm_from: int | None = None, rewarm_steps: int = 0
    ):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.kind = kind
        self.rewarm_from = rewarm_from
        self.rewarm_steps = rewarm_steps

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.total_steps, self.kind, self.rewarm_from, self.rewarm_steps)


def make_scheduler(optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def scheduler_state_at(step: int, peak_lr: float, schedule: Schedule, num_groups: int = 1) -> dict:
    """The ``LambdaLR`` state a run has after ``step`` optimizer steps (used by resume and repair)."""
    lr = peak_lr * schedule(step)
    return {
        "base_lrs": [peak_lr] * num_groups,
        "last_epoch": step,
        "_step_count": step + 1,
        "_get_lr_called_within_step": False,
        "_last_lr": [lr] * num_groups,
        "lr_lambdas": [dict(vars(schedule))] * num_groups,
    }


def apply_lr(optimizer, scheduler) -> None:
    """Set each param group's LR from the scheduler's position (after a restore)."""
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
