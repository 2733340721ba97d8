"""The checkpoint manager's writer: CPU copies of the state, and one background thread that writes.

Every save is written by this thread (``chef_genius/checkpoint/manager.py``): a synchronous save
waits for it at once, an ``--async-save`` one lets training go on. For the latter, the step that
saves only copies the state to CPU memory (``snapshot``), so training cannot change what is being
written. The files are the same bytes either way. The copies go into buffers reused from one save to
the next (allocated at the first one):
- on CPU, plain tensors, copied in the training thread;
- on CUDA, pinned memory, copied on a side stream: the training thread only queues the copies. The
  side stream first waits for the work already queued (the copy sees the weights of the step just
  taken); the training stream then waits, on the GPU, for the copy before its next kernels (the next
  step cannot change a weight before it is copied), and the writer thread waits for the copy's
  event before it reads a buffer. No host-device sync in the training thread.

- At most one write is in flight: a new one first waits for the previous one (the buffers are reused).
- An exception the write raises is raised again on the main thread by ``check`` / ``wait``.
- ``wait`` polls the thread instead of blocking on it, so a stop signal's handler runs meanwhile on
  the main thread (a second Ctrl+C can abort a save in progress).
- The thread is not a daemon: a process that ends while a write is in flight waits for it. The
  manager waits before any exit anyway, because the write needs threads of its own, which Python
  refuses once the interpreter shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1
_PLAIN = (int, float, bool, str, bytes, type(None))


class AsyncCheckpointer:
    def __init__(self):
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._stream = None    # the side CUDA stream of the copies (made at the first CUDA snapshot)
        self._copied: list = []  # CUDA events of the copies the next write must wait for

    # -- copying --------------------------------------------------------------------------------

    def snapshot(self, value, prefix: str = ""):
        """A copy of ``value`` (nested dicts / lists / tuples of tensors and plain values) whose tensors
        live in CPU memory owned by this object; tensors sharing storage stay shared in the copy."""
        self.wait()  # the previous write may still read the buffers
        memo: dict = {}
        with _one_thread():
            copied = self._copy(value, prefix, memo)
        if memo.get("_cuda"):
            done = torch.cuda.Event()
            done.record(self._stream)
            torch.cuda.current_stream().wait_event(done)  # the next step's kernels wait for the copy, on the GPU
            self._copied.append(done)
        return copied

    def _copy(self, value, path: str, memo: dict):
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value, path, memo)
        if isinstance(value, dict):
            return {k: self._copy(v, f"{path}/{k}", memo) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if all(type(v) in _PLAIN for v in value):  # e.g. an RNG state: no need to visit each value
                return list(value) if isinstance(value, list) else tuple(value)
            copied = [self._copy(v, f"{path}/{i}", memo) for i, v in enumerate(value)]
            return copied if isinstance(value, list) else tuple(copied)
        return value

    def _copy_tensor(self, tensor: torch.Tensor, path: str, memo: dict) -> torch.Tensor:
        tensor = tensor.detach()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype, tensor.device)
        if key in memo:
            return memo[key]
        if tensor.device.type == "cuda":
            copy = self._copy_from_cuda(tensor, path, memo)
        elif not tensor.is_contiguous():
            copy = tensor.to("cpu", copy=True)
        else:
            copy = self._buffer(tensor, path, pin=False).copy_(tensor)
        memo[key] = copy
        return copy

    def _copy_from_cuda(self, tensor: torch.Tensor, path: str, memo: dict) -> torch.Tensor:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        if not memo.get("_cuda"):  # the first CUDA tensor of this snapshot: after the work already queued
            self._stream.wait_stream(torch.cuda.current_stream())
            memo["_cuda"] = True
        with torch.cuda.stream(self._stream):
            tensor.record_stream(self._stream)  # its memory is not reused before the copy has read it
            source = tensor.contiguous()
            return self._buffer(source, path, pin=True).copy_(source, non_blocking=True)

    def _buffer(self, tensor: torch.Tensor, path: str, pin: bool) -> torch.Tensor:
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
            self._buffers[path] = buffer
        return buffer

    # -- writing --------------------------------------------------------------------------------

    def submit(self, write: Callable[[], object], what: str) -> None:
        """Run ``write()`` in the background once the previous write has finished."""
        self.wait()
        done = threading.Event()
        copied, self._copied = self._copied, []

        def run():
            try:
                for event in copied:  # the CUDA copies into the buffers are finished
                    event.synchronize()
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


@contextlib.contextmanager
def _one_thread():
    """Copies of many tensors on CPU: split over torch's threads, each waits at a barrier for all of
    them, which on a busy machine costs far more than the copy (measured: 4x the median, seconds at
    worst, on 2 loaded cores). One thread copies at memory speed. No write is in flight meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
