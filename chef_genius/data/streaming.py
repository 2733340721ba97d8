"""``--streaming``: train on a file larger than the disk cache, tokenizing as it is read.

Nothing is written to the tokenized cache; the file is read row by row in the loader worker, so
memory stays bounded by one length group. What it gives up, compared with the cached path:
- global shuffling: the epoch order is the file order, shuffled and length-sorted only within
  consecutive groups of ``--length-group-size`` recipes (seeded by seed, epoch and group), so length
  grouping is local, not over a random sample of the whole file;
- a held-out split: validation needs ``--eval-data`` (without it there is no validation);
- parallel loading: one loader worker at most (it reads the file in order);
- a free epoch length: the first start counts the usable rows once (parsing, no tokenizing; with
  ``--dedup`` the duplicate decision's read counts them) and keeps the count in the cache folder, so
  the LR schedule and progress are still exact.

On several processes every rank reads the whole file and keeps its share of each global
micro-batch, split and padded at an epoch's end exactly as on the cached path (data/shares.py),
so every recipe is trained on once per epoch over all ranks.

Resume stays exact: the order of epoch E is a pure function of (file, seed, E, group size), and a
resumed run re-reads the file up to its position, skipping the rows before its length group without
tokenizing them. That skip costs a parse of the rows before the position (not index arithmetic).

Several sources (``--data a.csv b.jsonl:0.5``, ``data/mixture.py``) are interleaved, not concatenated:
each source contributes the samples its weight gives it (``Mixture.rows``: whole passes over the file,
then the drawn rows, read in file order), and which source the next sample comes from follows a
seeded permutation of the epoch's source labels (``interleave``), so every stretch of the stream holds
the sources in about their shares. The stream is still a pure function of the files, seed and epoch,
so resume stays exact. A sample's index is its place in the epoch's stream (with one file: its row).
Duplicates are removed as on the cached path (``--dedup``, default remove): each source's decision and
the one across sources are made before the first step (a read of each file with MinHash in worker
processes, kept in the cache root under ``stream-NAME-KEY/``, no tokenizing) and the stream skips the
removed rows: ``kept`` gives, per source, the usable rows it trains on, and a sample's row is its index
there. There is still no validation split (``--eval-data`` gives one, and its recipes' twins leave
training as on the cached path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from chef_genius.data.mixture import Mixture
from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
from chef_genius.data.sampler import ResumableBatchSampler
from chef_genius.data.shares import ShareCollator, ShareDataset, rank_share


def count_rows(path: str | Path, cache_root: str | Path, options: ReadOptions = ReadOptions()) -> int:
    """Usable recipes in ``path``, counted once and remembered by the file's fingerprint, its content
    (an edit that keeps the size and time changes the count) and the ``--columns`` mapping (which
    decides which rows are usable). An unreadable memo is counted again."""
    from chef_genius.data.fingerprint import content_sha256, file_fingerprint

    fingerprint = file_fingerprint(path)
    memo = Path(cache_root) / "stream-counts.json"
    try:
        known = json.loads(memo.read_text()) if memo.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    key = json.dumps({**fingerprint, "sha256": content_sha256(path), "columns": options.columns}, sort_keys=True)
    if key not in known:
        stats = ReadStats()
        known[key] = sum(1 for _ in read_examples(path, stats, options))
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(known))
    return known[key]


_INTERLEAVE = 0x1A7E  # the interleave's own random stream


def interleave(per_epoch: list[int], seed: int, epoch: int) -> np.ndarray:
    """Which source each sample of the epoch's stream comes from: source i ``per_epoch[i]`` times, in a
    seeded order (pure). One source: all zeros, no draw."""
    labels = np.repeat(np.arange(len(per_epoch), dtype=np.int16), per_epoch)
    if len(per_epoch) < 2:
        return labels
    return np.random.default_rng([seed, epoch, _INTERLEAVE]).permutation(labels)


def _source_rows(path: str, wanted: np.ndarray, options: ReadOptions):
    """The usable recipes of ``path`` at rows ``wanted`` (ascending within each pass over the file; a
    smaller row than the last starts another pass), as ``read_examples`` yields them."""
    rows, at = None, -1  # at: the row ``rows`` yielded last
    for want in wanted.tolist():
        if rows is None or want <= at:
            rows, at = read_examples(path, ReadStats(), options), -1
        example = None
        while at < want:
            example, at = next(rows, None), at + 1
            if example is None:
                return  # the file has fewer rows than counted (it changed): the stream ends early
        yield example


def mixed_examples(
    paths: list[str], mixture: Mixture, seed: int, epoch: int, options: ReadOptions = ReadOptions(), kept=None
):
    """The epoch's examples of ``paths`` (the sources in canonical order) as one stream (pure order):
    each source's samples (``mixture.rows``) taken in the order ``interleave`` gives. ``kept``: per
    source, the usable rows trained on (the others are duplicates); None: every row."""
    if len(paths) == 1 and mixture.plain and kept is None:  # one file of weight 1: the file, once, as it is read
        yield from read_examples(paths[0], ReadStats(), options)
        return
    rows, bounds = mixture.rows(seed, epoch), np.concatenate([[0], np.cumsum(mixture.per_epoch)])
    offsets = mixture.offsets

    def usable(i: int) -> np.ndarray:
        mine = rows[bounds[i] : bounds[i + 1]] - offsets[i]
        return mine if kept is None else np.asarray(kept[i])[mine]

    streams = [_source_rows(path, usable(i), options) for i, path in enumerate(paths)]
    for label in interleave(mixture.per_epoch, seed, epoch).tolist():
        example = next(streams[label], None)
        if example is None:
            return
        yield example


class StreamingRows:
    """Stands in for the dataset where only the number of rows is needed."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows

    def __len__(self) -> int:
        return self.num_rows


