"""The loss without the logits: project to the vocabulary only where there are labels, in chunks.

``F.cross_entropy(model(...).logits.float(), labels)`` materialises fp32 logits for every target
position, padding included: batch x length x vocabulary, about 2 GB per copy at 32 x 512 for
FLAN-T5-large's 32,128 tokens, and autograd keeps them for the backward. Here the model's
``lm_head`` is swapped for ``TargetHead`` (the same ``nn.Linear`` weight, so the state dict, the
saved files and generation are unchanged). While a batch's targets are armed (``targets``), the
head takes the decoder's hidden states at the labelled positions only and returns the summed
cross-entropy, computed ``chunk_rows`` positions at a time:

- with gradients: each chunk's gradient with respect to its hidden states and to the weight is
  computed in the forward pass and the chunk's logits are dropped (``_ChunkedCrossEntropy``), so at
  most one chunk of logits exists at a time and the backward is a scaling; the FLOPs are the
  same as autograd's (three matmuls per chunk; two, and no weight gradient, for a frozen head as
  under LoRA);
- without (evaluation): the chunks' losses, summed.

The loss is computed inside the model's own forward, so DDP, FSDP (the weight is gathered for
the forward) and ``torch.compile`` see an ordinary call. ``summed_loss`` is that whole training
forward as one function of the batch's tensors (no decoder cache: ``use_cache=False``), which the
trainer compiles as one region, loss included. Compiled, the head splits the labelled positions into
a fixed number of chunks (``TargetHead.chunks``, a Python int) instead of looping over
``chunk_rows``-row chunks: the graph then does not depend on how many positions a batch labels
(a loop over a data-dependent count cannot be traced, and ``cross_entropy_sum`` is kept out of
compiled graphs for that reason). Under autocast the matmuls run in the
autocast dtype and the softmax in fp32, as ``logits.float()`` did. The values equal the plain
cross-entropy within float tolerance (the sum runs in another order), and so do the gradients
(``tests/test_lean_loss.py``).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ROWS = 1024  # 1,024 x 32,128 fp32 logits: 132 MB per chunk


class TargetHead(nn.Linear):
    """``lm_head`` that, while armed with targets, returns the summed cross-entropy instead of logits."""

    def __init__(self, linear: nn.Linear, chunk_rows: int = CHUNK_ROWS):
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = linear.weight
        self.chunk_rows = chunk_rows
        self.chunks: int | None = None  # set for a compiled forward: this many chunks, whatever the batch
        self.armed: tuple[torch.Tensor, torch.Tensor] | None = None  # (flat positions, target ids)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.armed is None:
            return super().forward(hidden)
        positions, labels = self.armed
        rows = hidden.flatten(0, -2).index_select(0, positions)
        if self.chunks is not None:
            return cross_entropy_sum_in_chunks(rows, self.weight, labels, self.chunks)
        return cross_entropy_sum(rows, self.weight, labels, self.chunk_rows)


def install(model) -> TargetHead | None:
    """Give ``model`` a ``TargetHead`` (idempotent); None for a model whose head is not a plain bias-free
    ``nn.Linear`` (the trainer then takes the plain cross-entropy of the logits)."""
    head = getattr(model, "lm_head", None)
    if isinstance(head, TargetHead):
        return head
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    model.lm_head = TargetHead(head)
    return model.lm_head


def label_positions(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions with a label, their labels), taken on the CPU tensors before the device copy,
    so the device never waits on a data-dependent shape."""
    flat = labels.flatten()
    positions = (flat != ignore_index).nonzero().squeeze(1)
    return positions, flat.index_select(0, positions)


def chunks_for(positions: int, chunk_rows: int = CHUNK_ROWS) -> int:
    """The fixed number of chunks of a compiled head for batches of at most ``positions`` labelled
    positions: each chunk at most ``chunk_rows`` rows at that size."""
    return max(1, math.ceil(positions / chunk_rows))


def summed_loss(
    model,
    head: TargetHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    positions: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """The summed cross-entropy of one batch: the model's forward without a decoder cache, the head
    armed with the batch's labelled ``positions`` and their ``labels``. Every input is a tensor
    argument, so a compiled version of it is one region from the token ids to the loss."""
    head.armed = (positions, labels)
    try:
        return model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits  # the head's output: the summed loss
    finally:
        head.armed = None


@contextlib.contextmanager
def targets(head: TargetHead, positions: torch.Tensor, labels: torch.Tensor):
    """Arm ``head`` for one forward: its output is then the summed loss over ``positions``."""
    head.armed = (positions, labels)
    try:
        yield
    finally:
        head.armed = None


@torch.compiler.disable  # a Python loop over a data-dependent number of chunks: run it eagerly
def cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int = CHUNK_ROWS
) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight.T, labels), fp32, ``chunk_rows`` rows at a time."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(hidden, weight, labels, chunk_rows)
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = F.linear(hidden[start : start + chunk_rows], weight).float()
        total = total + F.cross_entropy(logits, labels[start : start + chunk_rows], reduction="sum")
    return total


def cross_entropy_sum_in_chunks(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunks: int
) -> torch.Tensor:
    """``cross_entropy_sum`` over a fixed number of ``chunks`` (traceable: the loop does not depend on
    how many rows there are)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(hidden, weight, labels, None, chunks)
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for rows, target in zip(hidden.tensor_split(chunks), labels.tensor_split(chunks)):
        total = total + F.cross_entropy(F.linear(rows, weight).float(), target, reduction="sum")
    return total


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Loss and both gradients chunk by chunk in the forward pass; the backward scales them. Chunks of
    ``chunk_rows`` rows, or (``chunk_rows`` None) ``chunks`` near-equal ones."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows, chunks=None):
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grads = []
        weight_grad = ctx.needs_input_grad[1]  # a frozen head (LoRA): no vocabulary x model-width gradient
        grad_weight = torch.zeros(weight.shape if weight_grad else (), device=weight.device, dtype=torch.float32)
        if chunk_rows is None:
            pieces = zip(hidden.tensor_split(chunks), labels.tensor_split(chunks))
        else:
            pieces = zip(hidden.split(chunk_rows), labels.split(chunk_rows))
        for rows, target in pieces:
            logits = F.linear(rows, weight)  # autocast dtype under autocast, else the weights'
            compute = logits.dtype
            logits = logits.float()
            log_z = torch.logsumexp(logits, dim=1)
            total = total + (log_z - logits.gather(1, target[:, None]).squeeze(1)).sum()
            # d(loss)/d(logits) = softmax - one_hot, written over the logits buffer
            grad = logits.sub_(log_z[:, None]).exp_()
            grad[torch.arange(grad.shape[0], device=grad.device), target] -= 1
            grad = grad.to(compute)
            grads.append(grad @ weight.to(compute))
            if weight_grad:
                grad_weight += (grad.t() @ rows.to(compute)).float()
        grad_hidden = torch.cat(grads) if grads else torch.empty_like(hidden)
        ctx.save_for_backward(grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype))
        ctx.weight_grad = weight_grad
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_weight = grad_weight * grad_total.to(grad_weight.dtype) if ctx.weight_grad else None
        return grad_hidden * grad_total.to(grad_hidden.dtype), grad_weight, None, None, None
