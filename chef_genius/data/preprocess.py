"""Parsing and tokenizing a data file into the Arrow parts of the tokenized cache, on all cores.

- A plain UTF-8 CSV is cut into byte ranges at record starts (``csv_ranges.py``); each worker
  process parses its ranges, tokenizes them (``encode.Encoder``) and writes each as one Arrow part,
  so the cache is written once and nothing passes between processes but counts. If a cut turns out
  not to be a record start (a stray quote), the parts are dropped and the file is read in one pass.
- Any other file (JSON Lines, Parquet, compressed, zipped, UTF-16...) is parsed in this process,
  in file order, while the workers tokenize its batches; this process writes them as one part.

Either way the rows, their order and the skip counts are those of ``readers.read_examples`` in one
pass, and the ids those of ``tokenizer(..., truncation=True)``. Workers are forked (as ``datasets``
did): they share the tokenizer without pickling it; where fork is missing, one process does it all.
A person sees progress (``monitoring.progress.CountProgress``): a bar on a terminal, else a line at
least every 30 s with the rate and the ETA.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from pathlib import Path

from chef_genius.data.csv_ranges import Cut, plan_csv, read_range
from chef_genius.data.encode import Encoder
from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
from chef_genius.monitoring.progress import CountProgress

log = logging.getLogger("chef_genius")

BATCH_ROWS = 1000
RANGE_BYTES = 16 << 20  # a range of a cut CSV: a part of the cache, a unit of progress
POLL_SECONDS = 0.5


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def schema():
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    # *_full_len: the length before truncation at the max lengths (the truncation report)
    return pa.schema(
        [
            ("input_ids", ids),
            ("labels", ids),
            ("source_len", pa.int32()),
            ("target_len", pa.int32()),
            ("source_full_len", pa.int32()),
            ("target_full_len", pa.int32()),
        ]
    )


def build_parts(
    data_path,
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    folder: Path,
    num_proc: int = 0,
    options: ReadOptions = ReadOptions(),
    progress: str = "auto",
    range_bytes: int | None = None,
) -> tuple[ReadStats, list[str]]:
    """Write the tokenized rows of ``data_path`` as Arrow parts into ``folder``; (stats, part names in
    row order). ``num_proc``: worker processes (0: one per available core)."""
    range_bytes = range_bytes or RANGE_BYTES
    size = Path(data_path).stat().st_size
    procs = num_proc or available_cpus()
    if "fork" not in multiprocessing.get_all_start_methods() or size < range_bytes:
        procs = 1  # a small file is read before a pool would have started
    encoders = (Encoder(tokenizer, max_source_length), Encoder(tokenizer, max_target_length, target=True))
    plan = plan_csv(data_path, options, size // range_bytes) if procs > 1 else None
    name = Path(data_path).name
    if plan is not None:
        done = _in_ranges(plan, encoders, folder, min(procs, len(plan.ranges)), options, progress, name)
        if done is not None:
            return done
        log.info("%s: a quote outside a quoted field; reading it in one pass", name)
        for part in folder.glob("part-*.arrow"):
            part.unlink()
    return _in_one_pass(data_path, encoders, folder, procs, options, progress, name)


# -- a cut CSV: each worker parses, tokenizes and writes its ranges ------------------------------------
_shared: dict = {}


def _pool(procs: int):
    """Forked workers that each tokenize on one core (the processes are the parallelism). The variable
    is set while forking only: it keeps this process's own threads, and spares each worker the
    tokenizers library's warning about a fork after its threads ran."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return multiprocessing.get_context("fork").Pool(procs, initializer=_start_worker, initargs=(os.getpid(),))
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _start_worker(parent: int) -> None:
    # Ctrl-C is the parent's to handle; a trainer's SIGTERM handler must not keep a worker alive. The
    # parent ends its pool on the way out of a stop (the pool's ``with``); a parent killed outright
    # (SIGKILL, the OOM killer) cannot, so on Linux the kernel ends the worker when its parent dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_with_parent(parent)


def _end_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call: nobody would end this worker
        os._exit(1)


def _range_part(index: int) -> tuple[int, dict, int, bool]:
    """Parse, tokenize and write range ``index``: (index, stats, rows written, cut ok)."""
    plan, encoders, folder, options, done = (_shared[k] for k in ("plan", "encoders", "folder", "options", "done"))
    stats, cut = ReadStats(), Cut()
    where = [0]

    def moved(position: int) -> None:
        where[0] = position

    rows = _write_part(
        folder / _part_name(index),
        read_range(plan, index, stats, options, cut, moved),
        encoders,
        lambda: done.__setitem__(index, where[0]),
    )
    return index, stats.to_dict(), rows, bool(cut.ok)


