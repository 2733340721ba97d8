"""The training loop.

Features, in the order a step meets them:
- data: tokenized once into an on-disk cache, length-grouped deterministic batches padded to a
  multiple of 8, a resumable sampler (resume = index arithmetic, no skipped batches replayed);
- precision: fp32 master weights, bf16 autocast on CUDA (never fp16: T5 overflows), TF32 matmuls;
- step: gradient accumulation with the loss normalised by the real target tokens of the whole
  optimizer step, gradient clipping, AdamW (fused on CUDA), warmup + linear / cosine / constant LR;
- periodic work (each a ``maybe_*`` helper that owns its "is it time?"): logging, validation with
  the best loss tracked, atomic checkpoints every ``--save-steps`` optimizer steps;
- resume: model, optimizer, scheduler, every RNG and the data position restored, so on CPU the
  resumed losses equal the uninterrupted run's bit for bit;
- several processes (``accelerate launch`` / ``torchrun``): DDP or FSDP through accelerate; what
  differs (padding shares, global-token loss, per-rank RNG, rank-0 saves) lives in ``distributed``
  and ``sharded``.

A resume trains with the run's settings saved in its checkpoint, the explicit flags of its command
on top (what it may change is decided in ``settings``).

Raises ``UserError`` (exit 2) for a resume that does not match its checkpoint or a run folder that a
live run holds (``checkpoint/runlock.py``; the lock is held until ``close``), ``DataError`` (exit 3)
for unusable data.
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

from chef_genius.checkpoint import format as ckpt
from chef_genius.checkpoint import disk
from chef_genius.train import preemption
from chef_genius.train import rng
from chef_genius.train import settings
from chef_genius.train import sharded
from chef_genius.train import distributed as dist
from chef_genius.checkpoint.async_writer import AsyncCheckpointer
from chef_genius.checkpoint.runlock import RunLock
from chef_genius.train.config import TrainConfig
from chef_genius.errors import DataError, Preempted, SaveError, UserError
from chef_genius.data.tokenized import LABEL_PAD, Collator, RecipeDataset, load_tokenized, split_indices
from chef_genius.model.generation import eval_samples
from chef_genius.monitoring.metrics import MetricsLog
from chef_genius.checkpoint.retention import apply_retention
from chef_genius.model.loading import (load_model, load_tokenizer, make_optimizer, quiet_transformers, resolve_precision,
                       should_compile, unwrap)
from chef_genius.monitoring.progress import Progress
from chef_genius.monitoring.reporting import Reporters, open_reporters
from chef_genius.monitoring.flops import mfu, peak_flops, train_flops
from chef_genius.checkpoint.resume import data_identity, resolve
from chef_genius.data.sampler import ResumableBatchSampler
from chef_genius.train.schedule import Schedule, apply_lr, make_scheduler
from chef_genius.train.state import RunState

log = logging.getLogger("chef_genius")


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        self.config = config
        self.output = Path(config.model_output)
        quiet_transformers()
        probe = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.accelerator = Accelerator(mixed_precision=resolve_precision(config.mixed_precision, probe),
                                       cpu=probe.type == "cpu")
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        dist.check_launch(self.accelerator, fsdp_requested=sharded.fsdp_requested())
        dist.quiet_other_ranks(self.accelerator)
        self.sample_log = dist.SampleLog.from_env(self.accelerator.process_index)
        self.state = RunState()
        self.metrics = Reporters(MetricsLog(self.output / "metrics.jsonl", enabled=self.is_main))
        self.progress = Progress(0, enabled=False)
        self.last_saved_step: int | None = None
        self.resumed_from: Path | None = None
        self.saver = AsyncCheckpointer() if config.async_save else None
        self.run_lock: RunLock | None = None
        self._window_counts = [0, 0]  # source tokens and rows of the logging window (for FLOPs)

    # -----------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        c = self.config
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.is_main:  # one run per run folder: refused (exit 2) while a live run holds it
            disk.prepare_output(self.output)
            self.run_lock = RunLock(self.output).acquire()
            self.run_lock.remove_leftovers()
        self.resumed_from = dist.agree_on_path(
            self.accelerator, resolve(c.resume_from_checkpoint, c.auto_resume, self.output, c.verify_hashes))
        saved = ckpt.load_training_state(self.resumed_from) if self.resumed_from else None
        command = c
        self.config = c = settings.settle(command, saved, self.resumed_from)
        self._adopt_settings(command)
        rng.seed_everything(dist.rank_seed(c.seed, self.accelerator.process_index))

        self.tokenizer = load_tokenizer(str(self.resumed_from or c.pretrained_model))
        model = load_model(self.resumed_from or c.pretrained_model)
        if c.gradient_checkpointing:
            model.config.use_cache = False
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model_config = model.config
        self.peak_flops = peak_flops(self.device, self.accelerator.mixed_precision)
        self._setup_data()

        compile_model, why = should_compile(c.compile, self.device)
        log.info("torch.compile %s", why)
        self.optimizer = make_optimizer(model, c.learning_rate, c.weight_decay, self.device)
        model.to(self.device)
        self.steps_per_epoch = math.ceil(self.sampler.micro_batches_per_epoch() / c.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * c.epochs
        if saved is not None and dist.saved_world_size(saved) != self.accelerator.num_processes:
            position = saved.get("data_position") or {}
            self.total_steps = dist.planned_total_steps(
                saved["global_step"], position.get("epoch", 0), position.get("samples_in_epoch", 0),
                len(self.train_data), self.sampler.global_batch_size, c.gradient_accumulation_steps, c.epochs)
        if c.max_steps:
            self.total_steps = min(self.total_steps, c.max_steps)
        self.schedule = Schedule(c.warmup_steps, self.total_steps, c.lr_scheduler)
        self.scheduler = make_scheduler(self.optimizer, self.schedule)
        if saved is not None:
            self._restore(saved)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if getattr(self, "_optimizer_by_name", None):
            with settings.explicit_optimizer_settings(_bare(self.optimizer), c.explicit):
                sharded.load_optimizer_by_name(self.model, _bare(self.optimizer), self._optimizer_by_name)
            apply_lr(self.optimizer, self.scheduler)
        if compile_model:
            self.model = torch.compile(self.model, dynamic=True)
        self.checkpoint_bytes = disk.estimate_checkpoint_bytes(
            disk.model_tensors(model), extra_bytes=disk.tokenizer_bytes(self.resumed_from or c.pretrained_model))
        if self.is_main:
            self._check_space_before_training()
        log.info("%d training and %d validation recipes; %d optimizer steps per epoch, %d in total; "
                 "global batch %d (%d per device x %d processes x %d accumulation)",
                 len(self.train_data), len(self.eval_data) if self.eval_data else 0, self.steps_per_epoch,
                 self.total_steps, self.global_batch, c.batch_size, self.accelerator.num_processes,
                 c.gradient_accumulation_steps)
        self.metrics = open_reporters(c, self.output, self.is_main, self.state.global_step, self.resumed_from, saved)

    def _adopt_settings(self, command: TrainConfig) -> None:
        """Redo what ``__init__`` built from the ``command`` line where the resumed run's settings differ."""
        c = self.config
        precision = self.accelerator.mixed_precision
        if c.mixed_precision != command.mixed_precision:
            precision = resolve_precision(c.mixed_precision, self.device)
        if precision != self.accelerator.mixed_precision:  # e.g. a --mixed-precision no run resumed on a GPU
            from accelerate import Accelerator
            from accelerate.state import AcceleratorState
            AcceleratorState._reset_state()  # accelerate allows one precision per process; nothing is prepared yet
            self.accelerator = Accelerator(mixed_precision=precision, cpu=self.device.type == "cpu")
        if c.async_save != command.async_save:
            self.saver = AsyncCheckpointer() if c.async_save else None

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.accelerator.num_processes * self.config.gradient_accumulation_steps

    def _setup_data(self) -> None:
        c = self.config
        cache_root = Path(c.cache_dir) if c.cache_dir else self.output.parent / ".cache" / "tokenized"
        if c.streaming:
            return self._setup_streaming(cache_root)
        with self.accelerator.main_process_first(), _cache_errors(cache_root):
            train = load_tokenized(c.data, self.tokenizer, c.max_source_length, c.max_target_length,
                                   cache_root, c.num_proc)
            evald = (load_tokenized(c.eval_data, self.tokenizer, c.max_source_length, c.max_target_length,
                                    cache_root, c.num_proc) if c.eval_data else None)
        log.info("data %s: %s%s", c.data, _stats_line(train.stats), " (cached)" if train.from_cache else "")
        if evald is not None:
            self.train_data = RecipeDataset(train.dataset)
            self.eval_data = RecipeDataset(evald.dataset)
        else:
            train_idx, eval_idx = split_indices(len(train.dataset), c.eval_split_ratio, c.seed)
            self.train_data = RecipeDataset(train.dataset, train_idx)
            self.eval_data = RecipeDataset(train.dataset, eval_idx) if len(eval_idx) else None
        lengths = self.train_data.lengths() if c.group_by_length else None
        self.sampler = ResumableBatchSampler(len(self.train_data), c.batch_size, c.seed, lengths,
                                             c.length_group_size, self.accelerator.num_processes,
                                             self.accelerator.process_index)
        collate = Collator(self.tokenizer.pad_token_id, decoder_start_token_id=self._decoder_start())
        collate = dist.ShareCollator(collate, LABEL_PAD)  # padding rows of short last batches, sample indices
        workers = c.dataloader_num_workers
        common = dict(collate_fn=collate, num_workers=workers, pin_memory=self.device.type == "cuda",
                      persistent_workers=workers > 0)
        # A private generator: the loader's worker seeds must not draw from the global RNG, or a
        # resumed run would see a different dropout stream than the uninterrupted one.
        if workers:
            common["worker_init_fn"] = preemption.ignore_in_worker
        self.loader = torch.utils.data.DataLoader(dist.ShareDataset(self.train_data), batch_sampler=self.sampler,
                                                  generator=torch.Generator().manual_seed(c.seed), **common)
        self.eval_loader = None
        if self.eval_data is not None:
            eval_sampler = ResumableBatchSampler(len(self.eval_data), c.batch_size, c.seed,
                                                 self.eval_data.lengths(), len(self.eval_data),
                                                 self.accelerator.num_processes, self.accelerator.process_index)
            self.eval_loader = torch.utils.data.DataLoader(
                dist.ShareDataset(self.eval_data), batch_sampler=eval_sampler,
                generator=torch.Generator().manual_seed(c.seed), **common)

    def _setup_streaming(self, cache_root: Path) -> None:
        """--streaming: read and tokenize the training file on the fly (see chef_genius/data/streaming.py)."""
        from chef_genius.data.streaming import StreamingDataset, StreamingRows, StreamingSampler, count_rows
        c = self.config
        with self.accelerator.main_process_first():
            rows = count_rows(c.data, cache_root)
            evald = (load_tokenized(c.eval_data, self.tokenizer, c.max_source_length, c.max_target_length,
                                    cache_root, c.num_proc) if c.eval_data else None)
        if rows == 0:
            raise DataError(f"{c.data}: no usable recipe in the file")
        log.info("streaming %s: %d usable recipes, tokenized as they are read (no cache)", c.data, rows)
        self.train_data = StreamingRows(rows)
        self.sampler = StreamingSampler(rows, c.batch_size, c.seed, c.length_group_size,
                                        self.accelerator.num_processes, self.accelerator.process_index)
        collate = Collator(self.tokenizer.pad_token_id, decoder_start_token_id=self._decoder_start())
        stream = StreamingDataset(c.data, self.tokenizer, c.max_source_length, c.max_target_length, self.sampler,
                                  collate)
        # A private generator, as in the cached path: worker seeds must not draw from the global RNG.
        self.loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=min(1, c.dataloader_num_workers),
                                                  pin_memory=self.device.type == "cuda",
                                                  generator=torch.Generator().manual_seed(c.seed))
        self.eval_data = RecipeDataset(evald.dataset) if evald is not None else None
        self.eval_loader = None
        if self.eval_data is not None:
            eval_sampler = ResumableBatchSampler(len(self.eval_data), c.batch_size, c.seed, self.eval_data.lengths(),
                                                 len(self.eval_data), self.accelerator.num_processes,
                                                 self.accelerator.process_index)
            self.eval_loader = torch.utils.data.DataLoader(self.eval_data, batch_sampler=eval_sampler,
                                                           collate_fn=collate, pin_memory=self.device.type == "cuda")

    def _decoder_start(self) -> int:
        from transformers import AutoConfig
        source = self.resumed_from or self.config.pretrained_model
        value = AutoConfig.from_pretrained(source).decoder_start_token_id
        return self.tokenizer.pad_token_id if value is None else value

    def _restore(self, saved: dict) -> None:
        c = self.config
        self.state = RunState.from_dict(saved.get("run_state") or {"global_step": saved["global_step"]})
        position = saved.get("data_position") or {}
        self.state.epoch = position.get("epoch", self.state.epoch)
        self.state.samples_in_epoch = position.get("samples_in_epoch", self.state.samples_in_epoch)
        if position.get("num_samples") not in (None, len(self.train_data)):
            log.warning("the training split has %d recipes, the checkpoint's had %d",
                        len(self.train_data), position["num_samples"])
        restored = []
        self._optimizer_by_name = None
        if saved.get("optimizer_state_dict") and sharded.saved_by_name(saved):
            self._optimizer_by_name = saved["optimizer_state_dict"]  # loaded after prepare (FSDP)
            restored.append("optimizer")
        elif saved.get("optimizer_state_dict") and not sharded.is_fsdp(self.accelerator):
            with settings.explicit_optimizer_settings(self.optimizer, c.explicit):
                self.optimizer.load_state_dict(saved["optimizer_state_dict"])
            restored.append("optimizer")
        else:  # no optimizer state, or a DDP / single-GPU one that FSDP's shards cannot take
            self.schedule.rewarm_from = self.state.global_step
            self.schedule.rewarm_steps = c.optimizer_rewarmup_steps
            log.warning("the checkpoint has no optimizer state: Adam moments start fresh and the learning rate "
                        "ramps back up over %d steps (--optimizer-rewarmup-steps)", c.optimizer_rewarmup_steps)
        self.scheduler.load_state_dict(settings.resumed_scheduler_state(
            saved.get("scheduler_state_dict"), self.scheduler, self.state.global_step, c.explicit))
        apply_lr(self.optimizer, self.scheduler)
        restored.append(f"scheduler (lr {self.scheduler.get_last_lr()[0]:.3e})")
        self._saved_rng = dist.rng_for_rank(saved, self.accelerator, c.seed)
        restored.append("RNG" if self._saved_rng else "no RNG (fresh seeds)")
        self.last_saved_step = self.state.global_step
        threads = saved.get("torch_num_threads")
        if threads and threads != torch.get_num_threads():
            log.warning("the checkpoint was written with %d torch threads, this run has %d: CPU losses will not "
                        "be bitwise equal to an uninterrupted run", threads, torch.get_num_threads())
        log.info("resumed from %s: step %d, epoch %d, sample %d of %d; restored %s", self.resumed_from,
                 self.state.global_step, self.state.epoch + 1, self.state.samples_in_epoch, len(self.train_data),
                 ", ".join(restored))

    # -----------------------------------------------------------------------------------------
    # the loop

    def train(self) -> RunState:
        with preemption.Preemption() as self.preemption, \
                Progress(self.total_steps, self.state.global_step, self.config.progress, self.is_main) as self.progress, \
                contextlib.closing(self.metrics):
            return self._train_loop()

    def _train_loop(self) -> RunState:
        c = self.config
        s = self.state
        if getattr(self, "_saved_rng", None):
            rng.restore(self._saved_rng)  # last, so nothing in setup draws from the restored streams
        self.start_step = s.global_step
        self.model.train()
        self._window_start = time.perf_counter()
        self._window_tokens = 0
        self._window_losses = []
        self._last_save_clock = time.monotonic()
        self._last_save_ok = True
        while not self._finished():
            self.sampler.set_position(s.epoch, s.samples_in_epoch)
            batches = iter(self.loader)
            remaining = len(self.sampler)
            while remaining and not self._finished():
                window = [next(batches) for _ in range(min(c.gradient_accumulation_steps, remaining))]
                remaining -= len(window)
                self.sample_log.write(s.epoch, window)
                loss, tokens = self._train_step(window)
                s.global_step += 1
                self.progress.step()
                s.tokens_seen += tokens
                s.samples_in_epoch = min(len(self.train_data),
                                         s.samples_in_epoch + len(window) * self.sampler.global_batch_size)
                if s.samples_in_epoch >= len(self.train_data):
                    s.epoch, s.samples_in_epoch = s.epoch + 1, 0
                self._window_losses.append(loss)
                self._window_tokens += tokens
                self.maybe_log()
                self.maybe_evaluate()
                stop, clock_due = preemption.agree(self.accelerator, self.preemption.requested,
                                                   self._save_clock_due())
                self.maybe_save(force=clock_due or stop)
                if stop:
                    self._stop_preempted()
            del batches
        self.finish()
        return s

    def _finished(self) -> bool:
        s, c = self.state, self.config
        if c.stop_after_steps and s.global_step - self.start_step >= c.stop_after_steps:
            return True
        return s.global_step >= self.total_steps or s.epoch >= c.epochs

    def _train_step(self, window: list[dict]) -> tuple[torch.Tensor, int]:
        """One optimizer step over ``window`` micro-batches; returns (mean loss tensor, target tokens)."""
        # Counted on the CPU tensors, before the device copy: no host sync.
        tokens = sum(int((batch["labels"] != LABEL_PAD).sum()) for batch in window)
        divisor, tokens = dist.token_divisor(self.accelerator, tokens)  # global tokens on N processes
        counts = self._window_counts
        for batch in window:
            counts[0] += int(batch["attention_mask"].sum())
            counts[1] += batch["input_ids"].shape[0]
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(window):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                with self.accelerator.autocast():
                    logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        decoder_input_ids=batch["decoder_input_ids"]).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                       ignore_index=LABEL_PAD, reduction="sum") / divisor
                self.accelerator.backward(loss)
            total += loss.detach()
        if self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return dist.global_step_loss(self.accelerator, total), tokens

    # -----------------------------------------------------------------------------------------
    # periodic work

    def maybe_log(self, force: bool = False) -> None:
        s = self.state
        if not self._window_losses or not (force or s.global_step % self.config.logging_steps == 0):
            return
        losses = torch.stack(self._window_losses).tolist()  # the one host sync per logging interval
        elapsed = time.perf_counter() - self._window_start
        s.train_seconds += elapsed
        src_tokens, rows = self._window_counts[0], max(self._window_counts[1], 1)
        flops = train_flops(self.model_config, src_tokens, self._window_tokens, src_tokens / rows,
                            self._window_tokens / rows) * self.accelerator.num_processes
        utilisation = mfu(flops, elapsed, self.peak_flops, self.accelerator.num_processes)
        record = {"type": "train", "step": s.global_step, "epoch": s.epoch + s.samples_in_epoch / len(self.train_data),
                  "loss": sum(losses) / len(losses), "step_losses": losses,
                  "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": self._window_tokens / max(elapsed, 1e-9),
                  "tokens": self._window_tokens, "seconds": elapsed,
                  "tflops_per_s": flops / max(elapsed, 1e-9) / 1e12, "mfu": utilisation}
        self.metrics.write(record)
        self.progress.report(record)
        self._window_losses, self._window_tokens, self._window_counts = [], 0, [0, 0]
        self._window_start = time.perf_counter()

    def maybe_evaluate(self, force: bool = False) -> float | None:
        s = self.state
        if self.eval_loader is None or not (force or s.global_step % self.config.eval_steps == 0):
            return None
        started = time.perf_counter()
        loss = self.evaluate()
        improved = s.best_loss is None or loss < s.best_loss
        if improved:
            s.best_loss, s.best_step = loss, s.global_step
        self.metrics.write({"type": "eval", "step": s.global_step, "eval_loss": loss, "best_loss": s.best_loss,
                            "best_step": s.best_step})
        if self.is_main:
            log.info("step %d validation loss %.4f%s", s.global_step, loss, " (best)" if improved else "")
        self.log_samples()
        self._window_start += time.perf_counter() - started  # validation is not training: keep tokens/s true
        return loss

    def log_samples(self) -> None:
        """A few greedy recipes from fixed ingredient lists (main process; training RNG untouched)."""
        if not self.is_main or not self.config.eval_samples:
            return
        samples = eval_samples(unwrap(self.model), self.tokenizer, self.device, self.config.eval_samples,
                               self.accelerator.autocast)
        self.metrics.write({"type": "samples", "step": self.state.global_step, "samples": samples})
        for sample in samples:
            log.info("sample at step %d from %s: %s", self.state.global_step, sample["ingredients"],
                     sample["text"][:300])

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        tokens = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in self.eval_loader:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.accelerator.autocast():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    decoder_input_ids=batch["decoder_input_ids"]).logits
            loss_sum += F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                        ignore_index=LABEL_PAD, reduction="sum")
            tokens += (batch["labels"] != LABEL_PAD).sum()
        loss_sum, tokens = self.accelerator.reduce(loss_sum), self.accelerator.reduce(tokens)
        self.model.train()
        return (loss_sum / tokens.clamp(min=1)).item()

    def _save_clock_due(self) -> bool:
        minutes = self.config.save_every_minutes
        return bool(minutes) and time.monotonic() - self._last_save_clock >= 60 * minutes

    def _stop_preempted(self) -> None:
        s = self.state
        self.maybe_log(force=True)
        if not self._last_save_ok:
            raise SaveError(f"stopped by {self.preemption.signal_name or 'a signal'} at step {s.global_step} "
                            "but its checkpoint could not be saved (see the warning above)")
        raise Preempted(f"{self.preemption.signal_name or 'signal'} received: saved checkpoint-{s.global_step} "
                        "and exited with code 75; continue with --resume-from-checkpoint latest")

    def maybe_save(self, force: bool = False) -> Path | None:
        s = self.state
        if self.saver is not None:
            self.saver.check()  # a failed background save stops the run here, not silently
        if not (force or s.global_step % self.config.save_steps == 0) or self.last_saved_step == s.global_step:
            return None
        return self.save_checkpoint()

    def save_checkpoint(self) -> Path | None:
        s = self.state
        # collectives first (every rank is here): RNG of each rank, and under FSDP the full state dicts
        rng_per_rank = dist.gather_rng_states(self.accelerator)
        optimizer_state, layout = sharded.gather_optimizer_state(self.accelerator, self.model, _bare(self.optimizer))
        model_state = sharded.gather_model_state(self.accelerator, self.model)
        state = ckpt.make_training_state(
            s, self._data_position(), optimizer_state, self.scheduler.state_dict(),
            rng_per_rank[0] if rng_per_rank else None, self._hyperparameters(),
            extra={ckpt.RNG_PER_RANK: rng_per_rank, **layout, **self.metrics.checkpoint_extra()})
        path = None
        if self.saver is not None:
            return self._save_async(state)
        if self.is_main:
            started = time.perf_counter()
            save_model = functools.partial(self._save_model, state_dict=model_state)
            path = disk.guarded_save(lambda: ckpt.write_checkpoint(self.output, s.global_step, save_model, state),
                                     self.output, s.global_step, self.checkpoint_bytes, self.config.on_save_error)
            if path is not None:
                log.info("saved %s in %.1fs", path.name, time.perf_counter() - started)
                self._after_commit(path)
        self.accelerator.wait_for_everyone()
        self._last_save_clock = time.monotonic()
        # every rank moves on alike (a failed save under --on-save-error continue is not retried)
        self.last_saved_step = s.global_step
        self._last_save_ok = path is not None or not self.is_main
        return path

    def _after_commit(self, path: Path) -> None:
        """Learn the real checkpoint size, then apply --save-total-limit (only now: the new one is safe)."""
        manifest = ckpt.read_manifest(path) or {"files": {}}
        actual = sum(entry.get("size", 0) for entry in manifest["files"].values())
        self.checkpoint_bytes = max(self.checkpoint_bytes, actual)
        apply_retention(self.output, self.config.save_total_limit, self.state.best_step, [self.resumed_from])

    def _check_space_before_training(self) -> None:
        c = self.config
        saves = max(1, (self.total_steps - self.state.global_step) // c.save_steps + 1)
        if c.save_total_limit:
            saves = min(saves, c.save_total_limit + 2)  # newest K, the best, and the one being written
        disk.preflight(self.output, self.checkpoint_bytes, saves)

    def _save_async(self, state: dict) -> Path | None:
        """Copy weights and state to CPU buffers now; write them in the background (--async-save)."""
        step = self.state.global_step
        path = None
        if self.is_main:
            started = time.perf_counter()
            weights = self.saver.snapshot(unwrap(self.model).state_dict(), "model")
            state = self.saver.snapshot(state, "state")
            path = ckpt.checkpoint_path(self.output, step)
            log.info("copied checkpoint-%d to CPU memory in %.2fs; writing it in the background", step,
                     time.perf_counter() - started)

            def write():
                began = time.perf_counter()
                ckpt.write_checkpoint(self.output, step, lambda folder: self._save_model(folder, weights), state)
                log.info("saved %s in %.1fs (background)", path.name, time.perf_counter() - began)

            self.saver.submit(write, path.name)
        self.accelerator.wait_for_everyone()
        self._last_save_clock = time.monotonic()
        self.last_saved_step = step
        self._last_save_ok = True  # a failed background write stops the run at the next saver.check()
        return path

    def _save_model(self, folder: Path, state_dict: dict | None = None) -> None:
        unwrap(self.model).save_pretrained(folder, state_dict=state_dict, max_shard_size="1000GB")
        self.tokenizer.save_pretrained(folder)

    def _data_position(self) -> dict:
        c = self.config
        return {"epoch": self.state.epoch, "samples_in_epoch": self.state.samples_in_epoch,
                "sampler_seed": c.seed, "num_samples": len(self.train_data), "group_by_length": c.group_by_length,
                "length_group_size": c.length_group_size}

    def _hyperparameters(self) -> dict:
        values = self.config.to_dict()
        values.update(steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                      world_size=self.accelerator.num_processes, data_identity=data_identity(self.config.data),
                      eval_data_identity=data_identity(self.config.eval_data))
        return values

    def finish(self) -> None:
        """Flush the last log, validate, checkpoint the final step and save the model for use."""
        self.maybe_log(force=True)
        if self.last_saved_step != self.state.global_step:
            self.maybe_evaluate(force=True)
            self.save_checkpoint()
        model_state = sharded.gather_model_state(self.accelerator, self.model)  # FSDP: a collective
        if self.saver is not None:
            self.saver.release()  # the run ends only once its last checkpoint is on disk
        if self.is_main:
            try:
                self._save_final(model_state)
            except OSError as err:
                raise SaveError(f"the final model could not be written to {self.output} "
                                f"({err.strerror or type(err).__name__}); the checkpoints are intact") from None

    def _save_final(self, model_state: dict | None = None) -> None:
        """``save_pretrained`` into MODEL_OUTPUT, file by file atomically, so the folder always loads."""
        staging = ckpt.staging_path(self.output, "final")
        staging.mkdir()
        try:
            self._save_model(staging, model_state)
            for path in staging.iterdir():
                ckpt.fsync_file(path)
                ckpt.retry_os(lambda p=path: p.replace(self.output / p.name))
            ckpt.fsync_dir(self.output)
        finally:
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
        log.info("final model saved to %s (load it with from_pretrained)", self.output)

    def close(self) -> None:
        """Give the run folder back; while a background save still writes, that happens at process exit."""
        if self.run_lock is not None and not (self.saver is not None and self.saver.in_flight):
            self.run_lock.release()


@contextlib.contextmanager
def _cache_errors(cache_root: Path):
    try:
        yield
    except OSError as err:
        where = Path(err.filename) if err.filename else cache_root
        reason = err.strerror or type(err).__name__
        if where == cache_root or cache_root in where.parents or not where.exists():
            raise UserError(f"cannot write the tokenized-data cache at {where} ({reason}); "
                            "pass a writable --cache-dir") from None
        raise DataError(f"cannot read {where} ({reason})") from None


def _bare(optimizer):
    """The torch optimizer under accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _stats_line(stats: dict) -> str:
    skipped = stats.get("skipped") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    return f"{stats.get('kept')} of {stats.get('rows')} rows used" + (f"; skipped {reasons}" if reasons else "")
