"""Evaluation during training: the validation loss, the recipe metrics of generated recipes, the best
checkpoint's choice, and the sample recipes in the log.

Every ``--eval-steps`` (and at the end) the trainer calls ``Evaluation.run``. Generation is greedy and
runs on the main process only, inside ``rng.isolated()``: whatever it draws from any RNG stream
(python, numpy, torch, CUDA) is undone, so training continues as if no evaluation had run and a
resumed run stays bit-identical to an uninterrupted one.

Under FSDP no process holds the whole model and every forward gathers the shards from all of them,
so a generation on the main process alone would wait for the others forever. There every process
makes the same generation calls on the same recipes, synced (``generation.generate_texts``), each
inside its own ``rng.isolated()``; only the main process logs, writes and keeps what they return.

A stop signal abandons an evaluation: ``stop_requested`` is read between validation batches, after
every generated token (a stopping criterion ends the ``generate`` call) and after each generation
batch (agreed over the processes wherever they all take part, so they all leave at the same batch),
and ``Stopped`` is raised; nothing of the abandoned evaluation is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from chef_genius.data.tokenized import LABEL_PAD
from chef_genius.evaluation.heldout import HeldOut, evaluate_model, held_out
from chef_genius.evaluation.metrics import HIGHER_IS_BETTER
from chef_genius.model.generation import eval_samples
from chef_genius.model.loading import unwrap
from chef_genius.monitoring.progress import CountProgress
from chef_genius.train import distributed as dist
from chef_genius.train import preemption
from chef_genius.train import rng
from chef_genius.train import sharded

log = logging.getLogger("chef_genius")


class Stopped(Exception):
    """The evaluation was abandoned for a stop signal (``Evaluation.stop_requested``)."""


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (eval_loss, invented_ingredients, repetition: lower)."""
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER.get(metric, False) else value < best


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in metrics.items() if name in HIGHER_IS_BETTER)


