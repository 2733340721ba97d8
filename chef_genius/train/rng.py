"""Capture and restore every RNG a run draws from, as plain values and tensors.

No numpy arrays or numpy scalars: the state must load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def capture() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
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


def _to_plain(value):
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


@contextlib.contextmanager
def isolated():
    """Run the block without moving any stream a run draws from (python, numpy, torch, CUDA): what it
    draws (sampling, a library's own shuffling) is undone, so training after it draws as if it never ran."""
    saved = capture()
    try:
        yield
    finally:
        restore(saved)
