"""The trainer's data: datasets, the resumable sampler and the loaders, built from the config.

- cached (default): each ``--data`` source tokenized once into the on-disk cache, deduplicated and
  split (``data/training_set.py``; or ``--eval-data``), length-grouped batches of the epoch's samples
  (weighted: ``data/mixture.py``) from ``ResumableBatchSampler``, padding rows for short last batches
  on several processes (``distributed.ShareDataset``);
- ``--streaming``: tokenized as it is read, several sources interleaved by weight
  (``data/streaming.py``); validation needs ``--eval-data``.

Loaders use a private seeded generator: their worker seeds must not draw from the global RNG, or a
resumed run would see another dropout stream than the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chef_genius.data import corpus, report, training_set
from chef_genius.data.training_set import TrainingSet
from chef_genius.data.mixture import Mixture, canonical, parse_sources
from chef_genius.data.readers import ReadOptions, encoding_hint
from chef_genius.data.tokenized import LABEL_PAD, Collator, RecipeDataset, load_settings_file
from chef_genius.data.sampler import ResumableBatchSampler, TokenBudgetSampler
from chef_genius.errors import DataError, UserError
from chef_genius.train import distributed as dist
from chef_genius.train import preemption

log = logging.getLogger("chef_genius")


@dataclass
class Data:
    train: Sized  # the training recipes (``len`` is what the trainer needs)
    eval: RecipeDataset | None
    sampler: ResumableBatchSampler  # owns the data position
    loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader | None
    records: DataRecords | None = None  # what the run folder gets once the run starts (rank 0; cached path)
    sources: list[dict] | None = None  # per-source counts of several sources (every rank; the checkpoint's)


@dataclass
class DataRecords:
    """The data summary, the removed rows and the training recipes' signatures, written into the run
    folder by ``write`` once setup has succeeded (a refused resume leaves the folder as it was)."""

    summary: dict
    training: TrainingSet
    cache_root: Path | None = None  # where the audit and signatures of this data and split are kept once

    def write(self, output: Path) -> None:
        """The summary; the audit and the signatures unless the folder holds them for this decision and
        split already (a resume: ``corpus.records_written``), linked or copied from the cache where they
        were written once (``training_set.records_in_cache``), else written here."""
        output = Path(output)
        (output / DATA_SUMMARY_FILE).write_text(json.dumps(self.summary, indent=2) + "\n", encoding="utf-8")
        ts = self.training
        stamp = training_set.records_stamp(ts)
        if not stamp or corpus.records_written(output, stamp):
            return  # no duplicate search (--dedup off), or a resume of the same data and split
        kept = training_set.records_in_cache(self.cache_root, ts, stamp) if self.cache_root is not None else None
        if kept is not None:
            training_set.place_records(kept, output)
        else:
            training_set.write_audit(output, ts)
            training_set.write_signatures(output, ts, stamp)
        if training_set.removed_any(ts):
            log.info("every duplicate found is listed in %s", output / corpus.AUDIT_FILE)


def cache_root_of(config, output: Path) -> Path:
    """``--cache-dir``, or ``.cache/tokenized`` beside the run folder."""
    return Path(config.cache_dir) if config.cache_dir else Path(output).parent / ".cache" / "tokenized"


def make_data(config, tokenizer, accelerator, output: Path, decoder_start: int) -> Data:
    cache_root = cache_root_of(config, output)
    collate = Collator(tokenizer.pad_token_id, decoder_start_token_id=decoder_start)
    if config.streaming:
        return _streaming(config, tokenizer, accelerator, cache_root, collate)
    return _cached(config, tokenizer, accelerator, cache_root, collate)


def read_options(c) -> ReadOptions:
    """How the run's files become examples: ``--columns`` and ``--source-template``."""
    return ReadOptions(c.columns, c.source_template)


def dedup_options(c) -> corpus.DedupOptions:
    """``--dedup`` and ``--dedup-threshold``."""
    return corpus.DedupOptions(c.dedup, c.dedup_threshold)


