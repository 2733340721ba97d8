"""The run's progress: how far a run got and what it learned on the way (``RunProgress``, one object
the trainer keeps it in).

Its saved part is the ``RunState``; where the run is in its data (epoch, sample) is the
``DataPosition`` the sampler owns (``chef_genius/data/position.py``); ``checkpoint/training_state.py``
saves the run state in ``run_state`` and the position in ``data_position``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from chef_genius.data.position import DataPosition


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
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(restored, item.name))


class LogWindow:
    """What the steps since the last log line trained on (for the loss, tokens/s and FLOPs)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.finite: list[torch.Tensor] = []  # per step: its loss and gradient norm were finite
        self.tokens: int | torch.Tensor = 0  # target tokens (a device tensor on several processes)
        self.source_tokens = 0
        self.rows = 0
        self.started = time.perf_counter()  # moved on by the time spent validating (training-only rate)
        self.wall_started = self.started  # not moved: the wall-clock rate, validation included


@dataclass
class RunProgress:
    """Everything that says how far the run is, in one object: the saved ``RunState`` (step, best loss,
    tokens, time), the sampler's ``DataPosition`` (epoch, sample: the sampler advances it), the target
    tokens counted on the device and not yet added to the run state, the steps since the last log line,
    and this session's own counts. The checkpoint manager saves and restores it as the ``run_state``
    slice (the position as ``data_position``, through the sampler); a restore (resume, rollback)
    starts a new log window with nothing unsettled."""

    state: RunState = field(default_factory=RunState)
    position: DataPosition = field(default_factory=DataPosition)  # replaced by the sampler's at setup
    unsettled_tokens: int | torch.Tensor = 0  # a device tensor on several processes: read when logging or saving
    window: LogWindow = field(default_factory=LogWindow)
    session_start: int = 0  # the step this session started training at (--stop-after-steps counts from it)
    rollbacks: int = 0  # in this session

    @property
    def step(self) -> int:
        return self.state.global_step

    @property
    def where(self) -> tuple[int, int]:
        """(epoch, samples of it consumed): where the data is after the last step."""
        return self.position.epoch, self.position.samples_in_epoch

    def took_step(self, loss: torch.Tensor, tokens: int | torch.Tensor, finite: torch.Tensor) -> None:
        """One optimizer step more (the sampler advances the position itself)."""
        self.state.global_step += 1
        self.unsettled_tokens += tokens
        self.window.losses.append(loss)
        self.window.finite.append(finite)
        self.window.tokens += tokens

    def settle_tokens(self) -> None:
        """Add the target tokens of the steps since the last call to the run state (a host read)."""
        self.state.tokens_seen += int(self.unsettled_tokens)
        self.unsettled_tokens = 0

    def new_window(self) -> None:
        self.window = LogWindow()

    def start_session(self) -> None:
        """The first step of this session: nothing unsettled, a fresh log window."""
        self.session_start = self.state.global_step
        self.unsettled_tokens = 0
        self.new_window()

    def state_dict(self) -> dict:
        self.settle_tokens()
        return self.state.state_dict()

    def load_state_dict(self, values: dict) -> None:
        self.state.load_state_dict(values)
        self.unsettled_tokens = 0
        self.new_window()
