"""The trainer's side of divergence (``train/divergence.py`` judges the steps): back to the newest
healthy checkpoint before a diverged step, skipping the recipes that led into it, or ``Diverged``
(exit 6) when rollbacks are used up or impossible."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint.manager import read_checkpoint
from chef_genius.errors import Diverged
from chef_genius.model import lean_loss
from chef_genius.model import lora
from chef_genius.model.loading import load_model, unwrap
from chef_genius.train.base import TrainerBase
from chef_genius.train import distributed as dist
from chef_genius.train import divergence
from chef_genius.train import sharded


log = logging.getLogger("chef_genius")


class Rollback(TrainerBase):
    """The ``Trainer``'s rollback (its attributes are declared on ``TrainerBase``, train/base.py)."""

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
        self.run.rollbacks += 1
        limit = self.health.policy.max_rollbacks
        where = (
            f"the newest healthy checkpoint is {target}: resume from it with --resume-from-checkpoint {target}"
            if target
            else "no healthy checkpoint of this run precedes it"
        )
        if target is None or self.run.rollbacks > limit or sharded.is_fsdp(self.accelerator):
            why = (
                "no checkpoint to roll back to"
                if target is None
                else "a run under FSDP does not roll back by itself"
                if sharded.is_fsdp(self.accelerator)
                else f"{limit} rollback{'s' if limit != 1 else ''} already (--max-rollbacks {limit})"
            )
            raise Diverged(f"the run diverged at step {verdict.step} ({verdict.reason}) and stopped: {why}; {where}")
        loaded = read_checkpoint(target)
        self.checkpoints.restore(loaded)  # the run's progress too: a new log window, nothing unsettled
        self._load_weights(target)
        self.rng.apply()
        e0, s0, e1, s1 = self.position.skip_to(*verdict.position)
        skipped = f"epoch {e0 + 1} sample {s0} to " + (f"sample {s1}" if e1 == e0 else f"epoch {e1 + 1} sample {s1}")
        log.warning(
            "rolled back at step %d (%s) to %s, skipping the recipes from %s; rollback %d of at most %d",
            verdict.step,
            verdict.reason,
            target.name,
            skipped,
            self.run.rollbacks,
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
                "rollback": self.run.rollbacks,
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