def _cached(c, tokenizer, accelerator, cache_root: Path, collate) -> Data:
    options, settings = read_options(c), dedup_options(c)
    with (
        _main_tokenizes_first(accelerator, lambda: training_set.is_ready(c, tokenizer, cache_root, options, settings)),
        _cache_errors(cache_root),
    ):
        evald = load_settings_file(c.eval_data, tokenizer, c, cache_root, options) if c.eval_data else None
        ts = training_set.training_set(c, tokenizer, cache_root, options, settings, evald is not None)
    for d in ts.sources:
        path, stats = d.source.path, d.tokenized.stats
        log.info("data %s: %s%s", path, _stats_line(stats), " (cached)" if d.tokenized.from_cache else "")
        if encoding_hint(stats):
            log.warning("%s: %s", path, encoding_hint(stats))
    if not len(ts.train):  # e.g. every recipe a twin of an --eval-data recipe: nothing left to train on
        read = sum(len(d.tokenized.dataset) for d in ts.sources)
        removed = sum(len(d.found.result.removed) + len(d.across) for d in ts.sources if d.found is not None)
        raise DataError(
            f"{_shown_data(c)}: no recipe is left to train on ({read} read, {removed} removed as "
            "duplicates or twins of held-out recipes, the rest held out for validation); check "
            "--eval-data and --eval-split-ratio, or pass --dedup off"
        )
    for d in ts.sources:
        if ts.several and not len(d.train_rows):
            log.warning("source %s: no recipe of it is left to train on; its weight adds nothing", d.source.path)
    train_data = RecipeDataset(ts.rows, ts.train)
    eval_data: RecipeDataset | None
    if evald is not None:
        eval_data = RecipeDataset(evald.dataset)
    else:
        eval_data = RecipeDataset(ts.rows, ts.eval) if len(ts.eval) else None
    counts = training_set.source_counts(ts) if ts.several or not ts.mixture.plain else None
    records = _report(c, ts, train_data, eval_data, accelerator, counts, cache_root)
    if eval_data is not None:
        eval_data = eval_subset(eval_data, c.eval_max_samples, c.seed)
    num_samples = ts.mixture.size
    sort_by = train_data.lengths() if c.group_by_length else None
    sampler: TokenBudgetSampler | ResumableBatchSampler
    if c.max_tokens_per_batch:
        sampler = TokenBudgetSampler(
            num_samples,
            c.max_tokens_per_batch,
            c.seed,
            sort_by,
            *train_data.source_target_lengths(),
            c.length_group_size,
            accelerator.num_processes,
            accelerator.process_index,
            ts.mixture,
        )
    else:
        sampler = ResumableBatchSampler(
            num_samples,
            c.batch_size,
            c.seed,
            sort_by,
            c.length_group_size,
            accelerator.num_processes,
            accelerator.process_index,
            ts.mixture,
        )
    collate = dist.ShareCollator(collate, LABEL_PAD)  # padding rows of short last batches, sample indices
    workers = c.dataloader_num_workers
    common = dict(
        collate_fn=collate,
        num_workers=workers,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=workers > 0,
    )
    if workers:
        common["worker_init_fn"] = preemption.ignore_in_worker
    loader = torch.utils.data.DataLoader(
        dist.ShareDataset(train_data), batch_sampler=sampler, generator=torch.Generator().manual_seed(c.seed), **common
    )
    eval_loader = _eval_loader(c, eval_data, accelerator, collate)
    return Data(train_data, eval_data, sampler, loader, eval_loader, records, counts)


def _streaming(c, tokenizer, accelerator, cache_root: Path, collate) -> Data:
    from chef_genius.data.streaming import StreamingDataset, StreamingRows, StreamingSampler, count_rows

    options, sources, settings = read_options(c), canonical(parse_sources(c.data)), dedup_options(c)
    paths = [s.path for s in sources]
    ts = None
    with accelerator.main_process_first():
        evald = load_settings_file(c.eval_data, tokenizer, c, cache_root, options) if c.eval_data else None
        if settings.active:  # the decisions, made once (rank 0 first) and read back by the other ranks
            ts = training_set.streamed_set(c, sources, cache_root, options, settings)
            rows = [len(d.found.result.keys) for d in ts.sources if d.found is not None]  # the usable rows
        else:
            rows = [count_rows(path, cache_root, options) for path in paths]
    for path, n in zip(paths, rows):
        if n == 0:
            raise DataError(f"{path}: no usable recipe in the file")
    mix = ts.mixture if ts is not None else Mixture(tuple(rows), tuple(s.weight for s in sources))
    if not mix.size:
        raise DataError(f"{_shown_data(c)}: no recipe is left to train on (every one a duplicate); pass --dedup off")
    for path, n, m in zip(paths, rows, mix.counts):
        note = f", {m} after removing duplicates" if m != n else ""
        log.info("streaming %s: %d usable recipes%s, tokenized as they are read (no cache)", path, n, note)
    per_source = training_set.streamed_counts(sources, mix, ts)
    if len(sources) > 1 or not mix.plain or ts is not None:
        for line in training_set.source_lines(per_source, c.dedup if ts is not None else "off"):
            log.info("%s", line)
    records = None
    if ts is not None and accelerator.is_main_process:
        summary = {"data": [s.spelled() for s in sources], "streaming": True, "dedup": c.dedup, "sources": per_source}
        records = DataRecords(summary, ts, cache_root)
    # one file of weight 1: recorded as it always was (the checkpoint's data identity only)
    counts = None if len(sources) == 1 and mix.plain else per_source
    sampler = StreamingSampler(
        mix.size,
        c.batch_size,
        c.seed,
        c.length_group_size,
        accelerator.num_processes,
        accelerator.process_index,
        mix,
    )
    # A streamed order is length-sorted within groups whatever the flag; the position records the
    # flag as given, as checkpoints always have.
    sampler.position.group_by_length = c.group_by_length
    kept = [d.train_rows for d in ts.sources] if ts is not None else None
    stream = StreamingDataset(
        paths, tokenizer, c.max_source_length, c.max_target_length, sampler, collate, options, mix, kept
    )
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=min(1, c.dataloader_num_workers),
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(c.seed),
    )
    eval_data = eval_subset(RecipeDataset(evald.dataset), c.eval_max_samples, c.seed) if evald is not None else None
    eval_loader = _eval_loader(c, eval_data, accelerator, dist.ShareCollator(collate, LABEL_PAD))
    return Data(StreamingRows(int(sum(mix.counts))), eval_data, sampler, loader, eval_loader, records, counts)


