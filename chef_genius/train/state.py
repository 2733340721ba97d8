"""The run state: how far a run got and what it learned on the way, saved and restored as one object.

Where the run is in its data (epoch, sample) is the ``DataPosition`` the sampler owns
(``chef_genius/data/position.py``); ``checkpoint/training_state.py`` saves the run state in
``run_state`` and the position in ``data_position``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class RunState:
    global_step: int = 0  # optimizer steps taken
    best_loss: float | None = None  # validation loss of the best checkpoint
    best_step: int | None = None  # the best checkpoint's step, by --metric-for-best
    best_value: float | None = None  # its --metric-for-best value (None: a checkpoint older than the flag)
    tokens_seen: int = 0  # real (non-padding) target tokens trained on
    train_seconds: float = 0.0  # wall-clock time spent in training, summed over resumes
    micro_batch_split: int = 1  # --auto-micro-batch: each loader batch is cut into this many micro-batches

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def state_dict(self) -> dict:
        return self.to_dict()

    def load_state_dict(self, values: dict) -> None:
        restored = self.from_dict(values)
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(restored, field.name))
