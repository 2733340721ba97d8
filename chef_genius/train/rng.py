"""Capture and restore every RNG a run draws from, as plain values and tensors.

No numpy arrays or numpy scalars: the state must load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch


def capture() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return from_parts(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)


def from_parts(python_state, numpy_state, torch_state, cuda_states=()) -> dict:
    """The stored layout (the one place that knows it) from each generator's own state: python's
    ``getstate()`` tuple, numpy's ``get_state()`` tuple, torch's and CUDA's byte tensors, from this
    process or from another tool's file. {} when the python, numpy or torch state is missing."""
    out: dict[str, Any] = {}
    if python_state is not None:
        version, internal, gauss = python_state
        out["python"] = [int(version), [int(v) for v in internal], gauss]
    if numpy_state is not None:
        kind, keys, pos, has_gauss, cached = numpy_state
        out["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if isinstance(torch_state, torch.Tensor):
        out["torch"] = torch_state
    out["cuda"] = [t for t in (cuda_states or []) if isinstance(t, torch.Tensor)]
    return out if {"python", "numpy", "torch"} <= set(out) else {}


def seeded(value: int) -> dict:
    """The stored layout of generators seeded with ``value`` (this process's own are left untouched)."""
    return from_parts(
        random.Random(value).getstate(),
        np.random.RandomState(value).get_state(),
        torch.Generator().manual_seed(value).get_state(),
    )


def restore(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another GPU count: restore what matches, the rest keep their seeds
            for index, cuda_state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated():
    """Run the block without moving any stream a run draws from (python, numpy, torch, CUDA): what it
    draws (sampling, a library's own shuffling) is undone, so training after it draws as if it never ran."""
    saved = capture()
    try:
        yield
    finally:
        restore(saved)