def _report(
    c, ts: TrainingSet, train_data: RecipeDataset, eval_data, accelerator, counts, cache_root: Path
) -> DataRecords | None:
    """The data summary, once (rank 0): in the log now, and what the run folder gets (``DataRecords``)."""
    if not accelerator.is_main_process:
        return None
    lengths = report.full_lengths(ts.rows, ts.train)
    lengths_report = report.lengths_report(lengths, c.max_source_length, c.max_target_length)
    summary = report.summarize_set(ts, len(train_data), len(eval_data) if eval_data is not None else 0, lengths_report)
    for line in report.summary_lines(summary):
        log.info("%s", line)
    for line in training_set.source_lines(counts or [], c.dedup):
        log.info("%s", line)
    for line in report.truncation_warnings(lengths_report):
        log.warning("%s", line)
    if counts is not None:
        summary["sources"] = counts
    return DataRecords(summary, ts, cache_root)


def _shown_data(c) -> str:
    return " ".join(c.data) if isinstance(c.data, list) else str(c.data)


DATA_SUMMARY_FILE = "data_summary.json"
EVAL_BATCH_FACTOR = 2  # no gradients, no optimizer state: an evaluation batch fits twice the training rows


def eval_subset(eval_data: RecipeDataset, cap: int, seed: int) -> RecipeDataset:
    """At most ``cap`` validation recipes (0: all), the same ones at every evaluation and on resume: a
    seeded choice, so the loss stays comparable from one evaluation to the next."""
    if not cap or len(eval_data) <= cap:
        return eval_data
    chosen = np.sort(np.random.default_rng([seed, 0xE7A1]).choice(len(eval_data), cap, replace=False))
    log.info("validation on a fixed %d of the %d held-out recipes (--eval-max-samples)", cap, len(eval_data))
    return RecipeDataset(eval_data.dataset, eval_data.indices[chosen])


def _eval_loader(c, eval_data: RecipeDataset | None, accelerator, collate) -> torch.utils.data.DataLoader | None:
    """The whole validation set in one length-sorted group (least padding; the order does not matter),
    in batches of ``EVAL_BATCH_FACTOR`` times the training batch.
    On several processes a rank whose share of the last batch is empty gets a padding row, which
    ``collate`` (a ``ShareCollator``) masks out, so no recipe counts twice in the validation loss."""
    if eval_data is None:
        return None
    sampler = ResumableBatchSampler(
        len(eval_data),
        c.batch_size * EVAL_BATCH_FACTOR,
        c.seed,
        eval_data.lengths(),
        len(eval_data),
        accelerator.num_processes,
        accelerator.process_index,
    )
    # the private generator: even without workers an iterator draws a base seed from it, never from
    # the global RNG that the training steps' dropout uses
    return torch.utils.data.DataLoader(
        dist.ShareDataset(eval_data),
        batch_sampler=sampler,
        collate_fn=collate,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(c.seed),
    )


@contextlib.contextmanager
def _main_tokenizes_first(accelerator, cached, poll_s: float = 2.0):
    """Rank 0 tokenizes into the cache, then the other ranks map it. They wait by watching the file
    system, not at a collective: a first tokenization of millions of rows takes longer than the process
    group's timeout (NCCL: 10 minutes). The barrier afterwards is short: everyone has the cache then.
    If rank 0 fails, its launcher (torchrun / accelerate launch) ends the waiting ranks."""
    if accelerator.num_processes == 1:
        yield
        return
    if not accelerator.is_main_process:
        waited = time.monotonic()
        while not cached():
            time.sleep(poll_s)
            if time.monotonic() - waited > 60:
                log.warning("waiting for rank 0 to tokenize the data into the cache")
                waited = time.monotonic()
    yield
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _cache_errors(cache_root: Path):
    try:
        yield
    except OSError as err:
        where = Path(err.filename) if err.filename else cache_root
        reason = err.strerror or type(err).__name__
        if where == cache_root or cache_root in where.parents or not where.exists():
            raise UserError(
                f"cannot write the tokenized-data cache at {where} ({reason}); pass a writable --cache-dir"
            ) from None
        raise DataError(f"cannot read {where} ({reason})") from None


def _stats_line(stats: dict) -> str:
    skipped = stats.get("skipped") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    return f"{stats.get('kept')} of {stats.get('rows')} rows used" + (f"; skipped {reasons}" if reasons else "")
