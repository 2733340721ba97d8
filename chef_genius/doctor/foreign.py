"""Checkpoints this project did not write: the replaced system's and Hugging Face Trainer's.

The one place that knows what those folders look like (``detect_kind``), how to read their state
without a general unpickle, and how to turn it into this project's ``training_state.pt`` values.

- legacy: ``training_state.pt`` is a pickle holding numpy RNG arrays, keys ``global_step``, ``epoch``
  (1-based), ``best_loss``, ``epoch_losses``, ``optimizer_state_dict``, ``scheduler_state_dict``,
  ``rng_states`` = {python_rng_state, numpy_rng_state, torch_rng_state, cuda_rng_state(_all)}.
- hf_trainer: ``trainer_state.json``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state[_N].pth``,
  ``training_args.bin`` (a full pickle of TrainingArguments: read by ``hf_args``, never unpickled).
- accelerate: ``Accelerator.save_state``: ``model.safetensors`` (no config, no tokenizer),
  ``optimizer.bin``, ``scheduler.bin``, ``random_states_N.pkl`` (numpy arrays), maybe ``sampler.bin``.

Files holding numpy arrays are first scanned for the globals their pickle references (no code runs);
only numpy's array / dtype / scalar reconstructors are allowed, and the load itself still goes
through ``torch.load(weights_only=True)`` with just those added to its allowlist.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import trust
from chef_genius.train import rng

CHEF = "chef_genius"
LEGACY = "legacy"
HF = "hf_trainer"
ACCELERATE = "accelerate"
UNKNOWN = "unknown"

HF_STATE = "trainer_state.json"
HF_OPTIMIZER = "optimizer.pt"
HF_SCHEDULER = "scheduler.pt"
ACC_OPTIMIZER = "optimizer.bin"
ACC_SCHEDULER = "scheduler.bin"
ACC_RNG = "random_states_0.pkl"
ACC_SAMPLER = "sampler.bin"
LEGACY_KEYS = ("global_step", "epoch", "optimizer_state_dict", "scheduler_state_dict", "rng_states")


class UnsafePickle(Exception):
    """The file's pickle references something other than plain values, tensors and numpy arrays."""

    def __init__(self, path: Path, names: list[str]):
        self.names = sorted(names)
        super().__init__(f"{path.name} references {', '.join(self.names[:3])}: refused, never unpickled")


# ---------------------------------------------------------------------------------------------
# the numpy allowlist

def _numpy_globals() -> dict[str, object]:
    """Qualified name -> object for numpy arrays, dtypes and scalars (numpy 1 and 2 module paths)."""
    allowed = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    try:
        from numpy._core import multiarray as core
        allowed["numpy._core.multiarray._reconstruct"] = core._reconstruct
        allowed["numpy._core.multiarray.scalar"] = core.scalar
    except ImportError:  # numpy 1.x
        pass
    from numpy.core import multiarray as old  # numpy 2 keeps this alias for old pickles
    allowed["numpy.core.multiarray._reconstruct"] = old._reconstruct
    allowed["numpy.core.multiarray.scalar"] = old.scalar
    for name in dir(np.dtypes):
        value = getattr(np.dtypes, name)
        if isinstance(value, type) and issubclass(value, np.dtype):
            allowed[f"numpy.dtypes.{name}"] = value
    return allowed


NUMPY_GLOBALS = _numpy_globals()


def pickle_globals(path: Path) -> list[str]:
    """Globals a ``torch.save`` file references beyond torch's own allowlist (a scan, nothing runs)."""
    return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))


