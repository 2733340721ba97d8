"""The run state: everything about *where* a run is, saved and restored as one object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class RunState:
    global_step: int = 0          # optimizer steps taken
    epoch: int = 0                # 0-based epoch in progress (an epoch just finished counts as the next)
    samples_in_epoch: int = 0     # samples of that epoch already consumed, all processes together
    best_loss: float | None = None
    best_step: int | None = None
    tokens_seen: int = 0          # real (non-padding) target tokens trained on
    train_seconds: float = 0.0    # wall-clock time spent in training, summed over resumes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
