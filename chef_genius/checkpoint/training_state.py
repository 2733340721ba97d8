"""What ``training_state.pt`` holds: its keys, how it is written from the run's components, and
how it is read back (``weights_only=True``, also from checkpoints written before the slices existed).

It is made of *slices*, one per stateful component of a run (the names the checkpoint manager
registers them under): ``pack_training_state`` lays them out in the keys below,
``unpack_training_state`` gives them back. The file's name and the folder around it are
``layout.py``'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from chef_genius.checkpoint import trust
from chef_genius.checkpoint.layout import FORMAT_NAME, FORMAT_VERSION, TRAINING_STATE, CheckpointError

RNG_PER_RANK = "rng_states_per_rank"  # list: one RNG state per process of the run that saved
OPTIMIZER_LAYOUT = "optimizer_layout"  # absent: torch's id-keyed layout; OPTIMIZER_LAYOUT_NAMES: keyed by name
OPTIMIZER_LAYOUT_NAMES = "full-by-name"  # a full state gathered under FSDP (see train/sharded.py)
OPTIMIZER_KIND = "optimizer_kind"  # "adamw" (also when absent: checkpoints older than --optimizer), "adafactor"...
REPORTING_KEY = "reporting"  # {"wandb_run_id": ...}, so a resume reports into the same runs
REBUILT = "rebuilt"  # list: the facts the doctor could not recover and rebuilt (REBUILT_RNG...)
REBUILT_RNG = "rng_states"  # the name the RNG has in that list (in every version)

# Version 1 (main up to 2026-12) repeated facts: the epoch at the top, in ``run_state`` and in
# ``data_position``; rank 0's RNG as ``rng_states`` beside the per-rank list. Version 2 writes each
# fact once: the step and best loss at the top, the epoch and sample in ``data_position``, the RNG in
# ``RNG_PER_RANK``. Both are read through the accessors below; nobody else reads these keys.
STATE_KEYS_V1 = (
    "format_version",
    "global_step",
    "epoch",
    "best_loss",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "rng_states",
    "data_position",
    "hyperparameters",
)
STATE_KEYS = (
    "format_version",
    "global_step",
    "best_loss",
    "optimizer_state_dict",
    "scheduler_state_dict",
    RNG_PER_RANK,
    "data_position",
    "hyperparameters",
)


class UnsafeStateError(CheckpointError):
    """A training state that does not load under ``weights_only=True`` (never unpickled further)."""


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
        if trust.refused_by_weights_only(err):
            raise UnsafeStateError(
                f"{path} holds objects that are not plain tensors and values "
                "(an old-format or unsafe file); it was not unpickled"
            ) from None
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}); it is truncated or corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a training-state dictionary")
    return state


def state_version(state: dict) -> int:
    """The layout version ``state`` was written in (1 for states older than the field, or with a value
    that is not an integer: the contract check names that)."""
    version = state.get("format_version")
    return version if isinstance(version, int) and not isinstance(version, bool) and version >= 2 else 1


def newer_version_problem(state: dict) -> str | None:
    """Why ``state`` cannot be read here: a layout newer than this chef-genius knows (None if not)."""
    version = state_version(state)
    if version <= FORMAT_VERSION:
        return None
    return (
        f"is in format version {version}, newer than this chef-genius reads ({FORMAT_VERSION}): "
        "use the chef-genius that wrote it"
    )


def missing_state_keys(state: dict) -> list[str]:
    keys = STATE_KEYS if state_version(state) >= 2 else STATE_KEYS_V1
    return [key for key in keys if key not in state]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def state_contract_problem(state: dict) -> str | None:
    """Why ``state`` breaks the training state's contract (keys and the kind of each value, as its
    version lays them out); None if not."""
    newer = newer_version_problem(state)
    if newer:
        return newer
    version = state_version(state)
    missing = missing_state_keys(state)
    if missing:
        return f"lacks {', '.join(missing)}"
    for key in ("global_step", "format_version") + (("epoch",) if version == 1 else ()):
        if not _is_int(state[key]):
            return f"holds a {key} that is not an integer"
    dicts = ("optimizer_state_dict", "scheduler_state_dict", "data_position", "hyperparameters")
    for key in dicts + (("rng_states",) if version == 1 else ()):
        if not isinstance(state[key], dict):
            return f"holds a {key} that is not a dictionary"
    if version >= 2:
        if not _is_int(state["data_position"].get("epoch")):
            return "holds a data_position epoch that is not an integer"
        per_rank = state[RNG_PER_RANK]
        if not isinstance(per_rank, list) or not all(isinstance(r, dict) for r in per_rank):
            return f"holds a {RNG_PER_RANK} that is not a list of dictionaries"
    return None


# ---------------------------------------------------------------------------------------------
# the facts of a loaded state, from every version (never a raw key outside this module)


def saved_step(state: dict):
    """The optimizer steps the state was saved after, as stored (check it with ``_is_int``)."""
    return state.get("global_step")


def saved_epoch(state: dict):
    """The 0-based epoch in progress, as stored: ``data_position``'s (version 2), else the top copy."""
    position = state.get("data_position")
    if state_version(state) >= 2 and isinstance(position, dict):
        return position.get("epoch")
    return state.get("epoch", 0)