def raw_pickle_globals(path: Path) -> set[str]:
    """Globals a raw pickle references, from its opcodes (nothing runs); "?" where a name is not plain."""
    import pickletools
    found, memo, last = set(), {}, []
    try:
        with open(path, "rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                if op.name == "GLOBAL":
                    found.add(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.add(f"{last[-2]}.{last[-1]}" if len(last) >= 2 and None not in last[-2:] else "?")
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = last[-1] if last else None
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[arg] = last[-1] if last else None
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    last.append(memo.get(arg))
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    last.append(arg)
                elif op.name not in ("FRAME", "PROTO"):
                    last.append(None)
    except Exception:  # not a pickle at all: nothing it could run
        return found
    return found


def load_with_numpy(path: str | Path) -> object:
    """Load a torch.save file that may hold numpy arrays; raises ``UnsafePickle`` for anything else."""
    path = Path(path)
    try:
        extra = pickle_globals(path)
    except ValueError:  # not a torch.save zip (a raw pickle?): scanned, never unpickled here
        refused = [name for name in raw_pickle_globals(path) if name not in NUMPY_GLOBALS]
        if refused:
            raise UnsafePickle(path, refused) from None
        raise ckpt.CheckpointError(f"{path.name} is not a torch.save file (a raw pickle, or corrupt); "
                                   "it was not unpickled") from None
    refused = [name for name in extra if name not in NUMPY_GLOBALS]
    if refused:
        raise UnsafePickle(path, refused)
    try:  # the dtype classes are built without a GLOBAL of their own, so allow the whole (inert) set
        with torch.serialization.safe_globals(list(NUMPY_GLOBALS.values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if trust.refused_by_weights_only(err):
            raise UnsafePickle(path, ["an object outside the numpy allowlist"]) from None
        raise ckpt.CheckpointError(f"{path.name} is unreadable ({type(err).__name__}); truncated or corrupt") from None


# ---------------------------------------------------------------------------------------------
# what kind of checkpoint

def read_state(folder: Path) -> tuple[str, dict | None, str | None]:
    """(status, state, detail) of ``training_state.pt``: status is ours | legacy | missing | unsafe | unreadable."""
    path = folder / ckpt.TRAINING_STATE
    if trust.is_link(path):
        return "unreadable", None, f"{path.name} is a symbolic link: never followed"
    if not path.exists():
        return "missing", None, None
    if not trust.regular_file(path):
        return "unreadable", None, f"{path.name} is not a regular file (a folder where a file belongs?)"
    try:
        state = ckstate.load_training_state(path)
    except ckstate.UnsafeStateError:
        try:
            state = load_with_numpy(path)
        except UnsafePickle as err:
            return "unsafe", None, str(err)
        except ckpt.CheckpointError as err:
            return "unreadable", None, str(err)
    except ckpt.CheckpointError as err:
        return "unreadable", None, str(err)
    if not isinstance(state, dict):
        return "unreadable", None, f"{path.name} does not hold a dictionary"
    if state.get("format") == ckpt.FORMAT_NAME or not ckstate.missing_state_keys(state):
        return "ours", state, None
    if all(key in state for key in ("global_step", "epoch")):
        return "legacy", state, None
    return "unreadable", None, f"{path.name} lacks {', '.join(ckstate.missing_state_keys(state))}"


def detect_kind(folder: Path, state_status: str) -> str:
    if state_status == "ours":
        return CHEF
    if state_status == "legacy":
        return LEGACY
    if (folder / HF_STATE).is_file():
        return HF
    if (folder / ACC_OPTIMIZER).is_file() or (folder / ACC_RNG).is_file():
        return ACCELERATE
    manifest = ckmanifest.read_manifest(folder)
    if manifest is not None and manifest.get("format") == ckpt.FORMAT_NAME:
        return CHEF
    if (folder / ckpt.MODEL_CONFIG).is_file() or (folder / ckpt.WEIGHTS).is_file():
        return LEGACY  # the replaced system wrote no manifest
    return UNKNOWN


# ---------------------------------------------------------------------------------------------
# conversions to this project's state values

def legacy_rng(states: dict | None) -> dict:
    states = states or {}
    cuda = states.get("cuda_rng_state_all") or ([states["cuda_rng_state"]] if states.get("cuda_rng_state")
                                                is not None else [])
    return rng.from_parts(states.get("python_rng_state"), states.get("numpy_rng_state"),
                          states.get("torch_rng_state"), cuda)


def hf_rng(folder: Path) -> dict:
    """RNG of process 0 (``rng_state.pth`` or ``rng_state_0.pth``); {} when absent."""
    for name in ("rng_state.pth", "rng_state_0.pth"):
        if (folder / name).is_file():
            try:
                saved = load_with_numpy(folder / name)
            except (UnsafePickle, ckpt.CheckpointError) as err:  # verify reports it first (rng_unreadable)
                raise ckpt.CheckpointError(f"{name}: {err}") from None
            cuda = saved.get("cuda")
            cuda = list(cuda) if isinstance(cuda, (list, tuple)) else ([cuda] if cuda is not None else [])
            return rng.from_parts(saved.get("python"), saved.get("numpy"), saved.get("cpu"), cuda)
    return {}


def accelerate_rng(folder: Path) -> dict:
    """RNG of process 0 from ``random_states_0.pkl`` (scanned first, numpy allowlist); {} when unusable."""
    if not (folder / ACC_RNG).is_file():
        return {}
    try:
        saved = load_with_numpy(folder / ACC_RNG)
    except (UnsafePickle, ckpt.CheckpointError):
        return {}
    if not isinstance(saved, dict):
        return {}
    cuda = saved.get("torch_cuda_manual_seed")
    return rng.from_parts(saved.get("random_state"), saved.get("numpy_random_seed"),
                          saved.get("torch_manual_seed"), cuda if isinstance(cuda, list) else [])


def hf_trainer_state(folder: Path) -> dict:
    try:
        value = trust.read_json(folder / HF_STATE)
    except trust.Untrusted as err:
        raise ckpt.CheckpointError(str(err)) from None
    if not isinstance(value, dict):
        raise ckpt.CheckpointError(f"{HF_STATE} does not hold a JSON object")
    return value


def hf_hyperparameters(trainer_state: dict) -> dict:
    """What ``trainer_state.json`` tells about the run's shape. Its ``train_batch_size`` is the batch
    of one process without the accumulation: never taken as the samples per optimizer step."""
    values = {}
    epochs, max_steps = trainer_state.get("num_train_epochs"), trainer_state.get("max_steps")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e12 for v in (epochs, max_steps))
    if numbers:  # a stranger's file: anything else is ignored (the flags must then supply it)
        values["steps_per_epoch"] = math.ceil(max_steps / epochs)
        values["total_steps"] = int(max_steps)
        values["epochs"] = int(epochs)
    return values


# what a Hugging Face run must tell for an exact conversion, and the flag that supplies each
HF_NEEDED = {"learning_rate": "--learning-rate", "lr_scheduler": "--lr-scheduler", "warmup_steps": "--warmup-steps",
             "samples_per_step": "--samples-per-step", "steps_per_epoch": "--steps-per-epoch"}


def hf_settings(folder: Path) -> tuple[dict, list[str]]:
    """(run settings, what could not be read) of a Hugging Face Trainer checkpoint, from
    ``trainer_state.json`` and ``training_args.bin`` (read by ``hf_args``: nothing in it runs)."""
    from chef_genius.doctor import hf_args
    problems = []
    try:
        values = hf_hyperparameters(hf_trainer_state(folder))
    except ckpt.CheckpointError as err:  # a link, a huge or hostile trainer_state.json: a sentence
        values = {}
        problems.append(str(err))
    path = folder / hf_args.HF_ARGS
    if not path.is_file():
        problems.append(f"{hf_args.HF_ARGS} is missing")
    else:
        try:
            args, unknown = hf_args.run_settings(path)
        except hf_args.ArgsError as err:
            problems.append(str(err))
        else:
            problems += [f"{hf_args.HF_ARGS}: {text}" for text in unknown]
            values.update(args)
    if "warmup_ratio" in values:
        ratio = values.pop("warmup_ratio")
        if values.get("total_steps"):  # as Hugging Face rounds it
            values["warmup_steps"] = math.ceil(values["total_steps"] * ratio)
    if values.get("batch_size") and "gradient_accumulation_steps" in values and "world_size" in values:
        values["samples_per_step"] = (values["batch_size"] * values["gradient_accumulation_steps"]
                                      * values["world_size"])
    return values, problems


def hf_unrecovered(values: dict) -> list[str]:
    """The flags that must supply what a Hugging Face run's files did not tell."""
    return [flag for name, flag in HF_NEEDED.items() if name not in values]
