"""The checkpoint format: the one place that names its files, folders and keys, and reads them.

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

The format is written and checked by its neighbours, which take every name from here:
``commit.py`` writes a checkpoint (staging folder, fsync, manifest last, one rename) and the final
model, and deletes checkpoints; ``manifest.py`` builds and checks the manifest and decides whether a
folder is a checkpoint a run can use; ``files.py`` holds the durable file operations (fsync, atomic
replace, sha256).

Staging and deletion folders (``.staging-NAME-PID-TOKEN``, ``.deleting-NAME-PID-TOKEN``) carry a tag
unique to the process that made them (its pid and a random token: pids repeat across the hosts of a
shared file system and after a restart), so two processes never write into, or remove, each other's.

``training_state.pt`` is made of *slices*, one per stateful component of a run (the names the
checkpoint manager registers them under): ``pack_training_state`` lays them out in the keys below,
``unpack_training_state`` gives them back, also from checkpoints written before the slices existed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import torch

from chef_genius.errors import UserError
from chef_genius.checkpoint import trust

FORMAT_NAME = "chef-genius-checkpoint"
FORMAT_VERSION = 1
PREFIX = "checkpoint-"
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
RUN_LOCK = "run.lock"
TRAINING_STATE = "training_state.pt"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded weights: tensor name -> shard file
WEIGHTS_BIN = "pytorch_model.bin"                # older transformers format, read with weights_only=True
MODEL_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
PROMPT = "chef_genius_prompt.json"  # how the model's input is built (--source-template); optional
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "spiece.model")  # one of them is needed to load the tokenizer
REQUIRED_FILES = (MODEL_CONFIG, WEIGHTS, TRAINING_STATE)
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # a LoRA checkpoint: the adapter (peft's names), no model weights
ADAPTER_CONFIG = "adapter_config.json"          # peft's LoraConfig
BASE_RECORD = "chef_genius_base.json"           # the base the adapter belongs to: source and weights' sha256
ADAPTER_REQUIRED_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, BASE_RECORD, TRAINING_STATE)
RNG_PER_RANK = "rng_states_per_rank"  # list: one RNG state per process of the run that saved
OPTIMIZER_LAYOUT = "optimizer_layout"  # absent: torch's id-keyed layout; OPTIMIZER_LAYOUT_NAMES: keyed by name
OPTIMIZER_LAYOUT_NAMES = "full-by-name"  # a full state gathered under FSDP (see train/sharded.py)
OPTIMIZER_KIND = "optimizer_kind"  # "adamw" (also when absent: checkpoints older than --optimizer), "adafactor"...
REPORTING_KEY = "reporting"  # {"wandb_run_id": ...}, so a resume reports into the same runs
STATE_KEYS = ("format_version", "global_step", "epoch", "best_loss", "optimizer_state_dict",
              "scheduler_state_dict", "rng_states", "data_position", "hyperparameters")
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class UnsafeStateError(CheckpointError):
    """A training state that does not load under ``weights_only=True`` (never unpickled further)."""


class SaveCancelled(Exception):
    """A save given up on request (a second stop signal); its staging folder is already removed."""


# ---------------------------------------------------------------------------------------------
# names and discovery

def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step}"


def step_of(path: str | Path) -> int | None:
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


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
    return sorted(found, key=step_of)


def linked_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` entries that are symbolic links: never resumed from, verified or repaired."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if step_of(p) is not None and trust.is_link(p)), key=step_of)


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


def staging_folders(output_dir: str | Path) -> list[Path]:
    """Leftovers of a save or a deletion that did not finish (never a complete checkpoint)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith((STAGING_PREFIX, DELETING_PREFIX)))


def remove_staging(output_dir: str | Path) -> list[Path]:
    """Remove folders left by a run that died mid-save or mid-deletion; returns what was removed.

    Only for a caller that holds the folder's run lock (``RunLock.remove_leftovers``): the lock is what
    proves that no other live process is saving into the folder."""
    removed = []
    for path in staging_folders(output_dir):
        shutil.rmtree(path, ignore_errors=True)
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
        if not shards or not all(isinstance(s, str) and Path(s).name == s and trust.confined(folder, s)
                                 for s in shards):
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


# ---------------------------------------------------------------------------------------------
# reading

