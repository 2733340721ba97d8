"""The precision and speed settings: mixed precision, gradient checkpointing, the memory plan, micro-batches,
compilation.
"""

from dataclasses import dataclass

from chef_genius.settings.choices import (
    APPLIED,
    SESSION,
    Precision,
)
from chef_genius.settings.fields import Flag, setting


@dataclass
class PrecisionSettings:
    title = "precision and speed"
    mixed_precision: Precision = setting(
        "auto",
        policy=APPLIED,
        note=("from step {step} on; the losses are no longer bitwise equal to an uninterrupted run's"),
        flags=[
            Flag(("--mixed-precision",)),
            Flag(
                ("--enable-mixed-precision",),
                action="store_const",
                const="bf16",
                help="same as --mixed-precision bf16 (fp16 is never used: T5 overflows in fp16)",
            ),
        ],
        help="bf16 autocast with fp32 weights; auto = bf16 on a CUDA GPU with native bf16 (compute capability 8.0 "
        "or newer; older GPUs only emulate it, slower than fp32), else fp32",
    )
    gradient_checkpointing: bool = setting(
        False,
        policy=APPLIED,
        flags=[
            Flag(("--gradient-checkpointing",), action="store_true"),
            Flag(
                ("--no-gradient-checkpointing",),
                action="store_false",
                help="turn off the --gradient-checkpointing a resumed run inherits from its checkpoint",
            ),
        ],
        help="recompute activations in the backward pass: less GPU memory, about 30%% slower steps",
    )
    plan_only: bool = setting(
        False,
        policy=SESSION,
        help=(
            "print the memory plan (weights, gradients, optimizer state, activations) of this setting and of cheaper "
            "ones, then exit without training; --data is not needed"
        ),
    )
    auto_micro_batch: bool = setting(
        False,
        policy=APPLIED,
        flags=[
            Flag(("--auto-micro-batch",), action="store_true"),
            Flag(
                ("--no-auto-micro-batch",),
                action="store_false",
                help="turn off the --auto-micro-batch a resumed run inherits from its checkpoint",
            ),
        ],
        help=(
            "on a CUDA out-of-memory error, retry the step with half the micro-batch and twice the accumulation (same "
            "global batch, same recipes per step), and keep that setting"
        ),
    )
    # None: on where Triton can compile. A resume keeps the run's choice: compiled and eager steps differ in
    # floating point (the checkpoint also records whether its run compiled: the trainer warns when the
    # same choice resolves otherwise on this machine)
    compile: bool | None = setting(
        None,
        policy=APPLIED,
        note=(
            "from step {step} on; compiled and eager steps differ in floating point, so the losses are no longer "
            "bitwise equal to an uninterrupted run's"
        ),
        flags=[
            Flag(("--compile",), action="store_true"),
            Flag(("--disable-compilation",), action="store_false", help="never torch.compile"),
        ],
        help="force torch.compile (default: on with a CUDA GPU of compute capability 7.0 or newer and Triton "
        "installed, off on CPU; refused at start where it cannot work)",
    )
