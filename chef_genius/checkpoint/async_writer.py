"""The checkpoint manager's writer: CPU copies of the state, and one background thread that writes.

Every save is written by this thread (``chef_genius/checkpoint/manager.py``): a synchronous save
waits for it at once, an ``--async-save`` one lets training go on. For the latter, the step that
saves only copies the state to CPU memory (``snapshot``), so training cannot change what is being
written. The files are the same bytes either way. The copies go into host memory reused from one save
to the next (allocated at the first one): a few flat buffers per snapshot (``HostBuffers``), sliced into
one view per tensor. One pinned buffer per tensor would waste a third: torch's pinned allocator rounds
each allocation up to a power of two (about 11 GiB held for FLAN-T5-large's 8.75 GiB of weights and
AdamW moments); the flat buffers are 256 MiB each (a power of two, so nothing is rounded) with the
tensors packed largest first, plus a rounded tail (``pack``).
- on CPU, pageable memory, copied in the training thread;
- on CUDA, pinned memory, copied on a side stream: the training thread only queues the copies. If the
  pinned allocation fails (a 16-32 GB PC, Windows' limits on page-locked memory), the buffers are
  pageable instead, with one warning: each copy then blocks the training thread until it is done. The
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
import math
import threading
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1
_PLAIN = (int, float, bool, str, bytes, type(None))
SEGMENT_BYTES = 256 * 2**20  # one flat buffer (a power of two: the pinned allocator rounds up to one)
ALIGN = 256  # each tensor's offset in its buffer: any dtype, and the copies' best alignment


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def power_of_two_at_least(n: int) -> int:
    """What torch's pinned (host caching) allocator reserves for an ``n``-byte request."""
    return 1 << max(n - 1, 0).bit_length()


def pack(
    sizes: dict[str, int], segment: int = SEGMENT_BYTES, align: int = ALIGN
) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """Place tensors of ``sizes`` bytes into flat buffers: (bytes used in each buffer, path -> (buffer,
    offset)). Largest first, each into the first buffer with room (a new one of ``segment`` bytes, or of
    the tensor's own size rounded to a power of two when it is larger); offsets are ``align``ed. Pure."""
    capacity: list[int] = []
    used: list[int] = []
    where: dict[str, tuple[int, int]] = {}
    for path in sorted(sizes, key=lambda p: -sizes[p]):
        size = _round_up(sizes[path], align)
        for i, free_at in enumerate(used):
            if free_at + size <= capacity[i]:
                break
        else:
            i = len(used)
            capacity.append(max(segment, power_of_two_at_least(size)))
            used.append(0)
        where[path] = (i, used[i])
        used[i] += size
    return used, where


def _allocate(nbytes: int, pin: bool) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)


class HostBuffers:
    """Host memory for one snapshot's tensors: ``pack``ed flat buffers, one view per tensor path.

    ``pin``: page-locked (for asynchronous copies from CUDA); when that allocation fails, pageable
    memory instead (``pinned`` False), which the caller says once."""

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], torch.dtype]], pin: bool, allocate=None):
        allocate = allocate or _allocate
        self.specs, self.pin = specs, pin
        sizes = {path: math.prod(shape) * dtype.itemsize for path, (shape, dtype) in specs.items()}
        used, self._where = pack(sizes)
        self.tensor_bytes = sum(sizes.values())
        self.pinned = pin
        self.error: BaseException | None = None
        self._segments: list[torch.Tensor] = []
        if pin:
            try:
                self._segments = [allocate(n, True) for n in used]
            except (RuntimeError, MemoryError) as err:  # the pinned allocator's out-of-memory
                self._segments, self.pinned, self.error = [], False, err
        if not self._segments and used:
            self._segments = [allocate(n, False) for n in used]
        self._arrays = [segment.numpy() for segment in self._segments]  # buffer-protocol windows for view()
        # what the allocator holds: pinned blocks are rounded up to a power of two, pageable ones are not
        self.held_bytes = sum(power_of_two_at_least(n) if self.pinned else n for n in used)

    def serves(self, specs: dict, pin: bool) -> bool:
        return specs == self.specs and pin == self.pin

    def view(self, path: str) -> torch.Tensor:
        """``path``'s tensor in its buffer, with a storage of its own bytes only (a slice of the flat
        buffer would share its storage: ``torch.save`` would then write the whole buffer, and refuses
        views of one storage as different dtypes). It keeps its buffer alive."""
        shape, dtype = self.specs[path]
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        segment, offset = self._where[path]
        return torch.frombuffer(self._arrays[segment][offset : offset + nbytes], dtype=dtype).view(shape)

    def __len__(self) -> int:
        return len(self._segments)


