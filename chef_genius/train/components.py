"""The trainer's pieces as the checkpoint manager sees them: each saves and restores its own slice.

The run state (``train/state.py``), the sampler's data position (``data/sampler.py``) and the
reporters (``monitoring/reporting.py``) are stateful themselves; what needs the accelerator, or a
decision on restore, is here:
- ``ModelFiles``: the weights (gathered in full under FSDP) and the tokenizer, written as
  ``save_pretrained`` writes them, each file hashed as it is written (``model/saving.py``);
  ``AdapterFiles`` for a LoRA run: the adapter and the base's record, and a merged final model;
- ``OptimizerSlice``: AdamW's moments; keyed by parameter name under FSDP; a checkpoint without them
  (or one FSDP's shards cannot take) re-warms the learning rate instead; the kernels (``fused``,
  ``foreach``, ``capturable``) stay this device's choice, not the saving device's;
- ``SchedulerSlice``: the LR schedule's position (the schedule itself is this run's);
- ``RngSlice``: the RNG of every process, given back to each at the first step (a changed world
  size reseeds instead);
- ``PositionSlice``: the sampler's position, refused under another sample order unless
  ``--allow-config-change``;
- ``SettingsSlice``: the run's settings, saved for the next resume (read before setup builds anything);
- ``HealthSlice``: the checkpoint judged by its numbers: whether its weights and optimizer moments are
  finite (checked by the trainer before each save) and the recent losses (``train/divergence.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.model import lora
from chef_genius.model.loading import unwrap
from chef_genius.model.saving import PretrainedFiles
from chef_genius.train import distributed as dist
from chef_genius.train import rng
from chef_genius.train import settings
from chef_genius.train import sharded
from chef_genius.train.schedule import Schedule, apply_lr
from chef_genius.train.state import RunState

log = logging.getLogger("chef_genius")


def bare(optimizer):
    """The torch optimizer under accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


class ModelFiles:
    def __init__(self, accelerator, model, tokenizer, source_template: str | None = None):
        self.accelerator, self.model, self.tokenizer = accelerator, model, tokenizer
        self.source_template = source_template  # written beside config.json (generation reads it)
        self._files: PretrainedFiles | None = None

    def state_dict(self) -> dict:
        if sharded.is_fsdp(self.accelerator):
            state = sharded.gather_model_state(self.accelerator, self.model)  # a collective; full on rank 0
            assert state is not None  # None only without FSDP
            return state
        return unwrap(self.model).state_dict()

    def save(self, folder, weights: dict) -> dict[str, str] | None:
        """Write the model files into ``folder``; returns the sha256 of each, computed while writing."""
        if self._files is None:
            self._files = PretrainedFiles(unwrap(self.model), self.tokenizer, self.source_template)
        return self._files.write(folder, weights)

    # the final model: the same files (a LoRA run's differ, see AdapterFiles)
    def final_state_dict(self) -> dict:
        return self.state_dict()

    def save_final(self, folder, weights: dict) -> dict[str, str] | None:
        return self.save(folder, weights)