def load_training_state(folder_or_file: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """Load ``training_state.pt`` with ``weights_only=True``; never a general unpickle. ``mmap``: the
    tensors stay on disk until touched (a check of the state's values reads megabytes, not gigabytes)."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise UnsafeStateError(f"{path} holds objects that are not plain tensors and values "
                                   "(an old-format or unsafe file); it was not unpickled") from None
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}); it is truncated or corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a training-state dictionary")
    return state


def missing_state_keys(state: dict) -> list[str]:
    return [key for key in STATE_KEYS if key not in state]


def state_contract_problem(state: dict) -> str | None:
    """Why ``state`` breaks the training state's contract (keys and the kind of each value); None if not."""
    missing = missing_state_keys(state)
    if missing:
        return f"lacks {', '.join(missing)}"
    for key in ("global_step", "epoch", "format_version"):
        if not isinstance(state[key], int) or isinstance(state[key], bool):
            return f"holds a {key} that is not an integer"
    for key in ("optimizer_state_dict", "scheduler_state_dict", "rng_states", "data_position", "hyperparameters"):
        if not isinstance(state[key], dict):
            return f"holds a {key} that is not a dictionary"
    return None


# ---------------------------------------------------------------------------------------------
# the training state's keys

# The slices: one per stateful component of a run, under the name the checkpoint manager knows it by.
RUN_STATE = "run_state"          # dict: RunState (step, best loss, tokens, time)
DATA_POSITION = "data_position"  # dict: DataPosition (epoch, sample, and the sample order it belongs to)
OPTIMIZER = "optimizer"          # {"state": optimizer state dict, "layout": None or OPTIMIZER_LAYOUT_NAMES,
                                 #  "kind": the --optimizer that wrote it}
SCHEDULER = "scheduler"          # dict: the LR scheduler's state dict
RNG = "rng"                      # list: the RNG state of every process, rank 0 first
REPORTING = "reporting"          # dict: what the reporters need to continue their runs
SETTINGS = "hyperparameters"     # dict: the run's settings (every flag, steps per epoch, world size...)
SLICES = (RUN_STATE, DATA_POSITION, OPTIMIZER, SCHEDULER, RNG, REPORTING, SETTINGS)


def make_training_state(run_state, data_position: dict, optimizer_state: dict | None, scheduler_state: dict,
                        rng_states: dict, hyperparameters: dict, extra: dict | None = None) -> dict:
    """The dictionary saved as ``training_state.pt`` (plain values and tensors only). ``run_state``: a
    ``RunState`` or its dict; the epoch and sample come from ``data_position``."""
    import transformers

    from chef_genius import __version__
    run = dict(run_state if isinstance(run_state, dict) else run_state.to_dict())
    run = {"global_step": int(run.pop("global_step", 0)), "epoch": int(data_position.get("epoch", 0)),
           "samples_in_epoch": int(data_position.get("samples_in_epoch", 0)),
           **{k: v for k, v in run.items() if k not in ("epoch", "samples_in_epoch")}}
    state = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "global_step": run["global_step"],
        "epoch": run["epoch"],
        "best_loss": run.get("best_loss"),
        "run_state": run,
        "data_position": data_position,
        "optimizer_state_dict": optimizer_state or {},
        "optimizer_state_empty": not optimizer_state,
        "scheduler_state_dict": scheduler_state,
        "rng_states": rng_states,
        "hyperparameters": hyperparameters,
        "versions": {"chef_genius": __version__, "torch": str(torch.__version__),
                     "transformers": transformers.__version__, "python": sys.version.split()[0]},
        "torch_num_threads": torch.get_num_threads(),
    }
    state.update(extra or {})
    return state


def pack_training_state(slices: dict) -> dict:
    """``training_state.pt`` from the components' slices (see ``SLICES``)."""
    per_rank = list(slices.get(RNG) or [])
    optimizer = slices.get(OPTIMIZER) or {}
    extra = {RNG_PER_RANK: per_rank}
    if optimizer.get("layout"):
        extra[OPTIMIZER_LAYOUT] = optimizer["layout"]
    if optimizer.get("kind"):
        extra[OPTIMIZER_KIND] = optimizer["kind"]
    if slices.get(REPORTING):
        extra[REPORTING_KEY] = slices[REPORTING]
    return make_training_state(slices.get(RUN_STATE) or {}, dict(slices.get(DATA_POSITION) or {}),
                               optimizer.get("state"), slices.get(SCHEDULER) or {},
                               per_rank[0] if per_rank else None, slices.get(SETTINGS) or {}, extra)


def unpack_training_state(state: dict) -> dict:
    """The slices of a loaded ``training_state.pt`` (every one present, empty when the file has none)."""
    run = dict(state.get("run_state") or {})
    run.setdefault("global_step", int(state.get("global_step", 0)))
    run.setdefault("best_loss", state.get("best_loss"))
    position = dict(state.get("data_position") or {})
    position.setdefault("epoch", int(run.get("epoch", state.get("epoch", 0))))
    position.setdefault("samples_in_epoch", int(run.get("samples_in_epoch", 0)))
    per_rank = state.get(RNG_PER_RANK) or ([state["rng_states"]] if state.get("rng_states") else [])
    return {RUN_STATE: run, DATA_POSITION: position,
            OPTIMIZER: {"state": state.get("optimizer_state_dict") or {}, "layout": state.get(OPTIMIZER_LAYOUT),
                        "kind": state.get(OPTIMIZER_KIND, "adamw")},
            SCHEDULER: dict(state.get("scheduler_state_dict") or {}), RNG: list(per_rank),
            REPORTING: dict(state.get(REPORTING_KEY) or {}), SETTINGS: dict(state.get("hyperparameters") or {})}


def saved_world_size(state: dict) -> int:
    """How many processes wrote ``state`` (1 for checkpoints that do not say)."""
    per_rank = state.get(RNG_PER_RANK)
    return len(per_rank) if per_rank else int((state.get("hyperparameters") or {}).get("world_size", 1))


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