class AsyncCheckpointer:
    def __init__(self):
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._buffers: dict[str, HostBuffers] = {}  # by snapshot prefix ("model", "state")
        self._pin_failed = False  # a pinned allocation failed once: pageable from then on, said once
        self._stream = None  # the side CUDA stream of the copies (made at the first CUDA snapshot)
        self._copied: list = []  # CUDA events of the copies the next write must wait for

    # -- copying --------------------------------------------------------------------------------

    def snapshot(self, value, prefix: str = ""):
        """A copy of ``value`` (nested dicts / lists / tuples of tensors and plain values) whose tensors
        live in CPU memory owned by this object; tensors sharing storage stay shared in the copy."""
        self.wait()  # the previous write may still read the buffers
        specs: dict = {}
        cuda = self._plan(value, prefix, specs, set())
        buffers = self._buffers_for(prefix, specs, pin=cuda)
        memo: dict = {"_buffers": buffers}
        with _one_thread():
            copied = self._copy(value, prefix, memo)
        if memo.get("_cuda"):
            done = torch.cuda.Event()
            done.record(self._stream)
            torch.cuda.current_stream().wait_event(done)  # the next step's kernels wait for the copy, on the GPU
            self._copied.append(done)
        return copied

    def _plan(self, value, path: str, specs: dict, seen: set) -> bool:
        """Fill ``specs`` (path -> (shape, dtype)) with the tensors ``_copy`` will put into host buffers,
        visited as ``_copy`` visits them; True if any is on a CUDA device."""
        if isinstance(value, torch.Tensor):
            key = _key(value)
            if key in seen or (value.device.type != "cuda" and not value.is_contiguous()):
                return False  # shared with one already planned; a strided CPU tensor is copied as it is
            seen.add(key)
            specs[path] = (tuple(value.shape), value.dtype)
            return value.device.type == "cuda"
        cuda = False
        if isinstance(value, dict):
            for k, v in value.items():
                cuda |= self._plan(v, f"{path}/{k}", specs, seen)
        elif isinstance(value, (list, tuple)) and not all(type(v) in _PLAIN for v in value):
            for i, v in enumerate(value):
                cuda |= self._plan(v, f"{path}/{i}", specs, seen)
        return cuda

    def _buffers_for(self, prefix: str, specs: dict, pin: bool) -> HostBuffers:
        """The host buffers of ``prefix``'s snapshots: the same as last time unless the tensors changed."""
        buffers = self._buffers.get(prefix)
        if buffers is not None and buffers.serves(specs, pin):
            return buffers
        self._buffers.pop(prefix, None)  # freed before the new ones are taken
        buffers = HostBuffers(specs, pin and not self._pin_failed)
        if buffers.error is not None:
            self._pin_failed = True
            log.warning(
                "could not pin %.2f GiB of host memory for asynchronous checkpoints (%s): using pageable "
                "memory, so each save's copy to the CPU holds up training until it is done",
                buffers.tensor_bytes / 2**30,
                str(buffers.error).strip().splitlines()[0][:160],
            )
        elif buffers.pinned:
            log.info(
                "asynchronous checkpoints: %.2f GiB of pinned host memory in %d buffers for %.2f GiB of %s tensors",
                buffers.held_bytes / 2**30,
                len(buffers),
                buffers.tensor_bytes / 2**30,
                prefix or "snapshot",
            )
        self._buffers[prefix] = buffers
        return buffers

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
        key = _key(tensor)
        if key in memo:
            return memo[key]
        if tensor.device.type == "cuda":
            copy = self._copy_from_cuda(tensor, path, memo)
        elif not tensor.is_contiguous():
            copy = tensor.to("cpu", copy=True)
        else:
            copy = memo["_buffers"].view(path).copy_(tensor)
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
            # into pageable memory (the pinned allocation failed) the copy returns once it is done
            return memo["_buffers"].view(path).copy_(source, non_blocking=True)

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


def _key(tensor: torch.Tensor) -> tuple:
    """Tensors with the same key are the same values (shared storage stays shared in a snapshot)."""
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
        tensor.device,
    )


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
