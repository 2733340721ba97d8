"""Checkpoints under FSDP (``accelerate launch --config_file configs/accelerate_fsdp.yaml``).

Under FSDP no rank holds the whole model, so a checkpoint first gathers a *full* state dict to
rank 0 (a collective: every rank calls these functions, in the main thread, before the checkpoint
manager copies or writes anything) and rank 0 writes the usual layout: the weights through
``save_pretrained``, the rest in the training state. The optimizer state is saved keyed by parameter
name (``format.OPTIMIZER_LAYOUT_NAMES``) because FSDP's flat shards have no stable parameter ids;
such a state is loaded after ``prepare`` with
``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict``, which works on a plain, a
DDP or an FSDP model alike, so an FSDP checkpoint resumes on any world size.
"""

from __future__ import annotations

import logging

from chef_genius.checkpoint import training_state as ckstate

log = logging.getLogger("chef_genius")


def fsdp_requested() -> bool:
    """Launched with an FSDP accelerate config (``Accelerator(cpu=True)`` would silently drop it)."""
    import os

    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type == "FSDP"  # accelerate's DistributedType is a str enum


def prepare(accelerator, model, optimizer, device):
    """accelerate's ``prepare`` of the model and its optimizer: (model, optimizer).

    Without FSDP the model goes to this process's device first. Under FSDP it goes in where it was
    loaded, on the CPU (or, with ``fsdp_cpu_ram_efficient_loading``, on the meta device on every rank
    but 0, which ``prepare`` fills from rank 0): ``prepare`` shards it and puts each process's shard
    on its GPU. Moving it whole before would put every parameter on every GPU at once (FLAN-T5-XXL's
    44 GiB of fp32 weights on each card) and cannot move meta weights at all."""
    if not is_fsdp(accelerator):
        model = model.to(device)
    return accelerator.prepare(model, optimizer)


def prepare_generation(model) -> None:
    """Let ``model.generate`` run on an FSDP2 model (a no-op on any other): FSDP gathers the root's own
    parameters (the shared embeddings, the head) only around ``forward``, and generate calls the encoder
    and the decoder outside it, on still-sharded weights. Registered, generate gathers them for the whole
    call (as transformers' Trainer does); each T5Block still gathers its own around its forward."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    register_fsdp_forward_method(model, "generate")


def gather_model_state(accelerator, model) -> dict | None:
    """The full model state dict (on rank 0) under FSDP; None otherwise (save the module as is)."""
    if not is_fsdp(accelerator):
        return None
    return accelerator.get_state_dict(model)


def gather_optimizer_state(accelerator, model, optimizer) -> tuple[dict, str | None]:
    """(optimizer state to save, its layout: None for torch's own, ``OPTIMIZER_LAYOUT_NAMES`` under FSDP)."""
    if not is_fsdp(accelerator):
        return optimizer.state_dict(), None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state, ckstate.OPTIMIZER_LAYOUT_NAMES


def saved_by_name(layout: str | None) -> bool:
    return layout == ckstate.OPTIMIZER_LAYOUT_NAMES


def load_optimizer_by_name(model, optimizer, state: dict) -> None:
    """Load a name-keyed full optimizer state into a prepared (plain, DDP or FSDP) model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