def rng_per_rank(state: dict) -> list:
    """The RNG state of every process that saved, rank 0 first ([] when the state has none)."""
    per_rank = state.get(RNG_PER_RANK)
    if isinstance(per_rank, (list, tuple)) and per_rank:
        return list(per_rank)
    old = state.get("rng_states")  # version 1 without the list: rank 0's only
    return [old] if old else []


def rank0_rng(state: dict) -> dict:
    """Rank 0's RNG state ({} when the state has none)."""
    per_rank = rng_per_rank(state)
    return per_rank[0] if per_rank and isinstance(per_rank[0], dict) else {}


def rebuilt_facts(state: dict) -> list:
    """What the doctor rebuilt rather than recovered (``REBUILT_RNG``...); [] for a run's own state."""
    rebuilt = state.get(REBUILT)
    return list(rebuilt) if isinstance(rebuilt, (list, tuple)) else []


# ---------------------------------------------------------------------------------------------
# the training state's keys

# The slices: one per stateful component of a run, under the name the checkpoint manager knows it by.
RUN_STATE = "run_state"  # dict: RunState (step, best loss, tokens, time)
DATA_POSITION = "data_position"  # dict: DataPosition (epoch, sample, and the sample order it belongs to)
OPTIMIZER = "optimizer"  # {"state": optimizer state dict, "layout": None or OPTIMIZER_LAYOUT_NAMES,
#  "kind": the --optimizer that wrote it}
SCHEDULER = "scheduler"  # dict: the LR scheduler's state dict
RNG = "rng"  # list: the RNG state of every process, rank 0 first
REPORTING = "reporting"  # dict: what the reporters need to continue their runs
SETTINGS = "hyperparameters"  # dict: the run's settings (every flag, steps per epoch, world size...)
HEALTH = "health"  # dict: HEALTH_KEYS, the checkpoint judged by its numbers (absent before them)
SLICES = (RUN_STATE, DATA_POSITION, OPTIMIZER, SCHEDULER, RNG, REPORTING, SETTINGS, HEALTH)
# weights_finite / moments_finite: every weight / optimizer moment was finite when it was saved;
# recent_losses: the last finite training losses; skipped_steps: non-finite steps skipped so far.
HEALTH_KEYS = ("weights_finite", "moments_finite", "recent_losses", "skipped_steps")


