"""The training loop, and the ``Trainer`` that holds a run's parts.

The loop is below (``train``: a step, then ``_after_step``'s periodic work); the rest of the trainer
lives beside it by job, each module one part of the ``Trainer`` class: ``train/setup.py`` (building
the run), ``train/run_folder.py`` (the run folder's lock, the mirror, the settings file),
``train/step.py`` (one optimizer step, out-of-memory retries), ``train/periodic.py`` (``maybe_log``,
``maybe_evaluate``, ``maybe_save``), ``train/rollback.py`` (divergence) and ``train/ending.py`` (the
final model, a stop signal's exit, ``close``). Every attribute is declared once, typed, on ``Trainer``;
how far the run is lives in one ``RunProgress`` (``train/state.py``).

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
  that led into it (``train/rollback.py``); every checkpoint records whether its numbers are finite;
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
import logging
from pathlib import Path

import torch

from chef_genius.data import mixture
from chef_genius.data.fingerprint import content_identity, remember_across_runs
from chef_genius.errors import UserError
from chef_genius.model.loading import make_optimizer, quiet_transformers, resolve_precision, should_compile, unwrap
from chef_genius.monitoring.progress import Progress
from chef_genius.monitoring.reporting import make_reporters
from chef_genius.train import distributed as dist
from chef_genius.train import divergence
from chef_genius.train import preemption
from chef_genius.train import rng
from chef_genius.train import sharded
from chef_genius.train.config import TrainConfig
from chef_genius.train.data_setup import cache_root_of
from chef_genius.train.ending import Ending
from chef_genius.train.evaluation import Evaluation
from chef_genius.train.periodic import Periodic
from chef_genius.train.rollback import Rollback
from chef_genius.train.run_folder import RunFolder
from chef_genius.train.setup import Setup
from chef_genius.train.state import RunProgress, RunState
from chef_genius.train.step import Step

log = logging.getLogger("chef_genius")


class Trainer(Setup, RunFolder, Step, Periodic, Rollback, Ending):
    """One training session of a run. Built by ``__init__`` (the launch, the precision, the compile
    decision: no file touched), ``setup`` (everything else, in the order it lists), then ``train``
    and ``close``."""

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
        self.run = RunProgress()
        self.bar = Progress(0, enabled=False)
        self.run_lock = None
        self.preemption = preemption.Preemption()  # entered by ``train`` (and by the CLI, until the exit)
        self.data_identities = {}
        self.mirror_store = None
        self.health = divergence.StepHealth(divergence.Policy(), self.device)
        self.poisoned, self.poison = divergence.poisoned_steps()  # a test hook (see train/divergence.py)
        self.data_records = None
        self.data_sources = None

    # -----------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        """Build the run, each step from what the ones before it settled (``TrainerBase`` says which step
        sets each attribute): the run folder held, the checkpoint to continue and the final settings, the
        mirror, the model, the data, the optimizer and LR schedule, the prepared model, the checkpoint
        manager and its restore, the compiled loss; then the settings file and the data records."""
        self._hold_run_folder()
        # the data files' digests remembered by file state in the cache root: the resume's data check
        # and the sources' canonical order read no byte of an unchanged file (``fingerprint.py``)
        remember_across_runs(cache_root_of(self.config, self.output), trusted=not self.config.verify_hashes)
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

    # -----------------------------------------------------------------------------------------
    # the loop

    def train(self) -> RunState:
        with (
            self.preemption,
            Progress(
                self.total_steps, self.state.global_step, self.config.progress, self.is_main, epochs=self.config.epochs
            ) as self.bar,
            contextlib.closing(self.reporters),
            self.checkpoints,
        ):
            self._train_loop()
        return self.state

    def _train_loop(self) -> None:
        accumulation = self.config.gradient_accumulation_steps
        self.rng.apply()  # last, so nothing in setup draws from the restored streams
        self.run.start_session()
        self.model.train()
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
        if c.stop_after_steps and s.global_step - self.run.session_start >= c.stop_after_steps:
            return True
        return s.global_step >= self.total_steps or self.position.epoch >= c.epochs

    def _step(self, window: list[dict]) -> divergence.Verdict | None:
        loss, tokens, finite = self._step_fitting_memory(window)
        self.run.took_step(loss, tokens, finite)  # the tokens: on several processes a device tensor
        self.sampler.advance(len(window))
        self.bar.step()
        return self.health.note(self.run.step, loss, finite, self.run.where)
