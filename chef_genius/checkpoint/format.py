"""The checkpoint format: the one place that names its files and keys, writes and reads it.

    MODEL_OUTPUT/checkpoint-{global_step}/
        config.json, generation_config.json, model.safetensors   (save_pretrained of the bare model)
        tokenizer files
        chef_genius_prompt.json  (the --source-template; also beside the final model's config.json)
        training_state.pt    (torch.save of plain values and tensors; loads with weights_only=True)
        manifest.json        (written last: every other file with size and sha256, "complete": true)

    MODEL_OUTPUT/run.lock  held by the run's main process while it trains (``checkpoint/runlock.py``)

A checkpoint is written into a staging folder beside its final place, every file fsynced, the
manifest last, then renamed to ``checkpoint-N`` in one step, so a crash leaves either the earlier
state or the complete new checkpoint. A folder without a verifying manifest is never resumed from.

Staging and deletion folders (``.staging-NAME-PID-TOKEN``, ``.deleting-NAME-PID-TOKEN``) carry a tag
unique to the process that made them (its pid and a random token: pids repeat across the hosts of a
shared file system and after a restart), so two processes never write into, or remove, each other's.
The final model (``save_pretrained`` into MODEL_OUTPUT itself) goes through the same staging and
fsync, then its files are moved into place one by one, so the folder always loads.

``training_state.pt`` is made of *slices*, one per stateful component of a run (the names the
checkpoint manager registers them under): ``pack_training_state`` lays them out in the keys below,
``unpack_training_state`` gives them back, also from checkpoints written before the slices existed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from chef_genius.errors import UserError, printable
from chef_genius.checkpoint import trust
from chef_genius.checkpoint.faults import fault_point

log = logging.getLogger(__name__)

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
RNG_PER_RANK = "rng_states_per_rank"  # list: one RNG state per process of the run that saved
OPTIMIZER_LAYOUT = "optimizer_layout"  # absent: torch's id-keyed layout; OPTIMIZER_LAYOUT_NAMES: keyed by name
OPTIMIZER_LAYOUT_NAMES = "full-by-name"  # a full state gathered under FSDP (see train/sharded.py)
OPTIMIZER_KIND = "optimizer_kind"  # "adamw" (also when absent: checkpoints older than --optimizer), "adafactor"...
REPORTING_KEY = "reporting"  # {"wandb_run_id": ...}, so a resume reports into the same runs
STATE_KEYS = ("format_version", "global_step", "epoch", "best_loss", "optimizer_state_dict",
              "scheduler_state_dict", "rng_states", "data_position", "hyperparameters")
_STEP = re.compile(rf"^{PREFIX}(\d+)$")
_HASH_CHUNK = 8 << 20
_SEAL_THREADS = max(2, min(8, os.cpu_count() or 1))
MODEL_LABELS = ("model written", "training state written")  # fault points of a checkpoint's files
FINAL_LABELS = ("final model written", None)                 # ... and of the final model's


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


def find_latest(output_dir: str | Path, verify_hashes: bool = False,
                need_state: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies and whose state and model load, with its step equal to its
    folder's name; and the newer ones skipped (symbolic links too), each with the reason.
    ``need_state=False`` (generation): the training state is not looked at."""
    candidates = [(p, "a symbolic link: never followed") for p in linked_checkpoints(output_dir)]
    candidates += [(p, None) for p in list_checkpoints(output_dir)]
    skipped = []
    for path, reason in sorted(candidates, key=lambda c: step_of(c[0]), reverse=True):
        reason = reason or usability_problem(path, verify_hashes, need_state)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def usability_problem(folder: str | Path, verify_hashes: bool = False, need_state: bool = True) -> str | None:
    """Why a resume from ``folder`` would fail (None when it would not): the manifest, links or odd
    files, the training state under ``weights_only`` and its step, the weights' header, the JSON files."""
    folder = Path(folder)
    problems = manifest_problems(folder, verify_hashes)
    if problems:
        return problems[0]
    if need_state:
        problem = _state_problem(folder)
        if problem:
            return problem
    return _model_problem(folder)


def _state_problem(folder: Path) -> str | None:
    try:
        state = load_training_state(folder, mmap=True)  # the optimizer's moments are not read here
    except CheckpointError as err:
        return str(err)
    contract = state_contract_problem(state)
    if contract:
        return f"{TRAINING_STATE} {contract}"
    if step_of(folder) is not None and state.get("global_step") != step_of(folder):
        return (f"{TRAINING_STATE} is at step {printable(state.get('global_step'), 20)}, "
                f"the folder is named {folder.name}")
    return None