def make_training_state(
    run_state,
    data_position: dict,
    optimizer_state: dict | None,
    scheduler_state: dict,
    rng_per_rank: list[dict],
    hyperparameters: dict,
    extra: dict | None = None,
) -> dict:
    """The dictionary saved as ``training_state.pt`` (plain values and tensors only), each fact once:
    ``run_state`` (a ``RunState`` or its dict) gives the step and best loss, written at the top, and
    the rest of the run state; ``data_position`` the epoch and sample; ``rng_per_rank`` the RNG of every
    process (rank 0 first; [] when none is known)."""
    import transformers

    from chef_genius import __version__

    run = dict(run_state if isinstance(run_state, dict) else run_state.to_dict())
    global_step, best_loss = int(run.pop("global_step", 0)), run.pop("best_loss", None)
    position = {**data_position, "epoch": int(data_position.get("epoch", 0))}
    state = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "global_step": global_step,
        "best_loss": best_loss,
        "run_state": {k: v for k, v in run.items() if k not in ("epoch", "samples_in_epoch")},
        "data_position": position,
        "optimizer_state_dict": optimizer_state or {},
        "optimizer_state_empty": not optimizer_state,
        "scheduler_state_dict": scheduler_state,
        RNG_PER_RANK: [dict(r) for r in rng_per_rank if r],
        "hyperparameters": hyperparameters,
        "versions": {
            "chef_genius": __version__,
            "torch": str(torch.__version__),
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "torch_num_threads": torch.get_num_threads(),
    }
    state.update(extra or {})
    return state


def pack_training_state(slices: dict) -> dict:
    """``training_state.pt`` from the components' slices (see ``SLICES``)."""
    optimizer = slices.get(OPTIMIZER) or {}
    extra = {}
    if optimizer.get("layout"):
        extra[OPTIMIZER_LAYOUT] = optimizer["layout"]
    if optimizer.get("kind"):
        extra[OPTIMIZER_KIND] = optimizer["kind"]
    if slices.get(REPORTING):
        extra[REPORTING_KEY] = slices[REPORTING]
    if slices.get(HEALTH):
        extra[HEALTH] = slices[HEALTH]
    return make_training_state(
        slices.get(RUN_STATE) or {},
        dict(slices.get(DATA_POSITION) or {}),
        optimizer.get("state"),
        slices.get(SCHEDULER) or {},
        list(slices.get(RNG) or []),
        slices.get(SETTINGS) or {},
        extra,
    )


def unpack_training_state(state: dict) -> dict:
    """The slices of a loaded ``training_state.pt`` (every one present, empty when the file has none),
    the same from every layout written so far: before the slices (step, epoch, best loss and RNG at
    the top only); version 1 with the slices, ``run_state`` repeating the epoch (and until 2026-12
    the step, best loss and sample) and the RNG written twice; version 2, each fact once."""
    run = dict(state.get("run_state") or {})
    run.setdefault("global_step", int(saved_step(state) or 0))
    run.setdefault("best_loss", state.get("best_loss"))
    position = dict(state.get("data_position") or {})
    position.setdefault("epoch", int(run.get("epoch", state.get("epoch", 0))))
    position.setdefault("samples_in_epoch", int(run.get("samples_in_epoch", 0)))
    # the run state's copies of the position, as every version has given them to the components
    run.setdefault("epoch", position["epoch"])
    run.setdefault("samples_in_epoch", position["samples_in_epoch"])
    return {
        RUN_STATE: run,
        DATA_POSITION: position,
        OPTIMIZER: {
            "state": state.get("optimizer_state_dict") or {},
            "layout": state.get(OPTIMIZER_LAYOUT),
            "kind": state.get(OPTIMIZER_KIND, "adamw"),
        },
        SCHEDULER: dict(state.get("scheduler_state_dict") or {}),
        RNG: rng_per_rank(state),
        REPORTING: dict(state.get(REPORTING_KEY) or {}),
        SETTINGS: dict(state.get("hyperparameters") or {}),
        HEALTH: dict(state.get(HEALTH) or {}),
    }


def recorded_health(state: dict) -> dict | None:
    """The health record of a loaded ``training_state.pt``: None when it has none (a checkpoint older
    than the record, or rebuilt by the doctor): its numbers must then be checked, never assumed."""
    record = state.get(HEALTH)
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), bool) for k in ("weights_finite", "moments_finite")
    ):
        return None
    return record


def saved_world_size(state: dict) -> int:
    """How many processes wrote ``state`` (1 for checkpoints that do not say). The settings say it
    first: a state the doctor built holds rank 0's RNG only, whatever the run's world size."""
    recorded = (state.get("hyperparameters") or {}).get("world_size")
    return int(recorded) if recorded else len(rng_per_rank(state)) or 1