class Evaluation:
    """What one run evaluates on: its validation split and loader, the ``--eval-generate`` recipes, the
    fixed sample ingredient lists; the results go to the reporters and the best step to ``state``."""

    def __init__(
        self,
        config,
        accelerator,
        tokenizer,
        eval_data,
        eval_loader,
        reporters,
        state,
        stop_requested: Callable[[], bool] | None = None,
    ):
        self.config, self.accelerator, self.tokenizer = config, accelerator, tokenizer
        self.stop_requested = stop_requested  # this process's stop flag (a signal); None: never stops
        self.eval_data, self.eval_loader = eval_data, eval_loader
        self.reporters, self.state = reporters, state
        self.device = accelerator.device
        self.is_main = accelerator.is_main_process
        self.synced = sharded.is_fsdp(accelerator)  # every process joins each generation
        # the held-out recipes scored at every evaluation (chosen once), and the newest scoring
        self.generation_set: list[HeldOut] | None = None
        self.last_generation: tuple[int, dict, list[dict]] | None = None  # (step, metrics, details)

    @property
    def enabled(self) -> bool:
        return self.eval_loader is not None

    @property
    def generates(self) -> bool:
        """Whether this process runs the generation: the main one, and under FSDP every one."""
        return self.is_main or self.synced

    def _stopping(self, everyone: bool = True) -> bool:
        """Whether to abandon now; ``everyone``: agreed over the processes (they all run this batch)."""
        if self.stop_requested is None:
            return False
        if everyone:
            return preemption.agree(self.accelerator, self.stop_requested())[0]
        return self.stop_requested()

    def run(self, model, loss_sum: Callable[[dict], torch.Tensor]) -> float:
        """One evaluation: validation loss, recipe metrics, the best step, sample recipes; returns the loss.
        Raises ``Stopped`` (the model back in training mode) when a stop signal abandons it."""
        s, c = self.state, self.config
        loss = self.validation_loss(model, loss_sum)
        generation = self.log_generation(model)
        value = loss if c.metric_for_best == "eval_loss" else (generation or {}).get(c.metric_for_best)
        improved = value is not None and is_better(c.metric_for_best, value, self._best_value())
        if improved:
            s.best_loss, s.best_step, s.best_value = loss, s.global_step, value
        self.reporters.write(
            {
                "type": "eval",
                "step": s.global_step,
                "eval_loss": loss,
                "best_loss": s.best_loss,
                "best_step": s.best_step,
                "metric_for_best": c.metric_for_best,
                "best_value": s.best_value,
            }
        )
        if self.is_main:
            best = (
                ""
                if not improved
                else (" (best)" if c.metric_for_best == "eval_loss" else f" (best {c.metric_for_best} {value:.4f})")
            )
            log.info("step %d validation loss %.4f%s", s.global_step, loss, best)
        self.log_samples(model)
        return loss

    @torch.no_grad()
    def validation_loss(self, model, loss_sum: Callable[[dict], torch.Tensor]) -> float:
        """The mean cross-entropy per real target token over the validation loader (every process)."""
        model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        tokens = torch.zeros((), device=self.device, dtype=torch.float64)
        try:
            with CountProgress(
                "validation", len(self.eval_loader), self.config.progress, self.is_main, unit="batch"
            ) as progress:
                for done, batch in enumerate(self.eval_loader, 1):
                    if self._stopping():
                        raise Stopped(f"validation abandoned after {done - 1} of {len(self.eval_loader)} batches")
                    total += loss_sum(batch)
                    tokens += int((batch["labels"] != LABEL_PAD).sum())  # counted on the CPU tensor
                    progress.update(done)
            total, tokens = self.accelerator.reduce(total), self.accelerator.reduce(tokens)
        finally:
            model.train()
        return (total / tokens.clamp(min=1)).item()

    def _best_value(self) -> float | None:
        s = self.state
        if s.best_value is None and self.config.metric_for_best == "eval_loss":
            return s.best_loss  # a checkpoint from before --metric-for-best kept only the loss
        return s.best_value

    def log_generation(self, model) -> dict | None:
        """Recipe metrics of greedy recipes for the first ``--eval-generate`` validation recipes (written on
        the main process, then given to every process so they agree on the best step)."""
        c = self.config
        if not c.eval_generate or self.eval_data is None:
            return None
        if self.generation_set is None:
            self.generation_set = held_out(self.eval_data, self.tokenizer, c.eval_generate, c.source_template)
        metrics, stopped = None, None
        if self.generates:
            try:
                metrics, details = self.score_generation(model)
                # kept on every generating process: final_generation's choice to generate again must agree
                self.last_generation = (self.state.global_step, metrics, details)
            except Stopped as err:
                stopped = str(err)
        # the main process may stop alone (it generates alone): the others learn it here, not by waiting
        metrics, stopped = dist.broadcast_object(self.accelerator, (metrics, stopped))
        if stopped is not None:
            raise Stopped(stopped)
        if self.is_main:
            assert metrics is not None  # the main process always generates
            self.reporters.write(
                {
                    "type": "generation",
                    "step": self.state.global_step,
                    **metrics,
                    "recipes": len(details),
                    "samples": details[:3],
                }
            )
            log.info(
                "step %d recipe metrics on %d validation recipes: %s",
                self.state.global_step,
                len(details),
                format_metrics(metrics),
            )
        return metrics

    def preview(self, model) -> tuple[int, str, str] | None:
        """(step, given ingredients, recipe) the model writes now for the first validation recipe."""
        if self.eval_data is None or not len(self.eval_data) or not self.generates:
            return None
        c = self.config
        example = held_out(self.eval_data, self.tokenizer, 1, c.source_template)
        with rng.isolated():
            _, details = evaluate_model(
                unwrap(model),
                self.tokenizer,
                example,
                self.device,
                self.accelerator.autocast,
                max_new_tokens=c.max_target_length,
                max_source_length=c.max_source_length,
                template=c.source_template,
                synced=self.synced,
            )
        if not self.is_main:
            return None
        return self.state.global_step, example[0].ingredient_text, details[0]["text"]

    def final_generation(self, model) -> tuple[int, dict, list[dict]] | None:
        """(step, metrics, details) of the final model on the ``--eval-generate`` recipes (all validation
        recipes when it is 0); None on the other processes and without validation recipes."""
        if self.eval_data is None or not len(self.eval_data) or not self.generates:
            return None
        if self.last_generation is None or self.last_generation[0] != self.state.global_step:
            self.generation_set = held_out(
                self.eval_data, self.tokenizer, self.config.eval_generate or None, self.config.source_template
            )
            self.last_generation = (self.state.global_step, *self.score_generation(model))
        return self.last_generation if self.is_main else None

    def score_generation(self, model) -> tuple[dict, list[dict]]:
        """(metrics, per-recipe details) of the model as it is now on the chosen validation recipes."""
        c = self.config
        assert self.generation_set is not None  # chosen before the first generation
        total = len(self.generation_set)
        if self.is_main:
            log.info("step %d: generating %d validation recipes for the recipe metrics", self.state.global_step, total)
        with (
            rng.isolated(),
            CountProgress("generating validation recipes", total, c.progress, self.is_main) as progress,
        ):

            def on_batch(done: int) -> None:
                # a batch cut short by the stop below ends here: its texts are discarded with the rest
                if self._stopping(everyone=self.synced):
                    raise Stopped(f"recipe generation abandoned after {done} of {total} recipes")
                progress.update(done)

            return evaluate_model(
                unwrap(model),
                self.tokenizer,
                self.generation_set,
                self.device,
                self.accelerator.autocast,
                max_new_tokens=c.max_target_length,
                max_source_length=c.max_source_length,
                on_batch=on_batch,
                template=c.source_template,
                synced=self.synced,
                stop=self.stop_requested,
            )

    def log_samples(self, model) -> None:
        """A few greedy recipes from fixed ingredient lists (logged by the main process; training RNG untouched)."""
        if not self.generates or not self.config.eval_samples or self._stopping(everyone=self.synced):
            return
        with rng.isolated():
            samples = eval_samples(
                unwrap(model),
                self.tokenizer,
                self.device,
                self.config.eval_samples,
                self.accelerator.autocast,
                self.config.source_template,
                synced=self.synced,
            )
        if not self.is_main:
            return
        self.reporters.write({"type": "samples", "step": self.state.global_step, "samples": samples})
        for sample in samples:
            log.info(
                "sample at step %d from %s: %s", self.state.global_step, sample["ingredients"], sample["text"][:300]
            )