def _model_problem(folder: Path) -> str | None:
    try:
        layout, files = weights_layout(folder)
        if layout is None:
            return f"no model weights ({WEIGHTS}, sharded weights with {WEIGHTS_INDEX}, or {WEIGHTS_BIN})"
        for path in files:  # every shard: a regular file inside the folder, its header bounded and valid
            if not os.path.lexists(path):
                return f"{path.name} is missing (a shard named by {WEIGHTS_INDEX})"
            if layout == "bin":
                if not trust.regular_file(path):
                    raise trust.Untrusted(f"{path.name} is not a regular file")
            else:
                trust.read_safetensors_header(path)
        for name in (MODEL_CONFIG, GENERATION_CONFIG, "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json"):
            if name == MODEL_CONFIG or os.path.lexists(folder / name):
                if not isinstance(trust.read_json(folder / name), dict):
                    return f"{name} does not hold a JSON object"
    except (trust.Untrusted, ValueError) as err:
        return str(err)
    except OSError as err:
        return f"cannot read its files ({err.strerror})"
    return None


# ---------------------------------------------------------------------------------------------
# manifest

def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(folder: str | Path, global_step: int, known_sha256: dict[str, str] | None = None) -> dict:
    """The manifest of ``folder``; ``known_sha256`` (name -> digest) spares hashing files again."""
    folder = Path(folder)
    known_sha256 = known_sha256 or {}
    odd = trust.odd_entries(folder)
    if odd:  # never hash or bless what a link points at
        raise CheckpointError(f"{folder}: {odd[0]}; no manifest written")
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST or name.startswith("backup"):
            continue
        digest = known_sha256.get(name) or sha256_file(path)
        files[name] = {"size": path.stat().st_size, "sha256": digest}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "global_step": global_step,
            "complete": True, "created_unix": time.time(), "files": files}


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    try:
        manifest = trust.read_json(path)
    except (OSError, trust.Untrusted):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def manifest_problems(folder: str | Path, verify_hashes: bool = False) -> list[str]:
    """Why ``folder`` is not a complete checkpoint (empty when it verifies)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return ["no readable manifest.json (the save did not finish, or the files were copied by hand)"]
    if not manifest.get("complete"):
        return ["manifest.json does not mark the checkpoint complete"]
    problems = []
    for name in REQUIRED_FILES:
        names = WEIGHT_ENTRY_FILES if name == WEIGHTS else (name,)  # the weights: in any of their layouts
        if not any(n in manifest["files"] for n in names):
            problems.append(f"manifest lists no {name}")
    outside = [name for name in manifest["files"] if not trust.confined(folder, name)]
    if outside:  # never opened, never stat'ed: the manifest itself is invalid
        return [f"manifest.json names {printable(outside[0])}, a path outside the checkpoint"]
    odd = trust.odd_entries(folder, tuple(manifest["files"]))
    if odd:
        return odd[:1]
    for name, entry in manifest["files"].items():
        path, shown = folder / name, printable(name, 120)  # a name from a stranger: no escapes printed
        if not isinstance(entry, dict):
            problems.append(f"manifest entry of {shown} is not an object")
        elif not path.is_file():
            problems.append(f"{shown} is missing")
        elif path.stat().st_size != entry.get("size"):
            problems.append(f"{shown} has {path.stat().st_size} bytes, the manifest says "
                            f"{printable(entry.get('size'), 20)}")
        elif verify_hashes and sha256_file(path) != entry.get("sha256"):
            problems.append(f"{shown} does not match its sha256 in the manifest")
    return problems


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


def is_weights_file(name: str) -> bool:
    return name.endswith(".safetensors") or name == WEIGHTS_BIN or name == WEIGHTS_INDEX


# ---------------------------------------------------------------------------------------------
# writing

def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | Path) -> None:
    if sys.platform == "win32":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def retry_os(action: Callable[[], None], attempts: int = 8, first_delay: float = 0.05) -> None:
    """Run a rename / delete, retrying on Windows sharing violations (antivirus, indexers)."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            action()
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{process_tag()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point(f"{path.name} temp written")
        retry_os(lambda: os.replace(tmp, path))
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


def atomic_torch_save(path: str | Path, value) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{process_tag()}")
    try:
        torch.save(value, tmp)
        fsync_file(tmp)
        retry_os(lambda: os.replace(tmp, path))
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def staging_folder(output_dir: str | Path, name: str) -> Path:
    """A fresh, empty staging folder for ``name`` beside its final place, unique to this process."""
    staging = staging_path(output_dir, name)
    shutil.rmtree(staging, ignore_errors=True)  # this process's own, from a failed save of the same step
    staging.mkdir(parents=True)
    return staging


def write_checkpoint(output_dir: str | Path, global_step: int, save_model: Callable[[Path], None],
                     training_state: dict, cancelled: Callable[[], bool] | None = None) -> Path:
    """Write checkpoint ``global_step`` atomically; ``save_model(folder)`` writes model and tokenizer.
    ``cancelled()`` is asked between the steps: when it says yes, the save is given up (``SaveCancelled``)."""
    output_dir = Path(output_dir)
    final = checkpoint_path(output_dir, global_step)
    staging = staging_folder(output_dir, final.name)
    try:
        fault_point("staging created")
        digests = _write_sealed(staging, save_model, training_state, cancelled, labels=MODEL_LABELS)
        manifest = build_manifest(staging, global_step, digests)
        fault_point("files fsynced")
        atomic_write_json(staging / MANIFEST, manifest)
        fault_point("manifest written")
        fsync_dir(staging)
        _stop_if(cancelled)
        if final.exists():  # only now, so a crash before this point leaves the older folder in place
            set_aside(final)
        retry_os(lambda: os.rename(staging, final))
        fault_point("renamed")
        fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def write_final_model(output_dir: str | Path, save_model: Callable[[Path], None],
                      cancelled: Callable[[], bool] | None = None) -> list[Path]:
    """``save_model(folder)`` into ``output_dir`` itself (the run's final model): written and fsynced in a
    staging folder like a checkpoint, then each file moved into place (one atomic replace each)."""
    output_dir = Path(output_dir)
    staging = staging_folder(output_dir, "final")
    try:
        _write_sealed(staging, save_model, None, cancelled, labels=FINAL_LABELS, hash_files=False)
        _stop_if(cancelled)
        moved = []
        for path in sorted(staging.iterdir()):
            target = output_dir / path.name
            retry_os(lambda p=path, t=target: os.replace(p, t))
            moved.append(target)
        fault_point("final model moved")
        fsync_dir(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved


def _write_sealed(staging: Path, save_model: Callable[[Path], None], training_state: dict | None,
                  cancelled: Callable[[], bool] | None, labels: tuple, hash_files: bool = True) -> dict[str, str]:
    """Write the model (and the training state) into ``staging``; every file fsynced (and hashed)."""
    # Hashing costs about as much as writing (sha256 runs at a few hundred MB/s to ~2 GB/s per
    # core): the model files are fsynced and hashed in other threads (hashlib and fsync release
    # the GIL) while torch.save writes the training state, itself hashed as soon as it is written.
    seal = _fsync_and_hash if hash_files else fsync_file
    with ThreadPoolExecutor(max_workers=_SEAL_THREADS) as pool:
        save_model(staging)
        fault_point(labels[0])
        _stop_if(cancelled)
        sealing = {p: pool.submit(seal, p) for p in staging.rglob("*") if p.is_file()}
        if training_state is not None:
            torch.save(training_state, staging / TRAINING_STATE)
            fault_point(labels[1])
            sealing[staging / TRAINING_STATE] = pool.submit(seal, staging / TRAINING_STATE)
        return {p.relative_to(staging).as_posix(): job.result() for p, job in sealing.items()}


def _stop_if(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise SaveCancelled("the save was given up")


def _fsync_and_hash(path: Path) -> str:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return sha256_file(path)


def set_aside(path: Path) -> Path:
    """Move a checkpoint out of the way without deleting it (a run resumed from an older step
    reaches the step of a newer one): it goes to ``MODEL_OUTPUT/superseded/``."""
    target_dir = path.parent / "superseded"
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    retry_os(lambda: os.rename(path, target))
    log.warning("moved the older %s aside to %s (a checkpoint is never overwritten)", path.name, target)
    return target


def delete_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint so that no crash can leave a half-deleted folder that looks valid: it is
    first renamed to ``.deleting-...`` (one atomic step; no longer a ``checkpoint-N``), then removed.
    A leftover ``.deleting-`` folder is removed at the next start."""
    path = Path(path)
    doomed = deleting_path(path)
    retry_os(lambda: os.rename(path, doomed))
    fsync_dir(path.parent)
    fault_point("renamed for deletion")
    retry_os(lambda: shutil.rmtree(doomed))
    fault_point("deleted")


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
