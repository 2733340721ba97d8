"""A checkpoint judged by its numbers: are its weights and optimizer moments finite?

Every checkpoint written since the record exists carries it in ``training_state.pt`` (slice
``health``, see ``training_state.HEALTH_KEYS``; covered by the manifest's sha256 like every other byte): the
trainer checks the numbers before each save, so the record is read, not recomputed. A checkpoint
without a record (older ones, states rebuilt by the doctor) is never assumed healthy: its numbers
are read (every weight and every optimizer moment; about one read of the checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch

from chef_genius.checkpoint.layout import ADAPTER_WEIGHTS, is_adapter, weights_layout
from chef_genius.checkpoint.training_state import recorded_health

NONFINITE_WEIGHTS = "its weights hold NaN or Inf"
NONFINITE_MOMENTS = "its optimizer moments hold NaN or Inf"


def health_problem(folder: str | Path, state: dict, check_numbers: bool = True) -> str | None:
    """Why the numbers of checkpoint ``folder`` (its loaded ``state``) are not healthy, None when they are.
    ``check_numbers=False``: a checkpoint without a record is reported as such instead of read."""
    record = recorded_health(state)
    if record is not None:
        if not record["weights_finite"]:
            return NONFINITE_WEIGHTS + " (recorded when it was saved)"
        if not record["moments_finite"]:
            return NONFINITE_MOMENTS + " (recorded when it was saved)"
        return None
    if not check_numbers:
        return "no health record (saved before checkpoints recorded it)"
    return numbers_problem(folder, state)


def numbers_problem(folder: str | Path, state: dict) -> str | None:
    """Read every weight and optimizer moment of checkpoint ``folder``: why they are not finite, or None."""
    bad = nonfinite_weights(folder)
    if bad:
        return f"{NONFINITE_WEIGHTS} ({len(bad)} tensors, e.g. {bad[0]})"
    if not moments_finite(state):
        return NONFINITE_MOMENTS
    return None


def nonfinite_weights(folder: str | Path) -> list[str]:
    """Names of the weight tensors of ``folder`` holding NaN or Inf (safetensors or a .bin, any layout)."""
    folder = Path(folder)
    if is_adapter(folder):
        files = [folder / ADAPTER_WEIGHTS]
    else:
        files = weights_layout(folder)[1]
    bad = []
    for path in files:
        if path.suffix == ".bin":
            tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()
        else:
            from safetensors import safe_open

            handle = safe_open(str(path), framework="pt")
            tensors = ((name, handle.get_tensor(name)) for name in handle.keys())
        bad += [name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]
    return bad


def moments_finite(state: dict) -> bool:
    """Whether every tensor of the optimizer state in a loaded ``training_state.pt`` is finite."""
    optimizer = state.get("optimizer_state_dict") or {}
    per_param = optimizer.get("state") if isinstance(optimizer, dict) else None
    for values in (per_param or {}).values():
        for value in values.values() if isinstance(values, dict) else ():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                return False
    return True
