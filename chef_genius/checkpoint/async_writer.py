"""The checkpoint manager's writer: CPU copies of the state, and one background thread that writes.

Every save is written by this thread (``chef_genius/checkpoint/manager.py``): a synchronous save
waits for it at once, an ``--async-save`` one lets training go on. For the latter, the step that
saves only copies the state to CPU memory (``snapshot``: pinned buffers on CUDA, reused from one save
to the next, one device sync for all of them), so training cannot change what is being written.
The files are the same bytes either way.

- At most one write is in flight: a new one first waits for the previous one (the buffers are reused).
- An exception the write raises is raised again on the main thread by ``check`` / ``wait``.
- ``wait`` polls the thread instead of blocking on it, so a stop signal's handler runs meanwhile on
  the main thread (a second Ctrl+C can abort a save in progress).
- The thread is not a daemon: a process that ends while a write is in flight waits for it. The
  manager waits before any exit anyway, because the write needs threads of its own, which Python
  refuses once the interpreter shuts down.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import torch

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1


class AsyncCheckpointer:
    def __init__(self):
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
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
        done = threading.Event()

        def run():
            try:
                write()
            except BaseException as err:  # surfaced on the main thread by check() / wait()
                log.error("background save of %s failed: %s", what, err)
                self._error = err
            finally:
                done.set()

        self._done = done
        self._thread = threading.Thread(target=run, name=f"chef-genius-save-{what}", daemon=False)
        self._thread.start()

    @property
    def in_flight(self) -> bool:
        # an Event, not Thread.is_alive(): a join interrupted by a signal handler's exception can
        # leave the thread marked stopped while it still runs (CPython, bpo-45274)
        return self._thread is not None and not self._done.is_set()

    def check(self) -> None:
        """Raise the error of a finished background write, if any (cheap: no waiting)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        """Wait for the write in flight, then raise its error if it failed."""
        if self._thread is not None:
            while not self._done.wait(_POLL_SECONDS):  # signal handlers run between the polls
                pass
            self._thread.join()  # it is past its last step
            self._thread = None
        self.check()

    def release(self) -> None:
        """Wait, then free the CPU buffers."""
        self.wait()
        self._buffers.clear()
