"""The training loop.

Features, in the order a step meets them:
- data (``train/data_setup.py``): tokenized once into an on-disk cache, length-grouped deterministic
  batches padded to a multiple of 8, a resumable sampler that owns the data position (resume =
  index arithmetic, no skipped batches replayed);
- model: every weight trained, or with ``--lora-r`` rank-R adapters (``model/lora.py``, peft) on a
  frozen base checked by its fingerprint on resume; the final model is then the merged one;
- precision: fp32 master weights, bf16 autocast on GPUs with native bf16 (never fp16: T5 overflows),
  TF32 matmuls; with torch.compile the training forward and its loss are one compiled region
  (``lean_loss.summed_loss``), validation runs eager;
- step: gradient accumulation with the loss normalised by the real target tokens of the whole
  optimizer step, gradient clipping, AdamW (fused on CUDA), warmup + linear / cosine / constant LR;
- periodic work (each a ``maybe_*`` helper that owns its "is it time?"): logging, evaluation
  (``train/evaluation.py``: validation loss, recipe metrics, the best step, samples), checkpoints every
  ``--save-steps`` optimizer steps;
- divergence (``train/divergence.py``): a step whose loss or gradient norm is not finite changes no
  weight and no optimizer moment (counted, logged, in metrics.jsonl); a loss spike or a run of
  non-finite steps rolls the run back to the newest healthy checkpoint before it, skipping the recipes
  that led into it (``_roll_back``); every checkpoint records whether its numbers are finite;
- out of GPU memory in a step (``train/oom.py``): retried at half the micro-batch with
  ``--auto-micro-batch``, else one line with what would fit;
- checkpoints and resume: the ``CheckpointManager`` (``checkpoint/manager.py``) saves and restores
  every stateful piece (``train/components.py``): model, optimizer, scheduler, every RNG, the data
  position, the run state, the reporters; on CPU the resumed losses equal the uninterrupted run's
  bit for bit. A stop (signal, ``--stop-after-steps``, the end) waits for the checkpoint in flight;
- a checkpoint mirror (``--checkpoint-mirror``): the manager's ``Mirror`` uploads each committed
  checkpoint in the background; a resume on an empty run folder first fetches the mirror's newest
  healthy checkpoint (``checkpoint/fetch.py``); a mirror that cannot be used is refused at setup;
- several processes (``accelerate launch`` / ``torchrun``): DDP or FSDP through accelerate; what
  differs (padding shares, global-token loss, per-rank RNG, rank-0 saves) lives in ``distributed``
  and ``sharded``.

A resume trains with the run's settings saved in its checkpoint, the explicit flags of its command
on top (what it may change is decided in ``train/settings.py``).

Raises ``UserError`` (exit 2) for a resume that does not match its checkpoint, a run folder that a
live run holds (``checkpoint/runlock.py``; the lock is held until ``close``) or a mirror that cannot be
used, ``DataError`` (exit 3) for unusable data, ``SaveError`` (exit 4) when a checkpoint, metrics.jsonl
or the final model could not be written, or the final checkpoint did not reach the mirror
(``--on-save-error``), ``Preempted`` (exit 75) after a stop signal's checkpoint (SIGTERM, SIGUSR1,
Ctrl+C) is committed (then ``--requeue-on-preemption`` requeues the Slurm job), ``Diverged`` (exit 6)
when the run keeps diverging after ``--max-rollbacks`` rollbacks, or its final weights are not finite
(the message names the newest healthy checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chef_genius.checkpoint import disk
from chef_genius.checkpoint import fetch
from chef_genius.checkpoint import remote
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint.manager import CheckpointManager, LoadedCheckpoint, Stateful, read_checkpoint
from chef_genius.checkpoint.mirror import Mirror
from chef_genius.checkpoint.resume import resolve
from chef_genius.checkpoint.files import atomic_write_bytes
from chef_genius.checkpoint.runlock import RunLock
from chef_genius.data import mixture
from chef_genius.data.fingerprint import content_identity
from chef_genius.data.position import DataPosition
from chef_genius.data.tokenized import LABEL_PAD
from chef_genius.errors import Diverged, Preempted, ReportedByRankZero, SaveError, UserError
from chef_genius.model import lean_loss
from chef_genius.model import lora
from chef_genius.model import memory
from chef_genius.model.loading import (
    load_model,
    load_tokenizer,
    make_optimizer,
    quiet_transformers,
    resolve_precision,
    should_compile,
    unwrap,
)
from chef_genius.monitoring.flops import mfu, peak_flops, train_flops
from chef_genius.monitoring.progress import Progress, epoch_label
from chef_genius.monitoring.reporting import make_reporters
from chef_genius.settings import config_file, schema
from chef_genius.train import components as parts
from chef_genius.train import distributed as dist
from chef_genius.train import divergence
from chef_genius.train import memory_plan
from chef_genius.train import oom
from chef_genius.train import preemption
from chef_genius.train import rng
from chef_genius.train import settings
from chef_genius.train import sharded
from chef_genius.train.config import TrainConfig
from chef_genius.train.data_setup import DataRecords, make_data
from chef_genius.train.evaluation import Evaluation, Stopped as EvaluationStopped
from chef_genius.train.schedule import Schedule, make_scheduler
from chef_genius.train.state import RunState

log = logging.getLogger("chef_genius")


def _logits_loss(model, input_ids, attention_mask, decoder_input_ids, labels) -> torch.Tensor:
    """The summed cross-entropy of the logits (a model without a plain linear head), no decoder cache."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
    ).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=LABEL_PAD, reduction="sum")


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


