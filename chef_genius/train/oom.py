"""Out of GPU memory in a step: free it and retry with half the micro-batch (``--auto-micro-batch``), or
end the run with one line that says what would fit (exit code of ``OutOfMemory``).

Halving keeps the global batch: each micro-batch of the step is cut in two along its rows and the
accumulation doubles, so an optimizer step sees the same recipes and the LR schedule is unchanged.
The split is part of the run state, so a resume keeps it.

Out of memory is not always ``torch.cuda.OutOfMemoryError``: cuBLAS and cuDNN report a failed workspace
allocation as a ``RuntimeError`` (``CUBLAS_STATUS_ALLOC_FAILED``, ``CUDNN_STATUS_ALLOC_FAILED``), Triton's
launcher as ``RuntimeError('Triton Error [CUDA]: out of memory')``, and torch.compile wraps what a compiled
region raised in its own error types with the original as the cause. ``is_out_of_memory`` is the one
place that decides.
"""

from __future__ import annotations

import gc
import logging
import math

import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.errors import OutOfMemory
from chef_genius.train import memory_plan

log = logging.getLogger("chef_genius")


_OUT_OF_MEMORY_TEXTS = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cuda_error_out_of_memory",
    "cudaerrormemoryallocation",
)


def is_out_of_memory(err: BaseException) -> bool:
    """True for an out-of-GPU-memory error of any type: ``torch.cuda.OutOfMemoryError``, or a
    ``RuntimeError`` whose message says so (cuBLAS, cuDNN, Triton), or an error caused by one of these
    (torch.compile's wrappers)."""
    seen = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, torch.cuda.OutOfMemoryError):
            return True
        if isinstance(link, RuntimeError) and any(t in str(link).lower() for t in _OUT_OF_MEMORY_TEXTS):
            return True
        link = link.__cause__  # raised 'from' it (torch.compile's wrappers); not a mere __context__
    return False


def split_micro_batches(window: list[dict], pieces: int) -> list[dict]:
    """Each batch of ``window`` cut into ``pieces`` smaller ones along the rows: the same recipes, so the
    same optimizer step."""
    if pieces == 1:
        return window
    out = []
    for batch in window:
        parts = min(pieces, batch["input_ids"].shape[0])
        columns = {k: v.tensor_split(parts) for k, v in batch.items()}
        out += [{k: columns[k][i] for k in batch} for i in range(parts)]
    return out


def free_step(optimizer) -> None:
    """Drop what the failed step holds on the GPU (called outside the ``except``: its traceback holds
    the step's tensors)."""
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def halve(config, state, global_batch: int) -> bool:
    """Halve the micro-batch for the rest of the run when ``--auto-micro-batch`` allows it; False when it
    does not (or a micro-batch is one recipe already)."""
    micro = math.ceil(config.batch_size / state.micro_batch_split)
    if not config.auto_micro_batch or micro <= 1:
        return False
    accumulation = config.gradient_accumulation_steps * state.micro_batch_split
    state.micro_batch_split *= 2
    log.warning(
        "out of GPU memory in step %d at micro-batch %d: retrying it with micro-batch %d x "
        "accumulation %d (global batch %d unchanged; kept for the rest of the run and in its "
        "checkpoints)",
        state.global_step + 1,
        micro,
        math.ceil(config.batch_size / state.micro_batch_split),
        accumulation * 2,
        global_batch,
    )
    return True


def give_up(config, state, checkpoints, model, bf16: bool, gpu_free: int | None) -> OutOfMemory:
    """The error that ends the run, once the last checkpoint is known to be intact: what would fit (from
    the memory plan) and where to resume."""
    micro = math.ceil(config.batch_size / state.micro_batch_split)
    accumulation = config.gradient_accumulation_steps * state.micro_batch_split
    intact = checkpoints.wait()
    newest = checkpoints.last_step
    where = (
        f"{ckpt.PREFIX}{newest} is intact (resume with --resume-from-checkpoint latest)"
        if intact and newest is not None
        else "no checkpoint of this run was saved yet"
    )
    fits = memory_plan.advice(model, config, bf16, gpu_free)
    retry = "" if config.auto_micro_batch else "; or pass --auto-micro-batch to halve the micro-batch on this error"
    return OutOfMemory(
        f"out of GPU memory in step {state.global_step + 1} at micro-batch {micro} x accumulation "
        f"{accumulation}; {fits}{retry}; {where}"
    )
