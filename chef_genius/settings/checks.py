"""The checks a setting declares (``setting(check=...)``): each takes the value and the flag's name,
returns the value to keep (some normalise it) or raises a one-sentence ``UserError`` (exit 2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from chef_genius.data.layouts import canonical_columns
from chef_genius.data.recipes import template_fields
from chef_genius.errors import UserError


def positive_int(value, flag):
    if value < 1:
        raise UserError(f"{flag} must be a positive integer, got {value}")
    return value


def at_least_zero(value, flag):
    if not value >= 0:
        raise UserError(f"{flag} must be 0 or more, got {value}")
    return value


def positive(value, flag):
    if not value > 0:
        raise UserError(f"{flag} must be positive, got {value}")
    return value


MAX_LEARNING_RATE = 10.0  # far above any useful peak (AdamW: about 1e-5 to 1e-2); 1e38 overflowed the optimizer


def learning_rate(value, flag):
    """Finite, positive and at most ``MAX_LEARNING_RATE``: an absurd rate is one line, not a traceback."""
    if not 0 < value <= MAX_LEARNING_RATE:  # also refuses NaN
        raise UserError(
            f"{flag} must be positive and at most {MAX_LEARNING_RATE:g} (AdamW peaks are about "
            f"1e-5 to 1e-2), got {value}"
        )
    return value


def fraction(value, flag):
    """In [0, 1)."""
    if not 0 <= value < 1:
        raise UserError(f"{flag} must be in [0, 1), got {value}")
    return value


def similarity(value, flag):
    if not 0 < value <= 1:
        raise UserError(f"{flag} must be in (0, 1], got {value}")
    return value


def lora_rank(value, flag):
    if value < 0:
        raise UserError(f"{flag} must be 0 (off) or more, got {value}")
    return value


def existing_file(value, flag):
    if not Path(value).is_file():
        raise UserError(f"{flag} file not found: {value}")
    return value


def data_sources(value, flag):
    """``--data FILE[:WEIGHT] ...``: files that exist, positive weights (``data/mixture.py``)."""
    from chef_genius.data.mixture import check_sources

    return check_sources(value, flag)


def unique(value, flag):
    """A list without repeats, first places kept."""
    return list(dict.fromkeys(value))


def columns(value, flag):
    return canonical_columns(value)


def source_template(value, flag):
    try:
        template_fields(value)
    except ValueError as err:
        raise UserError(str(err)) from None
    return value


def optimizer(value, flag):
    check_optimizer(value)
    return value


def reporters(value, flag):
    names = [name for name in dict.fromkeys(value) if name != "none"]
    check_reporters(names)
    return names


def check_reporters(report_to: list[str]) -> None:
    """The packages ``--report-to`` needs (also run on the list a resume inherits)."""
    for name, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in report_to and importlib.util.find_spec(package) is None:
            raise UserError(f"--report-to {name} needs the {package} package: pip install {package}")


def check_optimizer(name: str) -> None:
    """``adamw-8bit`` needs bitsandbytes, which needs a CUDA GPU: refused here, before anything is loaded."""
    if name != "adamw-8bit":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "--optimizer adamw-8bit needs a CUDA GPU (bitsandbytes); use --optimizer adafactor "
            "to save optimizer memory without one"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "--optimizer adamw-8bit needs the bitsandbytes package: pip install bitsandbytes "
            "(or use --optimizer adafactor)"
        )


def decay_or_clip(value, flag):
    """``--weight-decay`` and ``--max-grad-norm`` (one message for both, as before)."""
    if value < 0:
        raise UserError("--weight-decay and --max-grad-norm must be 0 or more")
    return value
