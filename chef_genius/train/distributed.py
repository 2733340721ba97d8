"""What changes when the trainer runs on several processes (``accelerate launch`` / ``torchrun``).

- Padding shares: the last global micro-batch of an epoch may hold fewer samples than processes;
  a rank without a real sample still steps, on a padding row that adds no loss. That belongs to the
  data (chef_genius/data/shares.py: ``ShareDataset`` / ``ShareCollator``, re-exported here), so the
  cached path and ``--streaming`` pad the same way and every batch carries ``sample_index``.
- Loss normalisation: the loss of an optimizer step is the sum over all ranks' target tokens
  divided by the global token count, all-reduced once per step (see ``token_divisor``).
- RNG: every rank's RNG state is gathered into the checkpoint (one state per rank) and given
  back to the same rank when the world size is unchanged; on another world size each rank gets
  fresh seeds derived from (seed, step, rank).
- Resume: rank 0 picks the checkpoint and the other ranks follow it, so ranks on a shared file
  system that is slow to show new folders cannot disagree.
- Checkpoints: rank 0 writes; every rank takes part in gathering the state (``World`` is what the
  checkpoint manager sees of the processes) and all agree on whether a save failed.
- ``CHEF_GENIUS_SAMPLE_LOG=DIR`` (debugging and tests): each rank appends the samples it trained
  on to ``DIR/rank-R.txt``, one ``epoch index`` line each.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any
from pathlib import Path

import torch

from chef_genius.data.shares import ShareCollator, ShareDataset  # noqa: F401 - the trainer's names for them
from chef_genius.train import preemption, rng
from chef_genius.errors import UserError

log = logging.getLogger("chef_genius")

SAMPLE_LOG_ENV = "CHEF_GENIUS_SAMPLE_LOG"


# ---------------------------------------------------------------------------------------------
# loss normalisation


def token_divisor(accelerator, local_tokens: int) -> tuple[float | torch.Tensor, int | torch.Tensor]:
    """(divisor for this rank's summed loss, global target tokens of the step).

    DDP averages gradients over ranks, so dividing each rank's token-summed loss by
    ``global_tokens / world`` gives the gradient of the global token mean. One all-reduce per
    optimizer step, and both stay on the device (the count goes up through pinned memory): the
    host never waits for the device here, so the GPU queue does not drain each step. On one process
    nothing is communicated and both are plain numbers.
    """
    world = accelerator.num_processes
    if world == 1:
        return max(local_tokens, 1), local_tokens
    count = torch.tensor(local_tokens, dtype=torch.long)
    if accelerator.device.type == "cuda":
        count = count.pin_memory()
    global_tokens = accelerator.reduce(count.to(accelerator.device, non_blocking=True), reduction="sum")
    return global_tokens.clamp(min=1).float() / world, global_tokens


def global_step_loss(accelerator, local_loss: torch.Tensor) -> torch.Tensor:
    """The step's loss over all ranks (each rank holds its share scaled by the world size)."""
    if accelerator.num_processes == 1:
        return local_loss
    return accelerator.reduce(local_loss, reduction="mean")


# ---------------------------------------------------------------------------------------------
# RNG per rank


def gather_rng_states(accelerator) -> list[dict] | None:
    """Every rank's RNG state on rank 0 (a collective: all ranks call it); None elsewhere."""
    mine = rng.capture()
    if accelerator.num_processes == 1:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * accelerator.num_processes if accelerator.is_main_process else None
    dist.gather_object(mine, gathered, dst=0)
    return gathered


def rng_for_rank(per_rank: list[dict], accelerator, seed: int, global_step: int) -> dict | None:
    """This rank's saved RNG state (``per_rank``: one per process that saved), or None after reseeding
    when the world size changed."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if len(per_rank) == world:
        return per_rank[rank]
    if per_rank:
        log.warning(
            "the checkpoint was written by %d processes, this run has %d: each process starts fresh "
            "random streams (dropout), so losses will not match an uninterrupted run",
            len(per_rank),
            world,
        )
    rng.seed_everything(rank_seed(seed + int(global_step), rank))
    return None


def rank_seed(seed: int, rank: int) -> int:
    """Different dropout streams per rank; rank 0 keeps ``seed`` so one process runs unchanged."""
    return seed + 1_000_003 * rank


# ---------------------------------------------------------------------------------------------
# agreement and plan


class World:
    """What the checkpoint manager needs of the processes of a run: who writes, and agreeing on flags."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self._late: LateVote | None = None

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """The flags OR-ed over all processes (one all-reduce; nothing on one process)."""
        return preemption.agree(self.accelerator, *flags)

    def agree_late(self, *flags: bool) -> tuple[bool, ...]:
        """The flags of the *previous* call OR-ed over all processes (all False on the first call); this
        call's flags start their all-reduce now and are read at the next call. Every process calls it
        once per step, so all of them act on the same vote at the same step, one step after it was cast,
        and the host never waits on the step just queued (the per-step stop vote). One process: this
        call's flags, at once."""
        if self.accelerator.num_processes == 1:
            return flags
        if self._late is None:
            self._late = LateVote(self.accelerator.device)
        return self._late.cast(flags)


class LateVote:
    """A sum all-reduce started now and read one call later (see ``World.agree_late``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending: tuple[Any, torch.Tensor] | None = None  # (a collective's work or CUDA event, its values)

    def cast(self, flags) -> tuple[bool, ...]:
        import torch.distributed as td

        values = torch.tensor([float(f) for f in flags])
        if self.device.type == "cuda":
            values = values.pin_memory()
        values = values.to(self.device, non_blocking=True)
        work = td.all_reduce(values, op=td.ReduceOp.SUM, async_op=True)
        if self.device.type == "cuda":
            work.wait()  # the current stream waits for the collective; the host does not
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            pending = (done, host)
        else:
            pending = (work, values)
        previous, self.pending = self.pending, pending
        if previous is None:
            return tuple(False for _ in flags)
        waiter, result = previous
        waiter.synchronize() if isinstance(waiter, torch.cuda.Event) else waiter.wait()
        return tuple(bool(v > 0) for v in result.tolist())


def broadcast_object(accelerator, value):
    """Rank 0's ``value`` (a small picklable object) on every rank."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def agree_on_path(accelerator, path: Path | None) -> Path | None:
    """Rank 0's choice of checkpoint, on every rank."""
    if accelerator.num_processes == 1:
        return path
    import torch.distributed as dist

    box = [None if path is None else str(path)]
    dist.broadcast_object_list(box, src=0)
    return None if box[0] is None else Path(box[0])


def planned_total_steps(
    global_step: int,
    epoch: int,
    samples_in_epoch: int,
    num_samples: int,
    global_batch: int,
    accumulation: int,
    epochs: int,
) -> int:
    """The optimizer step at which ``epochs`` end, counted from a position (pure).

    On an unchanged world size this equals ``steps_per_epoch * epochs``; after a resume on another
    world size the steps already taken covered another number of samples each, so the plan is the
    steps taken plus what the rest of this epoch and the later epochs need at the new global batch.
    """
    steps_per_epoch = math.ceil(math.ceil(num_samples / global_batch) / accumulation)
    if epoch >= epochs:
        return global_step
    rest = math.ceil(math.ceil(max(0, num_samples - samples_in_epoch) / global_batch) / accumulation)
    return global_step + rest + (epochs - epoch - 1) * steps_per_epoch


# ---------------------------------------------------------------------------------------------
# logging and the sample log


def check_launch(accelerator, fsdp_requested: bool) -> None:
    """Refuse launches that would silently train something else than asked."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise UserError(
            f"launched as {launched} processes but accelerate set up {accelerator.num_processes}: "
            "they would each train alone into the same folder; launch with torchrun --nproc_per_node "
            f"{launched} or accelerate launch --multi_gpu --num_processes {launched}"
        )
    if fsdp_requested and accelerator.device.type != "cuda":
        raise UserError(
            "the FSDP config needs CUDA GPUs; on CPU use accelerate launch --multi_gpu "
            "--num_processes N (data-parallel)"
        )


def quiet_other_ranks(accelerator) -> None:
    """Logs come from rank 0; other ranks say only warnings and errors."""
    if not accelerator.is_main_process:
        logging.getLogger("chef_genius").setLevel(logging.WARNING)


class SampleLog:
    """Appends ``epoch index`` lines for the real samples this rank trains on (debugging, tests)."""

    def __init__(self, folder: str | None, rank: int):
        self.path = Path(folder) / f"rank-{rank}.txt" if folder else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, rank: int) -> SampleLog:
        return cls(os.environ.get(SAMPLE_LOG_ENV), rank)

    def write(self, epoch: int, window: list[dict]) -> None:
        if self.path is None:
            return
        lines = [f"{epoch} {int(i)}\n" for batch in window for i in batch["sample_index"].tolist() if i >= 0]
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.writelines(lines)
