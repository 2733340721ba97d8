"""The divergence guard: every step's loss and gradient norm judged, non-finite updates skipped, spikes
and runs of non-finite steps answered by a rollback.

- Skipped steps. A step whose loss or gradient norm is NaN or Inf changes no weight and no optimizer
  moment (``skip_nonfinite_update``): on CUDA with fused AdamW the skip is decided on the device (the
  ``found_inf`` input GradScaler uses: the kernel leaves weights, moments and its step count alone), so
  the host never waits for the step; on the CPU the flag is read at once (there is no device queue to
  drain); another optimizer on CUDA reads it too (one host sync per step, said once in the log). A
  skipped step still counts: the step number, the data position and the LR schedule move on as if it
  had been taken, so the LR stays a pure function of the step and a resume stays exact.
- The host learns each step's loss and whether it was finite one step late on CUDA (a pinned copy
  read at the next step, as the stop vote is), at once on the CPU; before every checkpoint it reads
  everything still pending, so a checkpoint never holds a step whose verdict is unknown.
- Spikes (``is_spike``): a finite loss above ``--spike-factor`` times the median of the last
  ``SPIKE_WINDOW`` finite losses, once ``SPIKE_MIN_HISTORY`` of them are known. The median ignores the
  spike-sized outliers a mean would follow, and a multiple of it means the same early in training (loss
  7) as late (loss 0.5). ``--spike-factor 0`` turns spike detection off.
- A spike, or ``--max-nonfinite-steps`` non-finite steps in a row, is a ``Verdict``: the trainer rolls back to
  the newest healthy checkpoint before that step and skips the recipes from the checkpoint's data
  position to the end of the step that diverged (``DataPosition.skip_to``).

``StepHealth`` is a stateful component of the checkpoint (slice ``health``): the recent finite losses
and the count of skipped steps travel with the run, so the spike decisions after a resume, or after
a rollback, are the ones the uninterrupted run would make.

Test hook (the product path, poisoned on purpose): ``CHEF_GENIUS_POISON=STEPS:FACTOR`` multiplies the
loss of the optimizer steps STEPS (``7`` or ``7-9``) by FACTOR (``nan``, ``inf``, ``1e4``), each step
the first time this process takes it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import deque
from dataclasses import dataclass

import torch

from chef_genius.settings.schema import TrainConfig

log = logging.getLogger("chef_genius")

POISON_ENV = "CHEF_GENIUS_POISON"
SPIKE_WINDOW = 32  # finite losses the median is taken over
SPIKE_MIN_HISTORY = 8  # no spike is called before this many finite losses are known

# A skipped step moves the LR schedule without an optimizer step, on purpose: torch's warning about
# that order (meant for a misplaced scheduler call) would be noise.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")


@dataclass(frozen=True)
class Policy:
    """The guard's settings (``--spike-factor``, ``--max-nonfinite-steps``, ``--max-rollbacks``)."""

    spike_factor: float = TrainConfig.spike_factor  # 0: no spike detection
    nonfinite_steps: int = TrainConfig.max_nonfinite_steps  # non-finite steps in a row that roll back (0: never)
    max_rollbacks: int = TrainConfig.max_rollbacks  # rollbacks in one session before the run stops

    @classmethod
    def of(cls, config: TrainConfig) -> Policy:
        return cls(config.spike_factor, config.max_nonfinite_steps, config.max_rollbacks)


@dataclass(frozen=True)
class Verdict:
    """Step ``step`` diverged: roll back to a checkpoint before it, skip the data up to ``position``
    (epoch, samples of it consumed after that step)."""

    step: int
    reason: str
    position: tuple[int, int]


def median(values) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def is_spike(loss: float, recent, factor: float) -> bool:
    """Whether ``loss`` is a spike against the ``recent`` finite losses (pure; see the module docstring)."""
    recent = list(recent)[-SPIKE_WINDOW:]
    if factor <= 0 or len(recent) < SPIKE_MIN_HISTORY:
        return False
    return loss > factor * median(recent)


# ---------------------------------------------------------------------------------------------
# the update of a non-finite step


def step_is_finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """A device bool: the step's loss and gradient norm are both finite (no host read)."""
    return torch.isfinite(loss) & torch.isfinite(grad_norm)


