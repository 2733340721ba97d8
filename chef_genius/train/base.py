"""What a ``Trainer`` holds: every attribute, typed, in one place (``TrainerBase``), and the methods
its parts call across modules. The parts themselves (``train/setup.py``, ``run_folder.py``,
``step.py``, ``periodic.py``, ``rollback.py``, ``ending.py``) each subclass it; ``train/trainer.py``
puts them together with the loop.

``__init__`` sets what the command decides (no file touched); ``setup`` the rest, in the order it
lists; an attribute read before it is set is a bug (AttributeError), never a silent default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from chef_genius.checkpoint import remote
from chef_genius.checkpoint.manager import CheckpointManager
from chef_genius.checkpoint.runlock import RunLock
from chef_genius.data.position import DataPosition
from chef_genius.data.sampler import ResumableBatchSampler
from chef_genius.data.tokenized import RecipeDataset
from chef_genius.model import lean_loss
from chef_genius.monitoring.progress import Progress
from chef_genius.monitoring.reporting import Reporters
from chef_genius.train import components as parts
from chef_genius.train import distributed as dist
from chef_genius.train import divergence
from chef_genius.train import preemption
from chef_genius.train.config import TrainConfig
from chef_genius.train.data_setup import DataRecords
from chef_genius.train.evaluation import Evaluation
from chef_genius.train.schedule import Schedule
from chef_genius.train.state import RunProgress, RunState


class TrainerBase:
    """The attributes of a ``Trainer``, by the step that sets them."""

    # -- from the command (``__init__``)
    config: TrainConfig  # the command's settings; after setup the run's (a resume's: the checkpoint's, flags on top)
    output: Path  # the run folder
    accelerator: Any  # accelerate.Accelerator (rebuilt by _adopt_settings for a resumed run's precision)
    device: torch.device
    is_main: bool  # rank 0: the process that writes
    compiled: bool  # this session trains through torch.compile
    compile_why: str  # the one line that says why (or why not)
    sample_log: dist.SampleLog  # the samples each rank trains on (a debugging and test record)
    run: RunProgress  # how far the run is: run state, data position, tokens, log window (train/state.py)
    bar: Progress  # the progress bar of this session (entered by ``train``)
    run_lock: RunLock | None  # held from setup until ``close``
    preemption: preemption.Preemption  # entered by ``train`` (and by the CLI, until the exit)
    health: divergence.StepHealth  # each step judged by its loss and gradient norm
    poisoned: set[int]  # a test hook (see train/divergence.py): steps whose loss is scaled by ``poison``
    poison: float
    # -- the run folder, its data and its mirror (setup)
    mirror_store: remote.RemoteStore | None  # --checkpoint-mirror, on the main process
    data_identities: dict  # data_identity / eval_data_identity: the files by content
    data_records: DataRecords | None  # written into the run folder once setup succeeds
    data_sources: list[dict] | None  # several sources: each one's counts (the checkpoint's settings, metrics.jsonl)
    reporters: Reporters
    # -- the model (setup.py ``_make_model``)
    model_source: str | Path  # the checkpoint resumed from, else --pretrained-model
    tokenizer: Any
    base: dict | None  # a LoRA run's base model record
    head: lean_loss.TargetHead | None  # the loss over labelled positions (None: the logits' cross-entropy)
    model_config: Any  # the transformers config (FLOPs per token)
    gpu_free: int | None  # free GPU memory before this run put anything there
    peak_flops: float | None  # of this device, for the MFU
    model: torch.nn.Module  # prepared by accelerate (DDP / FSDP wrapped on several processes)
    # -- the data (setup.py ``_make_data``)
    train_data: Any  # the training recipes (``len`` is what the trainer needs)
    eval_data: RecipeDataset | None
    loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader | None
    sampler: ResumableBatchSampler  # owns the data position (``run.position`` is the same object)
    evaluation: Evaluation
    # -- the optimization (setup.py ``_make_schedule``)
    optimizer: Any  # torch's, under accelerate's wrapper (``parts.bare``)
    steps_per_epoch: int
    total_steps: int  # the planned end of the run
    schedule: Schedule  # the LR as a pure function of the step
    scheduler: torch.optim.lr_scheduler.LRScheduler
    # -- the checkpoint manager and its components (setup.py ``_make_checkpoint_manager``)
    checkpoints: CheckpointManager
    rng: parts.RngSlice
    health_slice: parts.HealthSlice
    # -- the loss (setup.py ``_compile``)
    _eager_loss: Callable[..., torch.Tensor]
    _compiled_loss: Callable[..., torch.Tensor] | None

    @property
    def state(self) -> RunState:
        """The run state (step, best loss, tokens, time): what ``run`` saves."""
        return self.run.state

    @property
    def position(self) -> DataPosition:
        """Where the run is in its data (the sampler's position)."""
        return self.run.position

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.accelerator.num_processes * self.config.gradient_accumulation_steps

    # -- called by one part on another (defined by the part named)

    def _adopt_settings(self, command: TrainConfig) -> None:  # trainer.py
        raise NotImplementedError

    def maybe_log(self, force: bool = False) -> None:  # periodic.py
        raise NotImplementedError

    def maybe_evaluate(self, force: bool = False) -> float | None:  # periodic.py
        raise NotImplementedError

    def _numbers_finite(self) -> tuple[bool, bool]:  # periodic.py
        raise NotImplementedError

    def _loss_sum(self, batch: dict, compiled: bool = True) -> torch.Tensor:  # step.py
        raise NotImplementedError

    def _roll_back(self, verdict: divergence.Verdict) -> None:  # rollback.py
        raise NotImplementedError
