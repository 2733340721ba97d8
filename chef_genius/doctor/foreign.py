"""What the importers of foreign checkpoints share (``doctor/importers/``: one per format, legacy,
Hugging Face Trainer, accelerate): the kinds a report names, reading ``training_state.pt`` without a
general unpickle (``read_state``), loading files that hold numpy arrays, and turning their RNG states
into this project's layout.

Files holding numpy arrays are first scanned for the globals their pickle references (no code runs);
only numpy's array / dtype / scalar reconstructors are allowed, and the load itself still goes
through ``torch.load(weights_only=True)`` with just those added to its allowlist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import trust
from chef_genius.train import rng

CHEF = "chef_genius"
LEGACY = "legacy"
HF = "hf_trainer"
ACCELERATE = "accelerate"
UNKNOWN = "unknown"

ACC_RNG = "random_states_0.pkl"  # accelerate's RNG of process 0 (importers/accelerate.py)
LEGACY_KEYS = ("global_step", "epoch", "optimizer_state_dict", "scheduler_state_dict", "rng_states")


class UnsafePickle(Exception):
    """The file's pickle references something other than plain values, tensors and numpy arrays."""

    def __init__(self, path: Path, names: list[str]):
        self.names = sorted(names)
        super().__init__(f"{path.name} references {', '.join(self.names[:3])}: refused, never unpickled")


# ---------------------------------------------------------------------------------------------
# the numpy allowlist


def _numpy_globals() -> dict[str, Any]:
    """Qualified name -> object for numpy arrays, dtypes and scalars (numpy 1 and 2 module paths)."""
    allowed: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
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

    found: set[str] = set()
    memo: dict[object, str | None] = {}  # memo index (the opcode's argument) -> the string stored there
    last: list[str | None] = []
    try:
        with open(path, "rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                if op.name == "GLOBAL":
                    assert isinstance(arg, str)  # "module name"
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


def load_with_numpy(path: str | Path) -> Any:
    """Load a torch.save file that may hold numpy arrays; raises ``UnsafePickle`` for anything else.
    Returns whatever the file holds: the caller checks its shape."""
    path = Path(path)
    try:
        extra = pickle_globals(path)
    except ValueError:  # not a torch.save zip (a raw pickle?): scanned, never unpickled here
        refused = [name for name in raw_pickle_globals(path) if name not in NUMPY_GLOBALS]
        if refused:
            raise UnsafePickle(path, refused) from None
        raise ckpt.CheckpointError(
            f"{path.name} is not a torch.save file (a raw pickle, or corrupt); it was not unpickled"
        ) from None
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
# the training state, without a general unpickle

StateStatus = Literal["ours", "legacy", "missing", "unsafe", "unreadable"]  # of ``read_state``


def read_state(folder: Path) -> tuple[StateStatus, dict | None, str | None]:
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
    newer = ckstate.newer_version_problem(state)
    if newer:  # never judged by this version's rules (nor rebuilt without keeping it: "unreadable")
        return "unreadable", None, f"{path.name} {newer}"
    if state.get("format") == ckpt.FORMAT_NAME or not ckstate.missing_state_keys(state):
        return "ours", state, None
    if all(key in state for key in ("global_step", "epoch")):
        return "legacy", state, None
    return "unreadable", None, f"{path.name} lacks {', '.join(ckstate.missing_state_keys(state))}"


# ---------------------------------------------------------------------------------------------
# conversions to this project's state values


def legacy_rng(states: dict | None) -> dict:
    states = states or {}
    cuda = states.get("cuda_rng_state_all") or (
        [states["cuda_rng_state"]] if states.get("cuda_rng_state") is not None else []
    )
    return rng.from_parts(
        states.get("python_rng_state"), states.get("numpy_rng_state"), states.get("torch_rng_state"), cuda
    )


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
    return rng.from_parts(
        saved.get("random_state"),
        saved.get("numpy_random_seed"),
        saved.get("torch_manual_seed"),
        cuda if isinstance(cuda, list) else [],
    )
