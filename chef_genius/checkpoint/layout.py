"""The checkpoint's layout: the one place that names its files and folders, and finds them.

    MODEL_OUTPUT/checkpoint-{global_step}/
        config.json, generation_config.json, model.safetensors   (save_pretrained of the bare model)
        tokenizer files
        chef_genius_prompt.json  (the --source-template; also beside the final model's config.json)
      or, for a LoRA run (--lora-r), instead of the model's files:
        adapter_model.safetensors, adapter_config.json   (the adapter as peft saves it)
        chef_genius_base.json    (the base model: --pretrained-model and a sha256 of its weights)
        training_state.pt    (torch.save of plain values and tensors; loads with weights_only=True)
        manifest.json        (written last: every other file with size and sha256, "complete": true)

    MODEL_OUTPUT/run.lock  held by the run's main process while it trains (``checkpoint/runlock.py``)

The format is split by job: this module (names, discovery, where the weights are);
``training_state.py`` (what ``training_state.pt`` holds, written and read); ``records.py`` (the
prompt and base-model records beside a model). Their neighbours take every name from here:
``commit.py`` writes a checkpoint (staging folder, fsync, manifest last, one rename) and the final
model, and deletes checkpoints; ``manifest.py`` builds and checks the manifest and decides whether a
folder is a checkpoint a run can use; ``files.py`` holds the durable file operations (fsync, atomic
replace, sha256).

Staging and deletion folders (``.staging-NAME-PID-TOKEN``, ``.deleting-NAME-PID-TOKEN``) carry a tag
unique to the process that made them (its pid and a random token: pids repeat across the hosts of a
shared file system and after a restart), so two processes never write into, or remove, each other's.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from chef_genius.errors import UserError
from chef_genius.checkpoint import trust

FORMAT_NAME = "chef-genius-checkpoint"
FORMAT_VERSION = 2  # 2: the training state holds each fact once (training_state.py reads 1 too)
PREFIX = "checkpoint-"
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
RUN_LOCK = "run.lock"
TRAINING_STATE = "training_state.pt"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded weights: tensor name -> shard file
WEIGHTS_BIN = "pytorch_model.bin"  # older transformers format, read with weights_only=True
MODEL_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
PROMPT = "chef_genius_prompt.json"  # how the model's input is built (--source-template); optional
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "spiece.model")  # one of them is needed to load the tokenizer
REQUIRED_FILES = (MODEL_CONFIG, WEIGHTS, TRAINING_STATE)
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # a LoRA checkpoint: the adapter (peft's names), no model weights
ADAPTER_CONFIG = "adapter_config.json"  # peft's LoraConfig
BASE_RECORD = "chef_genius_base.json"  # the base the adapter belongs to: source and weights' sha256
ADAPTER_REQUIRED_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, BASE_RECORD, TRAINING_STATE)
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class SaveCancelled(Exception):
    """A save given up on request (a second stop signal); its staging folder is already removed."""


# ---------------------------------------------------------------------------------------------
# names and discovery


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step}"


def step_of(path: str | Path) -> int | None:
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_step(path: str | Path) -> int:
    """The step of ``path``, known to be named ``checkpoint-N`` (a sort key); ValueError if it is not."""
    step = step_of(path)
    if step is None:
        raise ValueError(f"{path} is not named {PREFIX}N")
    return step


def enclosing_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint folder that ``path`` is or lies in (None: neither): a ``checkpoint-N`` folder, or
    any folder holding a ``training_state.pt``. Nothing but a run writes into a checkpoint, and only
    while it stages it."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if folder.is_dir() and (step_of(folder) is not None or (folder / TRAINING_STATE).is_file()):
            return folder
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders under ``output_dir``, oldest step first (never a symbolic link: see
    ``linked_checkpoints``)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p) is not None and not trust.is_link(p) and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def linked_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` entries that are symbolic links: never resumed from, verified or repaired."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if step_of(p) is not None and trust.is_link(p)), key=checkpoint_step)


_process_tag: tuple[int, str] | None = None


def process_tag() -> str:
    """``PID-TOKEN``, unique to this process (a forked child gets its own)."""
    global _process_tag
    pid = os.getpid()
    if _process_tag is None or _process_tag[0] != pid:
        _process_tag = (pid, secrets.token_hex(4))
    return f"{pid}-{_process_tag[1]}"


def staging_path(output_dir: str | Path, name: str) -> Path:
    """This process's staging folder for ``name`` (``checkpoint-N``, ``final``) in ``output_dir``."""
    return Path(output_dir) / f"{STAGING_PREFIX}{name}-{process_tag()}"