def _in_ranges(plan, encoders, folder: Path, procs: int, options, progress: str, name: str):
    context = multiprocessing.get_context("fork")
    done = context.Array("q", len(plan.ranges), lock=False)  # bytes read per range, for progress only
    _shared.update(plan=plan, encoders=encoders, folder=folder, options=options, done=done)
    total = plan.ranges[-1][1] - plan.ranges[0][0]
    results = {}
    try:
        total_mb = max(1, total >> 20)
        with (
            CountProgress(f"tokenizing {name}", total_mb, mode=progress, unit="MB", plural="MB") as shown,
            _pool(procs) as pool,
        ):
            pending = pool.map_async(_range_part, range(len(plan.ranges)), chunksize=1)
            while not pending.ready():
                pending.wait(POLL_SECONDS)
                shown.update(min(sum(done) >> 20, total_mb))
            for index, stats, rows, ok in pending.get():
                results[index] = (stats, rows, ok)
            shown.update(total_mb)
    finally:
        _shared.clear()
    if not all(ok for _, _, ok in results.values()):
        return None
    stats = _merged([results[i][0] for i in range(len(plan.ranges))])
    return stats, [_part_name(i) for i in range(len(plan.ranges)) if results[i][1]]


def _merged(parts: list[dict]) -> ReadStats:
    merged = ReadStats()
    for part in parts:
        merged.rows += part["rows"]
        merged.kept += part["kept"]
        merged.skipped.update(Counter(part["skipped"]))
    return merged


def _part_name(index: int) -> str:
    return f"part-{index:05d}.arrow"


def _write_part(path: Path, examples, encoders, after_batch=lambda: None) -> int:
    """Tokenize ``examples`` in batches into one Arrow stream file; rows written (none: no file)."""
    import pyarrow as pa

    rows, writer = 0, None
    try:
        for batch in _batches(examples):
            record = _encode(batch, encoders)
            if writer is None:
                writer = pa.ipc.new_stream(str(path), schema())
            writer.write_batch(record)
            rows += record.num_rows
            after_batch()
    finally:
        if writer is not None:
            writer.close()
    return rows


def _batches(examples):
    batch = []
    for example in examples:
        batch.append(example)
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(batch: list[dict], encoders):
    import pyarrow as pa

    source, target = encoders
    sources, source_full = source.with_lengths([e["source"] for e in batch])
    targets, target_full = target.with_lengths([e["target"] for e in batch])
    ids = pa.list_(pa.int32())
    return pa.record_batch(
        [
            pa.array(sources, ids),
            pa.array(targets, ids),
            pa.array([len(s) for s in sources], pa.int32()),
            pa.array([len(t) for t in targets], pa.int32()),
            pa.array(source_full, pa.int32()),
            pa.array(target_full, pa.int32()),
        ],
        schema=schema(),
    )


# -- any other file: parsed here in order, tokenized by the workers -----------------------------------
def _encode_in_worker(batch: list[dict]):
    return _encode(batch, _shared["encoders"])


def _in_one_pass(data_path, encoders, folder: Path, procs: int, options, progress: str, name: str):
    stats = ReadStats()
    examples = read_examples(data_path, stats, options)
    with CountProgress(f"tokenizing {name}", None, mode=progress, unit="row") as shown:
        counted = _counted(_batches(examples), shown)
        if procs <= 1:
            rows = _write_part(folder / _part_name(0), (e for batch in counted for e in batch), encoders)
        else:
            rows = _write_part_pooled(folder / _part_name(0), counted, encoders, procs)
    return stats, [_part_name(0)] if rows else []


def _counted(batches, shown):
    done = 0
    for batch in batches:
        done += len(batch)
        shown.update(done)
        yield batch


def _write_part_pooled(path: Path, batches, encoders, procs: int) -> int:
    """Batches tokenized by ``procs`` workers while this process parses the next ones; at most two
    batches a worker in flight, so memory stays flat however large the file."""
    import pyarrow as pa

    _shared["encoders"] = encoders
    rows, writer = 0, None
    try:
        with _pool(procs) as pool:
            flight: deque = deque()

            def drain(limit: int) -> None:
                nonlocal rows, writer
                while len(flight) > limit:
                    record = flight.popleft().get()
                    if writer is None:
                        writer = pa.ipc.new_stream(str(path), schema())
                    writer.write_batch(record)
                    rows += record.num_rows

            for batch in batches:
                flight.append(pool.apply_async(_encode_in_worker, (batch,)))
                drain(2 * procs)
            drain(0)
    finally:
        _shared.clear()
        if writer is not None:
            writer.close()
    return rows
