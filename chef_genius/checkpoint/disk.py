"""Disk space and save errors: estimate a checkpoint's size, check free space, and describe a failed
write in a few words (the checkpoint manager turns that into one clear line, never a traceback).

A checkpoint holds the weights (``model.safetensors``, each tensor at its dtype), the optimizer
state (AdamW: two moments per trainable parameter, at the parameter's dtype), the tokenizer and a
little bookkeeping. ``estimate_checkpoint_bytes`` is a pure function of those sizes; after the
first save the real size of the newest checkpoint takes over when it is larger.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from collections.abc import Iterable

from chef_genius.checkpoint.layout import TOKENIZER_FILES
from chef_genius.errors import SaveError, UserError, printable

log = logging.getLogger("chef_genius")

PER_TENSOR_BYTES = 2048  # safetensors header + pickle entry + the optimizer's step counter
FIXED_BYTES = 256 << 10  # config, generation config, manifest, RNG and run state
TOKENIZER_ALLOWANCE = 8 << 20  # when the tokenizer's files are not on local disk to measure
MARGIN = 1.10  # free space asked for: the estimate plus 10 %
ON_SAVE_ERROR = ("stop", "continue")


def estimate_checkpoint_bytes(
    tensors: Iterable[tuple[int, int, bool]], optimizer_moments: int = 2, extra_bytes: int = 0
) -> int:
    """Bytes of one checkpoint. ``tensors``: (number of elements, bytes per element, trainable) for
    each distinct parameter tensor; ``optimizer_moments``: state tensors per trainable parameter."""
    total = FIXED_BYTES + extra_bytes
    for numel, element_size, trainable in tensors:
        size = numel * element_size
        total += size + PER_TENSOR_BYTES + (optimizer_moments * size if trainable else 0)
    return total


def model_tensors(model) -> list[tuple[int, int, bool]]:
    """The distinct parameter tensors of ``model`` (tied weights counted once)."""
    seen, tensors = set(), []
    for param in model.parameters():
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        tensors.append((param.numel(), param.element_size(), param.requires_grad))
    return tensors


def tokenizer_bytes(source: str | Path) -> int:
    """Size of the tokenizer files in a local model folder, else a fixed allowance."""
    folder = Path(source)
    if not folder.is_dir():
        return TOKENIZER_ALLOWANCE
    return sum((folder / n).stat().st_size for n in TOKENIZER_FILES if (folder / n).is_file())


def human(size: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(folder).free


def space_problem(folder: str | Path, needed: int) -> str | None:
    """Why a checkpoint of ``needed`` bytes will not fit in ``folder`` (None when it fits)."""
    free = free_bytes(folder)
    want = int(needed * MARGIN)
    if free >= want:
        return None
    return f"not enough free space in {folder}: a checkpoint needs about {human(want)}, {human(free)} free"


def preflight(output_dir: Path, checkpoint_bytes: int, checkpoints_kept: int) -> None:
    """Before training: refuse when one checkpoint does not fit; warn when all those kept will not."""
    problem = space_problem(output_dir, checkpoint_bytes)
    if problem:
        raise SaveError(f"{problem}; free some space or pick another --model-output (nothing was written)")
    free = free_bytes(output_dir)
    log.info("a checkpoint takes about %s; %s free in %s", human(checkpoint_bytes), human(free), output_dir)
    if checkpoints_kept * checkpoint_bytes > free:
        log.warning(
            "the %d checkpoints this run keeps need about %s but only %s is free; consider --save-total-limit",
            checkpoints_kept,
            human(checkpoints_kept * checkpoint_bytes),
            human(free),
        )


def prepare_output(folder: str | Path) -> None:
    """Create the run folder and prove it is writable, before anything else is written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"--model-output {folder} is not a writable folder ({reason}); pick another --model-output"
        ) from None


def disk_full(err: Exception) -> bool:
    """ENOSPC, or how torch and safetensors word it ("unexpected pos" / "file write failed")."""
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    text = str(err)
    return any(s in text for s in ("No space left", "unexpected pos", "file write failed", "os error 28"))


def describe_failure(err: Exception, output_dir: Path, needed: int) -> str:
    """Why a write under ``output_dir`` failed, in a few words (a full disk says how much is free)."""
    if disk_full(err):
        try:
            free = human(free_bytes(output_dir))
        except OSError:
            free = "unknown"
        return f"the disk under {output_dir} is full ({free} free, a checkpoint needs about {human(needed)})"
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or type(err).__name__}{where}"
    return f"{type(err).__name__}: {printable(str(err).splitlines()[0] if str(err) else '', 200)}".rstrip(": ")