def deleting_path(path: str | Path) -> Path:
    """The name ``path`` takes while this process deletes it."""
    path = Path(path)
    return path.parent / f"{DELETING_PREFIX}{path.name}-{process_tag()}"


# The temporary file of an atomic write in the run folder (``files.atomic_write_bytes``: the run's
# settings.yaml, metrics files): ``.NAME.tmp-PID-TOKEN``.
_TEMP_FILE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]+$")


def staging_folders(output_dir: str | Path) -> list[Path]:
    """Leftovers of a save, a deletion or an atomic file write that did not finish (never a complete
    checkpoint): staging and deletion folders, and the temporary files of atomic writes."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.name.startswith((STAGING_PREFIX, DELETING_PREFIX)) or (_TEMP_FILE.match(p.name) and p.is_file())
    )


def remove_staging(output_dir: str | Path) -> list[Path]:
    """Remove folders left by a run that died mid-save or mid-deletion; returns what was removed.

    Only for a caller that holds the folder's run lock (``RunLock.remove_leftovers``): the lock is what
    proves that no other live process is saving into the folder."""
    removed = []
    for path in staging_folders(output_dir):
        if path.is_dir() and not trust.is_link(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# where the weights are: one file, shards listed by an index, or the older pytorch_model.bin

WEIGHT_ENTRY_FILES = (WEIGHTS, WEIGHTS_INDEX, WEIGHTS_BIN)  # in the order from_pretrained prefers them


def weights_layout(folder: str | Path) -> tuple[str | None, list[Path]]:
    """(layout, files) of the model weights in ``folder``: ``single`` [model.safetensors], ``sharded``
    (every shard its index names, present or not), ``bin`` [pytorch_model.bin], or (None, []).

    An entry counts as present even when it is a link or a folder (never followed: the reader of the
    file says it is not a regular one). Raises ``ValueError`` for an index that cannot be read, or that
    names a shard outside the folder."""
    folder = Path(folder)
    if os.path.lexists(folder / WEIGHTS):
        return "single", [folder / WEIGHTS]
    if os.path.lexists(folder / WEIGHTS_INDEX):
        try:
            index = trust.read_json(folder / WEIGHTS_INDEX)  # a regular file, size-capped
            shards = sorted(set(index["weight_map"].values()))
        except trust.Untrusted as err:
            raise ValueError(str(err)) from None
        except (OSError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{WEIGHTS_INDEX} is unreadable or has no weight_map: corrupt") from None
        if not shards or not all(
            isinstance(s, str) and Path(s).name == s and trust.confined(folder, s) for s in shards
        ):
            raise ValueError(f"{WEIGHTS_INDEX} names no shard files, or names outside the folder")
        return "sharded", [folder / s for s in shards]
    if os.path.lexists(folder / WEIGHTS_BIN):
        return "bin", [folder / WEIGHTS_BIN]
    return None, []


def is_adapter(folder: str | Path) -> bool:
    """Whether ``folder`` is a LoRA checkpoint (or final adapter): it holds ``adapter_model.safetensors``."""
    return os.path.lexists(Path(folder) / ADAPTER_WEIGHTS)


def is_weights_file(name: str) -> bool:
    return name.endswith(".safetensors") or name == WEIGHTS_BIN or name == WEIGHTS_INDEX
