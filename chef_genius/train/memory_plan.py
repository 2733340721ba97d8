"""The memory plan of a run (``model/memory.py``) as the trainer shows it: at start, for
``--plan-only``, and in the one line that ends a run out of GPU memory."""

from __future__ import annotations

import logging
from dataclasses import replace

from chef_genius.errors import UserError
from chef_genius.model import memory
from chef_genius.model.names import LORA_TARGETS
from chef_genius.train.config import DEFAULT_MODEL, TrainConfig

log = logging.getLogger("chef_genius")


def setting_of(c: TrainConfig, bf16: bool, micro_batch: int | None = None) -> memory.Setting:
    lora_r = c.lora_r
    targets = tuple(c.lora_target_modules or LORA_TARGETS)
    return memory.Setting(
        optimizer=c.optimizer,
        bf16=bf16,
        gradient_checkpointing=c.gradient_checkpointing,
        micro_batch=micro_batch or c.batch_size,
        source_length=c.max_source_length,
        target_length=c.max_target_length,
        lora_r=lora_r,
        lora_targets=targets,
        accumulation=c.gradient_accumulation_steps,
    )


def _eight_bit_possible() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def log_plan(model, c: TrainConfig, bf16: bool, free: int | None) -> memory.Plan:
    """The plan of this run against ``free`` GPU bytes, in the log; a warning with the settings that
    fit when it does not."""
    chosen = memory.plan(model, setting_of(c, bf16))
    for line in chosen.lines(free):
        log.info("%s", line)
    if free is not None and chosen.total > free:
        log.warning("the plan does not fit the GPU's free memory; %s", advice(model, c, bf16, free))
    return chosen


def advice(model, c: TrainConfig, bf16: bool, free: int | None) -> str:
    """A clause naming the cheapest settings whose plan fits ``free`` bytes."""
    if free is None:
        return "no CUDA GPU to plan against"
    options = memory.alternatives(setting_of(c, bf16), eight_bit=_eight_bit_possible())
    fits = memory.fitting(model, options[1:], free)
    if not fits:
        return (
            f"no planned setting fits the {free / memory.GIB:.1f} GiB free (see --plan-only); "
            "try a shorter --max-target-length"
        )
    shown = "; ".join(f"{p.setting.flags()} (~{p.total / memory.GIB:.1f} GiB)" for p in fits[:3])
    return f"settings that fit the {free / memory.GIB:.1f} GiB free: {shown}"


def plan_model(c: TrainConfig):
    """The model of ``--pretrained-model`` on the meta device (its config only; no weights read).
    FLAN-T5-large's architecture is built in, so the default model plans offline."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(c.pretrained_model, local_files_only=True)
    except (OSError, ValueError):
        if c.pretrained_model == DEFAULT_MODEL:
            return memory.flan_t5_large()
        raise UserError(
            f"cannot read the config of {c.pretrained_model!r} to plan its memory; give a local "
            "model folder or a name the hub knows"
        ) from None
    # transformers 5 reads FLAN-T5's untied head as scale_decoder_outputs=False (the weights then untie it)
    return memory.meta_model(config, untied_head=getattr(config, "scale_decoder_outputs", True) is False)


def print_plans(c: TrainConfig) -> None:
    """``--plan-only``: this setting's plan in full, then one line per cheaper alternative."""
    import torch

    bf16 = c.mixed_precision != "no" and (c.mixed_precision == "bf16" or torch.cuda.is_available())
    model = plan_model(c)
    free = memory.gpu_free_bytes()
    print(f"{c.pretrained_model}:")
    for line in memory.plan(model, setting_of(c, bf16)).lines(free):
        print(line)
    print("alternatives (weights, gradients and optimizer state exact; activations estimated):")
    options = memory.alternatives(setting_of(c, bf16), eight_bit=True)
    for option in options[1:]:
        p = memory.plan(model, option)
        fixed = p.weights + p.gradients + p.optimizer_state
        print(
            f"  {option.flags():70s} ~{p.total / memory.GIB:6.2f} GiB (exact part {fixed / memory.GIB:.2f}) "
            + (verdict_word(p.total, free))
        )


def verdict_word(total: int, free: int | None) -> str:
    return "" if free is None else ("fits" if total <= free else "does not fit")


def card_table(model=None, settings: list[memory.Setting] | None = None) -> str:
    """The memory table of docs/memory.md: FLAN-T5-large's plan per setting and the largest micro-batch on
    each card, with gradient accumulation (the gradients held beside the activations: the usual way to a
    useful global batch at these micro-batches, and the safer count)."""
    model = model or memory.flan_t5_large()
    base = memory.Setting(micro_batch=1, accumulation=2)
    settings = settings or [
        replace(base, optimizer=o, gradient_checkpointing=g) for g in (False, True) for o in memory.OPTIMIZERS
    ] + [replace(base, lora_r=16, gradient_checkpointing=g) for g in (False, True)]
    head = (
        "| setting | weights + gradients + optimizer state (exact) | bf16 weight copies (estimated) | "
        "activations per example (estimated) | " + " | ".join(f"{gb} GB" for gb in memory.CARDS_GIB) + " |"
    )
    rows = [head, "|" + "---|" * (4 + len(memory.CARDS_GIB))]
    for setting in settings:
        p = memory.plan(model, setting)
        fixed = p.weights + p.gradients + p.optimizer_state
        name = setting.flags().replace(" --batch-size 1", "")
        cells = [str(p.largest_micro_batch(gb * memory.GIB)) or "0" for gb in memory.CARDS_GIB]
        rows.append(
            f"| `{name}` | {fixed / memory.GIB:.2f} GiB | {p.weight_copies / memory.GIB:.2f} GiB | "
            f"{p.per_example / memory.GIB:.2f} GiB | " + " | ".join(c if c != "0" else "no" for c in cells) + " |"
        )
    return "\n".join(rows)
