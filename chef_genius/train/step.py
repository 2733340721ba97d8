"""One optimizer step: gradient accumulation over the micro-batches of a window, the loss normalised by
the real target tokens of the whole step, clipping, the update skipped when the loss or gradient norm
is not finite; on a CUDA out-of-memory error the step is retried at half the micro-batch
(``--auto-micro-batch``) or the run ends with what would fit."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from chef_genius.data.tokenized import LABEL_PAD
from chef_genius.model import lean_loss
from chef_genius.model.loading import unwrap
from chef_genius.train.base import TrainerBase
from chef_genius.train import components as parts
from chef_genius.train import distributed as dist
from chef_genius.train import divergence
from chef_genius.train import oom


def logits_loss(model, input_ids, attention_mask, decoder_input_ids, labels) -> torch.Tensor:
    """The summed cross-entropy of the logits (a model without a plain linear head), no decoder cache."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
    ).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=LABEL_PAD, reduction="sum")


class Step(TrainerBase):
    """The ``Trainer``'s optimizer step (its attributes are declared on ``TrainerBase``, train/base.py)."""

    def _step_fitting_memory(self, window: list[dict]) -> tuple[torch.Tensor, int | torch.Tensor, torch.Tensor]:
        """``_train_step`` over the micro-batches of this run's split; on a CUDA out-of-memory error the
        step is freed and retried with half the micro-batch (``--auto-micro-batch``), else the run ends.
        Any error type that reports an exhausted GPU counts (cuBLAS, cuDNN, Triton: ``oom.is_out_of_memory``)."""
        while True:
            counted = self.run.window.source_tokens, self.run.window.rows
            try:
                return self._train_step(oom.split_micro_batches(window, self.state.micro_batch_split))
            except Exception as err:  # out of memory of any type (oom.is_out_of_memory); others go on up
                if not oom.is_out_of_memory(err):
                    raise
                # handled below, outside the except: its traceback holds the step's tensors
            self.run.window.source_tokens, self.run.window.rows = counted
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
            self.run.window.source_tokens += int(batch["attention_mask"].sum())
            self.run.window.rows += batch["input_ids"].shape[0]
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
