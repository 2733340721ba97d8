"""Checkpoints written in the background (``--async-save``).

The step that saves only copies the state to CPU memory (pinned buffers on CUDA, reused from one
save to the next, one device sync for all of them); a background thread then writes the copy with
``checkpoint.write_checkpoint``, so the crash safety is the sync save's: staging folder, fsync,
manifest last, rename. The files are the same bytes a synchronous save writes.

- At most one save is in flight: a new save first waits for the previous one (the buffers are reused).
- An error of the background write is raised again on the main thread, at the next step that checks
  (``check``), the next save or the end of the run (``wait``), as the exception the write raised.
- The run waits for the last write before it ends; the thread is not a daemon, so even a crash in
  the main thread lets the write finish (or a killed process leaves only a staging folder, which the
  next start removes).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import torch

log = logging.getLogger(__name__)


class AsyncCheckpointer:
    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: dict[str, torch.Tensor] = {}

    # -- copying --------------------------------------------------------------------------------

    def snapshot(self, value, prefix: str = ""):
        """A copy of ``value`` (nested dicts / lists / tuples of tensors and plain values) whose tensors
        live in CPU memory owned by this object; tensors sharing storage stay shared in the copy."""
        self.wait()  # the previous write may still read the buffers
        memo: dict = {}
        copied = self._copy(value, prefix, memo)
        if any(t.device.type == "cuda" for t in memo.get("_sources", ())):
            torch.cuda.synchronize()
        memo.clear()
        return copied

    def _copy(self, value, path: str, memo: dict):
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value, path, memo)
        if isinstance(value, dict):
            return {k: self._copy(v, f"{path}/{k}", memo) for k, v in value.items()}
        if isinstance(value, list):
            return [self._copy(v, f"{path}/{i}", memo) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(self._copy(v, f"{path}/{i}", memo) for i, v in enumerate(value))
        return value

    def _copy_tensor(self, tensor: torch.Tensor, path: str, memo: dict) -> torch.Tensor:
        tensor = tensor.detach()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype, tensor.device)
        if key in memo:
            return memo[key]
        if not tensor.is_contiguous():
            copy = tensor.to("cpu", copy=True)
        else:
            buffer = self._buffers.get(path)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                pin = tensor.device.type == "cuda"
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
                self._buffers[path] = buffer
            copy = buffer.copy_(tensor, non_blocking=tensor.device.type == "cuda")
        memo[key] = copy
        memo.setdefault("_sources", []).append(tensor)
        return copy

    # -- writing --------------------------------------------------------------------------------

    def submit(self, write: Callable[[], object], what: str) -> None:
        """Run ``write()`` in the background once the previous write has finished."""
        self.wait()

        def run():
            try:
                write()
            except BaseException as err:  # surfaced on the main thread by check() / wait()
                log.error("background save of %s failed: %s", what, err)
                self._error = err

        self._thread = threading.Thread(target=run, name=f"chef-genius-save-{what}", daemon=False)
        self._thread.start()

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Raise the error of a finished background write, if any (cheap: no waiting)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        """Wait for the write in flight, then raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check()

    def release(self) -> None:
        """Wait, then free the CPU buffers."""
        self.wait()
        self._buffers.clear()
