"""Reading a data file for the duplicate search: each usable recipe's record number, title, content key
and MinHash values, computed in worker processes.

A plain CSV is cut into byte ranges at record starts (``csv_ranges``, as the tokenizer cuts it) and
each forked worker reads, parses, normalises and hashes its ranges; any other file (JSON Lines,
Parquet, compressed...) is read in this process while the workers hash its batches. Either way the
rows, their record numbers and skip counts are those of ``readers.read_examples`` in one pass, and the
keys and digests those of ``dedup.signatures`` in one process (tests/data/test_dedup.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data import dedup
from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
from chef_genius.data.recipes import parse_target

log = logging.getLogger("chef_genius")


@dataclass
class Signed:
    """A file's usable recipes as the duplicate search needs them, in row order."""

    records: np.ndarray  # 1-based record number in the file
    titles: list[str]
    keys: np.ndarray  # uint64 content keys
    digests: np.ndarray  # (rows, NUM_PERM) uint32 MinHash values


def _signed(examples, stats: ReadStats) -> Signed:
    """Hash ``examples`` (an iterator that counts into ``stats``) in one process."""
    records, titles, normals = [], [], []
    for example in examples:
        records.append(stats.rows)  # counted before the row is yielded: its record number
        recipe = parse_target(example["target"])
        titles.append(recipe.title[:120])  # a pair file's "title" may be its whole text
        normals.append(dedup.normal_form(example["target"], recipe))
    keys, digests = dedup.signatures(None, normals)
    return Signed(np.array(records, dtype=np.int64), titles, keys, digests)


def _joined(parts: list) -> Signed:
    """The parts as one, in order; each part's digests are let go once copied (``parts`` is emptied),
    so the peak is the whole once plus one part, not twice the whole."""
    records = np.concatenate([p.records for p in parts]) if parts else np.zeros(0, np.int64)
    keys = np.concatenate([p.keys for p in parts]) if parts else np.zeros(0, np.uint64)
    titles = [t for p in parts for t in p.titles]
    digests = np.empty((len(keys), dedup.NUM_PERM), dtype=np.uint32)
    at = 0
    while parts:
        part = parts.pop(0)
        digests[at : at + len(part.keys)] = part.digests
        at += len(part.keys)
        del part
    return Signed(records, titles, keys, digests)


_shared: dict = {}


def _signed_range(index: int) -> tuple[int, int, Signed, bool]:
    """Range ``index`` of the cut CSV: (index, records read, its rows, whether its cut was a record start)."""
    from chef_genius.data.csv_ranges import Cut, read_range

    plan, options = _shared["plan"], _shared["options"]
    stats, cut = ReadStats(), Cut()
    signed = _signed(read_range(plan, index, stats, options, cut), stats)
    return index, stats.rows, signed, bool(cut.ok)


def _signed_batch(targets: list[str]) -> Signed:
    stats = ReadStats()
    return _signed(({"target": t} for t in targets), stats)


def read_signed(path, options: ReadOptions, num_proc: int = 0) -> Signed:
    """The usable recipes of ``path`` with their record numbers, titles, content keys and digests: the
    rows and record numbers of ``readers.read_examples`` in one pass. A plain CSV is cut into byte
    ranges (``csv_ranges``) that worker processes read and hash; any other file is read here while the
    workers hash its batches."""
    import multiprocessing

    from chef_genius.data import preprocess
    from chef_genius.data.csv_ranges import plan_csv

    procs = num_proc or preprocess.available_cpus()
    size = Path(path).stat().st_size
    if "fork" not in multiprocessing.get_all_start_methods() or size < preprocess.RANGE_BYTES:
        procs = 1  # a small file is hashed before a pool would have started
    plan = plan_csv(path, options, max(1, size // preprocess.RANGE_BYTES)) if procs > 1 else None
    if plan is not None and len(plan.ranges) > 1:
        _shared.update(plan=plan, options=options)
        try:
            with preprocess._pool(min(procs, len(plan.ranges))) as pool:
                done = sorted(pool.imap_unordered(_signed_range, range(len(plan.ranges))), key=lambda r: r[0])
        finally:
            _shared.clear()
        if all(ok for *_, ok in done):
            offset = 0
            for _, rows, signed, _ in done:  # record numbers count from the file's first record
                signed.records += offset
                offset += rows
            parts = [signed for _, _, signed, _ in done]
            del done
            return _joined(parts)
        log.info("%s: a quote outside a quoted field; reading it in one pass", Path(path).name)
    stats = ReadStats()
    if procs <= 1:
        return _signed(read_examples(path, stats, options), stats)
    # one reader here, the hashing in the workers; each batch's record numbers are taken here
    from chef_genius.data.preprocess import BATCH_ROWS

    parts, records, batch = [], [], []
    with preprocess._pool(procs) as pool:
        for example in read_examples(path, stats, options):
            records.append(stats.rows)
            batch.append(example["target"])
            if len(batch) == BATCH_ROWS:
                parts.append(pool.apply_async(_signed_batch, (batch,)))
                batch = []
        if batch:
            parts.append(pool.apply_async(_signed_batch, (batch,)))
        results = [p.get() for p in parts]
        del parts
        joined = _joined(results)
    joined.records = np.array(records, dtype=np.int64)
    return joined
