"""The training set of one or several ``--data`` sources: tokenized, deduplicated, split, joined.

Each source is tokenized into its own cache folder and deduplicated by itself (``tokenized.py``,
``corpus.find_duplicates``: adding a source re-reads none of the others), then against the sources
before it in the canonical order (``across.py``). Each source is split by content as one file is
(``corpus.content_split``, or by row number with ``--dedup off``; no split with ``--eval-data``).
The training set is the sources' training rows, source after source in canonical order, read from
one memory-mapped table of every source's cache parts; the epoch's samples follow the weights
(``mixture.Mixture``). With one source this is exactly the one-file path: the same rows, split and
order.

``training_set`` is what training and ``cli/inspect_data.py`` both call; ``source_counts`` and
``write_audit`` are what a run records of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data import across as across_mod
from chef_genius.data import corpus
from chef_genius.data.across import Across, across_sources
from chef_genius.data.fingerprint import content_sha256
from chef_genius.data.mixture import Mixture, Source, canonical, parse_sources
from chef_genius.data.readers import ReadOptions
from chef_genius.data.tokenized import ArrowRows, TokenizedData, cache_folder, is_cached, load_settings_file
from chef_genius.errors import DataError

log = logging.getLogger("chef_genius")


@dataclass
class SourceData:
    source: Source
    tokenized: TokenizedData
    found: corpus.FileDedup | None  # its own duplicates (None: --dedup off)
    across: list[Across]  # its twins of earlier sources' recipes
    train_rows: np.ndarray  # its usable recipes that training uses (indices into ``tokenized.dataset``)
    eval_rows: np.ndarray  # held out for validation


@dataclass
class TrainingSet:
    sources: list[SourceData]  # canonical order
    rows: ArrowRows  # every source's tokenized rows, source after source
    train: np.ndarray  # training rows of ``rows``, source after source
    eval: np.ndarray  # held-out rows of ``rows``
    mixture: Mixture
    mode: str  # --dedup

    @property
    def several(self) -> bool:
        return len(self.sources) > 1


def is_ready(c, tokenizer, cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions) -> bool:
    """Whether every source (and ``--eval-data``) is tokenized and deduplicated in the cache."""
    files = [s.path for s in parse_sources(c.data)] + ([c.eval_data] if c.eval_data else [])
    if not all(is_cached(p, tokenizer, c.max_source_length, c.max_target_length, cache_root, options) for p in files):
        return False
    for s in parse_sources(c.data):
        folder = cache_folder(s.path, tokenizer, c.max_source_length, c.max_target_length, cache_root, options)
        if settings.active and not corpus.result_path(folder, s.path, options, settings, c.eval_data).is_file():
            return False
    return True


def training_set(
    c, tokenizer, cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions, has_eval_data: bool
) -> TrainingSet:
    """Read, tokenize (or map from the cache), deduplicate and split every source of ``c.data``."""
    sources = canonical(parse_sources(c.data))
    loaded = []
    for s in sources:
        tok = load_settings_file(s.path, tokenizer, c, cache_root, options)
        found = (
            corpus.find_duplicates(s.path, options, settings, tok.cache_dir, c.eval_data) if settings.active else None
        )
        if found is not None and len(found.result.keys) != len(tok.dataset):
            raise DataError(
                f"{s.path}: the duplicate search saw {len(found.result.keys)} recipes, the tokenized cache "
                f"{len(tok.dataset)}; delete {tok.cache_dir} and run again"
            )
        loaded.append((s, tok, found))
    across, keys = _twins_across(loaded, c, cache_root, options, settings)
    out = []
    for (s, tok, found), twins, key in zip(loaded, across, keys):
        n = len(tok.dataset)
        if found is None:
            train, held = corpus.split_rows(n, None, c.dedup, has_eval_data, c.eval_split_ratio, c.seed)
        else:
            usable = found.train_rows(c.dedup)
            if c.dedup == "remove" and twins:
                usable = np.setdiff1d(usable, [a.row for a in twins])
            if has_eval_data:
                train, held = usable, usable[:0]
            else:
                train, held = corpus.content_split(key, usable, c.eval_split_ratio, c.seed)
        out.append(SourceData(s, tok, found, twins, np.asarray(train), np.asarray(held)))
    offsets = np.cumsum([0] + [len(d.tokenized.dataset) for d in out])
    rows = out[0].tokenized.dataset if len(out) == 1 else ArrowRows([p for d in out for p in d.tokenized.dataset.paths])
    train = np.concatenate([d.train_rows + o for d, o in zip(out, offsets)]).astype(np.int64)
    held = np.concatenate([d.eval_rows + o for d, o in zip(out, offsets)]).astype(np.int64)
    if len(out) == 1:  # one file: its arrays as they are (same dtype, same object)
        train, held = out[0].train_rows, out[0].eval_rows
    mixture = Mixture(tuple(len(d.train_rows) for d in out), tuple(d.source.weight for d in out))
    return TrainingSet(out, rows, train, held, mixture, c.dedup)


def _twins_across(loaded, c, cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions):
    """(twins across sources, content keys clustered across sources) per source: ``across.across_sources``,
    or its saved decision read back (``across-KEY.npy`` in the cache, named by each source's own one)."""
    results = [f.result for _, _, f in loaded if f is not None]
    keys: list = [r.keys for r in results] or [None] * len(loaded)
    if len(results) < 2:
        return [[] for _ in loaded], keys
    names = [corpus.result_path(t.cache_dir, s.path, options, settings, c.eval_data).name for s, t, _ in loaded]
    saved = Path(cache_root) / f"across-{_tag([across_mod.ACROSS_VERSION, names])}.npy"
    if saved.is_file():
        try:
            found = across_mod.load(saved, len(results))
            return found, across_mod.clustered_keys(keys, found)
        except Exception as err:  # damaged: matched again, never trusted
            log.warning("%s is damaged (%s): looking for twins across sources again", saved.name, type(err).__name__)
    bands = [r.bands for r in results if r.bands is not None]  # dedup.deduplicate computes them all
    found, keys = across_sources(keys, bands, [r.kept for r in results], settings.threshold)
    across_mod.save(saved, found)
    return found, keys


def _tag(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def source_counts(ts: TrainingSet) -> list[dict]:
    """Per source (canonical order): what was read, kept, removed, held out and what an epoch takes."""
    out = []
    for d, per_epoch in zip(ts.sources, ts.mixture.per_epoch):
        stats = d.tokenized.stats
        found = d.found.result.counts() if d.found is not None else None
        removed = dict(found or {})
        if d.found is not None:
            removed["exact_across"] = sum(a.kind == "exact_across" for a in d.across)
            removed["near_across"] = sum(a.kind == "near_across" for a in d.across)
        out.append(
            {
                "data": d.source.path,
                "sha256": content_sha256(d.source.path),
                "weight": d.source.weight,
                "rows_read": stats.get("rows"),
                "usable": stats.get("kept"),
                "duplicates": removed or None,
                "training_recipes": len(d.train_rows),
                "validation_recipes": len(d.eval_rows),
                "per_epoch": per_epoch,
            }
        )
    return out


def streamed_counts(sources: list[Source], mix: Mixture) -> list[dict]:
    """``source_counts`` of the streaming path: usable rows only (nothing deduplicated or held out)."""
    return [
        {
            "data": s.path,
            "sha256": content_sha256(s.path),
            "weight": s.weight,
            "rows_read": None,
            "usable": n,
            "duplicates": None,
            "training_recipes": n,
            "validation_recipes": 0,
            "per_epoch": k,
        }
        for s, n, k in zip(sources, mix.counts, mix.per_epoch)
    ]


def source_lines(counts: list[dict], mode: str) -> list[str]:
    """One log line per source."""
    verb = "removed" if mode == "remove" else "found"
    lines = []
    for s in counts:
        d = s["duplicates"]
        dup = (
            "duplicates not looked for"
            if d is None
            else f"duplicates {verb}: {d['exact']} exact, {d['near']} near within, "
            f"{d['exact_across']} exact, {d['near_across']} near of an earlier source"
        )
        read = f"{s['rows_read']} rows read, " if s["rows_read"] is not None else ""
        lines.append(
            f"source {s['data']} (weight {s['weight']:g}): {read}{s['usable']} usable; "
            f"{dup}; {s['training_recipes']} training, {s['validation_recipes']} validation; "
            f"{s['per_epoch']} samples per epoch"
        )
    return lines


def across_audit_rows(ts: TrainingSet):
    """The rows of ``removed_duplicates.csv`` for the twins across sources (``corpus.AUDIT_COLUMNS``)."""
    for d in ts.sources:
        assert d.found is not None or not d.across
        for a in d.across:
            twin = ts.sources[a.twin_source]
            assert d.found is not None and twin.found is not None
            yield [
                a.kind,
                d.found.path,
                int(d.found.records[a.row]),
                d.found.titles[a.row],
                twin.found.path,
                int(twin.found.records[a.twin]),
                twin.found.titles[a.twin],
                f"{a.similarity:.4f}",
            ]


def write_audit(output: Path, ts: TrainingSet) -> Path:
    return corpus.write_audit(output, [d.found for d in ts.sources if d.found is not None], across_audit_rows(ts))


def removed_any(ts: TrainingSet) -> bool:
    return any(d.found is not None and (d.found.result.removed or d.across) for d in ts.sources)


def records_stamp(ts: TrainingSet) -> str:
    """What the run folder's audit and signatures are a function of, for one source without twins
    across sources (``corpus.records_stamp``); "" (always written) otherwise."""
    d = ts.sources[0]
    if ts.several or d.found is None or d.across:
        return ""
    return corpus.records_stamp(d.found, d.train_rows)


def write_signatures(output: Path, ts: TrainingSet) -> Path:
    """The training recipes' content keys and band keys of every source (``corpus.SIGNATURES_FILE``)."""
    founds = [d.found for d in ts.sources]
    assert all(f is not None and f.result.bands is not None for f in founds)
    if len(founds) == 1:
        return corpus.write_signatures(output, founds[0], ts.sources[0].train_rows)  # type: ignore[arg-type]
    keys = np.concatenate([d.found.result.keys[d.train_rows] for d in ts.sources])  # type: ignore[union-attr]
    bands = np.concatenate([d.found.result.bands[d.train_rows] for d in ts.sources])  # type: ignore[union-attr,index]
    return corpus.save_signatures(output, keys, bands, founds[0].result.threshold)  # type: ignore[union-attr]
