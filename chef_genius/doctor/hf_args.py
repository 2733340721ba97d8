"""Hugging Face Trainer's ``training_args.bin`` read without running any of it.

The file is ``torch.save`` of a whole ``TrainingArguments`` object: unpickling it normally imports
transformers and accelerate and may run whatever a tampered file names. Here the pickle is read by
an unpickler whose only classes are inert records standing in for an allowlist of names (the
arguments' dataclass, its enums, accelerate's ``PartialState``, ``torch.device``): a record keeps
the values it is given and runs nothing. Any other global is refused before anything is built, and
the file is reported, never executed. Persistent ids (tensors) are refused too: the arguments hold none.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

HF_ARGS = "training_args.bin"

ALLOWED = frozenset(
    {
        "transformers.training_args.TrainingArguments",
        "transformers.training_args_seq2seq.Seq2SeqTrainingArguments",
        "transformers.trainer_pt_utils.AcceleratorConfig",
        "transformers.generation.configuration_utils.GenerationConfig",
        "transformers.trainer_utils.SchedulerType",
        "transformers.trainer_utils.IntervalStrategy",
        "transformers.trainer_utils.SaveStrategy",
        "transformers.trainer_utils.HubStrategy",
        "transformers.trainer_utils.FSDPOption",
        "transformers.training_args.OptimizerNames",
        "transformers.training_args.ParallelMode",
        "transformers.debug_utils.DebugOption",
        "accelerate.state.PartialState",
        "accelerate.utils.dataclasses.DistributedType",
        "torch.device",
    }
)

# Hugging Face scheduler -> this project's (both warm up linearly, then decay the same way)
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


class ArgsError(ValueError):
    """``training_args.bin`` could not be read; the message says why (nothing in it was run)."""


class Record:
    """Stands in for an allowlisted class: keeps its arguments (an enum's value) and state, runs nothing."""

    qualname = "?"
    args: tuple = ()  # built by ``cls.__new__`` (NEWOBJ), a record may never see ``__init__``
    kwargs: dict = {}
    state: dict = {}

    def __init__(self, *args, **kwargs):
        self.__dict__["args"], self.__dict__["kwargs"], self.__dict__["state"] = args, kwargs, {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__["state"] = state if isinstance(state, dict) else {"value": state}

    def get(self, name, default=None):
        return self.state.get(name, default)

    @property
    def value(self):
        return self.args[0] if self.args else None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        qualified = f"{module}.{name}"
        if qualified not in ALLOWED:
            raise ArgsError(
                f"{HF_ARGS} references {qualified}, which is not on the allowlist of inert "
                "argument types: refused, never unpickled"
            )
        return type(name, (Record,), {"qualname": qualified})

    def persistent_load(self, pid):
        raise ArgsError(f"{HF_ARGS} holds tensor data, which training arguments never do: refused")


def load_args(path: Path) -> Record:
    """The ``TrainingArguments`` record of ``path``; raises ``ArgsError``."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise ArgsError(f"{HF_ARGS} is not a torch.save file (no data.pkl)")
            with archive.open(pickles[0]) as handle:
                value = _Unpickler(handle).load()
    except ArgsError:
        raise
    except zipfile.BadZipFile:
        raise ArgsError(f"{HF_ARGS} is not a torch.save zip file (truncated, or an old format): not read") from None
    except Exception as err:  # a damaged pickle: any of pickle's errors
        raise ArgsError(f"{HF_ARGS} is unreadable ({type(err).__name__}): truncated or corrupt") from None
    if not isinstance(value, Record) or not value.qualname.endswith("TrainingArguments"):
        raise ArgsError(f"{HF_ARGS} does not hold TrainingArguments")
    return value


def run_settings(path: Path) -> tuple[dict, list[str]]:
    """(settings in this project's names, problems) from ``training_args.bin``.

    Settings: learning_rate, lr_scheduler, warmup_steps or warmup_ratio, batch_size (per process,
    times DataParallel GPUs), gradient_accumulation_steps, epochs, max_steps, seed, weight_decay,
    world_size. Problems name what is in the file but has no equal here (a scheduler this project
    does not have, scheduler arguments); the caller asks for the flag instead."""
    args = load_args(path)
    out, problems = {}, []

    def number(name, kind):
        value = args.get(name)
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    for ours, theirs, kind in (
        ("learning_rate", "learning_rate", float),
        ("weight_decay", "weight_decay", float),
        ("gradient_accumulation_steps", "gradient_accumulation_steps", int),
        ("seed", "seed", int),
    ):
        if (value := number(theirs, kind)) is not None:
            out[ours] = value
    batch = number("per_device_train_batch_size", int)
    if batch is not None:
        out["batch_size"] = batch * max(1, number("_n_gpu", int) or 0)
    scheduler = args.get("lr_scheduler_type")
    name = scheduler.value if isinstance(scheduler, Record) else scheduler
    if isinstance(name, str):
        if name in SCHEDULERS and not args.get("lr_scheduler_kwargs"):
            out["lr_scheduler"] = SCHEDULERS[name]
        else:
            problems.append(
                f"its scheduler {name!r}{' with arguments' if args.get('lr_scheduler_kwargs') else ''} "
                "has no equal here (--lr-scheduler linear|cosine|constant)"
            )
    warmup, ratio = number("warmup_steps", float), number("warmup_ratio", float)
    if name == "constant":  # Hugging Face's "constant" ignores the warmup
        out["warmup_steps"] = 0
    elif warmup is not None and warmup >= 1:
        out["warmup_steps"] = int(warmup)
    elif warmup is not None and 0 < warmup < 1:  # transformers 5: a fraction is a ratio
        out["warmup_ratio"] = warmup
    elif ratio:
        out["warmup_ratio"] = ratio
    elif warmup is not None:
        out["warmup_steps"] = 0
    epochs, max_steps = number("num_train_epochs", float), number("max_steps", int)
    if max_steps is not None and max_steps > 0:  # then num_train_epochs is unused (trainer_state.json has the real one)
        out["max_steps"] = max_steps
    elif epochs is not None and epochs > 0:
        out["epochs"] = math.ceil(epochs)
    state = args.get("distributed_state")
    if isinstance(state, Record) and isinstance(state.get("num_processes"), int):
        out["world_size"] = state.get("num_processes")
    elif number("local_rank", int) == -1:  # a single process: no distributed launch
        out["world_size"] = 1
    return out, problems