class StreamingSampler(ResumableBatchSampler):
    """The position of a streamed epoch: the resumable sampler's bookkeeping, with the order made
    while reading (the stream is not indexable)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        group_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        mixture: Mixture | None = None,
    ):
        super().__init__(num_samples, batch_size, seed, None, group_size, num_replicas, rank, mixture)


def group_order(lengths: np.ndarray, seed: int, epoch: int, group: int) -> np.ndarray:
    """Order of one length group: a seeded permutation, then longest first (pure)."""
    order = np.random.default_rng([seed, epoch, group]).permutation(len(lengths))
    return order[np.argsort(-lengths[order], kind="stable")]


class StreamingDataset(torch.utils.data.IterableDataset):
    """Yields this rank's collated micro-batches of the sampler's epoch, from its position on.

    ``collate`` is the plain collator of ``(input_ids, labels)`` items; the stream splits each
    global micro-batch into rank shares, pads an empty share and adds ``sample_index`` itself, with
    the cached path's ``shares.ShareDataset`` / ``ShareCollator``.
    """

    def __init__(
        self,
        path,
        tokenizer,
        max_source_length: int,
        max_target_length: int,
        sampler: StreamingSampler,
        collate,
        options: ReadOptions = ReadOptions(),
        mixture: Mixture | None = None,
        kept: list[np.ndarray] | None = None,
    ):
        """``path``: the file, or the sources' files in canonical order with their ``mixture``; ``kept``:
        per source, the usable rows trained on (``mixed_examples``)."""
        self.kept = kept
        self.paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
        self.mixture = mixture if mixture is not None else Mixture((sampler.num_samples,), (1.0,))
        self.tokenizer, self.sampler, self.options = tokenizer, sampler, options
        self.collate = ShareCollator(collate)
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def _examples(self):
        """(sample index, input_ids, labels) of the epoch in order, from the sampler's position on.

        A sample's index is its row among the file's usable recipes (0-based), as the cached path's
        index is its row of the training set: ``sample_index`` and the sample log mean the same.
        """
        s = self.sampler
        first_group, skip = divmod(s.start, s.group_size)
        rows = mixed_examples(self.paths, self.mixture, s.seed, s.epoch, self.options, self.kept)
        for _ in range(first_group * s.group_size):  # parsed, not tokenized
            if next(rows, None) is None:
                return
        group = first_group
        while True:
            chunk = [row for _, row in zip(range(s.group_size), rows)]
            if not chunk:
                return
            sources = self.tokenizer([r["source"] for r in chunk], max_length=self.max_source_length, truncation=True)[
                "input_ids"
            ]
            targets = self.tokenizer(
                text_target=[r["target"] for r in chunk], max_length=self.max_target_length, truncation=True
            )["input_ids"]
            lengths = np.array([len(a) + len(b) for a, b in zip(sources, targets)])
            for i in group_order(lengths, s.seed, s.epoch, group)[skip:]:
                yield group * s.group_size + int(i), sources[i], targets[i]
            group, skip = group + 1, 0

    def __iter__(self):
        s = self.sampler
        batch = {}  # the global micro-batch being read: sample index -> (input_ids, labels), in order
        for index, source, target in self._examples():
            batch[index] = (source, target)
            if len(batch) == s.global_batch_size:
                yield self._mine(batch)
                batch = {}
        if batch:
            yield self._mine(batch)

    def _mine(self, batch: dict):
        """This rank's share of a global micro-batch, padded and collated as on the cached path."""
        share = rank_share(list(batch), self.sampler.num_replicas, self.sampler.rank)
        rows = ShareDataset(batch)
        return self.collate([rows[i] for i in share])
