"""The records a model folder carries beside its weights: the prompt it was trained with
(``chef_genius_prompt.json``, in checkpoints and the final model) and, for a LoRA adapter, the base
model it belongs to (``chef_genius_base.json``). Their file names are ``layout.py``'s."""

from __future__ import annotations

import json
from pathlib import Path

from chef_genius.checkpoint import trust
from chef_genius.checkpoint.layout import BASE_RECORD, PROMPT

# ---------------------------------------------------------------------------------------------
# the prompt a model was trained with, beside config.json in checkpoints and the final model


def write_prompt(folder: str | Path, source_template: str) -> None:
    """Written into the model folder being saved (a staging folder: the save's own fsync covers it)."""
    (Path(folder) / PROMPT).write_text(json.dumps({"source_template": source_template}) + "\n", encoding="utf-8")


def read_prompt(folder: str | Path) -> str | None:
    """The ``--source-template`` a model folder was trained with; None for a folder without one (older
    runs, other tools) or an unreadable file."""
    try:
        value = json.loads((Path(folder) / PROMPT).read_text(encoding="utf-8")).get("source_template")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------------------------
# the base model a LoRA adapter belongs to


def write_base(folder: str | Path, record: dict) -> None:
    """``chef_genius_base.json`` (``model/lora.py:base_record``) into the folder being saved."""
    (Path(folder) / BASE_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_base(folder: str | Path) -> dict | None:
    """The base record of a LoRA folder: ``pretrained_model`` and ``sha256`` (a 64-digit hex string);
    None when the file is missing, unreadable or malformed."""
    try:
        record = trust.read_json(Path(folder) / BASE_RECORD)
    except (OSError, trust.Untrusted, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pretrained_model"), str):
        return None
    digest = record.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return None
    return record
