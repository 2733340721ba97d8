"""How the trainer builds a run: the checkpoint it continues and the settings that follow from it,
the model, the data, the LR schedule, the checkpoint manager with every stateful component, the
restore and the compilation. ``Trainer.setup`` calls them in order; each takes what it needs from the
steps before it."""

from __future__ import annotations

import functools
import logging
import math

import torch

from chef_genius.checkpoint import disk
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint.manager import CheckpointManager, LoadedCheckpoint, Stateful, read_checkpoint
from chef_genius.checkpoint.mirror import Mirror
from chef_genius.checkpoint.resume import resolve
from chef_genius.data.position import DataPosition
from chef_genius.errors import UserError
from chef_genius.model import lean_loss
from chef_genius.model import lora
from chef_genius.model import memory
from chef_genius.model.loading import load_model, load_tokenizer
from chef_genius.monitoring.flops import peak_flops
from chef_genius.monitoring.progress import epoch_label
from chef_genius.train.base import TrainerBase
from chef_genius.train import components as parts
from chef_genius.train import distributed as dist
from chef_genius.train import memory_plan
from chef_genius.train import settings
from chef_genius.train import sharded
from chef_genius.train.data_setup import make_data
from chef_genius.train.schedule import Schedule, make_scheduler
from chef_genius.train.step import logits_loss


log = logging.getLogger("chef_genius")


class Setup(TrainerBase):
    """The ``Trainer``'s setup steps (its attributes are declared on ``TrainerBase``, train/base.py)."""

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
        self.run.position = self.sampler.position  # one object: the sampler advances it, the run reads it
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
            ckstate.RUN_STATE: self.run,  # the run state, its unsettled tokens added first
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
            self._eager_loss = functools.partial(logits_loss, self.model)
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