def skips_on_device(optimizer) -> bool:
    """Whether ``optimizer`` (the bare torch one) can skip its update on a device-side flag."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"))


def skip_nonfinite_update(step, optimizer, finite: torch.Tensor) -> None:
    """Run ``step()`` (the optimizer's step, accelerate's wrapper included) unless ``finite`` is False.

    ``optimizer`` is the bare torch optimizer: a fused Adam / AdamW gets ``found_inf`` and skips on the
    device; any other reads the flag (free on the CPU, a host sync on CUDA)."""
    if skips_on_device(optimizer):
        optimizer.found_inf = (~finite).float()
        try:
            step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        step()


def poisoned_steps() -> tuple[set[int], float]:
    """The steps ``CHEF_GENIUS_POISON`` poisons and the factor (empty when unset; a test hook)."""
    text = os.environ.get(POISON_ENV, "").strip()
    if not text:
        return set(), 1.0
    steps, factor = text.split(":")
    first, _, last = steps.partition("-")
    return set(range(int(first), int(last or first) + 1)), float(factor)


# ---------------------------------------------------------------------------------------------
# what the host learns of each step


class StepHealth:
    """Each step's loss and finiteness as the host learns them, the verdicts drawn from them, and the
    recent finite losses (saved in every checkpoint)."""

    def __init__(self, policy: Policy, device: torch.device):
        self.policy = policy
        self.late = device.type == "cuda"
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0  # non-finite steps of the run, resumes included
        self.unlogged_skips: list[int] = []  # skipped steps the log has not named yet
        self._pending: list[tuple] = []

    def note(self, step: int, loss: torch.Tensor, finite: torch.Tensor, position: tuple[int, int]) -> Verdict | None:
        """Step ``step`` is queued; returns the verdict of a step the host can now read (this one on the
        CPU, the previous one on CUDA), or None."""
        if self.late:
            values = torch.stack([loss.detach().float(), finite.float()])
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pending.append((step, host, done, position))
            if len(self._pending) < 2:
                return None
            return self._judge(*self._read(self._pending.pop(0)))
        return self._judge(step, float(loss), bool(finite), position)

    def flush(self) -> Verdict | None:
        """Read every pending step (before a checkpoint, at the end); the first verdict, if any."""
        verdict = None
        while self._pending:
            found = self._judge(*self._read(self._pending.pop(0)))
            verdict = verdict or found
        return verdict

    def forget_pending(self) -> None:
        self._pending.clear()

    @staticmethod
    def _read(pending) -> tuple:
        step, host, done, position = pending
        done.synchronize()
        loss, finite = host.tolist()
        return step, loss, bool(finite), position

    def _judge(self, step: int, loss: float, finite: bool, position: tuple[int, int]) -> Verdict | None:
        p = self.policy
        if not finite or not math.isfinite(loss):
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
            self.unlogged_skips.append(step)
            if p.nonfinite_steps and self.nonfinite_in_a_row >= p.nonfinite_steps:
                return Verdict(step, f"{self.nonfinite_in_a_row} non-finite steps in a row", position)
            return None
        self.nonfinite_in_a_row = 0
        if is_spike(loss, self.recent, p.spike_factor):
            return Verdict(
                step,
                f"loss spike: {loss:.4g} > {p.spike_factor:g} x the median {median(self.recent):.4g} "
                f"of the last {len(self.recent)} losses",
                position,
            )
        self.recent.append(loss)
        return None

    # the checkpoint's slice (its numbers' finiteness is added by the trainer, see ``numbers_finite``)
    def state_dict(self) -> dict:
        return {"recent_losses": list(self.recent), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, saved: dict) -> None:
        self.recent = deque((float(v) for v in saved.get("recent_losses") or ()), maxlen=SPIKE_WINDOW)
        self.skipped_steps = int(saved.get("skipped_steps") or 0)
        self.nonfinite_in_a_row = 0
        self.unlogged_skips = []
        self._pending.clear()


def numbers_finite(tensors) -> bool:
    """Whether every floating-point tensor of ``tensors`` is finite (one host read)."""
    flags = [torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def optimizer_tensors(optimizer):
    """The moment tensors of a torch optimizer (every tensor of its per-parameter state)."""
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                yield value
