"""The periodic work after a step, each helper owning its "is it time?": a log line (``maybe_log``),
validation (``maybe_evaluate``), a checkpoint once its numbers are known finite (``maybe_save``)."""

from __future__ import annotations

import functools
import logging
import math
import time

import torch

from chef_genius.monitoring.flops import mfu, train_flops
from chef_genius.train.base import TrainerBase
from chef_genius.train import components as parts
from chef_genius.train import divergence
from chef_genius.train.evaluation import Stopped as EvaluationStopped


log = logging.getLogger("chef_genius")


def _mean_finite(losses: list) -> float | None:
    finite = [v for v in losses if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


class Periodic(TrainerBase):
    """The ``Trainer``'s periodic work (its attributes are declared on ``TrainerBase``, train/base.py)."""

    def maybe_log(self, force: bool = False) -> None:
        s, w = self.state, self.run.window
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
        self.run.settle_tokens()
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
        self.bar.report(record)
        self.run.new_window()

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
        self.run.window.started += time.perf_counter() - started  # validation is not training: keep tokens/s true
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
                    self.run.where,
                )
            )
            return False
        self.health_slice.numbers = (weights, moments)
        self.run.settle_tokens()
        self.checkpoints.save(self.state.global_step)
        return True

    def _numbers_finite(self) -> tuple[bool, bool]:
        """(every weight finite, every optimizer moment finite), the same on every process."""
        weights = divergence.numbers_finite(list(self.model.parameters()))
        moments = divergence.numbers_finite(list(divergence.optimizer_tensors(parts.bare(self.optimizer))))
        bad_weights, bad_moments = self.checkpoints.world.agree(not weights, not moments)
        return not bad_weights, not bad_moments