def _mean_finite(losses: list) -> float | None:
    finite = [v for v in losses if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        self.config = config
        self.output = Path(config.model_output)
        quiet_transformers()
        probe = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.accelerator = Accelerator(
            mixed_precision=resolve_precision(config.mixed_precision, probe), cpu=probe.type == "cpu"
        )
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        # decided, or an explicit --compile that cannot work here refused, before anything is touched (a
        # resume that inherits another choice decides again in _adopt_settings)
        self.compiled, self.compile_why = should_compile(config.compile, self.device)
        dist.check_launch(self.accelerator, fsdp_requested=sharded.fsdp_requested())
        if config.auto_micro_batch and self.accelerator.num_processes > 1:
            # an out-of-memory error on one process would leave the others waiting in a collective
            raise UserError(
                "--auto-micro-batch works on one process only; on several GPUs lower --batch-size "
                "and raise --gradient-accumulation-steps (see --plan-only)"
            )
        dist.quiet_other_ranks(self.accelerator)
        self.sample_log = dist.SampleLog.from_env(self.accelerator.process_index)
        self.state = RunState()
        self.progress = Progress(0, enabled=False)
        self.window = LogWindow()
        self.run_lock: RunLock | None = None
        self.preemption = preemption.Preemption()  # entered by ``train`` (and by the CLI, until the exit)
        self.data_identities: dict = {}  # data_identity / eval_data_identity: the files by content (setup)
        self.mirror_store: remote.RemoteStore | None = None  # --checkpoint-mirror, on the main process
        self.health = divergence.StepHealth(divergence.Policy(), self.device)
        self.rollbacks = 0  # in this session
        self.poisoned, self.poison = divergence.poisoned_steps()  # a test hook (see train/divergence.py)
        self.data_records: DataRecords | None = None  # written into the run folder once setup succeeds
        self.data_sources: list[dict] | None = None  # several sources: each one's counts (checkpoint, metrics)

    # -----------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        self._hold_run_folder()
        self._on_main(self._fill_from_mirror)
        loaded = self._checkpoint_to_resume()
        self._settle_settings(loaded)  # from here on the run's settings are final
        self._on_main(self._open_mirror)
        c = self.config
        self.health.policy = divergence.Policy.of(c)
        self.reporters = make_reporters(c, self.output, self.is_main)
        rng.seed_everything(dist.rank_seed(c.seed, self.accelerator.process_index))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model = self._make_model(loaded)
        self._make_data(model)
        # what the run trains on, fingerprinted by content once (the cache check already read it: no second
        # read); every checkpoint records it, whatever happens to the files later
        self.data_identities = {
            "data_identity": mixture.identity(mixture.parse_sources(c.data)),
            "eval_data_identity": content_identity(c.eval_data),
            **({"data_sources": self.data_sources} if self.data_sources is not None else {}),
        }
        self.evaluation = Evaluation(
            c,
            self.accelerator,
            self.tokenizer,
            self.eval_data,
            self.eval_loader,
            self.reporters,
            self.state,
            lambda: self.preemption.requested,
        )
        self.optimizer = make_optimizer(model, c.learning_rate, c.weight_decay, self.device, c.optimizer)
        self._make_schedule(loaded)
        self.model, self.optimizer = sharded.prepare(self.accelerator, model, self.optimizer, self.device)
        if sharded.is_fsdp(self.accelerator):
            sharded.prepare_generation(unwrap(self.model))  # the evaluation's samples and recipe metrics
        self.checkpoints = self._make_checkpoint_manager(model, loaded)
        if loaded is not None:
            self._resume(loaded)
        self._compile(loaded)
        self.checkpoints.preflight((self.total_steps - self.state.global_step) // c.save_steps + 1)
        self._write_settings()
        if self.is_main and self.data_records is not None:
            self.data_records.write(self.output)  # the data summary, removed rows, training signatures
        log.info(
            "%d training and %d validation recipes; %d optimizer steps per epoch, %d in total; "
            "global batch %d (%d per device x %d processes x %d accumulation)",
            len(self.train_data),
            len(self.eval_data) if self.eval_data else 0,
            self.steps_per_epoch,
            self.total_steps,
            self.global_batch,
            c.batch_size,
            self.accelerator.num_processes,
            c.gradient_accumulation_steps,
        )
        self.reporters.open(c, self.output, self.state.global_step, loaded.path if loaded else None)
        if self.data_sources is not None:  # several sources: what each gives the run, once per session
            self.reporters.write({"type": "data", "step": self.state.global_step, "sources": self.data_sources})

    def _write_settings(self) -> None:
        """The settings this session resolved, as a reusable config file in the run folder (rewritten by
        each session; ``--config RUN/settings.yaml`` gives them again)."""
        if self.is_main:
            atomic_write_bytes(
                self.output / config_file.SETTINGS_FILE,
                config_file.settings_yaml(self.config, schema.SECTIONS).encode("utf-8"),
            )

    def _hold_run_folder(self) -> None:
        """One run per run folder: refused (exit 2) while a live run holds it; a dead run's leftovers go."""

        def hold() -> None:
            disk.prepare_output(self.output)
            self.run_lock = RunLock(self.output).acquire()
            self.run_lock.remove_leftovers()

        self._on_main(hold)

    def _on_main(self, action) -> None:
        """``action()`` on rank 0; its refusal (``UserError``) ends every rank (the others would wait in
        its next collective)."""
        refusal = None
        if self.is_main:
            try:
                action()
            except UserError as err:
                refusal = err
        shared = dist.broadcast_object(self.accelerator, None if refusal is None else (str(refusal), refusal.exit_code))
        if refusal is not None:
            raise refusal
        if shared is not None:
            raise ReportedByRankZero(*shared)

    def _fill_from_mirror(self) -> None:
        """A resume with a mirror (the command's, else the one the local checkpoints were written with):
        the mirror's newest healthy checkpoint is fetched first when it is newer than the local ones
        (a fresh machine: the run folder is empty). Wrong credentials or a missing bucket: exit 2 here."""
        c = self.config
        if not (c.auto_resume or c.resume_from_checkpoint == "latest"):
            return
        url = c.checkpoint_mirror or fetch.saved_mirror(self.output, "checkpoint_mirror")
        if url:
            self.mirror_store = remote.open_store(url)
            self.mirror_store.check_access()
            fetch.fill_run_folder(self.mirror_store, self.output, c.verify_hashes)

    def _open_mirror(self) -> None:
        """The run's mirror (a run setting: a resume keeps the checkpoint's unless the command names one),
        checked before training: refused now (exit 2), not at the first save."""
        url = self.config.checkpoint_mirror
        if not url:
            self.mirror_store = None
        elif self.mirror_store is None or self.mirror_store.url != url.rstrip("/"):
            self.mirror_store = remote.open_store(url)
            self.mirror_store.check_access()

    def _checkpoint_to_resume(self) -> LoadedCheckpoint | None:
        """The checkpoint this run continues (None: a fresh run); rank 0 chooses for every rank."""
        c = self.config
        path = dist.agree_on_path(
            self.accelerator, resolve(c.resume_from_checkpoint, c.auto_resume, self.output, c.verify_hashes)
        )
        return read_checkpoint(path)

    def _settle_settings(self, loaded: LoadedCheckpoint | None) -> None:
        """A resume's settings: the checkpoint's, the explicit flags on top (``train/settings.py``)."""
        command = self.config
        saved = (
            None
            if loaded is None
            else {
                "hyperparameters": loaded.settings,
                "global_step": loaded.global_step,
                "data_position": loaded.slices.get(ckstate.DATA_POSITION),
            }
        )
        self.config = settings.settle(command, saved, loaded.path if loaded else None)
        self._adopt_settings(command)

    def _make_model(self, loaded: LoadedCheckpoint | None):
        c = self.config
        self.model_source = loaded.path if loaded is not None else c.pretrained_model
        self.tokenizer = load_tokenizer(str(self.model_source))
        if c.lora_r and sharded.is_fsdp(self.accelerator):
            raise UserError(
                "--lora-r is not supported under FSDP: train the adapter with DDP (accelerate launch "
                "without an FSDP config) or on one GPU"
            )
        resumed_from = loaded.path if loaded is not None else None
        model = load_model(c.pretrained_model if c.lora_r else self.model_source)  # LoRA: the base, always
        self.base = lora.base_of_run(model, c.pretrained_model, resumed_from) if c.lora_r else None
        self.head = lean_loss.install(model)  # loss over labelled positions only (model/lean_loss.py)
        if c.gradient_checkpointing:
            model.config.use_cache = False
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model_config = model.config
        self.gpu_free = memory.gpu_free_bytes()  # before this run puts anything on the GPU
        if self.is_main:
            memory_plan.log_plan(model, c, self.accelerator.mixed_precision == "bf16", self.gpu_free)
        self.peak_flops = peak_flops(self.device, self.accelerator.mixed_precision)
        if c.lora_r:
            assert c.lora_alpha is not None  # validate sets 2 x r when not given
            model = lora.wrap_for_training(
                model, c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_target_modules, resumed_from
            )
        return model

    def _make_data(self, model) -> None:
        start = model.config.decoder_start_token_id
        data = make_data(
            self.config,
            self.tokenizer,
            self.accelerator,
            self.output,
            self.tokenizer.pad_token_id if start is None else start,
        )
        self.train_data, self.eval_data = data.train, data.eval
        self.loader, self.eval_loader, self.sampler = data.loader, data.eval_loader, data.sampler
        self.position = self.sampler.position
        self.data_records = data.records
        self.data_sources = data.sources

    def _make_schedule(self, loaded: LoadedCheckpoint | None) -> None:
        """The LR schedule over the planned steps (after a resume on another world size: the steps the
        rest of the epochs need at the new global batch)."""
        c = self.config
        if loaded is not None:
            self._settle_end(loaded)
        self.steps_per_epoch = math.ceil(self.sampler.micro_batches_per_epoch() / c.gradient_accumulation_steps)
        self.total_steps = self.sampler.planned_steps(c.epochs, c.gradient_accumulation_steps)
        if loaded is not None and loaded.world_size != self.accelerator.num_processes:
            where = DataPosition.saved_at(loaded.slices[ckstate.DATA_POSITION])
            self.total_steps = loaded.global_step + self.sampler.planned_steps(
                c.epochs, c.gradient_accumulation_steps, where.epoch, where.samples_in_epoch
            )
        if c.max_steps:
            self.total_steps = min(self.total_steps, c.max_steps)
        self.schedule = Schedule(c.warmup_steps, self.total_steps, c.lr_scheduler)
        self.scheduler = make_scheduler(self.optimizer, self.schedule)

    def _settle_end(self, loaded: LoadedCheckpoint) -> None:
        """A resume's new ``--max-steps`` / ``--epochs``: trained to, or refused (``settings.resumed_end``)."""
        c = self.config
        where = DataPosition.saved_at(loaded.slices.get(ckstate.DATA_POSITION) or {})

        def reach(epochs: int) -> int:
            return loaded.global_step + self.sampler.planned_steps(
                epochs, c.gradient_accumulation_steps, where.epoch, where.samples_in_epoch
            )

        c.epochs, c.max_steps, notes = settings.resumed_end(
            c.epochs, c.max_steps, loaded.settings, c.explicit, loaded.global_step, reach
        )
        for note in notes:
            log.info("%s", note)

    def _make_checkpoint_manager(self, model, loaded: LoadedCheckpoint | None) -> CheckpointManager:
        c, acc = self.config, self.accelerator
        self.rng = parts.RngSlice(acc, c.seed, self.state)
        self.health_slice = parts.HealthSlice(self.health)
        components: dict[str, Stateful] = {
            ckstate.RUN_STATE: self.state,
            ckstate.DATA_POSITION: parts.PositionSlice(self.sampler, c.allow_config_change),
            ckstate.OPTIMIZER: parts.OptimizerSlice(
                acc,
                self.model,
                self.optimizer,
                self.schedule,
                self.state,
                c.optimizer_rewarmup_steps,
                c.explicit,
                c.optimizer,
            ),
            ckstate.SCHEDULER: parts.SchedulerSlice(self.scheduler, self.optimizer, self.state, c.explicit),
            ckstate.RNG: self.rng,
            ckstate.REPORTING: self.reporters,
            ckstate.SETTINGS: parts.SettingsSlice(self._hyperparameters),
            ckstate.HEALTH: self.health_slice,
        }
        tensors, tokenizer = disk.model_tensors(model), disk.tokenizer_bytes(self.model_source)
        files = parts.ModelFiles(acc, self.model, self.tokenizer, c.source_template)
        final_tensors = tensors
        if c.lora_r:  # checkpoints hold the adapter only; the final model the merged base (or the adapter)
            assert self.base is not None  # recorded for every LoRA run
            files = parts.AdapterFiles(
                acc, self.model, self.tokenizer, c.source_template, self.base, c.save_adapter_only
            )
            final_tensors = [t for t in tensors if t[2] == c.save_adapter_only]
            tensors = [t for t in tensors if t[2]]
        mirror = None
        if self.mirror_store is not None:
            mirror = Mirror(self.mirror_store, keep_last=c.save_total_limit, best_step=lambda: self.state.best_step)
        return CheckpointManager(
            self.output,
            files,
            components,
            mirror=mirror,
            world=dist.World(acc),
            async_save=self._async_save(),
            on_error=c.on_save_error,
            save_steps=c.save_steps,
            save_every_minutes=c.save_every_minutes,
            keep_last=c.save_total_limit,
            best_step=lambda: self.state.best_step,
            checkpoint_bytes=disk.estimate_checkpoint_bytes(tensors, extra_bytes=tokenizer),
            model_bytes=disk.estimate_checkpoint_bytes(final_tensors, optimizer_moments=0, extra_bytes=tokenizer),
        )

    def _async_save(self) -> bool:
        """--async-save / --no-async-save; by default on with CUDA (the copy to pinned memory is quick
        there, the write is not), off on CPU (the copy and the write compete for the same cores)."""
        return self.device.type == "cuda" if self.config.async_save is None else self.config.async_save

    def _resume(self, loaded: LoadedCheckpoint) -> None:
        restored = self.checkpoints.restore(loaded)
        if self.state.micro_batch_split > 1:
            restored.append(
                f"micro-batch {math.ceil(self.config.batch_size / self.state.micro_batch_split)} x "
                f"accumulation {self.config.gradient_accumulation_steps * self.state.micro_batch_split} "
                "(--auto-micro-batch)"
            )
        log.info(
            "resumed from %s: step %d, epoch %s, sample %d of %d; restored %s",
            loaded.path,
            self.state.global_step,
            epoch_label(self.position.epoch + 1, self.config.epochs),
            self.position.samples_in_epoch,
            len(self.train_data),
            ", ".join(restored),
        )

    def _compile(self, loaded: LoadedCheckpoint | None) -> None:
        log.info("torch.compile %s", self.compile_why)
        saved = None if loaded is None else loaded.settings.get("compiled")
        if saved is not None and saved != self.compiled:  # None: a checkpoint older than the record
            assert loaded is not None  # saved was read from it
            log.warning(
                "this session trains %s while the checkpoint's run trained %s: the losses from step %d on "
                "are no longer bitwise equal to an uninterrupted run's (pass %s to keep it as it was)",
                *(
                    ("compiled", "eager", loaded.global_step, "--disable-compilation")
                    if self.compiled
                    else ("eager", "compiled", loaded.global_step, "--compile")
                ),
            )
        if self.head is None:
            self._eager_loss = functools.partial(_logits_loss, self.model)
        else:
            self._eager_loss = functools.partial(lean_loss.summed_loss, self.model, self.head)
        self._compiled_loss = None
        if self.compiled:
            # One region from the token ids to the summed loss (no decoder cache, the loss inside): no
            # graph break at the head. Validation runs eager (``_loss_sum(compiled=False)``): in eval mode
            # under no_grad the compiled region would be compiled a second time in full.
            c = self.config
            if self.head is not None:
                self.head.chunks = lean_loss.chunks_for(c.max_tokens_per_batch or c.batch_size * c.max_target_length)
            self._compiled_loss = torch.compile(self._eager_loss, dynamic=True)

    def _adopt_settings(self, command: TrainConfig) -> None:
        """Redo what ``__init__`` built from the ``command`` line where the resumed run's settings differ."""
        c = self.config
        precision = self.accelerator.mixed_precision
        if c.mixed_precision != command.mixed_precision:
            precision = resolve_precision(c.mixed_precision, self.device)
        if c.compile != command.compile:  # --compile / --disable-compilation inherited from the checkpoint
            self.compiled, self.compile_why = should_compile(c.compile, self.device)
            self.compile_why += " (the run's setting, from its checkpoint)"
        if precision != self.accelerator.mixed_precision:  # e.g. a --mixed-precision no run resumed on a GPU
            from accelerate import Accelerator
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state()  # accelerate allows one precision per process; nothing is prepared yet
            self.accelerator = Accelerator(mixed_precision=precision, cpu=self.device.type == "cpu")

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.accelerator.num_processes * self.config.gradient_accumulation_steps

    def _hyperparameters(self) -> dict:
        values = self.config.to_dict()
        values.update(
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            compiled=self.compiled,
            world_size=self.accelerator.num_processes,
            **self.data_identities,
        )
        return values

    # -----------------------------------------------------------------------------------------
    # the loop

    def train(self) -> RunState:
        with (
            self.preemption,
            Progress(
                self.total_steps, self.state.global_step, self.config.progress, self.is_main, epochs=self.config.epochs
            ) as self.progress,
            contextlib.closing(self.reporters),
            self.checkpoints,
        ):
            self._train_loop()
        return self.state

    def _train_loop(self) -> None:
        accumulation = self.config.gradient_accumulation_steps
        self.rng.apply()  # last, so nothing in setup draws from the restored streams
        self.start_step = self.state.global_step
        self.unsettled_tokens: int | torch.Tensor = 0  # a device tensor on several processes
        self.model.train()
        self.window = LogWindow()
        while not self._finished():
            self.sampler.resume_iteration()
            batches, remaining = iter(self.loader), len(self.sampler)
            while remaining and not self._finished():
                window = [next(batches) for _ in range(min(accumulation, remaining))]
                remaining -= len(window)
                self.sample_log.write(self.position.epoch, window)
                if not self._after_step(self._step(window)):
                    break  # rolled back: the iteration starts again at the position after the skip
            del batches
            if self._finished() and (verdict := self.health.flush()) is not None:
                self._roll_back(verdict)  # the last steps' verdict, read before the final save
        self.finish()

    def _after_step(self, verdict: divergence.Verdict | None) -> bool:
        """The periodic work after a step: log, evaluate, checkpoint, stop. Returns False when the run rolled
        back instead (a diverged step, or a checkpoint whose numbers are not finite)."""
        if verdict is None:
            self.maybe_log()
            self.maybe_evaluate()
            stop, save = self.checkpoints.due(self.state.global_step, self.preemption.requested)
            verdict = self.health.flush() if save else None  # a checkpoint never holds a step not yet judged
            if verdict is None:
                if save and not self.maybe_save():
                    return False
                if stop:
                    self._stop_preempted()
                return True
        self._roll_back(verdict)
        return False

    def _finished(self) -> bool:
        s, c = self.state, self.config
        if c.stop_after_steps and s.global_step - self.start_step >= c.stop_after_steps:
            return True
        return s.global_step >= self.total_steps or self.position.epoch >= c.epochs

    def _step(self, window: list[dict]) -> divergence.Verdict | None:
        loss, tokens, finite = self._step_fitting_memory(window)
        self.state.global_step += 1
        self.unsettled_tokens += tokens  # on several processes a device tensor: read when logging or saving
        self.sampler.advance(len(window))
        self.window.losses.append(loss)
        self.window.finite.append(finite)
        self.window.tokens += tokens
        self.progress.step()
        return self.health.note(
            self.state.global_step, loss, finite, (self.position.epoch, self.position.samples_in_epoch)
        )

    def _settle_tokens(self) -> None:
        """Add the target tokens of the steps since the last call to the run state (a host read)."""
        self.state.tokens_seen += int(self.unsettled_tokens)
        self.unsettled_tokens = 0

    def _step_fitting_memory(self, window: list[dict]) -> tuple[torch.Tensor, int | torch.Tensor, torch.Tensor]:
        """``_train_step`` over the micro-batches of this run's split; on a CUDA out-of-memory error the
        step is freed and retried with half the micro-batch (``--auto-micro-batch``), else the run ends.
        Any error type that reports an exhausted GPU counts (cuBLAS, cuDNN, Triton: ``oom.is_out_of_memory``)."""
        while True:
            counted = self.window.source_tokens, self.window.rows
            try:
                return self._train_step(oom.split_micro_batches(window, self.state.micro_batch_split))
            except Exception as err:  # out of memory of any type (oom.is_out_of_memory); others go on up
                if not oom.is_out_of_memory(err):
                    raise
                # handled below, outside the except: its traceback holds the step's tensors
            self.window.source_tokens, self.window.rows = counted
            self._out_of_memory()

    def _out_of_memory(self) -> None:
        oom.free_step(self.optimizer)
        if not oom.halve(self.config, self.state, self.global_batch):
            raise oom.give_up(
                self.config,
                self.state,
                self.checkpoints,
                unwrap(self.model),
                self.accelerator.mixed_precision == "bf16",
                self.gpu_free,
            )

    def _train_step(self, window: list[dict]) -> tuple[torch.Tensor, int | torch.Tensor, torch.Tensor]:
        """One optimizer step over ``window`` micro-batches; returns (mean loss tensor, global target tokens:
        an int on one process, a device tensor on several, so the step never waits on the host, and a
        device bool: the loss and gradient norm were finite, else the update was skipped)."""
        # Counted on the CPU tensors, before the device copy: no host sync.
        local_tokens = sum(int((batch["labels"] != LABEL_PAD).sum()) for batch in window)
        divisor, tokens = dist.token_divisor(self.accelerator, local_tokens)  # global tokens on N processes
        for batch in window:
            self.window.source_tokens += int(batch["attention_mask"].sum())
            self.window.rows += batch["input_ids"].shape[0]
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                loss = self._loss_sum(batch) / divisor
                if self.state.global_step + 1 in self.poisoned:
                    loss = loss * self.poison
                self.accelerator.backward(loss)
            total += loss.detach()
        self.poisoned.discard(self.state.global_step + 1)
        # The clip computes the global norm anyway; without a clip (--max-grad-norm 0) an infinite bound
        # computes it and multiplies every gradient by exactly 1.
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), limit)
        loss = dist.global_step_loss(self.accelerator, total)
        finite = divergence.step_is_finite(loss, torch.as_tensor(norm, device=loss.device))
        divergence.skip_nonfinite_update(self.optimizer.step, parts.bare(self.optimizer), finite)
        self.scheduler.step()  # a skipped step still counts: the LR stays a pure function of the step
        self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens, finite

    def _loss_sum(self, batch: dict, compiled: bool = True) -> torch.Tensor:
        """The summed cross-entropy (fp32) over ``batch``'s labelled target tokens; ``batch`` on the CPU.
        ``compiled``: through the compiled region when this session compiles (training), else eager."""
        inputs = [
            batch[k].to(self.device, non_blocking=True) for k in ("input_ids", "attention_mask", "decoder_input_ids")
        ]
        if self.head is None:  # a model without a plain linear head: the logits' cross-entropy
            targets = [batch["labels"].to(self.device, non_blocking=True)]
        else:  # the labelled positions, found on the CPU tensors (no data-dependent shape on the device)
            targets = [
                t.to(self.device, non_blocking=True) for t in lean_loss.label_positions(batch["labels"], LABEL_PAD)
            ]
        loss = self._compiled_loss if compiled and self._compiled_loss is not None else self._eager_loss
        with self.accelerator.autocast():
            return loss(*inputs, *targets)

    # -----------------------------------------------------------------------------------------
    # periodic work

    def maybe_log(self, force: bool = False) -> None:
        s, w = self.state, self.window
        if not w.losses or not (force or s.global_step % self.config.logging_steps == 0):
            return
        losses = [
            v if math.isfinite(v) else None  # JSON has no NaN: a skipped step's loss is null
            for v in torch.stack(w.losses).tolist()
        ]  # the one host sync per logging interval
        finite = torch.stack(w.finite).tolist()
        first = s.global_step - len(losses) + 1
        skipped = [first + i for i, (ok, v) in enumerate(zip(finite, losses)) if not ok or v is None]
        w.tokens = int(w.tokens)
        self._settle_tokens()
        elapsed = time.perf_counter() - w.started
        s.train_seconds += elapsed
        rows = max(w.rows, 1)
        flops = (
            train_flops(
                self.model_config,
                w.source_tokens,
                w.tokens,
                w.source_tokens / rows,
                w.tokens / rows,
                frozen_weights=bool(self.config.lora_r),
            )
            * self.accelerator.num_processes
        )
        utilisation = mfu(flops, elapsed, self.peak_flops, self.accelerator.num_processes)
        record = {
            "type": "train",
            "step": s.global_step,
            "epoch": self.position.fraction,
            "loss": _mean_finite(losses),
            "step_losses": losses,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": w.tokens / max(elapsed, 1e-9),
            "wall_tokens_per_s": w.tokens / max(time.perf_counter() - w.wall_started, 1e-9),
            "tokens": w.tokens,
            "seconds": elapsed,
            "tflops_per_s": flops / max(elapsed, 1e-9) / 1e12,
            "mfu": utilisation,
        }
        if skipped:
            record.update(skipped_steps=skipped, skipped_total=self.health.skipped_steps)
            log.warning(
                "step%s %s: the loss or gradient norm was not finite: the update was skipped (weights and "
                "optimizer moments unchanged; %d skipped in this run)",
                "s" if len(skipped) > 1 else "",
                ", ".join(map(str, skipped)),
                self.health.skipped_steps,
            )
        self.reporters.write(record)
        self.progress.report(record)
        self.window = LogWindow()

    def maybe_evaluate(self, force: bool = False) -> float | None:
        if not self.evaluation.enabled or not (force or self.state.global_step % self.config.eval_steps == 0):
            return None
        started = time.perf_counter()
        try:
            loss = self.evaluation.run(self.model, functools.partial(self._loss_sum, compiled=False))
        except EvaluationStopped as why:  # a stop signal: the checkpoint of this step comes next
            log.warning(
                "step %d: %s for %s; nothing of it recorded",
                self.state.global_step,
                why,
                self.preemption.signal_name or "a stop signal",
            )
            loss = None
        self.window.started += time.perf_counter() - started  # validation is not training: keep tokens/s true
        return loss

    def preview(self) -> tuple[int, str, str] | None:
        """(step, given ingredients, recipe) the model writes now for the first validation recipe."""
        return self.evaluation.preview(self.model)

    def final_generation(self) -> tuple[int, dict, list[dict]] | None:
        """(step, metrics, details) of the final model on the ``--eval-generate`` recipes (None: not here)."""
        return self.evaluation.final_generation(self.model)

    def maybe_save(self) -> bool:
        """Checkpoint this step (the loop asked ``checkpoints.due``: every ``--save-steps``,
        ``--save-every-minutes``, a stop signal on any process) once its weights and optimizer moments
        are known to be finite; when they are not, the run rolls back instead and this returns False."""
        weights, moments = self._numbers_finite()
        if not (weights and moments):
            what = "weights" if not weights else "optimizer moments"
            self._roll_back(
                divergence.Verdict(
                    self.state.global_step,
                    f"the {what} are not finite",
                    (self.position.epoch, self.position.samples_in_epoch),
                )
            )
            return False
        self.health_slice.numbers = (weights, moments)
        self._settle_tokens()
        self.checkpoints.save(self.state.global_step)
        return True

    def _numbers_finite(self) -> tuple[bool, bool]:
        """(every weight finite, every optimizer moment finite), the same on every process."""
        weights = divergence.numbers_finite(list(self.model.parameters()))
        moments = divergence.numbers_finite(list(divergence.optimizer_tensors(parts.bare(self.optimizer))))
        bad_weights, bad_moments = self.checkpoints.world.agree(not weights, not moments)
        return not bad_weights, not bad_moments

    # -----------------------------------------------------------------------------------------
    # rollback

    def _roll_back(self, verdict: divergence.Verdict) -> None:
        """Back to the newest healthy checkpoint before ``verdict.step``, the recipes from its position to
        the end of that step skipped; ``Diverged`` (exit 6) when rollbacks are used up or impossible."""
        self.maybe_log(force=True)
        self.health.forget_pending()
        self.checkpoints.wait()  # the newest checkpoint is committed before one is chosen
        target = None
        if self.is_main:
            target = ckmanifest.newest_healthy(self.output, before_step=verdict.step)
        target = dist.agree_on_path(self.accelerator, target)
        self.rollbacks += 1
        limit = self.health.policy.max_rollbacks
        where = (
            f"the newest healthy checkpoint is {target}: resume from it with --resume-from-checkpoint {target}"
            if target
            else "no healthy checkpoint of this run precedes it"
        )
        if target is None or self.rollbacks > limit or sharded.is_fsdp(self.accelerator):
            why = (
                "no checkpoint to roll back to"
                if target is None
                else "a run under FSDP does not roll back by itself"
                if sharded.is_fsdp(self.accelerator)
                else f"{limit} rollback{'s' if limit != 1 else ''} already (--max-rollbacks {limit})"
            )
            raise Diverged(f"the run diverged at step {verdict.step} ({verdict.reason}) and stopped: {why}; {where}")
        loaded = read_checkpoint(target)
        self.checkpoints.restore(loaded)
        self._load_weights(target)
        self.rng.apply()
        e0, s0, e1, s1 = self.position.skip_to(*verdict.position)
        self.unsettled_tokens = 0
        self.window = LogWindow()
        skipped = f"epoch {e0 + 1} sample {s0} to " + (f"sample {s1}" if e1 == e0 else f"epoch {e1 + 1} sample {s1}")
        log.warning(
            "rolled back at step %d (%s) to %s, skipping the recipes from %s; rollback %d of at most %d",
            verdict.step,
            verdict.reason,
            target.name,
            skipped,
            self.rollbacks,
            limit,
        )
        self.reporters.write(
            {
                "type": "rollback",
                "step": self.state.global_step,
                "at_step": verdict.step,
                "reason": verdict.reason,
                "checkpoint": str(target),
                "skipped": [e0, s0, e1, s1],
                "rollback": self.rollbacks,
            }
        )

    def _load_weights(self, folder: Path) -> None:
        """The weights of checkpoint ``folder`` into the model being trained (in place: the optimizer keeps
        its parameters)."""
        model = unwrap(self.model)
        if self.config.lora_r:
            lora.load_adapter(model, folder)
            return
        saved = load_model(folder)
        lean_loss.install(saved)
        with torch.no_grad():
            model.load_state_dict(saved.state_dict())

    # -----------------------------------------------------------------------------------------
    # the end

    def _stop_preempted(self) -> None:
        """Exit 75 once the stop's checkpoint is committed; exit 4 when it could not be written."""
        self.maybe_log(force=True)
        step, name = self.state.global_step, self.preemption.signal_name
        if not self.checkpoints.wait():
            raise SaveError(
                f"stopped by {name or 'a signal'} at step {step} but its checkpoint could not be saved "
                "(see the warning above)"
            )
        self.checkpoints.drain_mirror()  # a warning when it did not make it: the local checkpoint is there
        self.preemption.settled = True
        requeued = self.config.requeue_on_preemption and self.is_main and preemption.requeue_slurm_job()
        raise Preempted(
            f"{name or 'signal'} received: saved checkpoint-{step} and exited with code 75; "
            + (
                "the Slurm job is requeued and resumes with --auto-resume"
                if requeued
                else "continue with --resume-from-checkpoint latest"
            )
        )

    def finish(self) -> None:
        """Flush the last log, validate, checkpoint the final step, commit the final model for use; never
        a model whose numbers are not finite (``Diverged``, naming the newest healthy checkpoint)."""
        self.maybe_log(force=True)
        weights, moments = self._numbers_finite()
        if not weights:
            self.checkpoints.wait()
            target = ckmanifest.newest_healthy(self.output) if self.is_main else None
            raise Diverged(
                f"the final weights (step {self.state.global_step}) are not finite: no final model was "
                "saved; "
                + (
                    f"the newest healthy checkpoint is {target}"
                    if target
                    else "no healthy checkpoint of this run exists"
                )
            )
        if self.checkpoints.last_step != self.state.global_step:
            self.maybe_evaluate(force=True)
            self.health_slice.numbers = (weights, moments)
            self._settle_tokens()
            self.checkpoints.save(self.state.global_step)
        if preemption.agree(self.accelerator, self.preemption.requested)[0]:
            self._stop_preempted()  # the final model is written by the resume (it has nothing left to train)
        self.checkpoints.finish(also_lost=self.reporters.losses())

    def close(self) -> None:
        """End the loader workers and give the run folder back (after the final model is written; also
        after a failed setup or a stop). Persistent workers ignore SIGTERM (the main process decides when
        a preempted run stops), so multiprocessing's exit handler could not end them: a process whose
        trainer is still referenced (a traceback, a test) would wait for them forever at exit."""
        for loader in (getattr(self, "loader", None), getattr(self, "eval_loader", None)):
            iterator = getattr(loader, "_iterator", None)
            if loader is not None and iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None