class AdapterFiles(ModelFiles):
    """A LoRA run's files: checkpoints hold the adapter (peft's files), the base's record
    (``--pretrained-model`` and its weights' fingerprint) and the tokenizer; the final model is the
    merged one (``save_pretrained`` of the base with the adapter folded in), or with
    ``adapter_only`` the checkpoint's files."""

    def __init__(
        self, accelerator, model, tokenizer, source_template: str | None, base: dict, adapter_only: bool = False
    ):
        super().__init__(accelerator, model, tokenizer, source_template)
        self.base, self.adapter_only = base, adapter_only

    def state_dict(self) -> dict:
        return lora.adapter_state(unwrap(self.model))

    def save(self, folder, weights: dict) -> None:
        lora.save_adapter(unwrap(self.model), folder, weights)
        ckrecords.write_base(folder, self.base)
        self._save_tokenizer(folder)

    @property
    def how_to_load(self) -> str:
        if not self.adapter_only:
            return "the merged model: load it with from_pretrained"
        return (
            f"the adapter only: PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained("
            f"{self.base['pretrained_model']!r}), FOLDER), or give the folder to generate_recipe.py"
        )

    def final_state_dict(self) -> dict:
        return self.state_dict() if self.adapter_only else lora.merged_state_dict(unwrap(self.model))

    def save_final(self, folder, weights: dict) -> None:
        if self.adapter_only:
            self.save(folder, weights)
            return
        unwrap(self.model).get_base_model().save_pretrained(folder, state_dict=weights, max_shard_size="1000GB")
        self._save_tokenizer(folder)

    def _save_tokenizer(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        if self.source_template is not None:
            ckrecords.write_prompt(folder, self.source_template)


class OptimizerSlice:
    def __init__(
        self,
        accelerator,
        model,
        optimizer,
        schedule: Schedule,
        run: RunState,
        rewarm_steps: int,
        explicit=frozenset(),
        kind: str = "adamw",
    ):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.schedule, self.run, self.rewarm_steps = schedule, run, rewarm_steps
        self.explicit = explicit  # flags of the resume command: their values win over the saved param groups
        self.kind = kind  # --optimizer: a state written by another optimizer is not loaded into this one

    def state_dict(self) -> dict:
        state, layout = sharded.gather_optimizer_state(self.accelerator, self.model, bare(self.optimizer))
        return {"state": state, "layout": layout, "kind": self.kind}

    def load_state_dict(self, saved: dict) -> str:
        saved_kind = saved.get("kind") or "adamw"
        if saved["state"] and saved_kind != self.kind:
            self._rewarm()
            log.warning(
                "the checkpoint's optimizer state is %s's, this run uses --optimizer %s: its state starts "
                "fresh and the learning rate ramps back up over %d steps (--optimizer-rewarmup-steps)",
                saved_kind,
                self.kind,
                self.rewarm_steps,
            )
            return f"no {self.kind} state ({saved_kind}'s not loaded; re-warming)"
        optimizer = bare(self.optimizer)
        if saved["state"] and sharded.saved_by_name(saved["layout"]):
            with settings.explicit_optimizer_settings(optimizer, self.explicit), this_devices_kernels(optimizer):
                sharded.load_optimizer_by_name(self.model, optimizer, saved["state"])
            return "optimizer"
        if saved["state"] and not sharded.is_fsdp(self.accelerator):
            with settings.explicit_optimizer_settings(optimizer, self.explicit), this_devices_kernels(optimizer):
                optimizer.load_state_dict(saved["state"])
            return "optimizer"
        # no optimizer state, or a DDP / single-GPU one that FSDP's shards cannot take
        self._rewarm()
        log.warning(
            "the checkpoint has no optimizer state: Adam moments start fresh and the learning rate "
            "ramps back up over %d steps (--optimizer-rewarmup-steps)",
            self.rewarm_steps,
        )
        return "no optimizer state (re-warming)"

    def _rewarm(self) -> None:
        self.schedule.rewarm_from, self.schedule.rewarm_steps = self.run.global_step, self.rewarm_steps


_KERNEL_KEYS = ("fused", "foreach", "capturable")  # how torch's optimizers run a step, chosen per device


@contextlib.contextmanager
def this_devices_kernels(optimizer):
    """Loading an optimizer state brings back the saving device's kernel choice with the param groups: a
    CPU checkpoint's ``fused: None`` would make AdamW run unfused on a GPU (and a GPU's ``fused: True``
    would run CPU-fused kernels on a CPU resume). Keep what ``make_optimizer`` chose for this device."""
    fresh = [{key: group[key] for key in _KERNEL_KEYS if key in group} for group in optimizer.param_groups]
    yield
    changed = set()
    for group, values in zip(optimizer.param_groups, fresh):
        changed |= {f"{key}={group.get(key)} -> {value}" for key, value in values.items() if group.get(key) != value}
        group.update(values)
    if changed:
        log.info(
            "optimizer kernels set for this device (the checkpoint was saved on another): %s",
            ", ".join(sorted(changed)),
        )


class SchedulerSlice:
    def __init__(self, scheduler, optimizer, run: RunState, explicit=frozenset()):
        self.scheduler, self.optimizer, self.run = scheduler, optimizer, run
        self.explicit = explicit

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, saved: dict) -> str:
        # The schedule comes from the run's settings (a resume may extend --epochs), not the saved copy.
        self.scheduler.load_state_dict(
            settings.resumed_scheduler_state(saved, self.scheduler, self.run.global_step, self.explicit)
        )
        apply_lr(self.optimizer, self.scheduler)
        return f"scheduler (lr {self.scheduler.get_last_lr()[0]:.3e})"


class RngSlice:
    def __init__(self, accelerator, seed: int, run: RunState):
        self.accelerator, self.seed, self.run = accelerator, seed, run
        self.pending: dict | None = None

    def state_dict(self) -> list[dict] | None:
        return dist.gather_rng_states(self.accelerator)  # a collective; the list on rank 0

    def load_state_dict(self, per_rank: list[dict]) -> str:
        self.pending = dist.rng_for_rank(per_rank, self.accelerator, self.seed, self.run.global_step)
        return "RNG" if self.pending else "no RNG (fresh seeds)"

    def apply(self) -> None:
        """Give this process its saved streams back: last, so nothing in setup draws from them."""
        if self.pending is not None:
            rng.restore(self.pending)
            self.pending = None


class PositionSlice:
    def __init__(self, sampler, allow_change: bool):
        self.sampler, self.allow_change = sampler, allow_change

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, saved: dict) -> None:
        self.sampler.load_state_dict(saved, allow_change=self.allow_change)


class SettingsSlice:
    def __init__(self, settings: Callable[[], dict]):
        self.settings = settings

    def state_dict(self) -> dict:
        return self.settings()

    def load_state_dict(self, saved: dict) -> None:
        """Nothing to do here: a resume reads the saved settings before setup builds anything from them."""


class HealthSlice:
    def __init__(self, health):
        self.health = health  # divergence.StepHealth
        self.numbers: tuple[bool, bool] = (True, True)  # (weights, moments) finite: set before each save

    def state_dict(self) -> dict:
        weights, moments = self.numbers
        return {"weights_finite": weights, "moments_finite": moments, **self.health.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        self.health.load_state_dict(saved)


# the order of saving and restoring: the run state first (the others restore at its step)
ORDER = (
    ckstate.RUN_STATE,
    ckstate.DATA_POSITION,
    ckstate.OPTIMIZER,
    ckstate.SCHEDULER,
    ckstate.RNG,
    ckstate.REPORTING,
    ckstate.SETTINGS,
    ckstate.HEALTH,
)
