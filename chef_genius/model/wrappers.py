"""The prefixes a wrapper puts before a model's weight names: torch.compile's ``_orig_mod.`` and
DDP's / accelerate's ``module.``, in any nesting. The loader maps them away (with a warning), the
doctor reports and strips them: both through here. (``loading.unwrap`` takes the wrappers off a
live model.)"""

from __future__ import annotations

import re

PREFIXES = ("_orig_mod.", "module.")
# for ``from_pretrained(key_mapping=...)``: every leading run of prefixes removed
KEY_MAPPING = {"^(?:" + "|".join(re.escape(p) for p in PREFIXES) + ")+": ""}


def strip(name: str) -> str:
    """``name`` without its wrapper prefixes."""
    while name.startswith(PREFIXES):
        name = name[len(next(p for p in PREFIXES if name.startswith(p))) :]
    return name


def wrapped(names) -> list[str]:
    """The names that carry a wrapper prefix."""
    return [n for n in names if n.startswith(PREFIXES)]
